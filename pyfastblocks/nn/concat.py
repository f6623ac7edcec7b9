"""The tail of an Inception module: per-branch BN + ReLU, then the concat, as one fused pass
(fastblocks::branch_concat)."""
from typing import Sequence, Tuple

import torch
from torch import Tensor, nn

from .. import ops
from .batchnorm import batchnorm_scale_bias


class BranchConcatBNReLU(nn.Module):
    """``torch.cat([relu(bn_i(x_i)) for i], 1)``, called as ``m(x_0, x_1, ...)`` or ``m([x_0, x_1, ...])``.

    Holds one ``nn.BatchNorm2d`` per branch in ``self.bns`` (state_dict keys ``bns.<i>.weight``, ``.bias``,
    ``.running_mean``, ``.running_var``, ``.num_batches_tracked``). In eval the branches' BatchNorms are folded
    and laid end to end into one scale/bias pair (cached while unchanged) and the whole tail is one kernel. In
    training each branch's batch statistics are computed as ``nn.BatchNorm2d`` computes them (running stats
    included) and normalize + ReLU + concat still run as the one fused pass, gradients flowing through the
    statistics. ``eps`` defaults to InceptionV3's 1e-3.
    """

    def __init__(self, channels_per_branch: Sequence[int], eps: float = 1e-3, momentum: float = 0.1,
                 relu: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(channels_per_branch, (int, str, Tensor)) or not hasattr(channels_per_branch, "__len__"):
            raise TypeError("BranchConcatBNReLU: argument 'channels_per_branch' must be a list of channel counts, "
                            f"got {type(channels_per_branch).__name__}")
        if len(channels_per_branch) < 1:
            raise ValueError("BranchConcatBNReLU: argument 'channels_per_branch' must list at least one branch")
        for i, c in enumerate(channels_per_branch):
            if isinstance(c, bool) or not isinstance(c, int):
                raise TypeError(f"BranchConcatBNReLU: argument 'channels_per_branch' must list ints, got "
                                f"{type(c).__name__} at index {i}")
            if c < 1:
                raise ValueError(f"BranchConcatBNReLU: argument 'channels_per_branch' must list positive channel "
                                 f"counts, got {list(channels_per_branch)}")
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(c, eps=eps, momentum=momentum, device=device, dtype=dtype) for c in channels_per_branch
        )
        self.relu = relu

    def forward(self, *inputs) -> Tensor:
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        if len(inputs) != len(self.bns):
            raise ValueError(f"BranchConcatBNReLU: expected {len(self.bns)} inputs, got {len(inputs)}")
        for i, (x, bn) in enumerate(zip(inputs, self.bns)):
            if not isinstance(x, Tensor):
                raise TypeError(f"BranchConcatBNReLU: argument 'inputs[{i}]' must be a tensor, got {type(x).__name__}")
            if x.dim() != 4 or x.size(1) != bn.num_features:
                raise ValueError(
                    f"BranchConcatBNReLU: argument 'inputs[{i}]' must be [N, {bn.num_features}, H, W], got {tuple(x.shape)}"
                )
        scale, bias = self._scale_bias(inputs)
        return ops.branch_concat(inputs, scale, bias, relu=self.relu)

    def _scale_bias(self, inputs) -> Tuple[Tensor, Tensor]:
        pairs = [batchnorm_scale_bias(bn, x) for bn, x in zip(self.bns, inputs)]
        if len(pairs) == 1:
            return pairs[0]
        # In eval the per-branch pairs are cached objects; so is their concatenation, keyed by their identity.
        key = tuple(id(t) for pair in pairs for t in pair)
        cached = getattr(self, "_fastblocks_cat", None)
        if not self.training and not torch.compiler.is_compiling() and not torch.jit.is_tracing() and cached is not None and cached[0] == key:
            return cached[1], cached[2]
        scale = torch.cat([p[0] for p in pairs])
        bias = torch.cat([p[1] for p in pairs])
        if not self.training and not torch.compiler.is_compiling() and not torch.jit.is_tracing() and all(
            getattr(bn, "_fastblocks_folded", (None, None))[1] is pair[0] for bn, pair in zip(self.bns, pairs)
        ):
            object.__setattr__(self, "_fastblocks_cat", (key, scale, bias, pairs))
        return scale, bias

    def extra_repr(self) -> str:
        return f"channels_per_branch={[bn.num_features for bn in self.bns]}, relu={self.relu}"


__all__ = ["BranchConcatBNReLU"]
