"""Python wrappers of the torch.ops.fastblocks ops, their fake (meta) impls and their autograd.

Schemas are in csrc/fastblocks.cpp; CPU kernels in csrc/cpu/, CUDA kernels in csrc/cuda/.
"""
import math
import operator
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _extension  # noqa: F401  (registers the ops)
from . import activations as _act
from ._layout import accumulation_dtype, empty_in_order, inputs_channel_order, preferred_channel_order

__all__ = ["add_act", "add_relu", "affine_act", "affine_relu", "batchnorm_fold", "batchnorm_fold_conv", "branch_concat",
           "depthwise_conv2d",
           "separable_conv2d", "set_cpu_depthwise_backend", "cpu_depthwise_backend"]

_INT64_MAX = 2**63 - 1
_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------------------
# Checks shared by the fake impls. A fake impl is also the op's Meta kernel: it runs for real tensors whenever one
# argument is on the `meta` device, so it must reject what the CPU/CUDA kernels reject (above all mixed devices,
# or it hands back an uninitialized tensor), naming the argument as the kernels do.


def _check_tensor(op: str, name: str, t) -> None:
    torch._check(
        isinstance(t, Tensor),
        lambda: f"fastblocks::{op}: argument '{name}' must be a tensor, got {type(t).__name__}",
    )


def _check_rank(op: str, name: str, t: Tensor, rank: int, exact: bool = False) -> None:
    ok = t.dim() == rank if exact else t.dim() >= rank
    torch._check(
        ok,
        lambda: f"fastblocks::{op}: argument '{name}' must "
        + (f"be {rank}-D" if exact else f"have rank >= {rank} with channels in dim 1")
        + f", got shape {list(t.shape)}",
    )


def _check_same_device(op: str, *named) -> None:
    """All the given (name, tensor) pairs (None: an absent optional argument) on one device. The reference is the
    first tensor not on `meta` (the Meta kernel runs when any argument is on meta: that one is the odd one out)."""
    tensors = [(name, t) for name, t in named if t is not None]
    if not tensors:
        return
    ref_name, ref = next(((n, t) for n, t in tensors if t.device.type != "meta"), tensors[0])
    for name, t in tensors:
        torch._check(
            t.device == ref.device,
            lambda name=name, t=t: f"fastblocks::{op}: argument '{name}' must be on the device of '{ref_name}' "
            f"({ref.device}), got {t.device}",
        )


def _static(value) -> bool:
    """A plain int (not a SymInt of a dynamic shape): size arithmetic on it can be checked at trace time without
    adding guards."""
    return isinstance(value, int)


# --------------------------------------------------------------------------------------------------------
# The per-channel parameters every epilogue op takes (scale, bias): which gradients autograd wants, and in which
# dtype to hand them back (the kernels return them in the accumulation dtype).


def _save_param_grad_info(ctx, scale: Optional[Tensor], bias: Optional[Tensor]) -> None:
    ctx.need_scale_grad = scale is not None and scale.requires_grad
    ctx.need_bias_grad = bias is not None and bias.requires_grad
    ctx.scale_dtype = scale.dtype if scale is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _param_grads(ctx, grad_scale: Tensor, grad_bias: Tensor):
    return (
        grad_scale.to(ctx.scale_dtype) if ctx.need_scale_grad else None,
        grad_bias.to(ctx.bias_dtype) if ctx.need_bias_grad else None,
    )


def _check_activation(op: str, activation, negative_slope, arg: str = "activation",
                      slope_arg: str = "negative_slope") -> None:
    """The activation table's name check (and a finite slope), naming the op's argument, as the kernels do."""
    _act.check(activation, f"fastblocks::{op}", arg)
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or not math.isfinite(
            negative_slope):
        raise ValueError(f"fastblocks::{op}: argument '{slope_arg}' must be a finite number, got {negative_slope!r}")


def _fake_check_activation(op: str, activation: str, negative_slope: float, arg: str = "activation") -> None:
    torch._check(activation in _act.ACTIVATIONS,
                 lambda: f"fastblocks::{op}: argument '{arg}' must be one of {list(_act.NAMES)}, got {activation!r}")


def _relu_flag(op: str, relu) -> str:
    """The older ``relu: bool`` spelling as an activation name (a bool, not any truthy value)."""
    if not isinstance(relu, bool):
        raise TypeError(f"fastblocks::{op}: argument 'relu' must be a bool, got {type(relu).__name__}")
    return "relu" if relu else "none"


def _needs_inputs(activation: str) -> bool:
    """Does the backward of an epilogue with this activation recompute the pre-activation from the inputs?"""
    return activation != "none"


# --------------------------------------------------------------------------------------------------------
# add_act (the residual form of the epilogue)


