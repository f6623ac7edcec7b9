"""The Inception family: Inception-v3 (torchvision layout and state_dict keys) built from the fused blocks, and the
swap() rules of every Inception-style module: torchvision's Inception-v3 and GoogLeNet modules, timm's
Inception-v3, Inception-v4 and Inception-ResNet-v2 modules.

Every conv block (BasicConv2d, timm's ConvNormAct) is one ``conv_bn_act``. A module that concatenates branches is
described by a branch spec (:data:`TV_INCEPTION_SPECS`, :data:`TIMM_SPECS`): per branch, the children (or pools)
that run on the module's input one after the other, then the conv blocks that end it. The last conv block of each
branch runs its convolution bare, and the BatchNorm + activation of every such branch and the concat are one
``fastblocks::branch_concat`` pass (InceptionE's inner 1x3/3x1 pairs go into the same call: the concat of concats
is one concat). A branch without a conv block at its end (a max-pool of the module's input) is not activated in
the original, so it is concatenated after (one ``torch.cat``): its sign is kept on any input. Average-pool
branches use ``count_include_pad`` as the original does. Inception-ResNet-v2's Block35/17/8 add the scaled 1x1
convolution to the input and apply the ReLU in one ``fastblocks::add_act`` pass.

The ``*_forward`` functions are also the forwards :func:`pyfastblocks.swap` gives torchvision's modules. Aux logits
in training, ``transform_input`` as torchvision.
"""
from collections import namedtuple
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import activations
from ..nn import _tail
from . import _rules as R
from ._fused import act_name, class_path, concat_tail, conv_bn_act, load_weights, norm_act

__all__ = ["Inception3", "InceptionOutputs", "inception_v3"]

InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])


def basic_conv2d_forward(self, x: Tensor) -> Tensor:
    return conv_bn_act(x, self.conv, self.bn, "relu")


# --------------------------------------------------------------------------------------------------------------
# Branch specs

# A step on the way down a branch: a child's name (run as the module it is) or a pool of torchvision's functional
# form. A branch: (steps, leaves): the steps run on the module's input one after the other; each leaf (a child
# that is a conv block, or an nn.Sequential ending in one) then runs on that, and contributes its output to the
# concat; leaves None: the steps' result is the contribution itself.
Step = Union[str, Callable[[Tensor], Tensor]]
Branch = Tuple[Tuple[Step, ...], Optional[Tuple[str, ...]]]


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)


def _max3s2(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=2)


TV_INCEPTION_SPECS: Dict[str, Tuple[Branch, ...]] = {
    "InceptionA": (((), ("branch1x1",)), (("branch5x5_1",), ("branch5x5_2",)),
                   (("branch3x3dbl_1", "branch3x3dbl_2"), ("branch3x3dbl_3",)), ((_avg3,), ("branch_pool",))),
    "InceptionB": (((), ("branch3x3",)), (("branch3x3dbl_1", "branch3x3dbl_2"), ("branch3x3dbl_3",)),
                   ((_max3s2,), None)),
    "InceptionC": (((), ("branch1x1",)), (("branch7x7_1", "branch7x7_2"), ("branch7x7_3",)),
                   (("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4"), ("branch7x7dbl_5",)),
                   ((_avg3,), ("branch_pool",))),
    "InceptionD": ((("branch3x3_1",), ("branch3x3_2",)),
                   (("branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3"), ("branch7x7x3_4",)), ((_max3s2,), None)),
    "InceptionE": (((), ("branch1x1",)), (("branch3x3_1",), ("branch3x3_2a", "branch3x3_2b")),
                   (("branch3x3dbl_1", "branch3x3dbl_2"), ("branch3x3dbl_3a", "branch3x3dbl_3b")),
                   ((_avg3,), ("branch_pool",))),
}

_GOOGLENET_SPEC = (((), ("branch1",)), ((), ("branch2",)), ((), ("branch3",)), ((), ("branch4",)))
_FOUR = (((), ("branch0",)), ((), ("branch1",)), ((), ("branch2",)), ((), ("branch3",)))
_REDUCTION = (((), ("branch0",)), ((), ("branch1",)), (("branch2",), None))

