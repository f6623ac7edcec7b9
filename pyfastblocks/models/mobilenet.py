"""MobileNetV1 (timm ``mobilenetv1_100`` keys) and MobileNetV2 (torchvision keys) built from the fused blocks:
every conv -> BN -> ReLU6 (depthwise 3x3 and pointwise 1x1) is one ``conv_bn_act``; MobileNetV2's projection
conv -> BN -> + input is one ``conv_bn_add``.

``inverted_residual_forward`` and ``depthwise_separable_forward`` are also the forwards :func:`pyfastblocks.swap`
gives torchvision's ``InvertedResidual`` and timm's ``DepthwiseSeparableConv``.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _fused as F_
from . import _rules as R
from ._fused import (ConvBNAct, FusedSequential, act_name, compose_acts, conv_bn_act, conv_bn_add, load_weights,
                     norm_act, run_conv_norm_act)

__all__ = ["MobileNetV1", "MobileNetV2", "mobilenet_v1", "mobilenet_v2"]


# --------------------------------------------------------------------------------------------------------------
# MobileNetV2 (torchvision layout)


def inverted_residual_forward(self, x: Tensor) -> Tensor:
    """``self.conv`` = [Conv2dNormActivation(expand 1x1)?, Conv2dNormActivation(depthwise), Conv2d(1x1), BN]."""
    layers = list(self.conv)
    h = x
    for cna in layers[:-2]:
        h = conv_bn_act(h, cna[0], cna[1], act_name(cna[2]) if len(cna) > 2 else "none")
    if self.use_res_connect:
        return conv_bn_add(h, layers[-2], layers[-1], x, activation="none")
    return conv_bn_act(h, layers[-2], layers[-1], "none")


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 ``InvertedResidual`` (children and keys), fused forward."""

    _fastblocks_fused = True
    _fastblocks_owns = ("conv",)

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden_dim, kernel_size=1))
        layers += [ConvBNAct(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    forward = inverted_residual_forward


class MobileNetV2(nn.Module):
    """torchvision's ``MobileNetV2`` (same keys: ``features.<i>...``, ``classifier.1``), fused blocks."""

    _fastblocks_fused = True

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2) -> None:
        super().__init__()
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                   [6, 320, 1, 1]]
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: List[nn.Module] = [ConvBNAct(3, input_channel, stride=2)]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNAct(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 1000, weights=None, width_mult: float = 1.0, dropout: float = 0.2
                 ) -> MobileNetV2:
    """MobileNetV2 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return load_weights(MobileNetV2(num_classes, width_mult, dropout=dropout), weights)


# --------------------------------------------------------------------------------------------------------------
# MobileNetV1 (timm mobilenetv1_* layout: EfficientNet with DepthwiseSeparableConv blocks)


def depthwise_separable_forward(self, x: Tensor) -> Tensor:
    """timm ``DepthwiseSeparableConv``: [conv_s2d + bn_s2d]? -> conv_dw + bn1(+act) -> aa -> se -> conv_pw +
    bn2(+act) -> (drop_path + shortcut)."""
    shortcut = x
    if getattr(self, "conv_s2d", None) is not None:
        x = run_conv_norm_act(x, self.conv_s2d, self.bn_s2d)
    x = run_conv_norm_act(x, self.conv_dw, self.bn1)
    x = self.aa(x)
    x = self.se(x)
    if getattr(self, "has_skip", False):
        bn, act = norm_act(self.bn2)
        if act == "none" and type(self.drop_path) is nn.Identity:
            return conv_bn_add(x, self.conv_pw, bn, shortcut, activation="none")
        return self.drop_path(run_conv_norm_act(x, self.conv_pw, self.bn2)) + shortcut
    return run_conv_norm_act(x, self.conv_pw, self.bn2)


def efficientnet_forward_features(self, x: Tensor) -> Tensor:
    """timm ``EfficientNet.forward_features`` with the stem (conv_stem + bn1) and head (conv_head + bn2) fused."""
    if getattr(self, "grad_checkpointing", False) and not torch.jit.is_scripting():
        return type(self)._fastblocks_base.forward_features(self, x)
    x = F_.conv_norm_act(x, self.conv_stem, self.bn1)
    x = self.blocks(x)
    if type(self.conv_head) is nn.Identity:
        return self.bn2(x)
    return F_.conv_norm_act(x, self.conv_head, self.bn2)


def timm_mobilenetv3_forward_features(self, x: Tensor) -> Tensor:
    """timm ``MobileNetV3.forward_features`` (mobilenetv3_*, lcnet_*, fbnetv3_*, ...) with the stem (conv_stem +
    bn1) fused (its head runs on the pooled 1x1 map)."""
    if getattr(self, "grad_checkpointing", False) and not torch.jit.is_scripting():
        return type(self)._fastblocks_base.forward_features(self, x)
    x = F_.conv_norm_act(x, self.conv_stem, self.bn1)
    return self.blocks(x)


class BatchNormAct2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with an activation, timm's ``BatchNormAct2d`` layout (keys are BatchNorm2d's; ``act``
    and ``drop`` hold no parameters). Used standalone it runs BN + activation as one pass."""

    _fastblocks_bn_act = True

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, activation: str = "relu6"):
        super().__init__(num_features, eps, momentum)
        self.drop = nn.Identity()
        self.act = {"relu6": nn.ReLU6(inplace=True), "relu": nn.ReLU(inplace=True)}.get(activation, nn.Identity())

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        from ._fused import bn_act
        return bn_act(x, self, act_name(self.act))