def add_act(x: Tensor, residual: Tensor, scale: Optional[Tensor] = None, bias: Optional[Tensor] = None,
            activation: str = "relu", negative_slope: float = 0.01) -> Tensor:
    """``act(x * scale[c] + bias[c] + residual)`` in one pass; channel is dim 1.

    The tail of a residual block with its BatchNorm folded into ``scale``/``bias`` (eval:
    ``scale = gamma / sqrt(running_var + eps)``, ``bias = beta - running_mean * scale``).

    Args:
        x, residual: the same shape ``[N, C, ...]`` (rank >= 2, no broadcasting), dtype (float32, float64, float16,
            bfloat16) and device.
        scale, bias: ``[C]``, in x's dtype or float32 (None: 1 and 0).
        activation: a name of :mod:`pyfastblocks.activations` (``"none"``, ``"relu"``, ``"relu6"``, ``"leaky_relu"``,
            ``"silu"``, ``"hardswish"``, ``"gelu"``, ``"gelu_tanh"``).
        negative_slope: leaky_relu's slope (ignored by the other activations).

    Returns:
        a tensor like x, in x's memory format (channels_last in, channels_last out).

    Backward: the pre-activation ``z`` is recomputed from the inputs (``x``, ``residual``, ``scale``, ``bias``) rather
    than the output being kept: it is exact (the forward's own arithmetic), it serves every activation (SiLU, GELU and
    Hardswish need ``z``), and it never keeps the output, which the model may change in place afterwards (an in-place
    activation or add). It costs no memory in training: ``x`` is the BatchNorm's input and ``residual`` the block's
    input, which autograd keeps for the convolutions anyway. Activation "none" keeps nothing (``x`` only for the
    gradient of ``scale``).

    Raises:
        ValueError / RuntimeError naming the argument: an unknown activation, mismatched shapes/dtypes/devices, a
        parameter of the wrong size.
    """
    _check_activation("add_act", activation, negative_slope)
    return torch.ops.fastblocks.add_act.default(x, residual, scale, bias, activation, float(negative_slope))


def add_relu(x: Tensor, residual: Tensor, scale: Optional[Tensor] = None, bias: Optional[Tensor] = None,
             relu: bool = True) -> Tensor:
    """``relu(x * scale[c] + bias[c] + residual)`` (``relu=False``: no activation): :func:`add_act` with
    ``activation="relu"`` / ``"none"``."""
    return add_act(x, residual, scale, bias, _relu_flag("add_relu", relu))


@torch.library.register_fake("fastblocks::add_act")
def _add_act_fake(x, residual, scale=None, bias=None, activation="relu", negative_slope=0.01):
    op = "add_act"
    _fake_check_activation(op, activation, negative_slope)
    _check_tensor(op, "x", x)
    _check_tensor(op, "residual", residual)
    _check_same_device(op, ("x", x), ("residual", residual), ("scale", scale), ("bias", bias))
    _check_rank(op, "x", x, 2)
    torch._check(residual.shape == x.shape, lambda: "fastblocks::add_act: argument 'residual' must have the shape of 'x'")
    torch._check(residual.dtype == x.dtype, lambda: "fastblocks::add_act: argument 'residual' must have the dtype of 'x'")
    for name, p in (("scale", scale), ("bias", bias)):
        if p is not None:
            torch._check(
                p.dim() == 1 and p.shape[0] == x.shape[1],
                lambda name=name: f"fastblocks::add_act: argument '{name}' must be a 1-D tensor of one value per channel",
            )
    return empty_in_order(x.shape, x, preferred_channel_order(x))


@torch.library.register_fake("fastblocks::add_act_backward")
def _add_act_backward_fake(grad_out, x, residual, scale, bias, activation, negative_slope, compute_param_grads):
    op = "add_act_backward"
    _fake_check_activation(op, activation, negative_slope)
    _check_tensor(op, "grad_out", grad_out)
    _check_same_device(op, ("grad_out", grad_out), ("x", x), ("residual", residual), ("scale", scale), ("bias", bias))
    _check_rank(op, "grad_out", grad_out, 2)
    if activation != "none":
        torch._check(x is not None, lambda: f"fastblocks::{op}: argument 'x' is required with activation {activation!r}")
    for name, t in (("x", x), ("residual", residual)):
        if t is not None:
            torch._check(t.shape == grad_out.shape,
                         lambda name=name: f"fastblocks::{op}: argument '{name}' must have the shape of 'grad_out'")
    order = preferred_channel_order(x if x is not None else grad_out)
    channels = grad_out.shape[1]
    acc = accumulation_dtype(grad_out.dtype)
    grad_x = empty_in_order(grad_out.shape, grad_out, order) if scale is not None else grad_out.new_empty(0)
    grad_residual = empty_in_order(grad_out.shape, grad_out, order)
    want_scale = compute_param_grads and x is not None and scale is not None
    grad_scale = grad_out.new_empty(channels if want_scale else 0, dtype=acc)
    grad_bias = grad_out.new_empty(channels if compute_param_grads else 0, dtype=acc)
    return grad_x, grad_residual, grad_scale, grad_bias


def _add_act_setup_context(ctx, inputs, output):
    x, residual, scale, bias, activation, negative_slope = inputs
    # x and residual for the pre-activation (every activation but "none"); x alone for sum(g * x), the gradient of
    # scale. Never the output (see add_act's docstring).
    keep_x = _needs_inputs(activation) or (scale is not None and scale.requires_grad)
    keep_residual = _needs_inputs(activation)
    ctx.save_for_backward(x if keep_x else None, residual if keep_residual else None, scale, bias)
    _save_param_grad_info(ctx, scale, bias)
    ctx.activation, ctx.negative_slope = activation, negative_slope


