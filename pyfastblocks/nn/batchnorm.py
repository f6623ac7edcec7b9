"""A BatchNorm as a per-channel (scale, bias) pair: what every fused module feeds its op's epilogue.

Nothing here is cached: every call reads the module's live parameters and buffers (folding a BatchNorm is O(C)).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .. import ops
from .._layout import accumulation_dtype


def fold_batchnorm(running_mean: Tensor, running_var: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
                   eps: float, dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``x * scale[c] + shift[c] == batch_norm(x)`` for the given statistics:
    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale`` (``weight``/``bias``
    None: 1/0, a BatchNorm with ``affine=False``). All ``[C]``; computed and returned in ``dtype`` (the
    accumulation dtype of the data: float32, float64 for float64 data). One op (:func:`pyfastblocks.ops.
    batchnorm_fold`: one launch on CUDA), differentiable in every tensor argument.
    """
    return ops.batchnorm_fold(running_mean, running_var, weight, bias, eps, dtype)


def uses_batch_stats(bn: _BatchNorm) -> bool:
    """Whether ``bn`` normalizes with the batch statistics in its current mode (``nn.BatchNorm2d.forward``'s rule:
    in training, or in eval without running statistics)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def batchnorm_scale_bias(bn: _BatchNorm, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(scale, bias)`` such that ``x * scale[c] + bias[c]`` equals ``bn(x)``, in float32 (float64 for float64 x).

    Follows ``nn.BatchNorm2d.forward``: with batch statistics (training, or no running stats) it uses the batch
    mean and biased variance and, when tracking, updates ``running_mean``/``running_var`` (unbiased) and
    ``num_batches_tracked`` exactly as BatchNorm does; gradients flow through the statistics to x, weight and bias
    (as plain autograd of the statistics; the fused modules use :mod:`pyfastblocks.nn._tail`, whose backward is
    ATen's batch_norm backward). In eval it folds the running statistics, at every call (O(C), nothing cached).

    Raises ValueError, as BatchNorm does, for one value per channel in training; for an empty batch in training the
    statistics are NaN and the running statistics are left unchanged (BatchNorm returns an empty result there).
    """
    acc = accumulation_dtype(x.dtype)
    if not uses_batch_stats(bn):
        return fold_batchnorm(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, acc)

    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum

    dims = [0, *range(2, x.dim())]
    count = x.numel() // max(x.size(1), 1)
    if bn.training and count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
    var, mean = torch.var_mean(x.to(acc), dim=dims, correction=0)
    if bn.training and bn.track_running_stats and bn.running_mean is not None and count > 1:
        with torch.no_grad():
            bn.running_mean.mul_(1 - momentum).add_(mean.detach().to(bn.running_mean.dtype), alpha=momentum)
            unbiased = var.detach() * (count / (count - 1))
            bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    return fold_batchnorm(mean, var, bn.weight, bn.bias, bn.eps, acc)
