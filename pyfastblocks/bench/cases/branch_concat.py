"""branch_concat on InceptionV3's module tails: each branch's BatchNorm + ReLU, then the channel concat."""
from typing import Iterator, List

import torch

from pyfastblocks import ops

from .base import DTYPE_NAMES, Case, EvalBatchNorm, OpBench, elementwise_batches, in_layout, register

# InceptionV3 module tails (branch channels, height/width); Mixed_7b's inner 3x3 pairs are separate inputs.
INCEPTION_V3_TAILS = [
    ("Mixed_5b", [64, 64, 96, 32], 35),
    ("Mixed_6b", [192, 192, 192, 192], 17),
    ("Mixed_7b", [320, 384, 384, 384, 384, 192], 8),
]
SHAPES = {"full": INCEPTION_V3_TAILS, "quick": INCEPTION_V3_TAILS[:2], "tiny": [("tiny", [3, 5], 4)]}


def cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int], tails) -> Iterator[Case]:
    dname = DTYPE_NAMES[dtype]
    eps = 1e-3
    for batch in batches:
        for name, channels, hw in tails:
            xs = [in_layout(torch.randn(batch, c, hw, hw, device=device, dtype=dtype), layout) for c in channels]
            bns = [EvalBatchNorm.random(c, device, eps) for c in channels]
            scale = torch.cat([bn.scale for bn in bns])
            bias = torch.cat([bn.shift for bn in bns])
            nbytes = 2 * sum(x.numel() for x in xs) * xs[0].element_size()

            def eager(xs=xs, bns=bns):
                # What torchvision's Inception runs: BasicConv2d's bn + relu(inplace) per branch, then cat.
                return torch.cat([torch.relu_(bn(x)) for x, bn in zip(xs, bns)], 1)

            shape = (batch, sum(channels), hw, hw)
            yield Case("branch_concat", f"{name} bn+relu+cat", shape, dname, layout,
                       lambda xs=xs, s=scale, b=bias: ops.branch_concat(xs, s, b), eager, nbytes)


def plan(batches: List[int], tails, elem: int):
    return [("fwd", 2 * batch * sum(channels) * hw * hw * elem) for batch in batches for _, channels, hw in tails]


register(OpBench("branch_concat", cases, plan, SHAPES, elementwise_batches))