def _add_act_backward(ctx, grad):
    x, residual, scale, bias = ctx.saved_tensors
    need_scale, need_bias = ctx.need_scale_grad, ctx.need_bias_grad
    grad_x, grad_residual, grad_scale, grad_bias = torch.ops.fastblocks.add_act_backward.default(
        grad, x, residual, scale, bias, ctx.activation, ctx.negative_slope, need_scale or need_bias
    )
    if scale is None:
        grad_x = grad_residual
    return (grad_x, grad_residual, *_param_grads(ctx, grad_scale, grad_bias), None, None)


torch.library.register_autograd("fastblocks::add_act", _add_act_backward, setup_context=_add_act_setup_context)


# --------------------------------------------------------------------------------------------------------
# branch_concat (and its one-input form, affine_act)


def branch_concat(
    inputs: Sequence[Tensor], scale: Optional[Tensor] = None, bias: Optional[Tensor] = None,
    activation: str = "relu", negative_slope: float = 0.01, *, relu: Optional[bool] = None,
) -> Tensor:
    """``act(torch.cat(inputs, 1) * scale[c] + bias[c])`` in one pass (one kernel launch on CUDA).

    The tail of an Inception module: each branch's folded BatchNorm laid end to end in ``scale``/``bias``, the
    activation, then the concat; every input is written straight into its channel range of the output.

    Args:
        inputs: 1 to 64 tensors ``[N, C_i, ...]`` agreeing in every dim but 1, in dtype and device.
        scale, bias: ``[sum C_i]``, in the inputs' dtype or float32 (None: 1 and 0).
        activation, negative_slope: as :func:`add_act`. ``relu=True/False`` (keyword) is the older spelling of
            ``activation="relu"/"none"``.

    Returns:
        ``[N, sum C_i, ...]`` in the memory format of the first input with more than one channel (inputs in another
        format are converted).

    Backward: one gradient per input plus per-channel ones for scale and bias; the pre-activation is recomputed
    from the inputs (kept for every activation but "none"), as :func:`add_act` explains.
    """
    if isinstance(inputs, Tensor):  # list(tensor) would split it along dim 0: a silent wrong result
        raise TypeError(
            "fastblocks::branch_concat: argument 'inputs' must be a list or tuple of tensors, got a Tensor "
            "(for a single input, pass [x] or use affine_act(x))"
        )
    if relu is not None:
        activation = _relu_flag("branch_concat", relu)
    _check_activation("branch_concat", activation, negative_slope)
    inputs = list(inputs)
    if not inputs:  # the dispatcher cannot route an op with no tensor at all: say it here
        raise RuntimeError("fastblocks::branch_concat: argument 'inputs' must hold at least one tensor")
    return torch.ops.fastblocks.branch_concat.default(inputs, scale, bias, activation, float(negative_slope))


def affine_act(x: Tensor, scale: Optional[Tensor] = None, bias: Optional[Tensor] = None, activation: str = "relu",
               negative_slope: float = 0.01) -> Tensor:
    """``act(x * scale[c] + bias[c])`` in one pass: a folded BatchNorm and its activation after a convolution.

    The one-input case of :func:`branch_concat` (same kernels, same autograd); arguments as :func:`add_act`.
    """
    # x's own checks first, so that errors name 'x' (branch_concat would call it 'inputs[0]').
    if not isinstance(x, Tensor):
        raise TypeError(f"fastblocks::affine_act: argument 'x' must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise RuntimeError(
            f"fastblocks::affine_act: argument 'x' must have rank >= 2 with channels in dim 1, got shape {list(x.shape)}"
        )
    if x.dtype not in _FLOATING:
        raise RuntimeError(
            f"fastblocks::affine_act: argument 'x' must be float32, float64, float16 or bfloat16, got {x.dtype}"
        )
    _check_activation("affine_act", activation, negative_slope)
    return torch.ops.fastblocks.branch_concat.default([x], scale, bias, activation, float(negative_slope))


def affine_relu(x: Tensor, scale: Optional[Tensor] = None, bias: Optional[Tensor] = None, relu: bool = True) -> Tensor:
    """``relu(x * scale[c] + bias[c])`` (``relu=False``: no activation): :func:`affine_act` with ``"relu"``/``"none"``."""
    return affine_act(x, scale, bias, _relu_flag("affine_relu", relu))


def _with_channels(shape, channels):
    sizes = list(shape)
    sizes[1] = channels
    return sizes


