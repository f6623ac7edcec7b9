"""Xception (timm ``legacy_xception`` keys: the Keras port) built from the fused separable convolutions.

Each block is ``[ReLU] -> SeparableConv(depthwise 3x3, pointwise 1x1) -> BN`` repeated, then max-pool, plus a 1x1
conv + BN on the residual path. Fused: the ReLU before the first separable conv is the depthwise kernel's input
prologue (the un-activated block input stays for the residual path); every later ReLU is the epilogue of the
pointwise conv + BN before it; the last pointwise conv + BN takes the residual add (or, after a max-pool, the
residual conv + BN takes the add of the pooled main path). Entry and exit convs are ``conv_bn_act``.

``legacy_block_forward`` and the helpers for timm's ``xception41/65/71`` (``aligned_*``) are also the forwards
:func:`pyfastblocks.swap` gives timm's modules.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _rules as R
from ._fused import act_name, compose_acts, conv_bn_act, conv_bn_add, load_weights, norm_act, run_conv_norm_act

__all__ = ["Xception", "xception"]


# --------------------------------------------------------------------------------------------------------------
# timm legacy_xception (timm.models.xception)


def legacy_block_plan(rep: nn.Sequential) -> Optional[Tuple[List[Tuple[str, str, bool]], Optional[str]]]:
    """``rep`` as ``([(separable_name, bn_name, relu_before)], maxpool_name)``, or None when it is laid out
    otherwise than ``([ReLU] SeparableConv2d BatchNorm2d)* [MaxPool2d]``."""
    items = list(rep._modules.items())
    stages: List[Tuple[str, str, bool]] = []
    pool = None
    i = 0
    while i < len(items):
        name, m = items[i]
        relu = False
        if type(m) is nn.ReLU:
            relu = True
            i += 1
            if i >= len(items):
                return None
            name, m = items[i]
        if type(m) is nn.MaxPool2d and not relu and i == len(items) - 1:
            pool = name
            i += 1
            continue
        if i + 1 >= len(items) or type(items[i + 1][1]) is not nn.BatchNorm2d:
            return None
        if not (hasattr(m, "conv1") and hasattr(m, "pointwise")):
            return None
        stages.append((name, items[i + 1][0], relu))
        i += 2
    return (stages, pool) if stages else None


def legacy_block_forward(self, inp: Tensor) -> Tensor:
    stages, pool = legacy_block_plan(self.rep)  # made at every call from rep's children as they are
    mods = self.rep._modules
    skip = self.skip is not None
    h = inp
    last = len(stages) - 1
    for i, (sep_name, bn_name, relu_before) in enumerate(stages):
        sep, bn = mods[sep_name], mods[bn_name]
        d = conv_bn_act(h, sep.conv1, None, "none", input_relu=relu_before and i == 0)
        if i < last:
            h = conv_bn_act(d, sep.pointwise, bn, "relu" if stages[i + 1][2] else "none")
        elif pool is None:
            residual = conv_bn_act(inp, self.skip, self.skipbn, "none") if skip else inp
            return conv_bn_add(d, sep.pointwise, bn, residual, activation="none", add="bn")  # x += skip
        else:
            h = mods[pool](conv_bn_act(d, sep.pointwise, bn, "none"))
    # after the max-pool: the residual conv + BN takes the add
    if skip:  # x += skip, x being the main path (here the residual argument)
        return conv_bn_add(inp, self.skip, self.skipbn, h, activation="none", add="residual")
    return (h + inp).to(h.dtype)  # timm: x += skip


def legacy_xception_forward_features(self, x: Tensor) -> Tensor:
    x = run_conv_norm_act(x, self.conv1, self.bn1, self.act1)
    x = run_conv_norm_act(x, self.conv2, self.bn2, self.act2)
    for i in range(1, 13):
        x = getattr(self, f"block{i}")(x)
    x = _separable_bn_act(x, self.conv3, self.bn3, self.act3)
    return _separable_bn_act(x, self.conv4, self.bn4, self.act4)


def _separable_bn_act(x: Tensor, sep: nn.Module, bn: nn.BatchNorm2d, act: nn.Module) -> Tensor:
    d = conv_bn_act(x, sep.conv1, None, "none")
    return run_conv_norm_act(d, sep.pointwise, bn, act)


class SeparableConv2d(nn.Module):
    """timm legacy ``SeparableConv2d``: ``conv1`` (depthwise, no bias) then ``pointwise`` (1x1, no bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, dilation, groups=in_channels,
                               bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, 1, 0, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return conv_bn_act(conv_bn_act(x, self.conv1, None, "none"), self.pointwise, None, "none")


class Block(nn.Module):
    """timm legacy Xception ``Block`` (keys ``skip``, ``skipbn``, ``rep.<i>``), fused forward."""

    _fastblocks_fused = True
    _fastblocks_owns = ("rep",)

    def __init__(self, in_channels: int, out_channels: int, reps: int, strides: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True) -> None:
        super().__init__()
        if out_channels != in_channels or strides != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=strides, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
        rep: List[nn.Module] = []
        for i in range(reps):
            if grow_first:
                inc = in_channels if i == 0 else out_channels
                outc = out_channels
            else:
                inc = in_channels
                outc = in_channels if i < (reps - 1) else out_channels
            rep += [nn.ReLU(inplace=True), SeparableConv2d(inc, outc, 3, stride=1, padding=1), nn.BatchNorm2d(outc)]
        if not start_with_relu:
            rep = rep[1:]
        else:
            rep[0] = nn.ReLU(inplace=False)
        if strides != 1:
            rep.append(nn.MaxPool2d(3, strides, 1))
        self.rep = nn.Sequential(*rep)

    forward = legacy_block_forward


class Xception(nn.Module):
    """Xception with timm ``legacy_xception`` keys (``conv1``, ``bn1``, ``block1..12``, ``conv3``, ``bn3``,
    ``conv4``, ``bn4``, ``fc``). Input 299x299 for the ImageNet weights (any size >= 71 works)."""

    _fastblocks_fused = True

    def __init__(self, num_classes: int = 1000, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.num_features = 2048
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act2 = nn.ReLU(inplace=True)
        self.block1 = Block(64, 128, 2, 2, start_with_relu=False)
        self.block2 = Block(128, 256, 2, 2)
        self.block3 = Block(256, 728, 2, 2)
        for i in range(4, 12):
            setattr(self, f"block{i}", Block(728, 728, 3, 1))
        self.block12 = Block(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, 1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(1536, self.num_features, 3, 1, 1)
        self.bn4 = nn.BatchNorm2d(self.num_features)
        self.act4 = nn.ReLU(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    forward_features = legacy_xception_forward_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = torch.flatten(self.global_pool(x), 1)
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, training=self.training)
        return self.fc(x)


def xception(num_classes: int = 1000, weights=None, drop_rate: float = 0.0) -> Xception:
    """Xception (timm ``legacy_xception`` keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return load_weights(Xception(num_classes, drop_rate), weights)


# --------------------------------------------------------------------------------------------------------------
# timm xception41/65/71 (timm.models.xception_aligned): XceptionModule = 3 separable convs (dw + BN + act,
# pw + BN + act) with an optional ReLU before each, + 1x1 ConvNormAct shortcut.


def aligned_separable_acts(sep: nn.Module) -> Optional[Tuple[str, str]]:
    """(depthwise activation, pointwise activation) of an aligned SeparableConv2d, or None if unsupported."""
    dw, pw = norm_act(sep.bn_dw), norm_act(sep.bn_pw)
    if dw is None or pw is None:
        return None
    a_dw, a_pw = compose_acts(dw[1], act_name(sep.act_dw)), compose_acts(pw[1], act_name(sep.act_pw))
    if a_dw is None or a_pw is None:
        return None
    return a_dw, a_pw


def aligned_separable_forward(self, x: Tensor) -> Tensor:
    a_dw, a_pw = aligned_separable_acts(self)
    d = conv_bn_act(x, self.conv_dw, norm_act(self.bn_dw)[0], a_dw)
    return conv_bn_act(d, self.conv_pw, norm_act(self.bn_pw)[0], a_pw)


def aligned_module_plan(stack: nn.Sequential) -> Optional[List[Tuple[str, bool]]]:
    """``stack`` as ``[(separable_name, relu_before)]``, or None."""
    items = list(stack._modules.items())
    plan: List[Tuple[str, bool]] = []
    relu = False
    for name, m in items:
        a = act_name(m) if not hasattr(m, "conv_dw") else None
        if a == "relu" and not hasattr(m, "conv_dw"):
            if relu:
                return None
            relu = True
            continue
        if not hasattr(m, "conv_dw") or aligned_separable_acts(m) is None:
            return None
        plan.append((name, relu))
        relu = False
    return plan if plan and not relu else None


def aligned_module_forward(self, x: Tensor) -> Tensor:
    cached = aligned_module_plan(self.stack)  # made at every call from the stack's children as they are
    mods = self.stack._modules
    h = x
    last = len(cached) - 1
    for i, (name, relu_before) in enumerate(cached):
        sep = mods[name]
        a_dw, a_pw = aligned_separable_acts(sep)
        d = conv_bn_act(h, sep.conv_dw, norm_act(sep.bn_dw)[0], a_dw, input_relu=relu_before and i == 0)
        if i < last and cached[i + 1][1]:
            a_pw = compose_acts(a_pw, "relu")
        bn_pw = norm_act(sep.bn_pw)[0]
        if i == last and not self.no_skip and self.drop_path is None and a_pw == "none":
            return conv_bn_add(d, sep.conv_pw, bn_pw, _aligned_shortcut(self, x), activation="none")
        h = conv_bn_act(d, sep.conv_pw, bn_pw, a_pw)
    if self.no_skip:
        return h
    if self.drop_path is not None:
        h = self.drop_path(h)
    return h + _aligned_shortcut(self, x)


def _aligned_shortcut(self, x: Tensor) -> Tensor:
    sc = self.shortcut
    if sc is None:
        return x
    bn, act = norm_act(sc.bn)
    return conv_bn_act(x, sc.conv, bn, act)


# --------------------------------------------------------------------------------------------------------------
# swap() rules


def _legacy_block_check(m, parent, name):
    problem = R.children_problem(m, ("rep",), ("skip", "skipbn"))
    if problem:
        return problem
    if m.skip is not None:
        problem = R.problems(R.conv_problem(m.skip, "skip"), R.bn_problem(getattr(m, "skipbn", None), "skipbn"))
        if problem:
            return problem
    if type(m.rep) is not nn.Sequential:
        return "rep is not an nn.Sequential"
    plan = legacy_block_plan(m.rep)
    if plan is None:
        return "rep is not ([ReLU] SeparableConv2d BatchNorm2d)* [MaxPool2d]"
    stages, pool = plan
    first = m.rep[0]
    for sep_name, bn_name, _ in stages:
        sep = m.rep._modules[sep_name]
        problem = R.problems(
            None if R.class_path(sep) == "timm.models.xception.SeparableConv2d" else f"rep.{sep_name} is "
            f"{type(sep).__name__}",
            R.children_problem(sep, ("conv1", "pointwise")),
            R.conv_problem(sep.conv1, f"rep.{sep_name}.conv1"), R.conv_problem(sep.pointwise, f"rep.{sep_name}.pointwise"))
        if problem:
            return problem
    if type(first) is nn.ReLU and first.inplace:
        return "the first ReLU is in place (it would change the block input the residual reads)"
    return None


def _legacy_xception_check(m, parent, name):
    problems = [R.conv_problem(m.conv1, "conv1"), R.conv_problem(m.conv2, "conv2"),
                R.norm_problem(m.bn1, "bn1"), R.norm_problem(m.bn2, "bn2"),
                R.norm_problem(m.bn3, "bn3"), R.norm_problem(m.bn4, "bn4")]
    for c in ("conv3", "conv4"):
        sep = getattr(m, c)
        problems += [None if R.class_path(sep) == "timm.models.xception.SeparableConv2d" else f"{c} is "
                     f"{type(sep).__name__}", R.conv_problem(sep.conv1, f"{c}.conv1"),
                     R.conv_problem(sep.pointwise, f"{c}.pointwise")]
    problems += [None if hasattr(m, f"block{i}") else f"no block{i}" for i in range(1, 13)]
    return R.problems(*problems)


def _aligned_separable_check(m, parent=None, name=""):
    problem = R.problems(R.conv_problem(m.conv_dw, "conv_dw"), R.conv_problem(m.conv_pw, "conv_pw"),
                        R.norm_problem(m.bn_dw, "bn_dw"), R.norm_problem(m.bn_pw, "bn_pw"))
    if problem:
        return problem
    if aligned_separable_acts(m) is None:
        return "act_dw/act_pw are not activations of the table (or do not compose with their norms)"
    return None


def _aligned_module_check(m, parent, name):
    if type(m.stack) is not nn.Sequential:
        return "stack is not an nn.Sequential"
    plan = aligned_module_plan(m.stack)
    if plan is None:
        return "stack is not ([ReLU] SeparableConv2d)*"
    problems = []
    for sep_name, _ in plan:
        sep = m.stack._modules[sep_name]
        if R.class_path(sep) != "timm.models.xception_aligned.SeparableConv2d":
            problems.append(f"stack.{sep_name} is {type(sep).__name__}")
        else:
            problems.append(_aligned_separable_check(sep))
    first = m.stack[0]
    if type(first) is nn.ReLU and first.inplace:
        problems.append("the first ReLU is in place (it would change the block input the shortcut reads)")
    sc = getattr(m, "shortcut", None)
    if sc is not None:
        problems.append(R.timm_cna_problem(sc, "shortcut"))
    problems += [None if hasattr(m, a) else f"no attribute {a}" for a in ("no_skip", "drop_path")]
    return R.problems(*problems)


SWAP_RULES = [
    R.Rule("timm_legacy_xception_Block", "timm.models.xception.Block", {"forward": legacy_block_forward},
          "ReLU before each separable conv as the depthwise prologue/previous epilogue; pointwise conv+bn(+relu) "
          "fused; last bn+residual add fused", _legacy_block_check, owns=("rep",), guards=("rep.**", "skip", "skipbn")),
    R.Rule("timm_legacy_xception_Xception", "timm.models.xception.Xception",
          {"forward_features": legacy_xception_forward_features},
          "entry convs conv+bn+relu fused; exit separable convs: pointwise conv+bn+relu fused", _legacy_xception_check,
          guards=("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3.**", "bn3", "act3", "conv4.**", "bn4",
                  "act4")),
    R.Rule("timm_XceptionModule", "timm.models.xception_aligned.XceptionModule",
          {"forward": aligned_module_forward},
          "separable convs: depthwise conv+bn(+act) and pointwise conv+bn(+next ReLU) fused, first ReLU as the "
          "depthwise prologue; last bn+shortcut add fused", _aligned_module_check, owns=("stack", "shortcut"),
          guards=("stack.**", "shortcut.**")),
    R.Rule("timm_aligned_SeparableConv2d", "timm.models.xception_aligned.SeparableConv2d",
          {"forward": aligned_separable_forward}, "depthwise and pointwise conv+bn+act fused",
          _aligned_separable_check, guards=("conv_dw", "bn_dw.**", "act_dw", "conv_pw", "bn_pw.**", "act_pw")),
    R.Rule("timm_PreXceptionModule", "timm.models.xception_aligned.PreXceptionModule", {},
          "", R.left_alone("pre-activation Xception (xception41p/65p) blocks are not fused")),
]
