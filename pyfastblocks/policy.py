"""Which backend runs what: the one table every fused forward (``pyfastblocks.models``, ``swap()``, the
``pyfastblocks.nn`` modules) asks, instead of rules spread over the model code and the C++ ops.

Each entry is a plain dict or number that a user may change at run time (``policy.TRAINING_BACKEND["cpu"] =
"fastblocks"``); the functions below are the decisions made from them, so a rule is read and changed in one place.

============================  ==================================================================================
``TRAINING_BACKEND``          per device type, how batch statistics (training) run: ``"fastblocks"`` (ATen's
                              statistics kernel, then normalize + activation (+ add, + concat) as one fused pass)
                              or ``"eager"`` (ATen's batch_norm, then the activation / add / concat as eager ops).
                              CPU ``"eager"``: the fused training path was 0.66-0.8x the eager model there (issue
                              5's report); CUDA ``"fastblocks"``. Eval always runs fused.
``DEPTHWISE_BACKEND``         per device type, how a depthwise convolution of a fused block runs:
                              ``"fastblocks"`` (``fastblocks::depthwise_conv2d``: BN and activation in its
                              epilogue, an input ReLU in its prologue), ``"library"`` (PyTorch's convolution with
                              groups=C: on CPU in eval oneDNN's convolution + bias + activation) or ``"auto"``
                              (:func:`depthwise_kernel`).
``depthwise op route``        inside ``fastblocks::depthwise_conv2d`` on the CPU, ``"auto"`` hands float32 calls
                              of the shapes where oneDNN is faster (channels_last; NCHW outputs up to 20x20
                              forward, 28x28 backward) to ATen's convolution; ``"fastblocks"`` keeps every call
                              on this project's kernels (thread-count-independent weight gradients). A setting of
                              the op itself (C++), read and set here: :func:`cpu_depthwise_op_route`.
``FOLD_WEIGHT_BASE/_RATIO``   CPU inference with oneDNN: fold the BatchNorm into the convolution's weight (one
                              oneDNN call with bias + activation post-ops) when ``weight numel <= BASE + RATIO *
                              output numel`` per kernel kind, else the convolution and then one fused BN pass
                              (:func:`fold_into_weight`; measured in benchmarks/results/2026-11-29-cpu-live-overhead).
============================  ==================================================================================

:func:`describe` prints the table as it stands.
"""
from typing import Dict, Optional

import torch

__all__ = ["TRAINING_BACKEND", "DEPTHWISE_BACKEND", "FOLD_WEIGHT_BASE", "FOLD_WEIGHT_RATIO", "training_backend",
           "depthwise_kernel", "fold_into_weight", "cpu_depthwise_op_route", "describe"]

TRAINING_BACKEND: Dict[str, str] = {"cpu": "eager", "cuda": "fastblocks"}

# "auto" (the CPU default) takes the fastblocks kernel for NCHW inference on layers of fewer than 128 channels, where
# oneDNN's NCHW depthwise convolution is slow (MobileNet's first layer, 32 x 64 x 64: 3.6 ms against 0.42 ms, 2
# threads), and the library everywhere else: there oneDNN is 1.2-3x faster (channels_last, wider layers, 2 threads;
# training). Re-measured with both threads (MobileNet v1 / Xception / MobileNet v2 eval, 8 x 160 x 160), a
# plane-size rule instead of the channel count changed the models by -5% to +7%, within noise, so the rule stays.
DEPTHWISE_BACKEND: Dict[str, str] = {"cpu": "auto", "cuda": "fastblocks"}
DEPTHWISE_AUTO_MAX_CHANNELS = 128

# CPU eval: fold the BatchNorm into the convolution's weight (oneDNN then runs conv + bias + activation) or run the
# convolution and then one fused BN + activation pass over its output? Folding costs an op call and a pass over the
# weight, and a weight oneDNN has not seen before (a new tensor at every call) may cost it a fresh reorder: for
# 512x512x3x3 that was 9 ms on one thread, 4 ns per weight element, while 1x1 weights cost ~0.2 ns. The other path
# costs an op call or two and a pass over the output (~2 ns per element on one thread).
FOLD_WEIGHT_BASE = {"1x1": 1 << 15, "kxk": 1 << 12}
FOLD_WEIGHT_RATIO = {"1x1": 4.0, "kxk": 1.0}


def training_backend(device_type: str) -> str:
    """``TRAINING_BACKEND`` for a device type (``"fastblocks"`` where it names none)."""
    return TRAINING_BACKEND.get(device_type, "fastblocks")


def depthwise_kernel(x: torch.Tensor, conv) -> bool:
    """Run this depthwise ``nn.Conv2d`` on ``x`` with ``fastblocks::depthwise_conv2d`` (else PyTorch's
    convolution)? ``DEPTHWISE_BACKEND`` for x's device; ``"auto"``: NCHW inference below
    ``DEPTHWISE_AUTO_MAX_CHANNELS`` channels."""
    backend = DEPTHWISE_BACKEND.get(x.device.type, "fastblocks")
    if backend == "auto":
        weight = conv.weight
        grad = torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad))
        return not grad and x.dim() == 4 and conv.in_channels < DEPTHWISE_AUTO_MAX_CHANNELS and x.is_contiguous() \
            and not x.is_contiguous(memory_format=torch.channels_last)
    return backend == "fastblocks"


def _output_numel(x: torch.Tensor, conv) -> int:
    n = x.shape[0] * conv.out_channels
    for i in range(2):
        size = x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1
        n *= max(size // conv.stride[i] + 1, 0)
    return n


def fold_into_weight(x: torch.Tensor, conv) -> bool:
    """CPU inference with oneDNN: is folding the BatchNorm into the weight cheaper than a pass over the output?"""
    kind = "1x1" if tuple(conv.kernel_size) == (1, 1) else "kxk"
    return conv.weight.numel() <= FOLD_WEIGHT_BASE[kind] + FOLD_WEIGHT_RATIO[kind] * _output_numel(x, conv)


def cpu_depthwise_op_route(route: Optional[str] = None) -> str:
    """The CPU route of ``fastblocks::depthwise_conv2d`` (``"auto"`` or ``"fastblocks"``, see the table); with
    ``route``, set it and return the previous one (:func:`pyfastblocks.ops.set_cpu_depthwise_backend`)."""
    from . import ops

    if route is None:
        return ops.cpu_depthwise_backend()
    return ops.set_cpu_depthwise_backend(route)


def describe() -> str:
    """The policy as it stands, one line per entry."""
    try:
        route = cpu_depthwise_op_route()
    except Exception as e:  # noqa: BLE001 (the extension may be missing: say so instead of failing)
        route = f"unavailable ({type(e).__name__})"
    return "\n".join([
        f"TRAINING_BACKEND: {TRAINING_BACKEND}",
        f"DEPTHWISE_BACKEND: {DEPTHWISE_BACKEND} (auto: fastblocks kernel for NCHW inference below "
        f"{DEPTHWISE_AUTO_MAX_CHANNELS} channels)",
        f"depthwise op route (CPU): {route}",
        f"FOLD_WEIGHT_BASE: {FOLD_WEIGHT_BASE}, FOLD_WEIGHT_RATIO: {FOLD_WEIGHT_RATIO}",
    ])