@torch.library.register_fake("fastblocks::branch_concat")
def _branch_concat_fake(inputs, scale=None, bias=None, activation="relu", negative_slope=0.01):
    op = "branch_concat"
    _fake_check_activation(op, activation, negative_slope)
    torch._check(len(inputs) >= 1, lambda: "fastblocks::branch_concat: argument 'inputs' must hold at least one tensor")
    _check_same_device(op, *((f"inputs[{i}]", t) for i, t in enumerate(inputs)), ("scale", scale), ("bias", bias))
    for i, t in enumerate(inputs):
        _check_rank(op, f"inputs[{i}]", t, 2)
    x0 = inputs[0]
    for i, t in enumerate(inputs[1:], 1):
        torch._check(t.dim() == x0.dim(), lambda i=i: f"fastblocks::branch_concat: argument 'inputs[{i}]' has another rank")
        torch._check(t.dtype == x0.dtype, lambda i=i: f"fastblocks::branch_concat: argument 'inputs[{i}]' has another dtype")
    channels = sum(t.shape[1] for t in inputs)
    for name, p in (("scale", scale), ("bias", bias)):
        if p is not None:
            torch._check(
                p.dim() == 1 and p.shape[0] == channels,
                lambda name=name: f"fastblocks::branch_concat: argument '{name}' must be [sum of the inputs' channels]",
            )
    return empty_in_order(_with_channels(x0.shape, channels), x0, inputs_channel_order(inputs))


@torch.library.register_fake("fastblocks::branch_concat_backward")
def _branch_concat_backward_fake(grad_out, channels, inputs, scale, bias, activation, negative_slope,
                                 compute_param_grads, grad_at_preactivation=False):
    op = "branch_concat_backward"
    _fake_check_activation(op, activation, negative_slope)
    _check_tensor(op, "grad_out", grad_out)
    _check_same_device(op, ("grad_out", grad_out), *((f"inputs[{i}]", t) for i, t in enumerate(inputs)),
                       ("scale", scale), ("bias", bias))
    _check_rank(op, "grad_out", grad_out, 2)
    torch._check(1 <= len(channels) <= 64, lambda: f"fastblocks::{op}: argument 'channels' must list 1 to 64 channel counts")
    for c in channels:
        torch._check(c >= 0, lambda: f"fastblocks::{op}: argument 'channels' must be non-negative, got {list(channels)}")
    torch._check(sum(channels) == grad_out.shape[1],
                 lambda: f"fastblocks::{op}: argument 'channels' must add up to grad_out.size(1)")
    torch._check(len(inputs) in (0, len(channels)),
                 lambda: f"fastblocks::{op}: argument 'inputs' must be empty or hold one tensor per branch")
    torch._check(len(inputs) > 0 or activation == "none",
                 lambda: f"fastblocks::{op}: argument 'inputs' are required with activation {activation!r}")
    order = inputs_channel_order(inputs) if inputs else preferred_channel_order(grad_out)
    grads = [empty_in_order(_with_channels(grad_out.shape, c), grad_out, order) for c in channels]
    acc = accumulation_dtype(grad_out.dtype)
    total = grad_out.shape[1]
    want_scale = compute_param_grads and len(inputs) > 0 and scale is not None
    grad_scale = grad_out.new_empty(total if want_scale else 0, dtype=acc)
    grad_bias = grad_out.new_empty(total if compute_param_grads else 0, dtype=acc)
    return grads, grad_scale, grad_bias


def _branch_concat_setup_context(ctx, inputs, output):
    tensors, scale, bias, activation, negative_slope = inputs
    # The inputs for the pre-activation (every activation but "none") or for sum(g * x), the gradient of scale.
    keep_x = _needs_inputs(activation) or (scale is not None and scale.requires_grad)
    ctx.channels = [t.shape[1] for t in tensors]
    ctx.save_for_backward(scale, bias, *(tensors if keep_x else ()))
    _save_param_grad_info(ctx, scale, bias)
    ctx.activation, ctx.negative_slope = activation, negative_slope


def _branch_concat_backward(ctx, grad):
    scale, bias, *xs = ctx.saved_tensors
    need_scale, need_bias = ctx.need_scale_grad, ctx.need_bias_grad
    grads, grad_scale, grad_bias = torch.ops.fastblocks.branch_concat_backward.default(
        grad, ctx.channels, xs, scale, bias, ctx.activation, ctx.negative_slope, need_scale or need_bias
    )
    return (list(grads), *_param_grads(ctx, grad_scale, grad_bias), None, None)


torch.library.register_autograd(
    "fastblocks::branch_concat", _branch_concat_backward, setup_context=_branch_concat_setup_context
)


# --------------------------------------------------------------------------------------------------------
# depthwise_conv2d

IntPair = Union[int, Sequence[int]]


def _pair(value: IntPair, name: str, op: str = "depthwise_conv2d") -> List[int]:
    """An int or a pair of ints (anything with __index__: int, numpy or 0-d integer tensor) as a list of two."""
    def as_int(v):
        if isinstance(v, (bool, float, str)) or v is None:
            raise TypeError(f"fastblocks::{op}: argument '{name}' must be an int or a pair of ints, got {value!r}")
        try:
            return operator.index(v)
        except TypeError:
            raise TypeError(
                f"fastblocks::{op}: argument '{name}' must be an int or a pair of ints, got {value!r}"
            ) from None

    if isinstance(value, (list, tuple, torch.Size)):
        if len(value) != 2:
            raise ValueError(f"fastblocks::{op}: argument '{name}' must be an int or a pair, got {list(value)}")
        return [as_int(v) for v in value]
    return [as_int(value)] * 2


