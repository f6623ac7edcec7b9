"""Inception-v3 (torchvision layout and state_dict keys) built from the fused blocks.

Every BasicConv2d is one ``conv_bn_act`` (BN eps 1e-3). Every Inception module's tail is one
``fastblocks::branch_concat``: the last convolution of each branch runs bare, and the BatchNorm + ReLU of all the
branches and the concat are one pass (InceptionE's inner 1x3/3x1 pairs go into the same call: the concat of
concats is one concat). The max-pool branch of InceptionB/D goes through the same call with scale 1, bias 0: its
ReLU is exact because the module's input is the (non-negative) output of the previous module's ReLU; swap() uses
that form only where it can see this (inside torchvision's Inception3), and otherwise concatenates the pool
branch separately. Average-pool branches use ``count_include_pad=True`` as torchvision does. Aux logits in
training, ``transform_input`` as torchvision.

The ``*_forward`` functions are also the forwards :func:`pyfastblocks.swap` gives torchvision's modules.
"""
from collections import namedtuple
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._fused import concat_tail, conv_bn_act, load_weights

__all__ = ["Inception3", "InceptionOutputs", "inception_v3"]

InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])


def basic_conv2d_forward(self, x: Tensor) -> Tensor:
    return conv_bn_act(x, self.conv, self.bn, "relu")


def _tail(self, branches, pool: Optional[Tensor] = None) -> Tensor:
    """branches: [(BasicConv2d, its input)]: each last conv runs bare, then one branch_concat for all; the
    max-pool branch (InceptionB/D, un-activated in the original) is concatenated after."""
    tail = concat_tail([bc.conv(x) for bc, x in branches], [bc.bn for bc, _ in branches])
    return tail if pool is None else torch.cat([tail, pool], 1)


def inception_a_forward(self, x: Tensor) -> Tensor:
    b5 = self.branch5x5_1(x)
    b3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
    return _tail(self, [(self.branch1x1, x), (self.branch5x5_2, b5), (self.branch3x3dbl_3, b3),
                        (self.branch_pool, pool)])


def inception_b_forward(self, x: Tensor) -> Tensor:
    b3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pool = F.max_pool2d(x, kernel_size=3, stride=2)
    return _tail(self, [(self.branch3x3, x), (self.branch3x3dbl_3, b3)], pool)


def inception_c_forward(self, x: Tensor) -> Tensor:
    b7 = self.branch7x7_2(self.branch7x7_1(x))
    b7d = self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x))))
    pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
    return _tail(self, [(self.branch1x1, x), (self.branch7x7_3, b7), (self.branch7x7dbl_5, b7d),
                        (self.branch_pool, pool)])


def inception_d_forward(self, x: Tensor) -> Tensor:
    b3 = self.branch3x3_1(x)
    b7 = self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))
    pool = F.max_pool2d(x, kernel_size=3, stride=2)
    return _tail(self, [(self.branch3x3_2, b3), (self.branch7x7x3_4, b7)], pool)


def inception_e_forward(self, x: Tensor) -> Tensor:
    b3 = self.branch3x3_1(x)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
    return _tail(self, [(self.branch1x1, x), (self.branch3x3_2a, b3), (self.branch3x3_2b, b3),
                        (self.branch3x3dbl_3a, bd), (self.branch3x3dbl_3b, bd), (self.branch_pool, pool)])


class BasicConv2d(nn.Module):
    """torchvision's Inception ``BasicConv2d``: conv (no bias) -> BN(eps=1e-3) -> ReLU, one ``conv_bn_act``."""

    _fastblocks_fused = True

    def __init__(self, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    forward = basic_conv2d_forward


class _Module(nn.Module):
    _fastblocks_fused = True


class InceptionA(_Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    forward = inception_a_forward


class InceptionB(_Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    forward = inception_b_forward


class InceptionC(_Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    forward = inception_c_forward


class InceptionD(_Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    forward = inception_d_forward


class InceptionE(_Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    forward = inception_e_forward


class InceptionAux(_Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.conv1.stddev = 0.01  # type: ignore[assignment]
        self.fc = nn.Linear(768, num_classes)
        self.fc.stddev = 0.001  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)
        x = self.conv0(x)
        x = self.conv1(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.fc(x)


class Inception3(nn.Module):
    """torchvision's ``Inception3`` (same keys; ``AuxLogits`` present when ``aux_logits``), fused modules.

    Returns ``InceptionOutputs(logits, aux_logits)`` in training when ``aux_logits``, else the logits."""

    _fastblocks_fused = True

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, transform_input: bool = False,
                 init_weights: bool = True, dropout: float = 0.5) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits: Optional[nn.Module] = InceptionAux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(2048, num_classes)
        if init_weights:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    stddev = float(m.stddev) if hasattr(m, "stddev") else 0.1
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=stddev, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x: Tensor) -> Tensor:
        if self.transform_input:
            x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
            x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
            x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
            x = torch.cat((x_ch0, x_ch1, x_ch2), 1)
        return x

    def forward(self, x: Tensor):
        x = self._transform_input(x)
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = self.maxpool1(x)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = self.maxpool2(x)
        x = self.Mixed_5b(x)
        x = self.Mixed_5c(x)
        x = self.Mixed_5d(x)
        x = self.Mixed_6a(x)
        x = self.Mixed_6b(x)
        x = self.Mixed_6c(x)
        x = self.Mixed_6d(x)
        x = self.Mixed_6e(x)
        aux = self.AuxLogits(x) if self.AuxLogits is not None and self.training else None
        x = self.Mixed_7a(x)
        x = self.Mixed_7b(x)
        x = self.Mixed_7c(x)
        x = self.avgpool(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        if self.training and self.aux_logits:
            return InceptionOutputs(x, aux)
        return x


def inception_v3(num_classes: int = 1000, weights=None, aux_logits: bool = True,
                 transform_input: Optional[bool] = None, dropout: float = 0.5) -> Inception3:
    """Inception-v3 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``; with
    ``aux_logits=False`` the ``AuxLogits.*`` keys must be absent). ``transform_input`` defaults to True when
    ``weights`` are given, as torchvision does for its ImageNet weights. Needs inputs of at least 75x75 (299x299
    in training with ``aux_logits``: the aux head's 5x5 conv needs a 17x17 Mixed_6e)."""
    if transform_input is None:
        transform_input = weights is not None
    model = Inception3(num_classes, aux_logits, transform_input, init_weights=weights is None, dropout=dropout)
    return load_weights(model, weights)
