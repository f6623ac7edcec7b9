"""ResNet-18/34/50/101/152 (torchvision layout and state_dict keys, ResNet v1.5: the stride on the 3x3) built from
the fused blocks: every conv -> BN -> ReLU is one ``conv_bn_act``, every block tail (conv3 -> BN -> + identity ->
ReLU) one ``conv_bn_add``.

The ``*_forward`` functions are also the forwards :func:`pyfastblocks.swap` gives torchvision's own
``BasicBlock`` / ``Bottleneck`` / ``ResNet``: they use only the child modules, by their torchvision names.
"""
from typing import List, Optional, Type, Union

import torch
from torch import Tensor, nn

from ._fused import conv_bn_act, conv_bn_add, load_weights

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _shortcut(self, x: Tensor) -> Tensor:
    return x if self.downsample is None else self.downsample(x)


def basic_block_forward(self, x: Tensor) -> Tensor:
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with fused conv+BN+ReLU and a fused tail."""
    out = conv_bn_act(x, self.conv1, self.bn1, "relu")
    return conv_bn_add(out, self.conv2, self.bn2, _shortcut(self, x), activation="relu", add="bn")  # out += identity


def bottleneck_forward(self, x: Tensor) -> Tensor:
    out = conv_bn_act(x, self.conv1, self.bn1, "relu")
    out = conv_bn_act(out, self.conv2, self.bn2, "relu")
    return conv_bn_add(out, self.conv3, self.bn3, _shortcut(self, x), activation="relu", add="bn")  # out += identity


def resnet_forward_impl(self, x: Tensor) -> Tensor:
    """torchvision ``ResNet._forward_impl`` with the stem's conv + BN + ReLU fused."""
    x = conv_bn_act(x, self.conv1, self.bn1, "relu")
    x = self.maxpool(x)
    x = self.layer1(x)
    x = self.layer2(x)
    x = self.layer3(x)
    x = self.layer4(x)
    x = self.avgpool(x)
    x = torch.flatten(x, 1)
    return self.fc(x)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride, dilation, groups=groups, bias=False, dilation=dilation)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (same children and keys) with the fused forward."""

    expansion = 1
    _fastblocks_fused = True

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    forward = basic_block_forward


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5, stride on the 3x3; same children and keys), fused forward."""

    expansion = 4
    _fastblocks_fused = True

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    forward = bottleneck_forward


class _Downsample(nn.Sequential):
    """``Sequential(conv1x1, bn)``: its conv + BN runs as one ``conv_bn_act(..., "none")``."""

    _fastblocks_fused = True

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return conv_bn_act(x, self[0], self[1], "none")


class ResNet(nn.Module):
    """torchvision's ``ResNet`` (same constructor arguments but ``norm_layer``, same state_dict keys)."""

    _fastblocks_fused = True

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: List[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Optional[List[bool]] = None) -> None:
        super().__init__()
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = _Downsample(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                     nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation))
        return nn.Sequential(*layers)

    _forward_impl = resnet_forward_impl

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def _resnet(block, layers, num_classes: int, weights, **kwargs) -> ResNet:
    return load_weights(ResNet(block, layers, num_classes=num_classes, **kwargs), weights)


def resnet18(num_classes: int = 1000, weights=None, **kwargs) -> ResNet:
    """ResNet-18 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], num_classes, weights, **kwargs)


def resnet34(num_classes: int = 1000, weights=None, **kwargs) -> ResNet:
    """ResNet-34 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return _resnet(BasicBlock, [3, 4, 6, 3], num_classes, weights, **kwargs)


def resnet50(num_classes: int = 1000, weights=None, **kwargs) -> ResNet:
    """ResNet-50 v1.5 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], num_classes, weights, **kwargs)


def resnet101(num_classes: int = 1000, weights=None, **kwargs) -> ResNet:
    """ResNet-101 v1.5 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return _resnet(Bottleneck, [3, 4, 23, 3], num_classes, weights, **kwargs)


def resnet152(num_classes: int = 1000, weights=None, **kwargs) -> ResNet:
    """ResNet-152 v1.5 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return _resnet(Bottleneck, [3, 8, 36, 3], num_classes, weights, **kwargs)