# timm: inception_v3 (the torchvision layout with ConvNormAct blocks), inception_v4, inception_resnet_v2
TIMM_SPECS: Dict[str, Tuple[Branch, ...]] = {
    **{f"timm.models.inception_v3.{k}": v for k, v in TV_INCEPTION_SPECS.items()},
    "timm.models.inception_v4.Mixed3a": ((("maxpool",), None), ((), ("conv",))),
    "timm.models.inception_v4.Mixed4a": (((), ("branch0",)), ((), ("branch1",))),
    "timm.models.inception_v4.Mixed5a": (((), ("conv",)), (("maxpool",), None)),
    "timm.models.inception_v4.InceptionA": _FOUR,
    "timm.models.inception_v4.ReductionA": _REDUCTION,
    "timm.models.inception_v4.InceptionB": _FOUR,
    "timm.models.inception_v4.ReductionB": _REDUCTION,
    "timm.models.inception_v4.InceptionC": (((), ("branch0",)), (("branch1_0",), ("branch1_1a", "branch1_1b")),
                                             (("branch2_0", "branch2_1", "branch2_2"), ("branch2_3a", "branch2_3b")),
                                             ((), ("branch3",))),
    "timm.models.inception_resnet_v2.Mixed_5b": _FOUR,
    "timm.models.inception_resnet_v2.Mixed_6a": (((), ("branch0",)), ((), ("branch1",)), (("branch2",), None)),
    "timm.models.inception_resnet_v2.Mixed_7a": (((), ("branch0",)), ((), ("branch1",)), ((), ("branch2",)),
                                                  (("branch3",), None)),
}
# Inception-ResNet-v2 blocks: branches, then conv2d, * scale, + input, activation (child name, or None)
TIMM_RESIDUAL_SPECS: Dict[str, Tuple[Tuple[Branch, ...], Optional[str]]] = {
    "timm.models.inception_resnet_v2.Block35": ((((), ("branch0",)), ((), ("branch1",)), ((), ("branch2",))), "act"),
    "timm.models.inception_resnet_v2.Block17": ((((), ("branch0",)), ((), ("branch1",))), "act"),
    "timm.models.inception_resnet_v2.Block8": ((((), ("branch0",)), ((), ("branch1",))), "relu"),
}

_RELU_BLOCKS = ("torchvision.models.inception.BasicConv2d", "torchvision.models.googlenet.BasicConv2d",
                "pyfastblocks.models.inception.BasicConv2d")
TIMM_CONV_NORM_ACT = "timm.layers.conv_bn_act.ConvNormAct"


def conv_block_parts(m: nn.Module) -> Optional[Tuple[nn.Conv2d, nn.Module, str]]:
    """(conv, BatchNorm, activation spec) of a conv block whose BN + activation a concat can take: a BasicConv2d
    (ReLU) or timm's ConvNormAct (its norm's activation; no anti-aliasing), with a plain conv; else None."""
    path = class_path(m)
    if path in _RELU_BLOCKS:
        if R.children_problem(m, ("conv", "bn")) or R.conv_problem(m.conv, "conv") or R.bn_problem(m.bn, "bn"):
            return None
        return m.conv, m.bn, "relu"
    if path == TIMM_CONV_NORM_ACT:
        if R.timm_cna_problem(m, "block"):
            return None
        bn, act = norm_act(m.bn)
        return (m.conv, bn, act) if bn is not None else None
    return None


def _leaf_parts(m: nn.Module) -> Optional[Tuple[List[nn.Module], nn.Conv2d, nn.Module, str]]:
    """(modules to run first, conv, BatchNorm, activation) of a branch leaf: a conv block, or an nn.Sequential
    ending in one; else None."""
    parts = conv_block_parts(m)
    if parts is not None:
        return [], *parts
    if class_path(m) == "torch.nn.modules.container.Sequential" and len(m) > 0:
        mods = list(m._modules.values())
        parts = conv_block_parts(mods[-1])
        if parts is not None:
            return mods[:-1], *parts
    return None


def _run_step(self, step: Step, h: Tensor) -> Tensor:
    return self._modules[step](h) if isinstance(step, str) else step(h)


def branches_concat(self, x: Tensor, spec: Sequence[Branch]) -> Tensor:
    """``cat([every branch's output], 1)`` with the last conv block of each branch fused into the concat (one
    branch_concat per run of neighbouring conv-block branches with the same activation; anything else is
    concatenated as it is)."""
    pieces: List[tuple] = []  # ("c", conv output, bn, activation) or ("t", tensor)
    for steps, leaves in spec:
        h = x
        for step in steps:
            h = _run_step(self, step, h)
        if leaves is None:
            pieces.append(("t", h))
            continue
        for leaf in leaves:
            m = self._modules[leaf]
            parts = _leaf_parts(m)
            if parts is None:  # not a conv block (any more): the child as it is
                pieces.append(("t", m(h)))
                continue
            first, conv, bn, act = parts
            hh = h
            for mod in first:
                hh = mod(hh)
            pieces.append(("c", conv(hh), bn, act))
    outs: List[Tensor] = []
    i = 0
    while i < len(pieces):
        if pieces[i][0] == "t":
            outs.append(pieces[i][1])
            i += 1
            continue
        j = i
        while j < len(pieces) and pieces[j][0] == "c" and pieces[j][3] == pieces[i][3]:
            j += 1
        group = pieces[i:j]
        outs.append(concat_tail([p[1] for p in group], [p[2] for p in group], pieces[i][3]))
        i = j
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


def branch_forward(spec: Sequence[Branch]) -> Callable[..., Tensor]:
    """The fused forward of a module that concatenates the branches of ``spec``."""
    def forward(self, x: Tensor) -> Tensor:
        return branches_concat(self, x, spec)
    forward.__doc__ = "Every branch's last BN + activation and the concat in one branch_concat (spec-driven)."
    return forward


