"""Autocast (automatic mixed precision) rules for the fastblocks ops.

Under ``torch.autocast(device_type, dtype)`` each fused op runs in the autocast dtype, as the convolutions and
GEMMs around it do: its *data* tensors (``x``, ``residual``, every ``branch_concat`` input, the depthwise and
pointwise weights) are cast to ``torch.get_autocast_dtype(device_type)``, and its per-channel *parameters*
(``scale``, ``bias``, ``depthwise_bias``, ``pointwise_bias``: a folded BatchNorm) are left as they are: the
kernels take them in float32 beside half data and accumulate in float32, so a folded BatchNorm keeps its float32
precision. ``torch.library.register_autocast`` would cast every floating-point argument, parameters included;
this module registers the equivalent kernels on the AutocastCPU and AutocastCUDA dispatch keys with the
data/parameter split.

Casting follows autocast's own rule for its lower-precision ops: a tensor is cast when it is floating point,
not float64, and on the autocast's device; so ``add_act(x bf16, residual fp32)`` runs both in the autocast
dtype, and float64 data stays float64. A parameter that is neither float32 nor the data's dtype (say float16
beside bfloat16 data) is cast to float32, which every kernel takes. The op then runs once below autocast
(``_ExcludeDispatchKeyGuard``), so autograd records the casts and the backward ops run in the same dtypes.

The backward ops have no rule of their own (autocast falls through for them): they receive tensors that already
agree. ``separable_conv2d`` is composite (CompositeImplicitAutograd); its rule casts up front so its own dtype
check (pointwise weight in x's dtype) holds for a half input and a float32 model.

Imported by :mod:`pyfastblocks.ops`; nothing to call.
"""
from typing import Callable, Dict, Optional

import torch
from torch import Tensor

__all__ = ["AUTOCAST_DEVICE_TYPES", "cast_args"]

_HALF = (torch.float16, torch.bfloat16)


def _eligible(t: Tensor, device_type: str) -> bool:
    return t.is_floating_point() and t.device.type == device_type and t.dtype != torch.float64


def _data(t: Optional[Tensor], device_type: str, dtype: torch.dtype) -> Optional[Tensor]:
    if t is None or not _eligible(t, device_type) or t.dtype == dtype:
        return t
    return t.to(dtype)


def _param(p: Optional[Tensor], data_dtype: torch.dtype) -> Optional[Tensor]:
    """A per-channel parameter as the kernels take it beside data of data_dtype: kept when it is float32 or the
    data's dtype, else float32 (only for half data: float64 or float32 data keep what they were given)."""
    if p is None or p.dtype in (data_dtype, torch.float32) or data_dtype not in _HALF:
        return p
    return p.to(torch.float32) if p.is_floating_point() else p


def _add_act(device_type, dtype, x, residual, scale=None, bias=None, activation="relu", negative_slope=0.01):
    x, residual = _data(x, device_type, dtype), _data(residual, device_type, dtype)
    return (x, residual, _param(scale, x.dtype), _param(bias, x.dtype), activation, negative_slope)


def _branch_concat(device_type, dtype, inputs, scale=None, bias=None, activation="relu", negative_slope=0.01):
    inputs = [_data(t, device_type, dtype) for t in inputs]
    data_dtype = inputs[0].dtype if inputs else dtype
    return (inputs, _param(scale, data_dtype), _param(bias, data_dtype), activation, negative_slope)


def _depthwise_conv2d(device_type, dtype, x, weight, bias, stride, padding, dilation, activation="none",
                      input_relu=False, negative_slope=0.01):
    x, weight = _data(x, device_type, dtype), _data(weight, device_type, dtype)
    return (x, weight, _param(bias, x.dtype), stride, padding, dilation, activation, input_relu, negative_slope)


def _separable_conv2d(device_type, dtype, x, depthwise_weight, depthwise_bias, pointwise_weight, pointwise_bias,
                      stride, padding, dilation, depthwise_activation="none", activation="none", input_relu=False,
                      depthwise_negative_slope=0.01, negative_slope=0.01):
    x = _data(x, device_type, dtype)
    depthwise_weight = _data(depthwise_weight, device_type, dtype)
    pointwise_weight = _data(pointwise_weight, device_type, dtype)
    return (x, depthwise_weight, _param(depthwise_bias, x.dtype), pointwise_weight, _param(pointwise_bias, x.dtype),
            stride, padding, dilation, depthwise_activation, activation, input_relu, depthwise_negative_slope,
            negative_slope)


_RULES: Dict[str, Callable] = {
    "add_act": _add_act,
    "branch_concat": _branch_concat,
    "depthwise_conv2d": _depthwise_conv2d,
    "separable_conv2d": _separable_conv2d,
}

AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


def cast_args(op_name: str, device_type: str, args: tuple, dtype: Optional[torch.dtype] = None) -> tuple:
    """The arguments ``fastblocks::<op_name>`` runs with under autocast on device_type (positional, complete)."""
    dtype = torch.get_autocast_dtype(device_type) if dtype is None else dtype
    return _RULES[op_name](device_type, dtype, *args)


def _make_kernel(op_name: str, overload, device_type: str, dispatch_key):
    def run(*args, **kwargs):
        if kwargs:  # the wrappers in pyfastblocks.ops pass every argument positionally
            raise RuntimeError(f"fastblocks::{op_name}: keyword arguments are not supported under autocast; "
                               "pass them positionally or call pyfastblocks.ops." + op_name)
        cast = cast_args(op_name, device_type, args)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(dispatch_key)):
            return overload(*cast)

    def kernel(_keyset, *args, **kwargs):
        return run(*args, **kwargs)

    return run, kernel


_lib = torch.library.Library("fastblocks", "IMPL")  # kept alive: the registrations live as long as it does


def _register() -> None:
    for device_type in AUTOCAST_DEVICE_TYPES:
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        dispatch_key = getattr(torch._C.DispatchKey, key_name)
        for op_name in _RULES:
            overload = getattr(torch.ops.fastblocks, op_name).default
            run, kernel = _make_kernel(op_name, overload, device_type, dispatch_key)
            # The Python-dispatcher kernel (used while torch.compile / export trace) and the C++ dispatcher one.
            if overload.has_kernel_for_dispatch_key(dispatch_key):
                overload.py_kernels.pop(dispatch_key, None)
            overload.py_impl(dispatch_key)(run)
            _lib.impl(op_name, kernel, key_name, with_keyset=True)


_register()
