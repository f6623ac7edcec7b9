"""Convolution -> BatchNorm -> activation as fused passes, and the depthwise / separable convolution modules.

``conv_bn_act`` is the one function every fused module, model and ``swap()`` calls for a conv + BN + activation:
it takes the ``nn.Conv2d`` and ``nn.BatchNorm2d`` modules as they are (so state_dicts keep their keys), reads
their live parameters and buffers at every call (nothing is cached) and picks the fused path:

- depthwise conv (``groups == in_channels``): ``fastblocks::depthwise_conv2d`` with the BatchNorm folded into its
  weight/bias in eval (O(C * kh * kw) per call) and the activation (and Xception's input ReLU) in its
  epilogue/prologue: one pass;
- other convs in eval: on CPU inference, oneDNN's convolution with the BatchNorm folded into its weight and bias
  and the activation as its post-op (``mkldnn._convolution_pointwise``, what Inductor uses) where folding the
  weight (O(weights) per call) costs less than a pass over the output; else the convolution, then BN +
  activation as one fused pass (:func:`pyfastblocks.nn._tail.bn_tail`, BN folded in O(C));
- training: the convolution, then the batch statistics (ATen's kernel, running statistics updated as BatchNorm
  does), then normalize + activation as the one fused pass, with eager's batch_norm backward.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import activations, ops
from .. import policy as _policy
from .._layout import accumulation_dtype
from . import _tail
from .batchnorm import uses_batch_stats

ACTIVATIONS = activations.NAMES  # the table's names (pyfastblocks.activations)
_check_activation = activations.check


def is_depthwise(conv: nn.Module) -> bool:
    """True for an ``nn.Conv2d`` the depthwise kernel runs: groups == in_channels, out_channels a multiple of
    it, zero padding given as numbers."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.groups == conv.in_channels
        and conv.out_channels % conv.in_channels == 0
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _apply_activation(y: Tensor, activation: str, inplace: bool, negative_slope: float = 0.01) -> Tensor:
    return activations.apply(y, activation, negative_slope, inplace=inplace)


def _affine_act(y: Tensor, scale: Tensor, shift: Tensor, activation: str, negative_slope: float = 0.01) -> Tensor:
    """``act(y * scale[c] + shift[c])`` as one ``affine_act`` pass."""
    return ops.affine_act(y, scale, shift, activation, negative_slope)


def _library_conv_act(x: Tensor, conv: nn.Conv2d, weight: Tensor, bias: Optional[Tensor], activation: str,
                      negative_slope: float = 0.01) -> Tensor:
    """``act(conv2d(x, weight, bias))`` with conv's geometry, by PyTorch: oneDNN's fused convolution + bias +
    activation (the table's oneDNN post-op) where it may run (CPU inference), else the convolution and then the
    activation in place."""
    bias = None if bias is None else bias.to(x.dtype)
    if onednn_inference_ok(x, weight):
        attr, scalars, algorithm = activations.get(activation).onednn(negative_slope)
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, attr, scalars,
            algorithm,
        )
    y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return _apply_activation(y, activation, True, negative_slope)