def residual_branch_forward(spec: Sequence[Branch], act_child: Optional[str]) -> Callable[..., Tensor]:
    """The fused forward of an Inception-ResNet block: ``act(conv2d(cat(branches)) * scale + x)``, the concat's
    BN + ReLU in one branch_concat, the scale, add and activation in one add_act pass."""
    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d(branches_concat(self, x, spec))
        act = self._modules.get(act_child) if act_child is not None else None
        name, slope = activations.split(act_name(act))
        scale = torch.full((self.conv2d.out_channels,), float(self.scale), dtype=torch.float32, device=out.device)
        return _tail.add_act(out, x, name, "promote", slope, scale=scale)
    return forward


inception_a_forward = branch_forward(TV_INCEPTION_SPECS["InceptionA"])
inception_b_forward = branch_forward(TV_INCEPTION_SPECS["InceptionB"])
inception_c_forward = branch_forward(TV_INCEPTION_SPECS["InceptionC"])
inception_d_forward = branch_forward(TV_INCEPTION_SPECS["InceptionD"])
inception_e_forward = branch_forward(TV_INCEPTION_SPECS["InceptionE"])


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


# --------------------------------------------------------------------------------------------------------------
# swap() rules


def _basic_conv2d_check(m, parent=None, name=""):
    return R.children_problem(m, ("conv", "bn")) or R.problems(R.conv_problem(m.conv, "conv"),
                                                                R.bn_problem(m.bn, "bn"))


def _spec_children(spec: Sequence[Branch]) -> Tuple[List[str], List[str]]:
    steps = [s for st, _ in spec for s in st if isinstance(s, str)]
    leaves = [leaf for _, ls in spec if ls for leaf in ls]
    return steps, leaves


def _spec_check(spec: Sequence[Branch], extra: Sequence[str] = (), optional: Sequence[str] = ()):
    steps, leaves = _spec_children(spec)

    def check(m, parent, name):
        problem = R.children_problem(m, [*steps, *leaves, *extra], optional)
        if problem:
            return problem
        for leaf in leaves:
            if _leaf_parts(m._modules[leaf]) is None:
                return (f"{leaf} is {type(m._modules[leaf]).__name__}, not a conv block (BasicConv2d / ConvNormAct with "
                        "a plain conv and a BatchNorm, or a Sequential ending in one)")
        return None
    return check


def _residual_check(spec: Sequence[Branch], act_child: str):
    base = _spec_check(spec, ("conv2d",), (act_child,))

    def check(m, parent, name):
        return base(m, parent, name) or R.problems(
            None if isinstance(m.conv2d, nn.Conv2d) else "conv2d is not an nn.Conv2d",
            R.has_attributes(m, "scale"), R.act_problem(m._modules.get(act_child), act_child, None))
    return check


def _guards(spec: Sequence[Branch], *more: str) -> Tuple[str, ...]:
    return tuple(f"{leaf}.**" for leaf in _spec_children(spec)[1]) + more


_CONCAT_HOW = "every branch's last BN + activation and the concat: one branch_concat"
_POOL_HOW = " (a pool branch, not activated in the original, concatenated after)"
_TV = "torchvision.models.inception."

SWAP_RULES = [
    R.Rule("torchvision_BasicConv2d", _TV + "BasicConv2d", {"forward": basic_conv2d_forward}, "conv+bn+relu fused",
           _basic_conv2d_check, guards=("conv", "bn")),
    R.Rule("torchvision_googlenet_BasicConv2d", "torchvision.models.googlenet.BasicConv2d",
           {"forward": basic_conv2d_forward}, "conv+bn+relu fused", _basic_conv2d_check, guards=("conv", "bn")),
    R.Rule("torchvision_googlenet_Inception", "torchvision.models.googlenet.Inception",
           {"forward": branch_forward(_GOOGLENET_SPEC)}, _CONCAT_HOW, _spec_check(_GOOGLENET_SPEC),
           guards=_guards(_GOOGLENET_SPEC)),
]
for _kind, _spec in TV_INCEPTION_SPECS.items():
    _pool = any(leaves is None for _, leaves in _spec)
    SWAP_RULES.append(R.Rule(f"torchvision_{_kind}", _TV + _kind, {"forward": branch_forward(_spec)},
                             _CONCAT_HOW + (_POOL_HOW if _pool else ""), _spec_check(_spec), guards=_guards(_spec)))
for _path, _spec in TIMM_SPECS.items():
    _pool = any(leaves is None for _, leaves in _spec)
    SWAP_RULES.append(R.Rule("timm_" + "_".join(_path.split(".")[-2:]), _path, {"forward": branch_forward(_spec)},
                             _CONCAT_HOW + (_POOL_HOW if _pool else ""), _spec_check(_spec), guards=_guards(_spec)))
for _path, (_spec, _act) in TIMM_RESIDUAL_SPECS.items():
    SWAP_RULES.append(R.Rule("timm_" + "_".join(_path.split(".")[-2:]), _path,
                             {"forward": residual_branch_forward(_spec, _act)},
                             _CONCAT_HOW + "; conv2d * scale + input + activation: one add_act", _residual_check(_spec, _act),
                             guards=_guards(_spec, _act)))
