"""A BatchNorm as a per-channel (scale, bias) pair: what every fused module feeds its op's epilogue."""
from typing import Tuple

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .._layout import accumulation_dtype


def batchnorm_scale_bias(bn: _BatchNorm, x: Tensor) -> Tuple[Tensor, Tensor]:
    """``(scale, bias)`` such that ``x * scale[c] + bias[c]`` equals ``bn(x)``, in float32 (float64 for float64 x).

    Follows ``nn.BatchNorm2d.forward``: in training (or without running stats) it uses the batch statistics
    (biased variance) and, when tracking, updates ``running_mean``/``running_var`` (unbiased) and
    ``num_batches_tracked`` exactly as BatchNorm does; gradients flow through the statistics to x, weight and
    bias. In eval it folds the running statistics; the folded pair is cached while the parameters and buffers
    are unchanged and no gradient is needed (the usual inference case), so a fused forward costs one kernel.
    """
    use_batch_stats = bn.training or bn.running_mean is None or bn.running_var is None
    if not use_batch_stats:
        return _folded_running_stats(bn, x)

    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum

    dims = [0, *range(2, x.dim())]
    count = x.numel() // max(x.size(1), 1)
    if bn.training and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    acc = accumulation_dtype(x.dtype)
    var, mean = torch.var_mean(x.to(acc), dim=dims, correction=0)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.running_mean.mul_(1 - momentum).add_(mean.detach().to(bn.running_mean.dtype), alpha=momentum)
            unbiased = var.detach() * (count / (count - 1))
            bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)
    return _scale_bias(bn, mean, torch.rsqrt(var + bn.eps), acc)


def _scale_bias(bn: _BatchNorm, mean: Tensor, invstd: Tensor, acc: torch.dtype) -> Tuple[Tensor, Tensor]:
    scale = invstd * bn.weight.to(acc) if bn.affine else invstd
    bias = (bn.bias.to(acc) if bn.affine else 0.0) - mean * scale
    return scale, bias


def _folded_running_stats(bn: _BatchNorm, x: Tensor) -> Tuple[Tensor, Tensor]:
    acc = accumulation_dtype(x.dtype)
    tensors = [bn.running_mean, bn.running_var] + ([bn.weight, bn.bias] if bn.affine else [])
    cacheable = not torch.compiler.is_compiling() and not torch.jit.is_tracing() and not (
        torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    )
    if cacheable:
        key = (acc, x.device, torch.is_inference_mode_enabled(), bn.eps) + tuple(
            (t.data_ptr(), t._version) for t in tensors
        )
        cached = getattr(bn, "_fastblocks_folded", None)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
    mean = bn.running_mean.to(acc)
    invstd = torch.rsqrt(bn.running_var.to(acc) + bn.eps)
    scale, bias = _scale_bias(bn, mean, invstd, acc)
    if cacheable:
        # object.__setattr__: a plain attribute, not a registered buffer (state_dict stays BatchNorm's).
        object.__setattr__(bn, "_fastblocks_folded", (key, scale, bias))
    return scale, bias
