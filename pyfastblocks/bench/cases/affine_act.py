"""affine_act: a conv -> BN -> activation tail (BatchNorm folded to scale/bias, then the activation, in one pass) on
EfficientNet-B0 (SiLU) and MobileNetV3-Large (Hardswish) feature maps, with the ReLU pass of the same shape beside
them (the activation's cost over a memory-bound pass), against what the eager models run: batch_norm, then the
activation in place."""
from typing import Iterator, List

import torch

from pyfastblocks import activations, ops

from .base import DTYPE_NAMES, Case, EvalBatchNorm, OpBench, elementwise_batches, in_layout, register

# (activation, channels, height/width) of block outputs where the activation follows a BatchNorm.
EFFICIENTNET_B0_SILU = [("silu", 32, 112), ("silu", 96, 112), ("silu", 144, 56), ("silu", 240, 28),
                        ("silu", 672, 14), ("silu", 1152, 7)]
MOBILENET_V3_HARDSWISH = [("hardswish", 16, 112), ("hardswish", 240, 28), ("hardswish", 480, 14),
                          ("hardswish", 960, 7)]
# Every other activation of the table on one EfficientNet-B0 feature map: the table's cost per activation.
EVERY_ACTIVATION = [(name, 144, 56) for name in activations.NAMES if name not in ("relu", "silu")]
SHAPES = {
    "full": EFFICIENTNET_B0_SILU + MOBILENET_V3_HARDSWISH + EVERY_ACTIVATION,
    "quick": [EFFICIENTNET_B0_SILU[2], EFFICIENTNET_B0_SILU[4], MOBILENET_V3_HARDSWISH[1]],
    "tiny": [("silu", 8, 4), ("hardswish", 8, 4)],
}


def _variants(activation: str) -> List[str]:
    return [f"bn+{activation}"] if activation == "none" else [f"bn+{activation}", "bn+relu"]


def cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int], shapes) -> Iterator[Case]:
    for batch in batches:
        for activation, channels, hw in shapes:
            shape = (batch, channels, hw, hw)
            x = in_layout(torch.randn(shape, device=device, dtype=dtype), layout)
            bn = EvalBatchNorm.random(channels, device)
            scale, bias = bn.scale, bn.shift
            nbytes = 2 * x.numel() * x.element_size()
            dname = DTYPE_NAMES[dtype]
            for act in (activation, "relu"):

                def eager(x=x, bn=bn, act=act):
                    # an eval Conv2dNormActivation: batch_norm, then the activation module (in place)
                    return activations.apply(bn(x), act, inplace=True)

                # ops.affine_act is looked up at each call (tests replace it to check the gate)
                yield Case("affine_act", f"bn+{act}", shape, dname, layout,
                           lambda x=x, s=scale, b=bias, act=act: ops.affine_act(x, s, b, act), eager, nbytes)
                if activation == "none":
                    break  # its pair would be the same ReLU row


def plan(batches: List[int], shapes, elem: int):
    return [("fwd", 2 * batch * channels * hw * hw * elem) for batch in batches for activation, channels, hw in shapes
            for _ in _variants(activation)]


register(OpBench("affine_act", cases, plan, SHAPES, elementwise_batches))
