"""The ResNet family: ResNet-18/34/50/101/152 (torchvision layout and state_dict keys, ResNet v1.5: the stride on
the 3x3) built from the fused blocks (every conv -> BN -> ReLU is one ``conv_bn_act``, every block tail (conv3 ->
BN -> + identity -> ReLU) one ``conv_bn_add``), and the swap() rules of torchvision's and timm's ResNets.

The ``*_forward`` functions are also the forwards :func:`pyfastblocks.swap` gives torchvision's own
``BasicBlock`` / ``Bottleneck`` / ``ResNet``: they use only the child modules, by their torchvision names. timm's
``BasicBlock`` / ``Bottleneck`` / ``ResNet`` (resnet*, resnext*, seresnet*, ecaresnet*, ...): what the fused ops
cannot do (DropBlock, anti-aliasing, attention other than a squeeze-excitation gate) runs as the block's own module,
in timm's order; a squeeze-excitation gate before the residual add is applied in the add's pass
(:func:`pyfastblocks.models._fused.gated_add_act`).
"""
from typing import List, Optional, Type, Union

import torch
from torch import Tensor, nn

from .. import activations
from ..nn import _tail
from . import _rules as R
from ._fused import (act_name, bn_act, compose_acts, conv_bn_act, conv_bn_add, drop_path_inactive, gated_add_act,
                     load_weights, norm_act, plain_conv, run_conv_norm_act, se_gate)

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


# --------------------------------------------------------------------------------------------------------------
# timm.models.resnet (timm itself is never imported here: the blocks' children by their timm names)


def timm_residual_tail(self, h: Tensor, shortcut: Tensor, conv: nn.Conv2d, norm: nn.Module, act: nn.Module) -> Tensor:
    """conv -> norm -> se -> drop_path -> (+ downsample(shortcut)) -> act, timm's order (``x += shortcut``: the
    BatchNorm output's dtype). Without se / drop_path the BN, add and activation are one pass (or, CPU eval, the
    convolution's post-ops); a squeeze-excitation gate is applied in the add's pass where
    :func:`gated_add_act` can."""
    bn, inner = norm_act(norm)
    outer = act_name(act)
    se = getattr(self, "se", None)
    drop_path = getattr(self, "drop_path", None)
    if R.is_identity(se) and drop_path_inactive(drop_path) and inner == "none" and outer is not None:
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return conv_bn_add(h, conv, bn, shortcut, activation=outer, add="bn")  # x += shortcut
    y = conv_bn_act(h, conv, bn, inner)
    gate = se_gate(se, y) if not R.is_identity(se) else None
    if gate is None and se is not None:
        y = se(y)
    if not drop_path_inactive(drop_path):
        if gate is not None:
            y, gate = y * gate, None
        y = drop_path(y)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    if outer is not None:
        if gate is not None:
            return gated_add_act(y, gate, shortcut, outer, add="bn")
        name, slope = activations.split(outer)
        return _tail.add_act(y, shortcut, name, "bn", slope)
    if gate is not None:
        y = y * gate
    return act((y + shortcut).to(y.dtype))  # timm: x += shortcut (x's dtype; out of place: y may be saved for backward)


def _conv_norm_drop_block_act(x: Tensor, conv: nn.Module, bn: nn.Module, drop_block: nn.Module,
                              act: nn.Module) -> Tensor:
    """timm's ``act(drop_block(bn(conv(x))))``: one fused conv -> BN -> act unless DropBlock sits in between."""
    if R.is_identity(drop_block):
        return run_conv_norm_act(x, conv, bn, act)
    return act(drop_block(bn(conv(x))))


def timm_basic_block_forward(self, x: Tensor) -> Tensor:
    h = _conv_norm_drop_block_act(x, self.conv1, self.bn1, self.drop_block, self.act1)
    h = self.aa(h)
    return timm_residual_tail(self, h, x, self.conv2, self.bn2, self.act2)


def timm_bottleneck_forward(self, x: Tensor) -> Tensor:
    h = run_conv_norm_act(x, self.conv1, self.bn1, self.act1)
    h = _conv_norm_drop_block_act(h, self.conv2, self.bn2, self.drop_block, self.act2)
    h = self.aa(h)
    return timm_residual_tail(self, h, x, self.conv3, self.bn3, self.act3)


def timm_stem(x: Tensor, conv: nn.Module, norm: nn.Module, act: Optional[nn.Module]) -> Tensor:
    """A stem's conv (a plain conv, or anything else run as itself, e.g. timm's deep stem Sequential) -> norm ->
    act, the norm + act fused."""
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
        return type(self)._fastblocks_base.forward_features(self, x)
    x = timm_stem(x, self.conv1, self.bn1, self.act1)
    x = self.maxpool(x)
    x = self.layer1(x)
    x = self.layer2(x)
    x = self.layer3(x)
    return self.layer4(x)


def timm_bottle2neck_forward(self, x: Tensor) -> Tensor:
    """timm ``Bottle2neck`` (Res2Net, Res2NeXt): conv1 + bn1 + act fused; each scale's conv + BN + act fused (the
    hierarchical add ``sp + spx[i]`` and the concat stay eager: both the sum and the activated output are read
    again); conv3 + bn3 (+ a squeeze-excitation gate) + residual add + act as :func:`timm_residual_tail`."""
    out = run_conv_norm_act(x, self.conv1, self.bn1, self.relu)
    spx = torch.split(out, self.width, 1)
    spo = []
    sp = spx[0]
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
        sp = spx[i] if i == 0 or self.is_first else sp + spx[i]
        sp = run_conv_norm_act(sp, conv, bn, self.relu)
        spo.append(sp)
    if self.scale > 1:
        spo.append(self.pool(spx[-1]) if self.pool is not None else spx[-1])
    out = torch.cat(spo, 1)
    if not R.is_identity(self.drop_block):
        out = self.drop_block(out)
    return timm_residual_tail(self, out, x, self.conv3, self.bn3, self.relu)