def _folded_conv_params(conv: nn.Conv2d, bn: Optional[_BatchNorm], x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """The convolution's weight (in x's dtype) and bias (float32 for half x) with an eval BatchNorm (running
    statistics) folded in, computed now from the live tensors: O(weights) per call, differentiable."""
    acc = accumulation_dtype(x.dtype)
    weight, conv_bias = conv.weight, conv.bias
    if bn is None:
        folded_weight = weight
        folded_bias = conv_bias if conv_bias is None or conv_bias.dtype == acc else conv_bias.to(acc)
    else:
        folded_weight, folded_bias = ops.batchnorm_fold_conv(weight, conv_bias, bn.running_mean, bn.running_var,
                                                             bn.weight, bn.bias, bn.eps, acc)
    # (dtype checks in Python: a no-op .to() still costs a dispatcher call per layer)
    return folded_weight if folded_weight.dtype == x.dtype else folded_weight.to(x.dtype), folded_bias


def zero_padded(conv: nn.Conv2d) -> bool:
    """Zero padding given as numbers (what F.conv2d, oneDNN and the depthwise kernel take directly)."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


# CPU eval: fold the BatchNorm into the weight, or the convolution and then one fused pass? pyfastblocks.policy.
FOLD_WEIGHT_BASE = _policy.FOLD_WEIGHT_BASE
FOLD_WEIGHT_RATIO = _policy.FOLD_WEIGHT_RATIO
fold_into_weight = _policy.fold_into_weight


def fx_tracing() -> bool:
    """Inside ``torch.fx.symbolic_trace`` (not torch.compile / export): values are Proxies, no Python may branch on
    them, and the fused forwards take their traceable path (conv, then the :func:`_tail.bn_tail` leaf)."""
    return not torch.compiler.is_compiling() and _fx_symbolic_tracing()


try:
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _fx_symbolic_tracing
except ImportError:  # a torch without it: the flag that symbolic_trace sets
    from torch.fx import _symbolic_trace as _fx_module

    def _fx_symbolic_tracing() -> bool:
        return _fx_module._is_fx_tracing_flag


def onednn_inference_ok(x: Tensor, *tensors: Tensor) -> bool:
    """May oneDNN's fused convolution (+ bias + activation post-ops) run? CPU inference only (it has no autograd,
    no autocast rule, and cannot be traced), fp32/bf16. is_compiling() first: dynamo cannot trace
    mkldnn.is_available()."""
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not _fx_symbolic_tracing()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x,) + tensors))
        and torch.backends.mkldnn.is_available()
    )


def conv_bn_act(x: Tensor, conv: nn.Conv2d, bn: Optional[_BatchNorm] = None, activation: str = "relu",
                input_relu: bool = False, negative_slope: float = 0.01) -> Tensor:
    """``act(bn(conv(relu(x) if input_relu else x)))`` with the fused paths described in the module docstring.

    ``conv`` is any ``nn.Conv2d``; ``bn`` an ``nn.BatchNorm2d`` (or ``None``); ``activation`` / ``negative_slope``
    an entry of :mod:`pyfastblocks.activations`. Same result as the eager modules (within float rounding), same
    dtype, same running-statistics updates in training."""
    _check_activation(activation, "conv_bn_act")
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv_bn_act: argument 'conv' must be an nn.Conv2d, got {type(conv).__name__}")
    if bn is not None and not isinstance(bn, _BatchNorm):
        raise TypeError(f"conv_bn_act: argument 'bn' must be a BatchNorm module (nn.BatchNorm2d) or None, got "
                        f"{type(bn).__name__}")
    if bn is not None and bn.num_features != conv.out_channels:
        raise ValueError(
            f"conv_bn_act: argument 'bn' has {bn.num_features} features, conv has {conv.out_channels} outputs"
        )
    return fused_conv_bn_act(x, conv, bn, activation, input_relu, negative_slope=negative_slope)


def fused_conv_bn_act(x: Tensor, conv: nn.Conv2d, bn: Optional[_BatchNorm], activation: str, input_relu: bool,
                      depthwise_kernel: Optional[bool] = None, swapped: bool = False,
                      negative_slope: float = 0.01) -> Tensor:
    """conv_bn_act without argument checks. ``depthwise_kernel``: run a depthwise conv with
    fastblocks::depthwise_conv2d (default: whenever it is depthwise) or PyTorch's convolution;
    ``swapped``: see :func:`_tail.bn_tail`."""
    fx = fx_tracing()
    depthwise = is_depthwise(conv)
    if depthwise_kernel is None or fx:
        depthwise_kernel = depthwise
    depthwise_kernel = depthwise_kernel and depthwise
    if bn is not None and (fx or uses_batch_stats(bn)):
        # batch statistics (or an FX trace): the bare convolution, then the BatchNorm tail (one fused pass)
        if depthwise_kernel:
            y = ops.depthwise_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, "none",
                                     input_relu)
        else:
            y = conv._conv_forward(torch.relu(x) if input_relu else x, conv.weight, conv.bias)
        return _tail.bn_tail([y], [_tail.bn_spec(bn)], None, activation, swapped, negative_slope=negative_slope)
    if fx:  # no BatchNorm
        if depthwise_kernel:
            return ops.depthwise_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                                        activation, input_relu, negative_slope)
        y = conv._conv_forward(torch.relu(x) if input_relu else x, conv.weight, conv.bias)
        return _apply_activation(y, activation, True, negative_slope)
    if depthwise_kernel:
        weight, bias = _folded_conv_params(conv, bn, x)
        return ops.depthwise_conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, activation,
                                    input_relu, negative_slope)
    if input_relu:
        x = torch.relu(x)
    if not zero_padded(conv):
        y = conv._conv_forward(x, conv.weight, conv.bias)
    elif bn is None or (onednn_inference_ok(x, conv.weight) and (depthwise or fold_into_weight(x, conv))):
        return _library_conv_act(x, conv, *_folded_conv_params(conv, bn, x), activation, negative_slope)
    else:
        y = _library_conv_act(x, conv, conv.weight, conv.bias, "none")
    if bn is None:
        return _apply_activation(y, activation, True, negative_slope)
    return _tail.bn_tail([y], [_tail.bn_spec(bn)], None, activation, swapped, negative_slope=negative_slope)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (``groups=in_channels``, ``out_channels = in_channels * multiplier``) run by
    ``fastblocks::depthwise_conv2d``, with its activation fused in the epilogue and an optional input ReLU
    (prologue). Parameters are ``nn.Conv2d``'s (``weight [C*m, 1, kh, kw]``, ``bias``), so it loads a depthwise
    ``nn.Conv2d``'s state_dict unchanged."""

    def __init__(self, in_channels: int, kernel_size, stride=1, padding=0, dilation=1, multiplier: int = 1,
                 bias: bool = True, activation: str = "none", input_relu: bool = False, device=None,
                 dtype=None, negative_slope: float = 0.01) -> None:
        if multiplier < 1:
            raise ValueError(f"DepthwiseConv2d: argument 'multiplier' must be >= 1, got {multiplier}")
        if isinstance(padding, str):
            raise ValueError("DepthwiseConv2d: argument 'padding' must be an int or a pair (string padding is not supported)")
        super().__init__(in_channels, in_channels * multiplier, kernel_size, stride, padding, dilation,
                         groups=in_channels, bias=bias, device=device, dtype=dtype)
        self.activation = _check_activation(activation, "DepthwiseConv2d")
        self.negative_slope = negative_slope
        self.input_relu = input_relu

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activation: str = "none", input_relu: bool = False,
                  negative_slope: float = 0.01) -> "DepthwiseConv2d":
        """A DepthwiseConv2d sharing ``conv``'s parameters (not copies)."""
        if not is_depthwise(conv):
            raise ValueError("DepthwiseConv2d.from_conv: argument 'conv' must be a depthwise nn.Conv2d "
                             "(groups == in_channels, zero padding given as numbers)")
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(m, name, getattr(conv, name))
        m.weight = conv.weight
        m.bias = conv.bias
        m.activation = _check_activation(activation, "DepthwiseConv2d.from_conv")
        m.negative_slope = negative_slope
        m.input_relu = input_relu
        return m

    def forward(self, x: Tensor) -> Tensor:
        return ops.depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                    self.activation, self.input_relu, getattr(self, "negative_slope", 0.01))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation!r}, input_relu={self.input_relu}"


