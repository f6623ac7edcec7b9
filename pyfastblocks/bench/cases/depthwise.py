"""depthwise_conv2d on the MobileNet v1 and Xception depthwise 3x3 layers (padding 1): PyTorch's
conv2d(groups=C) (+ eval BatchNorm2d + activation, what torchvision runs) against fastblocks::depthwise_conv2d
(BatchNorm folded into weight and bias, the activation fused), forward and forward+backward (gradients of the
input and of the depthwise weight).

A new epilogue (another activation) is one more entry in ``VARIANTS``.
"""
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from pyfastblocks import ops

from .base import DTYPE_NAMES, Case, OpBench, call, call_fwd_bwd, in_layout, register

# Depthwise 3x3 layers, padding 1: (network, channels, input height/width, stride).
DEPTHWISE_LAYERS = [
    ("MobileNetV1", 32, 112, 1),
    ("MobileNetV1", 64, 112, 2),
    ("MobileNetV1", 128, 56, 1),
    ("MobileNetV1", 128, 56, 2),
    ("MobileNetV1", 256, 28, 1),
    ("MobileNetV1", 512, 14, 1),
    ("MobileNetV1", 1024, 7, 1),
    ("Xception middle", 728, 19, 1),
]
SHAPES = {
    "full": DEPTHWISE_LAYERS,
    "quick": [DEPTHWISE_LAYERS[0], DEPTHWISE_LAYERS[-1]],
    "tiny": [("tiny", 8, 6, 1), ("tiny", 8, 7, 2)],
}
DEPTHWISE_MODES = ["fwd", "fwd+bwd"]


@dataclass(frozen=True)
class Variant:
    """A row family: the depthwise conv, with or without an eval BatchNorm (folded into the fused op's weight
    and bias), then ``activation`` (the fused op's name for it; ``eager_activation`` is what the eager model
    runs)."""
    name: str
    bn: bool
    activation: str = "none"
    eager_activation: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


VARIANTS = {v.name: v for v in [
    Variant("conv", bn=False),
    Variant("conv+bn+relu", bn=True, activation="relu", eager_activation=torch.relu_),  # nn.ReLU(inplace=True)
]}
DEPTHWISE_VARIANTS = list(VARIANTS)


def depthwise_bytes(batch, channels, hw, stride, elem, mode, variant) -> int:
    """Bytes a depthwise 3x3 (padding 1) of ``VARIANTS[variant]`` must move at least.

    fwd: input read + output written + weights (+ bias). fwd+bwd adds the backward's: output gradient read,
    input read again (weight gradient), input gradient written, weights read, weight gradient written, and with
    an activation the saved output read for its derivative.
    """
    v = VARIANTS[variant]
    out_hw = (hw + 2 - 3) // stride + 1
    x, out, w = batch * channels * hw * hw * elem, batch * channels * out_hw * out_hw * elem, channels * 9 * elem
    bias = channels * 4 if v.bn else 0
    fwd = x + out + w + bias
    if mode == "fwd":
        return fwd
    return fwd + out + 2 * x + 2 * w + (out if v.activation != "none" else 0)


def cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int], layers,
          modes: Sequence[str] = DEPTHWISE_MODES) -> Iterator[Case]:
    dname = DTYPE_NAMES[dtype]
    eps = 1e-5
    for batch in batches:
        for net, channels, hw, stride in layers:
            g = torch.Generator(device="cpu").manual_seed(channels * 1000 + hw * 10 + stride)

            def rnd(*size, gen=g):
                return torch.randn(*size, generator=gen)

            x = in_layout(rnd(batch, channels, hw, hw).to(device=device, dtype=dtype), layout)
            w = (rnd(channels, 1, 3, 3) / 3).to(device=device, dtype=dtype)
            gamma = (torch.rand(channels, generator=g) + 0.5).to(device)
            beta = rnd(channels).to(device)
            rm = (rnd(channels) * 0.1).to(device)
            rv = (torch.rand(channels, generator=g) + 0.5).to(device)
            scale = gamma * torch.rsqrt(rv + eps)
            w_folded = (w.float() * scale.view(-1, 1, 1, 1)).to(dtype)
            b_folded = beta - rm * scale
            shape = (batch, channels, hw, hw)

            def eager_conv(x, w, stride=stride, channels=channels):
                return F.conv2d(x, w, None, stride, 1, 1, channels)

            def eager_fn(v: Variant):
                def eager(x, w, stride=stride, channels=channels, rm=rm, rv=rv, gamma=gamma, beta=beta):
                    # torchvision's MobileNet block: Conv2d(groups=C, bias=False), BatchNorm2d (eval), activation.
                    out = F.conv2d(x, w, None, stride, 1, 1, channels)
                    if v.bn:
                        out = F.batch_norm(out, rm, rv, gamma, beta, False, 0.0, eps)
                    return v.eager_activation(out) if v.eager_activation is not None else out
                return eager

            def fused_fn(v: Variant):
                def fused(x, w, stride=stride, b=b_folded if v.bn else None):
                    # ops.depthwise_conv2d is looked up at each call (tests replace it to check the gate)
                    if v.activation == "none":
                        return ops.depthwise_conv2d(x, w, b, stride, 1)
                    return ops.depthwise_conv2d(x, w, b, stride, 1, activation=v.activation)
                return fused

            with torch.no_grad():
                grad = torch.randn_like(eager_conv(x, w))  # the output's shape and memory format
                # A pre-activation within rounding of the ReLU's kink can land on either side in the fused and the
                # eager code (BN folded into the weights rounds differently), flipping that output's gradient
                # mask: its incoming gradient is zeroed so the gate compares only what the math determines (the
                # timing does not depend on the values).
                pre = F.batch_norm(eager_conv(x, w).float(), rm, rv, gamma, beta, False, 0.0, eps)
                kink = (1e-4 if dtype == torch.float32 else 2e-2) * pre.abs().max()
                grad = grad.masked_fill(pre.abs() < kink, 0)
            for mode in modes:
                for v in VARIANTS.values():
                    eager_fwd, fused_fwd = eager_fn(v), fused_fn(v)
                    fused_w = w_folded if v.bn else w
                    nbytes = depthwise_bytes(batch, channels, hw, stride, x.element_size(), mode, v.name)
                    label = f"{net} 3x3/s{stride} {v.name}"
                    if mode == "fwd":
                        yield Case("depthwise_conv2d", label, shape, dname, layout, call(fused_fwd, x, fused_w),
                                   call(eager_fwd, x, w), nbytes, mode,
                                   compiled=lambda compile, f=eager_fwd, x=x, w=w: call(compile(f), x, w),
                                   scaled_tolerance=True)
                        continue
                    xg = x.detach().clone().requires_grad_()
                    wg = w.detach().clone().requires_grad_()
                    fused_wg = fused_w.detach().clone().requires_grad_()
                    # The gradient of the folded weight w * scale, mapped back onto the raw weight's.
                    to_eager = ((lambda outs, s=scale: (outs[0], outs[1], outs[2].float() * s.view(-1, 1, 1, 1)))
                                if v.bn else None)
                    yield Case("depthwise_conv2d", label, shape, dname, layout,
                               call_fwd_bwd(fused_fwd, (xg, fused_wg), grad),
                               call_fwd_bwd(eager_fwd, (xg, wg), grad), nbytes, mode,
                               compiled=lambda compile, f=eager_fwd, inputs=(xg, wg), g=grad:
                                   call_fwd_bwd(compile(f), inputs, g),
                               to_eager=to_eager, scaled_tolerance=True)


def plan(batches: List[int], layers, elem: int):
    return [(m, depthwise_bytes(batch, channels, hw, stride, elem, m, v))
            for batch in batches for _, channels, hw, stride in layers
            for m in DEPTHWISE_MODES for v in VARIANTS]


def batches(cuda: bool, short: bool) -> List[int]:
    return [64 if cuda else 8]


register(OpBench("depthwise_conv2d", cases, plan, SHAPES, batches,
                 cuda_dtypes=(torch.float16, torch.bfloat16)))