def depthwise_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    activation: str = "none",
    input_relu: bool = False,
    negative_slope: float = 0.01,
) -> Tensor:
    """``act(F.conv2d(relu(x) if input_relu else x, weight, bias, stride, padding, dilation, groups=C))``.

    ``x`` is ``[N, C, H, W]`` (float32/64, float16, bfloat16), ``weight`` ``[C * m, 1, kh, kw]`` (channel
    multiplier m >= 1) in x's dtype, ``bias`` ``[C * m]`` in x's dtype or float32; a folded BatchNorm goes into
    ``weight`` and ``bias``. ``activation``/``negative_slope``: a name of :mod:`pyfastblocks.activations`, applied in
    the kernel's epilogue. ``input_relu`` applies a ReLU to the input as it is read (Xception's pre-activation), so
    the un-activated input stays available to a skip path. The output keeps x's memory format.

    Backward: for ReLU-like activations (``none``, ``relu``, ``relu6``, ``leaky_relu`` with a slope >= 0) the
    gradient mask comes from the saved output; for the others (SiLU, Hardswish, GELU) the backward recomputes the
    pre-activation with the forward kernel (no activation) rather than the forward keeping it: one more depthwise
    pass in the backward, no extra memory held between forward and backward.
    """
    _check_activation("depthwise_conv2d", activation, negative_slope)
    return torch.ops.fastblocks.depthwise_conv2d.default(
        x, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"),
        activation, input_relu, float(negative_slope),
    )


def set_cpu_depthwise_backend(backend: str) -> str:
    """Choose how ``depthwise_conv2d`` runs on the CPU, process-wide; returns the previous choice.

    ``"auto"`` (default): float32 channels_last inputs and float32 NCHW inputs with small planes (outputs up to
    20x20 forward, 28x28 backward) run oneDNN's convolution through ATen, then the activation in place, because it
    is faster there on x86; everything else, and every call in deterministic mode, runs this project's kernels.
    ``"fastblocks"``: this project's kernels always (fused epilogue and input ReLU, thread-count-independent
    weight gradients)."""
    from . import _C

    previous = _C._cpu_depthwise_backend()
    _C._set_cpu_depthwise_backend(backend)
    return previous


def cpu_depthwise_backend() -> str:
    """The current choice of ``set_cpu_depthwise_backend``."""
    from . import _C

    return _C._cpu_depthwise_backend()


def _check_conv_args(op, x, weight, stride, padding, dilation):
    """The depthwise fake impls' checks of stride/padding/dilation and of the output size, before any arithmetic
    (the kernels' make_geometry checks the same). Returns (out_h, out_w)."""
    for name, v in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        torch._check(len(v) == 2, lambda name=name, v=v: f"fastblocks::{op}: argument '{name}' must be two ints, got {list(v)}")
    torch._check(stride[0] > 0 and stride[1] > 0,
                 lambda: f"fastblocks::{op}: argument 'stride' must be two positive ints, got {list(stride)}")
    torch._check(dilation[0] > 0 and dilation[1] > 0,
                 lambda: f"fastblocks::{op}: argument 'dilation' must be two positive ints, got {list(dilation)}")
    torch._check(padding[0] >= 0 and padding[1] >= 0,
                 lambda: f"fastblocks::{op}: argument 'padding' must be two non-negative ints, got {list(padding)}")
    out, extents = [], []
    for i in range(2):
        size, kernel = x.shape[2 + i], weight.shape[2 + i]
        # int64 bounds, as in C++ (Python ints do not overflow; checked where the sizes are static)
        if _static(size):
            torch._check(size + 2 * padding[i] <= _INT64_MAX,
                         lambda: f"fastblocks::{op}: argument 'padding' is too large: input size + 2 * padding "
                         f"overflows int64 (padding {list(padding)})")
        if _static(kernel):
            torch._check(dilation[i] * (kernel - 1) <= _INT64_MAX,
                         lambda: f"fastblocks::{op}: argument 'dilation' is too large: dilation * (kernel size - 1) "
                         f"overflows int64 (dilation {list(dilation)})")
        span = size + 2 * padding[i] - dilation[i] * (kernel - 1) - 1
        if _static(span):
            torch._check(span >= 0, lambda: f"fastblocks::{op}: argument 'x' is too small for the kernel: the output "
                         f"size would be <= 0 (input {list(x.shape)}, kernel {list(weight.shape[2:])})")
        out.append(span // stride[i] + 1)
        terms = {"x": size, "padding": 2 * padding[i], "dilation": dilation[i] * (kernel - 1), "stride": stride[i]}
        if all(_static(v) for v in terms.values()):
            extents.append((sum(terms.values()), max(terms, key=terms.get)))
    if len(extents) == 2:  # the padded plane's area, as make_geometry bounds it
        name = max(extents)[1]
        torch._check(extents[0][0] * extents[1][0] * 64 <= _INT64_MAX,
                     lambda: f"fastblocks::{op}: argument '{name}' is too large: the padded input plane is too large "
                     f"to index in int64 (input {list(x.shape)}, stride {list(stride)}, padding {list(padding)}, "
                     f"dilation {list(dilation)})")
    sizes = [x.shape[0], weight.shape[0], *out]
    if all(_static(s) for s in sizes):
        numel = sizes[0] * sizes[1] * sizes[2] * sizes[3]
        torch._check(numel <= _INT64_MAX,
                     lambda: f"fastblocks::{op}: argument '{'padding' if any(padding) else 'weight'}' gives an output "
                     f"{sizes} of more than 2^63 - 1 elements")
    return out


@torch.library.register_fake("fastblocks::depthwise_conv2d")
def _depthwise_conv2d_fake(x, weight, bias, stride, padding, dilation, activation="none", input_relu=False,
                           negative_slope=0.01):
    op = "depthwise_conv2d"
    _fake_check_activation(op, activation, negative_slope)
    _check_tensor(op, "x", x)
    _check_tensor(op, "weight", weight)
    _check_same_device(op, ("x", x), ("weight", weight), ("bias", bias))
    _check_rank(op, "x", x, 4, exact=True)
    torch._check(weight.dim() == 4 and weight.shape[1] == 1, lambda: "fastblocks::depthwise_conv2d: argument 'weight' must be [C * m, 1, kh, kw]")
    out_h, out_w = _check_conv_args(op, x, weight, stride, padding, dilation)
    sizes = [x.shape[0], weight.shape[0], out_h, out_w]
    return empty_in_order(sizes, x, preferred_channel_order(x))


@torch.library.register_fake("fastblocks::depthwise_conv2d_backward")
def _depthwise_conv2d_backward_fake(grad_out, out, x, weight, bias, stride, padding, dilation, activation,
                                    negative_slope, input_relu, output_mask):
    op = "depthwise_conv2d_backward"
    _fake_check_activation(op, activation, negative_slope)
    for name, t in (("grad_out", grad_out), ("x", x), ("weight", weight)):
        _check_tensor(op, name, t)
    _check_same_device(op, ("grad_out", grad_out), ("out", out), ("x", x), ("weight", weight), ("bias", bias))
    _check_rank(op, "x", x, 4, exact=True)
    torch._check(weight.dim() == 4 and weight.shape[1] == 1,
                 lambda: f"fastblocks::{op}: argument 'weight' must be [C * m, 1, kh, kw]")
    _check_conv_args(op, x, weight, stride, padding, dilation)
    grad_input = empty_in_order(x.shape, x, preferred_channel_order(x)) if output_mask[0] else x.new_empty(0)
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0)
    grad_bias = x.new_empty(weight.shape[0] if output_mask[2] else 0, dtype=accumulation_dtype(x.dtype))
    return grad_input, grad_weight, grad_bias


