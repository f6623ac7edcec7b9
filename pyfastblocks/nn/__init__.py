"""Modules built on the fused ops. Their parameters and buffers carry the names of nn.BatchNorm2d / nn.Conv2d,
so state_dicts load unchanged."""
from .batchnorm import batchnorm_scale_bias
from .concat import BranchConcatBNReLU
from .conv import DepthwiseConv2d, SeparableConv2d, conv_bn_act, is_depthwise
from .residual import BNAddReLU, BNReLU

__all__ = [
    "BNAddReLU",
    "BNReLU",
    "BranchConcatBNReLU",
    "DepthwiseConv2d",
    "SeparableConv2d",
    "batchnorm_scale_bias",
    "conv_bn_act",
    "is_depthwise",
]
