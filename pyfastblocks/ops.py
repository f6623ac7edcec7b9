"""Python wrappers of the torch.ops.fastblocks ops, their fake (meta) impls and their autograd.

Schemas are in csrc/fastblocks.cpp; CPU kernels in csrc/cpu/, CUDA kernels in csrc/cuda/.
"""
from typing import Optional

import torch
from torch import Tensor

from . import _extension  # noqa: F401  (registers the ops)
from ._layout import accumulation_dtype, empty_in_order, preferred_channel_order

__all__ = ["add_relu"]


# --------------------------------------------------------------------------------------------------------
# add_relu


def add_relu(
    x: Tensor, residual: Tensor, scale: Optional[Tensor] = None, bias: Optional[Tensor] = None, relu: bool = True
) -> Tensor:
    """``relu(x * scale[c] + bias[c] + residual)`` in one pass; channel is dim 1.

    The tail of a residual block with its BatchNorm folded into ``scale``/``bias`` (eval:
    ``scale = gamma / sqrt(running_var + eps)``, ``bias = beta - running_mean * scale``). ``relu=False``
    leaves out the activation (MobileNetV2, Xception). ``x`` and ``residual`` have the same shape, dtype and
    device (no broadcasting); ``scale``/``bias`` are ``[C]``, in x's dtype or float32. The output keeps x's
    memory format (channels_last in, channels_last out).
    """
    return torch.ops.fastblocks.add_relu.default(x, residual, scale, bias, relu)


@torch.library.register_fake("fastblocks::add_relu")
def _add_relu_fake(x, residual, scale=None, bias=None, relu=True):
    torch._check(x.dim() >= 2, lambda: "fastblocks::add_relu: argument 'x' must have rank >= 2")
    torch._check(residual.shape == x.shape, lambda: "fastblocks::add_relu: argument 'residual' must have the shape of 'x'")
    torch._check(residual.dtype == x.dtype, lambda: "fastblocks::add_relu: argument 'residual' must have the dtype of 'x'")
    for name, p in (("scale", scale), ("bias", bias)):
        if p is not None:
            torch._check(
                p.dim() == 1 and p.shape[0] == x.shape[1],
                lambda name=name: f"fastblocks::add_relu: argument '{name}' must be a 1-D tensor of one value per channel",
            )
    return empty_in_order(x.shape, x, preferred_channel_order(x))


@torch.library.register_fake("fastblocks::add_relu_backward")
def _add_relu_backward_fake(grad_out, out, x, scale, relu, compute_param_grads):
    order = preferred_channel_order(out)
    channels = out.shape[1]
    acc = accumulation_dtype(out.dtype)
    grad_x = empty_in_order(out.shape, out, order) if scale is not None else out.new_empty(0)
    grad_residual = empty_in_order(out.shape, out, order)
    grad_scale = out.new_empty(channels if (compute_param_grads and x is not None) else 0, dtype=acc)
    grad_bias = out.new_empty(channels if compute_param_grads else 0, dtype=acc)
    return grad_x, grad_residual, grad_scale, grad_bias


def _add_relu_setup_context(ctx, inputs, output):
    x, residual, scale, bias, relu = inputs
    # x is kept only when the gradient of scale needs it (sum(g * x)); the ReLU mask comes from the output.
    keep_x = scale is not None and scale.requires_grad
    ctx.save_for_backward(output, x if keep_x else None, scale)
    ctx.need_scale_grad = keep_x
    ctx.need_bias_grad = bias is not None and bias.requires_grad
    ctx.relu = relu
    ctx.scale_dtype = scale.dtype if scale is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _add_relu_backward(ctx, grad):
    out, x, scale = ctx.saved_tensors
    need_scale, need_bias = ctx.need_scale_grad, ctx.need_bias_grad
    grad_x, grad_residual, grad_scale, grad_bias = torch.ops.fastblocks.add_relu_backward.default(
        grad, out, x if need_scale else None, scale, ctx.relu, need_scale or need_bias
    )
    if scale is None:
        grad_x = grad_residual
    return (
        grad_x,
        grad_residual,
        grad_scale.to(ctx.scale_dtype) if need_scale else None,
        grad_bias.to(ctx.bias_dtype) if need_bias else None,
        None,
    )


torch.library.register_autograd("fastblocks::add_relu", _add_relu_backward, setup_context=_add_relu_setup_context)