class DepthwiseSeparable(nn.Module):
    """timm ``DepthwiseSeparableConv`` (``dsa``: activation after both convs; keys ``conv_dw``, ``bn1``,
    ``conv_pw``, ``bn2``), fused forward."""

    _fastblocks_fused = True

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.has_skip = False  # mobilenetv1 never adds (its "dsa" blocks are created with noskip)
        self.has_pw_act = True
        self.conv_s2d = None
        self.bn_s2d = None
        self.conv_dw = nn.Conv2d(in_chs, in_chs, 3, stride, 1, groups=in_chs, bias=False)
        self.bn1 = BatchNormAct2d(in_chs, eps)
        self.aa = nn.Identity()
        self.se = nn.Identity()
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = BatchNormAct2d(out_chs, eps)
        self.drop_path = nn.Identity()

    forward = depthwise_separable_forward


def _round_channels(channels: float, multiplier: float = 1.0, divisor: int = 8) -> int:
    # timm round_channels / make_divisible (round_limit 0.9)
    if not multiplier:
        return int(channels)
    v = channels * multiplier
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class MobileNetV1(nn.Module):
    """MobileNetV1 with timm's ``mobilenetv1_100`` state_dict keys (``conv_stem``, ``bn1``,
    ``blocks.<stage>.<i>.{conv_dw,bn1,conv_pw,bn2}``, ``classifier``); ``alpha`` scales the widths like timm's
    ``mobilenetv1_<alpha*100>`` (channels rounded to multiples of 8). Depthwise 3x3 + BN + ReLU6 and pointwise
    1x1 + BN + ReLU6, each one fused ``conv_bn_act``."""

    _fastblocks_fused = True

    def __init__(self, num_classes: int = 1000, alpha: float = 1.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        stages = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]  # (channels, repeats, stride)
        self.drop_rate = drop_rate
        stem = _round_channels(32, alpha)
        self.conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(stem)
        blocks = []
        chs = stem
        for out, repeats, stride in stages:
            out = _round_channels(out, alpha)
            stage = []
            for i in range(repeats):
                stage.append(DepthwiseSeparable(chs, out, stride if i == 0 else 1))
                chs = out
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.num_features = chs
        self.conv_head = nn.Identity()
        self.bn2 = nn.Identity()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(chs, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        x = conv_bn_act(x, self.conv_stem, self.bn1, act_name(self.bn1.act))
        return self.blocks(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = torch.flatten(self.global_pool(x), 1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)


def mobilenet_v1(num_classes: int = 1000, weights=None, alpha: float = 1.0, drop_rate: float = 0.0
                 ) -> MobileNetV1:
    """MobileNetV1 (timm ``mobilenetv1_100`` keys for ``alpha=1.0``). ``weights``: a state_dict or a path to one
    (``strict=True``)."""
    return load_weights(MobileNetV1(num_classes, alpha, drop_rate), weights)


# --------------------------------------------------------------------------------------------------------------
# swap() rules


def _tv_inverted_residual_check(m, parent, name):
    problem = R.children_problem(m, ("conv",))
    if problem:
        return problem
    if type(m.conv) is not nn.Sequential:
        return f"conv is {type(m.conv).__name__}, not nn.Sequential"
    layers = list(m.conv)
    if len(layers) not in (3, 4):
        return f"conv has {len(layers)} layers"
    return R.problems(
        *(R.cna_problem(c, f"conv[{i}]") for i, c in enumerate(layers[:-2])),
        R.conv_problem(layers[-2], f"conv[{len(layers) - 2}]"), R.bn_problem(layers[-1], f"conv[{len(layers) - 1}]"),
        None if isinstance(getattr(m, "use_res_connect", None), bool) else "no use_res_connect flag",
    )


def _timm_ds_check(m, parent, name):
    s2d = getattr(m, "conv_s2d", None)
    return R.problems(
        R.conv_problem(m.conv_dw, "conv_dw"), R.norm_problem(m.bn1, "bn1"),
        R.conv_problem(m.conv_pw, "conv_pw"), R.norm_problem(m.bn2, "bn2"),
        None if s2d is None else R.problems(R.conv_problem(s2d, "conv_s2d"), R.norm_problem(m.bn_s2d, "bn_s2d")),
        R.has_attributes(m, "aa", "se", "drop_path", "has_skip"),
    )


def _conv_module_problem(conv, name: str):
    """A conv a chain runs: a plain nn.Conv2d fuses with its norm; any other conv module (timm's Conv2dSame,
    MixedConv2d, CondConv2d) runs as itself, then its norm + activation are one pass."""
    return None if isinstance(conv, nn.Module) else f"{name} is missing"


def _timm_efficientnet_check(m, parent, name):
    return R.problems(
        _conv_module_problem(m.conv_stem, "conv_stem"), R.norm_problem(m.bn1, "bn1"),
        None if type(m.conv_head) is nn.Identity else _conv_module_problem(m.conv_head, "conv_head"),
        R.norm_problem(m.bn2, "bn2"), R.has_attributes(m, "blocks"),
    )


def _timm_mobilenetv3_check(m, parent, name):
    return R.problems(_conv_module_problem(m.conv_stem, "conv_stem"), R.norm_problem(m.bn1, "bn1"),
                      R.has_attributes(m, "blocks"))


# timm's EfficientNet / MobileNet blocks: (conv, norm) pairs and module calls, then drop_path + shortcut (has_skip)
_TIMM_CHAINS = {
    "InvertedResidual": ((("cn", "conv_s2d", "bn_s2d"), ("cn", "conv_pw", "bn1"), ("cn", "conv_dw", "bn2"),
                          ("m", "aa"), ("m", "se"), ("cn", "conv_pwl", "bn3")), ("conv_s2d", "bn_s2d")),
    "EdgeResidual": ((("cn", "conv_exp", "bn1"), ("m", "aa"), ("m", "se"), ("cn", "conv_pwl", "bn2")), ()),
    "ConvBnAct": ((("cn", "conv", "bn1"), ("m", "aa")), ()),
}


def _timm_chain_check(steps, optional):
    convs = [(s[1], s[2]) for s in steps if s[0] == "cn"]
    modules = [s[1] for s in steps if s[0] == "m"]

    def check(m, parent, name):
        required = [c for pair in convs for c in pair if c not in optional] + modules
        problem = R.children_problem(m, required, (*optional, "drop_path"))
        if problem:
            return problem
        return R.problems(
            *(R.problems(_conv_module_problem(m._modules[c], c), R.norm_problem(m._modules[n], n))
              for c, n in convs if m._modules.get(c) is not None),
            R.has_attributes(m, "has_skip"))
    return check


def _chain_guards(steps) -> tuple:
    return tuple(g for s in steps if s[0] == "cn" for g in (s[1], s[2] + ".**"))


def tv_block_forward(self, x: Tensor) -> Tensor:
    """torchvision ``MBConv`` / ``FusedMBConv`` (EfficientNet v1/v2) and MobileNetV3 ``InvertedResidual``:
    ``self.block`` (Conv2dNormActivation children, themselves swapped, and a squeeze-excitation module) runs as
    it is up to its last Conv2dNormActivation (conv + BN, no activation), which takes the residual add in its pass
    (``result += input``: the BN output's dtype) while the stochastic depth is the identity."""
    layers = list(self.block._modules.values())
    h = x
    for m in layers[:-1]:
        h = m(h)
    last = layers[-1]
    residual = self.use_res_connect
    sd = getattr(self, "stochastic_depth", None)
    if residual and F_.drop_path_inactive(sd) and F_.unhooked(last) and not R.cna_problem(last, "last") \
            and len(last) == 2:
        conv, bn, _ = R.cna_parts(last)
        return conv_bn_add(h, conv, bn, x, activation="none", add="bn")
    h = last(h)
    if residual:
        if sd is not None:
            h = sd(h)
        h += x
    return h


def _tv_block_check(m, parent, name):
    problem = R.children_problem(m, ("block",), ("stochastic_depth",))
    if problem:
        return problem
    if type(m.block) is not nn.Sequential or len(m.block) == 0:
        return "block is not a non-empty nn.Sequential"
    last = list(m.block)[-1]
    return R.problems(R.cna_problem(last, f"block[{len(m.block) - 1}]"),
                      None if len(last) == 2 else "the last Conv2dNormActivation has an activation",
                      None if isinstance(getattr(m, "use_res_connect", None), bool) else "no use_res_connect flag")


def mnasnet_inverted_residual_forward(self, x: Tensor) -> Tensor:
    """torchvision MNASNet ``_InvertedResidual``: ``self.layers`` (conv, BN, ReLU, depthwise conv, BN, ReLU, conv, BN)
    as its Sequential plan, the last conv + BN taking the residual add in its pass."""
    seq = self.layers
    if not self.apply_residual:
        return seq(x)
    plan = None if F_.global_hooks() else F_.sequential_plan(seq)
    if plan and plan[-1][0] == "cba" and plan[-1][2] is not None and plan[-1][3] == "none" and F_.unhooked(seq):
        mods = seq._modules
        h = x
        for step in plan[:-1]:
            h = F_.run_plan_step(mods, step, h)
        return conv_bn_add(h, mods[plan[-1][1]], mods[plan[-1][2]], x, activation="none", add="promote")
    return seq(x) + x


def _mnasnet_check(m, parent, name):
    return R.problems(R.children_problem(m, ("layers",)),
                      None if type(m.layers) is nn.Sequential else "layers is not an nn.Sequential",
                      None if isinstance(getattr(m, "apply_residual", None), bool) else "no apply_residual flag")


_TV_BLOCK_HOW = ("block's Conv2dNormActivations fused (their own rule); the last conv + BN + residual add: one "
                 "pass (squeeze-excitation and an active stochastic depth stay module calls)")


SWAP_RULES = [
    R.Rule("torchvision_InvertedResidual", "torchvision.models.mobilenetv2.InvertedResidual",
           {"forward": inverted_residual_forward},
           "expand/depthwise conv+bn+relu6 fused; project conv+bn(+add) fused", _tv_inverted_residual_check,
           owns=("conv",), guards=("conv.**",)),
    R.Rule("timm_DepthwiseSeparableConv", "timm.models._efficientnet_blocks.DepthwiseSeparableConv",
           {"forward": depthwise_separable_forward},
           "depthwise conv+bn+act fused; pointwise conv+bn+act (or +add) fused", _timm_ds_check,
           guards=("conv_s2d", "bn_s2d.**", "conv_dw", "bn1.**", "conv_pw", "bn2.**")),
    R.Rule("timm_EfficientNet", "timm.models.efficientnet.EfficientNet",
           {"forward_features": efficientnet_forward_features}, "stem (and head) conv+bn+act fused",
           _timm_efficientnet_check, guards=("conv_stem", "bn1.**", "conv_head", "bn2.**")),
    R.Rule("timm_MobileNetV3", "timm.models.mobilenetv3.MobileNetV3",
           {"forward_features": timm_mobilenetv3_forward_features}, "stem conv+bn+act fused",
           _timm_mobilenetv3_check, guards=("conv_stem", "bn1.**")),
    *(R.Rule(f"timm_{cls}", f"timm.models._efficientnet_blocks.{cls}",
             {"forward": F_.chain_forward(steps)},
             "every conv + BN (+ act) fused (any activation; a non-plain conv runs as itself, its BN + act one pass); "
             "the last conv + BN + residual add: one pass while drop_path is the identity; aa / se stay module calls",
             _timm_chain_check(steps, optional), guards=_chain_guards(steps))
      for cls, (steps, optional) in _TIMM_CHAINS.items()),
    *(R.Rule(f"torchvision_{mod}_{cls}", f"torchvision.models.{mod}.{cls}", {"forward": tv_block_forward}, _TV_BLOCK_HOW,
             _tv_block_check, guards=("block.**", "stochastic_depth"))
      for mod, cls in (("efficientnet", "MBConv"), ("efficientnet", "FusedMBConv"),
                       ("mobilenetv3", "InvertedResidual"))),
    R.Rule("torchvision_mnasnet_InvertedResidual", "torchvision.models.mnasnet._InvertedResidual",
           {"forward": mnasnet_inverted_residual_forward},
           "layers' conv -> BN -> ReLU runs fused (Sequential plan); the last conv + BN + residual add: one pass",
           _mnasnet_check, guards=("layers",)),
]