def _depthwise_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, activation, input_relu, negative_slope = inputs
    # ReLU-like activations: the output's mask; the others: bias, to recompute the pre-activation.
    entry = _act.ACTIVATIONS[activation]
    from_output = activation != "none" and entry.grad_from_output(negative_slope)
    recompute = not entry.grad_from_output(negative_slope)
    ctx.save_for_backward(x, weight, output if from_output else None, bias if recompute else None)
    ctx.conv = (stride, padding, dilation, activation, negative_slope, input_relu)
    ctx.mask = [x.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad]
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _depthwise_backward(ctx, grad):
    x, weight, out, bias = ctx.saved_tensors
    stride, padding, dilation, activation, negative_slope, input_relu = ctx.conv
    grad_input, grad_weight, grad_bias = torch.ops.fastblocks.depthwise_conv2d_backward.default(
        grad, out, x, weight, bias, stride, padding, dilation, activation, negative_slope, input_relu, ctx.mask
    )
    return (
        grad_input if ctx.mask[0] else None,
        grad_weight if ctx.mask[1] else None,
        grad_bias.to(ctx.bias_dtype) if ctx.mask[2] else None,
        None, None, None, None, None, None,
    )


torch.library.register_autograd(
    "fastblocks::depthwise_conv2d", _depthwise_backward, setup_context=_depthwise_setup_context
)


# --------------------------------------------------------------------------------------------------------
# separable_conv2d (composite: autograd, fake tensors and compile go through depthwise_conv2d and ATen ops)

_SEPARABLE = "separable_conv2d"


def separable_conv2d(
    x: Tensor,
    depthwise_weight: Tensor,
    depthwise_bias: Optional[Tensor],
    pointwise_weight: Tensor,
    pointwise_bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    depthwise_activation: str = "none",
    activation: str = "none",
    input_relu: bool = False,
    depthwise_negative_slope: float = 0.01,
    negative_slope: float = 0.01,
) -> Tensor:
    """``act(conv1x1(depthwise_conv2d(x, ..., depthwise_activation, input_relu), pointwise_weight, pointwise_bias))``.

    The depthwise step is :func:`depthwise_conv2d` (bias, activation and input ReLU inside its kernel); the
    pointwise 1x1 convolution ``[C_out, C * m, 1, 1]`` runs as one GEMM with its bias on the channels_last view
    (ReLU fused into the GEMM where the library has it: ``_addmm_activation``), or as the library's 1x1
    convolution for NCHW input; other activations than ReLU run as one :func:`affine_act` pass. Folded BatchNorms go
    into the weights and biases. Activations and slopes as :func:`depthwise_conv2d`.
    """
    _check_activation(_SEPARABLE, depthwise_activation, depthwise_negative_slope, "depthwise_activation",
                      "depthwise_negative_slope")
    _check_activation(_SEPARABLE, activation, negative_slope)
    return torch.ops.fastblocks.separable_conv2d.default(
        x, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias, _pair(stride, "stride", _SEPARABLE),
        _pair(padding, "padding", _SEPARABLE), _pair(dilation, "dilation", _SEPARABLE), depthwise_activation,
        activation, input_relu, float(depthwise_negative_slope), float(negative_slope),
    )


