"""add_relu on ResNet-50's block tails: bn+add+relu (BatchNorm folded to scale/bias) and add+relu, against what
a torchvision ResNet block runs in eager mode."""
from typing import Iterator, List

import torch

from pyfastblocks import ops

from .base import DTYPE_NAMES, Case, EvalBatchNorm, OpBench, elementwise_batches, in_layout, register

# ResNet-50's block outputs (where the residual add+ReLU runs): channels, height/width.
RESNET50_TAILS = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
SHAPES = {"full": RESNET50_TAILS, "quick": RESNET50_TAILS[::2], "tiny": [(8, 4)]}
VARIANTS = ["bn+add+relu", "add+relu"]


def cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int], tails) -> Iterator[Case]:
    for batch in batches:
        for channels, hw in tails:
            shape = (batch, channels, hw, hw)
            x = in_layout(torch.randn(shape, device=device, dtype=dtype), layout)
            r = in_layout(torch.randn(shape, device=device, dtype=dtype), layout)
            bn = EvalBatchNorm.random(channels, device)
            scale, bias = bn.scale, bn.shift
            nbytes = 3 * x.numel() * x.element_size()
            dname = DTYPE_NAMES[dtype]

            def eager_bn_add_relu(x=x, r=r, bn=bn):
                # What a torchvision ResNet block runs in eval: out = bn(x); out += identity; relu_(out).
                out = bn(x)
                out += r
                return torch.relu_(out)

            def eager_add_relu(x=x, r=r):
                out = x + r
                return torch.relu_(out)

            # ops.add_relu is looked up at each call (tests replace it to check the gate)
            yield Case("add_relu", "bn+add+relu", shape, dname, layout,
                       lambda x=x, r=r, s=scale, b=bias: ops.add_relu(x, r, s, b), eager_bn_add_relu, nbytes)
            yield Case("add_relu", "add+relu", shape, dname, layout,
                       lambda x=x, r=r: ops.add_relu(x, r), eager_add_relu, nbytes)


def plan(batches: List[int], tails, elem: int):
    return [("fwd", 3 * batch * channels * hw * hw * elem) for batch in batches for channels, hw in tails
            for _ in VARIANTS]


register(OpBench("add_relu", cases, plan, SHAPES, elementwise_batches))
