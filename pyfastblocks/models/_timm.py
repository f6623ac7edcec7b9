"""Fused forwards that :func:`pyfastblocks.swap` gives timm's blocks (timm itself is never imported here).

Each uses only the block's own child modules by their timm names; what the fused ops cannot do (SE, DropPath,
DropBlock, anti-aliasing, an activation other than ReLU/ReLU6) runs as the block's own module, in timm's order.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from ..nn import _tail
from .. import activations
from ._fused import (act_name, bn_act, compose_acts, conv_bn_act, conv_bn_add, norm_act, plain_conv,
                     run_conv_norm_act)


def _is_identity(m: Optional[nn.Module]) -> bool:
    return m is None or type(m) is nn.Identity


def _base(self):
    return type(self)._fastblocks_base


# --------------------------------------------------------------------------------------------------------------
# timm.models.resnet


def _residual_tail(self, h: Tensor, shortcut: Tensor, conv: nn.Conv2d, norm: nn.Module, act: nn.Module) -> Tensor:
    """conv -> norm -> se -> drop_path -> (+ downsample(shortcut)) -> act, timm's order."""
    bn, inner = norm_act(norm)
    outer = act_name(act)
    if self.se is None and self.drop_path is None and inner == "none" and outer is not None:
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return conv_bn_add(h, conv, bn, shortcut, activation=outer, add="bn")  # x += shortcut
    y = conv_bn_act(h, conv, bn, inner)
    if self.se is not None:
        y = self.se(y)
    if self.drop_path is not None:
        y = self.drop_path(y)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    if outer is not None:
        name, slope = activations.split(outer)
        return _tail.add_act(y, shortcut, name, "bn", slope)
    return act((y + shortcut).to(y.dtype))  # timm: x += shortcut (x's dtype; out of place: y may be saved for backward)


def timm_basic_block_forward(self, x: Tensor) -> Tensor:
    if _is_identity(self.drop_block):
        h = run_conv_norm_act(x, self.conv1, self.bn1, self.act1)
    else:
        h = self.act1(self.drop_block(self.bn1(self.conv1(x))))
    h = self.aa(h)
    return _residual_tail(self, h, x, self.conv2, self.bn2, self.act2)


def timm_bottleneck_forward(self, x: Tensor) -> Tensor:
    h = run_conv_norm_act(x, self.conv1, self.bn1, self.act1)
    if _is_identity(self.drop_block):
        h = run_conv_norm_act(h, self.conv2, self.bn2, self.act2)
    else:
        h = self.act2(self.drop_block(self.bn2(self.conv2(h))))
    h = self.aa(h)
    return _residual_tail(self, h, x, self.conv3, self.bn3, self.act3)


def _stem(x: Tensor, conv: nn.Module, norm: nn.Module, act: Optional[nn.Module]) -> Tensor:
    if plain_conv(conv):
        return run_conv_norm_act(x, conv, norm, act)
    x = conv(x)
    spec = norm_act(norm)
    a = act_name(act)
    if spec is not None and spec[0] is not None and compose_acts(spec[1], a) is not None:
        return bn_act(x, spec[0], compose_acts(spec[1], a))
    x = norm(x)
    return act(x) if act is not None else x


def timm_resnet_forward_features(self, x: Tensor) -> Tensor:
    if self.grad_checkpointing and not torch.jit.is_scripting():
        return _base(self).forward_features(self, x)
    x = _stem(x, self.conv1, self.bn1, self.act1)
    x = self.maxpool(x)
    x = self.layer1(x)
    x = self.layer2(x)
    x = self.layer3(x)
    return self.layer4(x)