# --------------------------------------------------------------------------------------------------------------
# swap() rules


def _tv_basic_check(m, parent, name):
    return R.problems(
        R.children_problem(m, ("conv1", "bn1", "relu", "conv2", "bn2"), ("downsample",)),
        R.conv_problem(m.conv1, "conv1"), R.conv_problem(m.conv2, "conv2"),
        R.bn_problem(m.bn1, "bn1"), R.bn_problem(m.bn2, "bn2"), R.act_problem(m.relu, "relu"),
    )


def _tv_bottleneck_check(m, parent, name):
    return R.problems(
        R.children_problem(m, ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"), ("downsample",)),
        *(R.conv_problem(getattr(m, f"conv{i}"), f"conv{i}") for i in (1, 2, 3)),
        *(R.bn_problem(getattr(m, f"bn{i}"), f"bn{i}") for i in (1, 2, 3)),
        R.act_problem(m.relu, "relu"),
    )


def _tv_resnet_check(m, parent, name):
    return R.problems(R.conv_problem(m.conv1, "conv1"), R.bn_problem(m.bn1, "bn1"), R.act_problem(m.relu, "relu"))


def _timm_block_check(n_convs):
    def check(m, parent, name):
        names = [f"conv{i}" for i in range(1, n_convs + 1)]
        return R.problems(
            *(R.conv_problem(getattr(m, c, None), c) for c in names),
            *(R.norm_problem(getattr(m, f"bn{i}", None), f"bn{i}") for i in range(1, n_convs + 1)),
            R.has_attributes(m, "drop_block", "aa", "se", "drop_path", "downsample"),
        )
    return check


def _timm_resnet_check(m, parent, name):
    return R.problems(R.has_attributes(m, "grad_checkpointing"), R.norm_problem(m.bn1, "bn1"))


def _timm_bottle2neck_check(m, parent, name):
    convs, bns = m._modules.get("convs"), m._modules.get("bns")
    return R.problems(
        R.children_problem(m, ("conv1", "bn1", "convs", "bns", "conv3", "bn3", "relu"),
                           ("pool", "se", "downsample", "drop_block", "drop_path")),
        R.conv_problem(m.conv1, "conv1"), R.conv_problem(m.conv3, "conv3"),
        R.norm_problem(m.bn1, "bn1"), R.norm_problem(m.bn3, "bn3"),
        None if type(convs) is nn.ModuleList and type(bns) is nn.ModuleList and len(convs) == len(bns) else
        "convs / bns are not ModuleLists of one length",
        *(R.conv_problem(c, f"convs.{i}") for i, c in enumerate(convs or ())),
        *(R.norm_problem(b, f"bns.{i}") for i, b in enumerate(bns or ())),
        R.act_problem(m.relu, "relu", None),
        R.has_attributes(m, "width", "scale", "is_first", "pool", "se", "drop_path", "downsample", "drop_block"),
    )


SWAP_RULES = [
    R.Rule("torchvision_BasicBlock", "torchvision.models.resnet.BasicBlock", {"forward": basic_block_forward},
           "conv1+bn1+relu fused; conv2+bn2+add+relu fused", _tv_basic_check,
           guards=("conv1", "bn1", "relu", "conv2", "bn2")),
    R.Rule("torchvision_Bottleneck", "torchvision.models.resnet.Bottleneck", {"forward": bottleneck_forward},
           "conv1/conv2+bn+relu fused; conv3+bn3+add+relu fused", _tv_bottleneck_check,
           guards=("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu")),
    R.Rule("torchvision_ResNet", "torchvision.models.resnet.ResNet", {"_forward_impl": resnet_forward_impl},
           "stem conv1+bn1+relu fused", _tv_resnet_check, guards=("conv1", "bn1", "relu")),
    R.Rule("timm_BasicBlock", "timm.models.resnet.BasicBlock", {"forward": timm_basic_block_forward},
           "conv+bn+act fused; bn2+add+act2 fused (a squeeze-excitation gate in the same pass; other attention or "
           "drop_path between: bn2 fused, add+act2 fused)", _timm_block_check(2),
           guards=("conv1", "bn1.**", "drop_block", "act1", "conv2", "bn2.**", "act2", "se.**")),
    R.Rule("timm_Bottleneck", "timm.models.resnet.Bottleneck", {"forward": timm_bottleneck_forward},
           "conv+bn+act fused; bn3+add+act3 fused (a squeeze-excitation gate in the same pass; other attention or "
           "drop_path between: bn3 fused, add+act3 fused)", _timm_block_check(3),
           guards=("conv1", "bn1.**", "act1", "conv2", "bn2.**", "drop_block", "act2", "conv3", "bn3.**", "act3",
                   "se.**")),
    R.Rule("timm_ResNet", "timm.models.resnet.ResNet", {"forward_features": timm_resnet_forward_features},
           "stem conv1+bn1+act1 fused", _timm_resnet_check, guards=("conv1.**", "bn1.**", "act1")),
    R.Rule("timm_Bottle2neck", "timm.models.res2net.Bottle2neck", {"forward": timm_bottle2neck_forward},
           "conv1+bn1+act and every scale's conv+bn+act fused; bn3+add+act fused (a squeeze-excitation gate in the "
           "same pass); the scales' adds and the concat stay eager", _timm_bottle2neck_check, owns=("convs", "bns"),
           guards=("conv1", "bn1.**", "convs.**", "bns.**", "conv3", "bn3.**", "relu", "se.**")),
]