# --------------------------------------------------------------------------------------------------------
# batchnorm_fold, batchnorm_fold_conv: a BatchNorm folded at every call (O(C), or O(weights) into a conv), one
# call (one launch on CUDA). Their backward is plain ATen ops (differentiable again).


def batchnorm_fold(mean: Tensor, var: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
                   eps: float = 1e-5, dtype: torch.dtype = torch.float32):
    """``(scale, shift)`` with ``x * scale[c] + shift[c] == batch_norm(x, mean, var, weight, bias, eps)``:
    ``scale = weight / sqrt(var + eps)``, ``shift = bias - mean * scale`` (``weight``/``bias`` None: 1/0).

    ``mean``, ``var``, ``weight``, ``bias``: ``[C]``, any floating dtype, one device; the outputs are ``[C]`` in
    ``dtype``, the accumulation dtype (``torch.float32``, or ``torch.float64`` for float64 data). Differentiable
    in every tensor argument.
    """
    return torch.ops.fastblocks.batchnorm_fold.default(mean, var, weight, bias, float(eps), dtype)


def batchnorm_fold_conv(conv_weight: Tensor, conv_bias: Optional[Tensor], mean: Tensor, var: Tensor,
                        weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
                        dtype: torch.dtype = torch.float32):
    """The convolution ``conv_weight``/``conv_bias`` followed by that BatchNorm, as one convolution:
    ``(conv_weight * scale[o], shift + conv_bias * scale)`` with ``(scale, shift) = batchnorm_fold(...)``.

    ``conv_weight``: ``[C_out, ...]`` (its dtype; the folded weight keeps its strides when it is contiguous or
    channels_last); ``conv_bias`` ``[C_out]`` or None; the folded bias is ``[C_out]`` in ``dtype``.
    Differentiable in every tensor argument.
    """
    return torch.ops.fastblocks.batchnorm_fold_conv.default(conv_weight, conv_bias, mean, var, weight, bias,
                                                            float(eps), dtype)


def _check_fold_stats(op, ref_name, ref, channels, mean, var, weight, bias):
    _check_same_device(op, (ref_name, ref), ("mean", mean), ("var", var), ("weight", weight), ("bias", bias))
    for name, t in (("mean", mean), ("var", var), ("weight", weight), ("bias", bias)):
        if t is not None:
            torch._check(t.dim() == 1 and t.shape[0] == channels,
                         lambda name=name: f"fastblocks::{op}: argument '{name}' must be a 1-D tensor of one value "
                         "per channel")


@torch.library.register_fake("fastblocks::batchnorm_fold")
def _batchnorm_fold_fake(mean, var, weight, bias, eps, dtype):
    op = "batchnorm_fold"
    _check_tensor(op, "mean", mean)
    _check_tensor(op, "var", var)
    torch._check(dtype in (torch.float32, torch.float64),
                 lambda: f"fastblocks::{op}: argument 'dtype' must be float32 or float64 (the accumulation dtype)")
    torch._check(mean.dim() == 1, lambda: f"fastblocks::{op}: argument 'mean' must be a 1-D tensor of one value per "
                 "channel")
    _check_fold_stats(op, "mean", mean, mean.shape[0], mean, var, weight, bias)
    return mean.new_empty(mean.shape[0], dtype=dtype), mean.new_empty(mean.shape[0], dtype=dtype)


@torch.library.register_fake("fastblocks::batchnorm_fold_conv")
def _batchnorm_fold_conv_fake(conv_weight, conv_bias, mean, var, weight, bias, eps, dtype):
    op = "batchnorm_fold_conv"
    _check_tensor(op, "conv_weight", conv_weight)
    torch._check(dtype in (torch.float32, torch.float64),
                 lambda: f"fastblocks::{op}: argument 'dtype' must be float32 or float64 (the accumulation dtype)")
    torch._check(conv_weight.dim() >= 1, lambda: f"fastblocks::{op}: argument 'conv_weight' must have the output "
                 "channels in dim 0")
    channels = conv_weight.shape[0]
    _check_fold_stats(op, "conv_weight", conv_weight, channels, mean, var, weight, bias)
    if conv_bias is not None:
        _check_fold_stats(op, "conv_weight", conv_weight, channels, conv_bias, None, None, None)
    as_stored = conv_weight.is_contiguous() or (
        conv_weight.dim() == 4 and conv_weight.is_contiguous(memory_format=torch.channels_last))
    folded = torch.empty_like(conv_weight) if as_stored else conv_weight.new_empty(conv_weight.shape)
    return folded, conv_weight.new_empty(channels, dtype=dtype)


