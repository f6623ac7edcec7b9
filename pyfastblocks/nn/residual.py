"""BatchNorm tails as one fused pass: relu(bn(x) + residual) (fastblocks::add_relu) and relu(bn(x))
(the one-input fastblocks::branch_concat)."""
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from . import _tail


class BNAddReLU(_BatchNorm):
    """``relu(bn(x) + residual)``, called as ``m(x, residual)``; ``relu=False`` gives ``bn(x) + residual``.

    Holds the parameters and buffers of ``nn.BatchNorm2d(num_features, eps, momentum)`` under the same
    state_dict keys (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``). In
    eval the BatchNorm is folded (at every call, from the live buffers) into the op's per-channel scale/bias, so
    the whole tail is one pass over memory; in training the batch statistics are computed as BatchNorm computes
    them (running statistics updated the same way) and normalize + add + ReLU still run as the one fused pass;
    the backward through the statistics is ATen's batch_norm backward. An empty batch gives an empty result, as
    BatchNorm does; under autocast the result has eager's dtype (the add promotes).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        relu: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.relu = relu

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"BNAddReLU: argument 'x' must be 4-D [N, C, H, W], got {input.dim()}-D")

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:  # type: ignore[override]
        self._check_input_dim(x)
        if x.size(1) != self.num_features:
            raise ValueError(f"BNAddReLU: argument 'x' has {x.size(1)} channels, expected {self.num_features}")
        return _tail.bn_tail([x], [_tail.bn_spec(self)], residual, "relu" if self.relu else "none")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"


class BNReLU(_BatchNorm):
    """``relu(bn(x))`` (``relu=False``: ``bn(x)``) as one fused pass (:func:`pyfastblocks.ops.affine_relu`).

    The tail of every conv -> BN -> ReLU. Parameters, buffers and state_dict keys of
    ``nn.BatchNorm2d(num_features, eps, momentum)``; eval folds the BatchNorm (at every call), training uses
    batch statistics (running stats updated as BatchNorm does) and still runs the one fused pass; an empty batch
    gives an empty result.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, relu: bool = True, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.relu = relu

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(f"BNReLU: argument 'x' must be 4-D [N, C, H, W], got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        self._check_input_dim(x)
        if x.size(1) != self.num_features:
            raise ValueError(f"BNReLU: argument 'x' has {x.size(1)} channels, expected {self.num_features}")
        return _tail.bn_tail([x], [_tail.bn_spec(self)], None, "relu" if self.relu else "none")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"


__all__ = ["BNAddReLU", "BNReLU"]
