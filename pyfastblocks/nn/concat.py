"""The tail of an Inception module: per-branch BN + ReLU, then the concat, as one fused pass
(fastblocks::branch_concat)."""
from typing import Sequence

from torch import Tensor, nn

from . import _tail


class BranchConcatBNReLU(nn.Module):
    """``torch.cat([relu(bn_i(x_i)) for i], 1)``, called as ``m(x_0, x_1, ...)`` or ``m([x_0, x_1, ...])``.

    Holds one ``nn.BatchNorm2d`` per branch in ``self.bns`` (state_dict keys ``bns.<i>.weight``, ``.bias``,
    ``.running_mean``, ``.running_var``, ``.num_batches_tracked``). In eval the branches' BatchNorms are folded
    (at every call, from the live buffers) and laid end to end into one scale/bias pair and the whole tail is one
    kernel. In training each branch's batch statistics are computed as ``nn.BatchNorm2d`` computes them (running
    stats included) and normalize + ReLU + concat still run as the one fused pass; the backward through the
    statistics is ATen's batch_norm backward. ``eps`` defaults to InceptionV3's 1e-3.
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
        return _tail.bn_tail(list(inputs), [_tail.bn_spec(bn) for bn in self.bns], None,
                             "relu" if self.relu else "none")

    def extra_repr(self) -> str:
        return f"channels_per_branch={[bn.num_features for bn in self.bns]}, relu={self.relu}"


__all__ = ["BranchConcatBNReLU"]