def _fold_chain(ctx, grad_scale, grad_shift, scale, mean, var, weight, bias):
    """Gradients of (mean, var, weight, bias) from those of scale = weight * invstd, shift = bias - mean * scale."""
    acc = scale.dtype
    mean_a = mean.to(acc)
    invstd = batchnorm_fold(mean, var, None, None, ctx.eps, acc)[0]  # 1 / sqrt(var + eps)
    grad_scale_total = grad_scale - mean_a * grad_shift  # scale also enters shift
    needs = ctx.needs_stats
    grad_mean = (-grad_shift * scale).to(mean.dtype) if needs[0] else None
    grad_var = (grad_scale_total * scale * invstd * invstd * -0.5).to(var.dtype) if needs[1] else None
    grad_weight = (grad_scale_total * invstd).to(weight.dtype) if needs[2] and weight is not None else None
    grad_bias = grad_shift.to(bias.dtype) if needs[3] and bias is not None else None
    return grad_mean, grad_var, grad_weight, grad_bias


def _batchnorm_fold_setup_context(ctx, inputs, output):
    mean, var, weight, bias, eps, dtype = inputs
    ctx.save_for_backward(mean, var, weight, bias, output[0])
    ctx.eps = eps
    ctx.needs_stats = [t is not None and t.requires_grad for t in (mean, var, weight, bias)]


def _batchnorm_fold_backward(ctx, grad_scale, grad_shift):
    mean, var, weight, bias, scale = ctx.saved_tensors
    grad_scale = torch.zeros_like(scale) if grad_scale is None else grad_scale
    grad_shift = torch.zeros_like(scale) if grad_shift is None else grad_shift
    return (*_fold_chain(ctx, grad_scale, grad_shift, scale, mean, var, weight, bias), None, None)


torch.library.register_autograd("fastblocks::batchnorm_fold", _batchnorm_fold_backward,
                                setup_context=_batchnorm_fold_setup_context)


def _batchnorm_fold_conv_setup_context(ctx, inputs, output):
    conv_weight, conv_bias, mean, var, weight, bias, eps, dtype = inputs
    ctx.save_for_backward(conv_weight, conv_bias, mean, var, weight, bias)
    ctx.eps, ctx.dtype = eps, dtype
    ctx.needs_conv = [conv_weight.requires_grad, conv_bias is not None and conv_bias.requires_grad]
    ctx.needs_stats = [t is not None and t.requires_grad for t in (mean, var, weight, bias)]


def _batchnorm_fold_conv_backward(ctx, grad_weight, grad_bias):
    conv_weight, conv_bias, mean, var, weight, bias = ctx.saved_tensors
    scale, _ = batchnorm_fold(mean, var, weight, bias, ctx.eps, ctx.dtype)
    acc = scale.dtype
    shape = [-1] + [1] * (conv_weight.dim() - 1)
    grad_scale = torch.zeros_like(scale)
    grad_conv_weight = None
    if grad_weight is not None:
        g = grad_weight.to(acc)
        if ctx.needs_conv[0]:
            grad_conv_weight = (g * scale.view(shape)).to(conv_weight.dtype)
        grad_scale = (g * conv_weight.to(acc)).sum(dim=list(range(1, conv_weight.dim())))
    grad_shift = torch.zeros_like(scale) if grad_bias is None else grad_bias.to(acc)
    grad_conv_bias = None
    if conv_bias is not None:
        grad_scale = grad_scale + grad_shift * conv_bias.to(acc)
        if ctx.needs_conv[1]:
            grad_conv_bias = (grad_shift * scale).to(conv_bias.dtype)
    return (grad_conv_weight, grad_conv_bias,
            *_fold_chain(ctx, grad_scale, grad_shift, scale, mean, var, weight, bias), None, None)


torch.library.register_autograd("fastblocks::batchnorm_fold_conv", _batchnorm_fold_conv_backward,
                                setup_context=_batchnorm_fold_conv_setup_context)


# --------------------------------------------------------------------------------------------------------
# No double backward. The backward ops are not differentiable; without an autograd kernel of their own, torch's
# fallback only warns and a second derivative through them (create_graph=True, then backward again) silently
# comes out as zeros. This autograd kernel lets a first backward (with or without create_graph) run as before
# and raises only when something differentiates through it (the semantics of autograd's once_differentiable).
# separable_conv2d is composite: its depthwise step's backward raises.


def _no_double_backward(forward: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"fastblocks::{forward} does not support double backward (create_graph=True): its backward, "
            f"fastblocks::{forward}_backward, is not differentiable. Compute higher-order derivatives with the "
            f"eager PyTorch equivalent of the op."
        )

    return backward


for _forward in ("add_act", "branch_concat", "depthwise_conv2d"):
    torch.library.register_autograd(f"fastblocks::{_forward}_backward", _no_double_backward(_forward))
del _forward


from . import _autocast  # noqa: E402,F401