class SeparableConv2d(nn.Module):
    """(input ReLU) -> depthwise conv -> (BN) -> act -> pointwise 1x1 conv -> (BN) -> act.

    Children: ``depthwise`` (``nn.Conv2d``, groups=in_channels), ``bn_depthwise`` (``nn.BatchNorm2d`` or
    absent), ``pointwise`` (``nn.Conv2d`` 1x1), ``bn_pointwise``. In eval both BatchNorms are folded and the
    whole block is one ``fastblocks::separable_conv2d`` (depthwise with its epilogue, then the pointwise GEMM with
    bias); in training each step uses batch statistics (``conv_bn_act``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1, dilation=1,
                 multiplier: int = 1, bias: bool = False, depthwise_bn: bool = True, pointwise_bn: bool = True,
                 depthwise_activation: str = "none", activation: str = "none", input_relu: bool = False,
                 eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
            raise ValueError(f"SeparableConv2d: argument 'multiplier' must be an int >= 1, got {multiplier!r}")
        if isinstance(padding, str):
            raise ValueError("SeparableConv2d: argument 'padding' must be an int or a pair (string padding is not "
                             "supported)")
        self.depthwise_activation = _check_activation(depthwise_activation, "SeparableConv2d", "depthwise_activation")
        self.activation = _check_activation(activation, "SeparableConv2d")
        kw = dict(device=device, dtype=dtype)
        mid = in_channels * multiplier
        self.depthwise = nn.Conv2d(in_channels, mid, kernel_size, stride, padding, dilation, groups=in_channels,
                                   bias=bias, **kw)
        self.bn_depthwise = nn.BatchNorm2d(mid, eps, momentum, **kw) if depthwise_bn else None
        self.pointwise = nn.Conv2d(mid, out_channels, 1, bias=bias, **kw)
        self.bn_pointwise = nn.BatchNorm2d(out_channels, eps, momentum, **kw) if pointwise_bn else None
        self.input_relu = input_relu

    def forward(self, x: Tensor) -> Tensor:
        bns = [bn for bn in (self.bn_depthwise, self.bn_pointwise) if bn is not None]
        if any(uses_batch_stats(bn) for bn in bns):
            y = conv_bn_act(x, self.depthwise, self.bn_depthwise, self.depthwise_activation, self.input_relu)
            return conv_bn_act(y, self.pointwise, self.bn_pointwise, self.activation)
        dw_weight, dw_bias = _folded_conv_params(self.depthwise, self.bn_depthwise, x)
        pw_weight, pw_bias = _folded_conv_params(self.pointwise, self.bn_pointwise, x)
        return ops.separable_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, self.depthwise.stride,
                                    self.depthwise.padding, self.depthwise.dilation, self.depthwise_activation,
                                    self.activation, self.input_relu)


__all__ = ["ACTIVATIONS", "DepthwiseConv2d", "SeparableConv2d", "conv_bn_act", "is_depthwise"]
