"""``pyfastblocks.swap(model)``: the fused blocks inside an existing torchvision or timm model.

Each block swap() recognizes (by its exact class, then by its structure) gets a fused ``forward`` by a change of
class: its instance keeps its children, parameters, buffers and attributes, so ``state_dict()`` keys and values are
unchanged and ``isinstance(block, OriginalClass)`` still holds. The fused class is a subclass of the original named
``pyfastblocks.swap.Fused_<rule>`` (picklable). A block that fails a structural check (another norm or activation
module, hooks on its submodules, a ``forward`` set on the instance, ...) is left exactly as it was, and the report
says why.
"""
import copy
import importlib
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from .models import _fused as F_
from .models import _timm as T_

# by module path: pyfastblocks.models re-exports constructors named like some of its modules (xception)
I_ = importlib.import_module(".models.inception", __package__)
MB_ = importlib.import_module(".models.mobilenet", __package__)
R_ = importlib.import_module(".models.resnet", __package__)
X_ = importlib.import_module(".models.xception", __package__)

__all__ = ["swap", "SwapReport", "RULES"]


# --------------------------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class Rule:
    """One class swap() rewrites: ``methods`` replace the original's, after ``check`` found nothing wrong."""

    key: str  # the fused class is pyfastblocks.swap.Fused_<key>
    path: str  # "module.QualName" of the original class
    methods: Dict[str, Callable]
    how: str  # what runs fused, for the report
    check: Callable[[nn.Module, Optional[nn.Module], str], Optional[str]] = lambda m, parent, name: None
    owns: Tuple[str, ...] = ()  # children the fused forward runs itself: their subtrees are not visited
    prepare: Optional[Callable[[nn.Module, Optional[nn.Module], str], None]] = None
    # the fused forward itself runs a child with hooks as a module (Sequential plans): skip the generic check
    handles_hooks: bool = False


def _problems(*reasons: Optional[str]) -> Optional[str]:
    found = [r for r in reasons if r]
    return "; ".join(found) if found else None


def _act_problem(m: Optional[nn.Module], name: str, allowed=("relu",)) -> Optional[str]:
    a = F_.act_name(m)
    if a not in allowed:
        return f"{name} is {type(m).__name__}, the fused forward needs {'/'.join(allowed)}"
    return None


def _children_problem(m: nn.Module, required, optional=()) -> Optional[str]:
    names = set(m._modules)
    missing = [n for n in required if m._modules.get(n) is None]
    extra = sorted(names - set(required) - set(optional))
    if missing:
        return f"missing children {missing}"
    if extra:
        return f"unexpected children {extra}"
    return None


# ---- torchvision ResNet


def _tv_basic_check(m, parent, name):
    return _problems(
        _children_problem(m, ("conv1", "bn1", "relu", "conv2", "bn2"), ("downsample",)),
        F_.conv_problem(m.conv1, "conv1"), F_.conv_problem(m.conv2, "conv2"),
        _bn_problem(m.bn1, "bn1"), _bn_problem(m.bn2, "bn2"), _act_problem(m.relu, "relu"),
    )


def _tv_bottleneck_check(m, parent, name):
    return _problems(
        _children_problem(m, ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"), ("downsample",)),
        *(F_.conv_problem(getattr(m, f"conv{i}"), f"conv{i}") for i in (1, 2, 3)),
        *(_bn_problem(getattr(m, f"bn{i}"), f"bn{i}") for i in (1, 2, 3)),
        _act_problem(m.relu, "relu"),
    )


def _tv_resnet_check(m, parent, name):
    return _problems(F_.conv_problem(m.conv1, "conv1"), _bn_problem(m.bn1, "bn1"), _act_problem(m.relu, "relu"))


def _bn_problem(bn, name):
    """A plain nn.BatchNorm2d (torchvision blocks call it as a BatchNorm, with no activation inside)."""
    if type(bn) is not nn.BatchNorm2d:
        return f"{name} is {type(bn).__name__}, not nn.BatchNorm2d"
    return None


# ---- timm ResNet


def _timm_block_check(n_convs):
    def check(m, parent, name):
        names = [f"conv{i}" for i in range(1, n_convs + 1)]
        return _problems(
            *(F_.conv_problem(getattr(m, c, None), c) for c in names),
            *(F_.norm_problem(getattr(m, f"bn{i}", None), f"bn{i}") for i in range(1, n_convs + 1)),
            *(None if hasattr(m, a) else f"no attribute {a}" for a in ("drop_block", "aa", "se", "drop_path",
                                                                      "downsample")),
        )
    return check


def _timm_resnet_check(m, parent, name):
    return _problems(
        None if hasattr(m, "grad_checkpointing") else "no attribute grad_checkpointing",
        F_.norm_problem(m.bn1, "bn1"),
    )


# ---- MobileNet


def _cna_problem(cna, name):
    """torchvision Conv2dNormActivation: [Conv2d, BatchNorm2d, ReLU/ReLU6]."""
    if F_.class_path(cna) != "torchvision.ops.misc.Conv2dNormActivation":
        return f"{name} is {type(cna).__name__}, not Conv2dNormActivation"
    layers = list(cna)
    if len(layers) != 3:
        return f"{name} has {len(layers)} layers, not conv/norm/activation"
    return _problems(F_.conv_problem(layers[0], f"{name}[0]"), _bn_problem(layers[1], f"{name}[1]"),
                     _act_problem(layers[2], f"{name}[2]", ("relu", "relu6")))


def _tv_inverted_residual_check(m, parent, name):
    problem = _children_problem(m, ("conv",))
    if problem:
        return problem
    if type(m.conv) is not nn.Sequential:
        return f"conv is {type(m.conv).__name__}, not nn.Sequential"
    layers = list(m.conv)
    if len(layers) not in (3, 4):
        return f"conv has {len(layers)} layers"
    return _problems(
        *(_cna_problem(c, f"conv[{i}]") for i, c in enumerate(layers[:-2])),
        F_.conv_problem(layers[-2], f"conv[{len(layers) - 2}]"), _bn_problem(layers[-1], f"conv[{len(layers) - 1}]"),
        None if isinstance(getattr(m, "use_res_connect", None), bool) else "no use_res_connect flag",
    )


def _timm_ds_check(m, parent, name):
    s2d = getattr(m, "conv_s2d", None)
    return _problems(
        F_.conv_problem(m.conv_dw, "conv_dw"), F_.norm_problem(m.bn1, "bn1"),
        F_.conv_problem(m.conv_pw, "conv_pw"), F_.norm_problem(m.bn2, "bn2"),
        None if s2d is None else _problems(F_.conv_problem(s2d, "conv_s2d"), F_.norm_problem(m.bn_s2d, "bn_s2d")),
        *(None if hasattr(m, a) else f"no attribute {a}" for a in ("aa", "se", "drop_path", "has_skip")),
    )


def _timm_efficientnet_check(m, parent, name):
    return _problems(
        F_.conv_problem(m.conv_stem, "conv_stem"), F_.norm_problem(m.bn1, "bn1"),
        None if type(m.conv_head) in (nn.Identity, nn.Conv2d) else "conv_head is not a Conv2d",
        None if type(m.conv_head) is nn.Identity else F_.conv_problem(m.conv_head, "conv_head"),
        None if type(m.conv_head) is nn.Identity else F_.norm_problem(m.bn2, "bn2"),
    )


# ---- Inception


_TV_INCEPTION = "torchvision.models.inception."
_INCEPTION_CHILDREN = {
    "InceptionA": ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
                   "branch_pool"),
    "InceptionB": ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
    "InceptionC": ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
                   "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"),
    "InceptionD": ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3",
                   "branch7x7x3_4"),
    "InceptionE": ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
                   "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"),
}


def _basic_conv2d_check(m, parent=None, name=""):
    where = f"{name}: " if name else ""
    problem = _children_problem(m, ("conv", "bn")) or _problems(F_.conv_problem(m.conv, "conv"),
                                                                _bn_problem(m.bn, "bn"))
    return f"{where}{problem}" if problem else None


def _inception_check(kind):
    def check(m, parent, name):
        children = _INCEPTION_CHILDREN[kind]
        problem = _children_problem(m, children)
        if problem:
            return problem
        return _problems(*(
            (f"{c} is {type(getattr(m, c)).__name__}, not BasicConv2d"
             if F_.class_path(getattr(m, c)) != _TV_INCEPTION + "BasicConv2d"
             else _basic_conv2d_check(getattr(m, c), m, c)) for c in children))
    return check


def _inception_pool_prepare(m, parent, name):
    """InceptionB/D: the max-pool branch may share the concat's ReLU when the input is a ReLU'd concat, which
    holds inside torchvision's Inception3 (Mixed_6a reads Mixed_5d, Mixed_7a reads Mixed_6e)."""
    before = {"Mixed_6a": ("Mixed_5d", "InceptionA"), "Mixed_7a": ("Mixed_6e", "InceptionC")}.get(name)
    if parent is not None and before is not None and F_.class_path(parent) == _TV_INCEPTION + "Inception3" \
            and F_.class_path(getattr(parent, before[0], None)) == _TV_INCEPTION + before[1]:
        object.__setattr__(m, "_fastblocks_nonneg_input", True)


# ---- Xception


def _legacy_block_check(m, parent, name):
    problem = _children_problem(m, ("rep",), ("skip", "skipbn"))
    if problem:
        return problem
    if m.skip is not None:
        problem = _problems(F_.conv_problem(m.skip, "skip"), _bn_problem(getattr(m, "skipbn", None), "skipbn"))
        if problem:
            return problem
    if type(m.rep) is not nn.Sequential:
        return "rep is not an nn.Sequential"
    plan = X_.legacy_block_plan(m.rep)
    if plan is None:
        return "rep is not ([ReLU] SeparableConv2d BatchNorm2d)* [MaxPool2d]"
    stages, pool = plan
    first = m.rep[0]
    for sep_name, bn_name, _ in stages:
        sep = m.rep._modules[sep_name]
        problem = _problems(
            None if F_.class_path(sep) == "timm.models.xception.SeparableConv2d" else f"rep.{sep_name} is "
            f"{type(sep).__name__}",
            _children_problem(sep, ("conv1", "pointwise")),
            F_.conv_problem(sep.conv1, f"rep.{sep_name}.conv1"), F_.conv_problem(sep.pointwise, f"rep.{sep_name}.pointwise"))
        if problem:
            return problem
    if type(first) is nn.ReLU and first.inplace:
        return "the first ReLU is in place (it would change the block input the residual reads)"
    return None


def _legacy_xception_check(m, parent, name):
    problems = [F_.conv_problem(m.conv1, "conv1"), F_.conv_problem(m.conv2, "conv2"),
                F_.norm_problem(m.bn1, "bn1"), F_.norm_problem(m.bn2, "bn2"),
                F_.norm_problem(m.bn3, "bn3"), F_.norm_problem(m.bn4, "bn4")]
    for c in ("conv3", "conv4"):
        sep = getattr(m, c)
        problems += [None if F_.class_path(sep) == "timm.models.xception.SeparableConv2d" else f"{c} is "
                     f"{type(sep).__name__}", F_.conv_problem(sep.conv1, f"{c}.conv1"),
                     F_.conv_problem(sep.pointwise, f"{c}.pointwise")]
    problems += [None if hasattr(m, f"block{i}") else f"no block{i}" for i in range(1, 13)]
    return _problems(*problems)


def _aligned_separable_check(m, parent=None, name=""):
    problem = _problems(F_.conv_problem(m.conv_dw, "conv_dw"), F_.conv_problem(m.conv_pw, "conv_pw"),
                        F_.norm_problem(m.bn_dw, "bn_dw"), F_.norm_problem(m.bn_pw, "bn_pw"))
    if problem:
        return problem
    if X_.aligned_separable_acts(m) is None:
        return "act_dw/act_pw are not ReLU/ReLU6/Identity"
    return None


def _conv_norm_act_check(m, parent=None, name=""):
    return _problems(F_.conv_problem(m.conv, "conv"), F_.norm_problem(m.bn, "bn"),
                     None if getattr(m, "aa", None) is None or type(m.aa) is nn.Identity else "has anti-aliasing")


def _aligned_module_check(m, parent, name):
    if type(m.stack) is not nn.Sequential:
        return "stack is not an nn.Sequential"
    plan = X_.aligned_module_plan(m.stack)
    if plan is None:
        return "stack is not ([ReLU] SeparableConv2d)*"
    problems = []
    for sep_name, _ in plan:
        sep = m.stack._modules[sep_name]
        if F_.class_path(sep) != "timm.models.xception_aligned.SeparableConv2d":
            problems.append(f"stack.{sep_name} is {type(sep).__name__}")
        else:
            problems.append(_aligned_separable_check(sep))
    first = m.stack[0]
    if type(first) is nn.ReLU and first.inplace:
        problems.append("the first ReLU is in place (it would change the block input the shortcut reads)")
    sc = getattr(m, "shortcut", None)
    if sc is not None:
        if F_.class_path(sc) != "timm.layers.conv_bn_act.ConvNormAct":
            problems.append(f"shortcut is {type(sc).__name__}")
        else:
            problems.append(_conv_norm_act_check(sc))
    problems += [None if hasattr(m, a) else f"no attribute {a}" for a in ("no_skip", "drop_path")]
    return _problems(*problems)


def _conv_norm_act_forward(self, x):
    x = F_.run_conv_norm_act(x, self.conv, self.bn)
    aa = getattr(self, "aa", None)
    return aa(x) if aa is not None else x


def _left_alone(reason):
    return lambda m, parent, name: reason


# ---- Sequentials


def _sequential_check(m, parent, name):
    return None if F_.sequential_plan(m) is not None else "nothing to fuse"


_SEQUENTIAL_HOW = "conv -> BN -> ReLU/ReLU6 runs: one conv_bn_act each"

RULES: Dict[str, Rule] = {}


def _add(rule: Rule) -> None:
    RULES[rule.path] = rule


_add(Rule("torchvision_BasicBlock", "torchvision.models.resnet.BasicBlock", {"forward": R_.basic_block_forward},
          "conv1+bn1+relu fused; conv2+bn2+add+relu fused", _tv_basic_check))
_add(Rule("torchvision_Bottleneck", "torchvision.models.resnet.Bottleneck", {"forward": R_.bottleneck_forward},
          "conv1/conv2+bn+relu fused; conv3+bn3+add+relu fused", _tv_bottleneck_check))
_add(Rule("torchvision_ResNet", "torchvision.models.resnet.ResNet", {"_forward_impl": R_.resnet_forward_impl},
          "stem conv1+bn1+relu fused", _tv_resnet_check))
_add(Rule("timm_BasicBlock", "timm.models.resnet.BasicBlock", {"forward": T_.timm_basic_block_forward},
          "conv+bn+act fused; bn2+add+act2 fused unless se/drop_path sit between", _timm_block_check(2)))
_add(Rule("timm_Bottleneck", "timm.models.resnet.Bottleneck", {"forward": T_.timm_bottleneck_forward},
          "conv+bn+act fused; bn3+add+act3 fused unless se/drop_path sit between", _timm_block_check(3)))
_add(Rule("timm_ResNet", "timm.models.resnet.ResNet", {"forward_features": T_.timm_resnet_forward_features},
          "stem conv1+bn1+act1 fused", _timm_resnet_check))
_add(Rule("torchvision_InvertedResidual", "torchvision.models.mobilenetv2.InvertedResidual",
          {"forward": MB_.inverted_residual_forward},
          "expand/depthwise conv+bn+relu6 fused; project conv+bn(+add) fused", _tv_inverted_residual_check,
          owns=("conv",)))
_add(Rule("timm_DepthwiseSeparableConv", "timm.models._efficientnet_blocks.DepthwiseSeparableConv",
          {"forward": MB_.depthwise_separable_forward},
          "depthwise conv+bn+act fused; pointwise conv+bn+act (or +add) fused", _timm_ds_check))
_add(Rule("timm_EfficientNet", "timm.models.efficientnet.EfficientNet",
          {"forward_features": MB_.efficientnet_forward_features}, "stem (and head) conv+bn+act fused",
          _timm_efficientnet_check))
_add(Rule("torchvision_BasicConv2d", _TV_INCEPTION + "BasicConv2d", {"forward": I_.basic_conv2d_forward},
          "conv+bn+relu fused", _basic_conv2d_check))
_add(Rule("torchvision_googlenet_BasicConv2d", "torchvision.models.googlenet.BasicConv2d",
          {"forward": I_.basic_conv2d_forward}, "conv+bn+relu fused", _basic_conv2d_check))
for _kind, _fn in (("InceptionA", I_.inception_a_forward), ("InceptionB", I_.inception_b_forward),
                   ("InceptionC", I_.inception_c_forward), ("InceptionD", I_.inception_d_forward),
                   ("InceptionE", I_.inception_e_forward)):
    _add(Rule(f"torchvision_{_kind}", _TV_INCEPTION + _kind, {"forward": _fn},
              "branch tails (BN+ReLU of every branch) + concat: one branch_concat"
              + (" (max-pool branch included inside Inception3)" if _kind in ("InceptionB", "InceptionD") else ""),
              _inception_check(_kind),
              prepare=_inception_pool_prepare if _kind in ("InceptionB", "InceptionD") else None))
_add(Rule("timm_legacy_xception_Block", "timm.models.xception.Block", {"forward": X_.legacy_block_forward},
          "ReLU before each separable conv as the depthwise prologue/previous epilogue; pointwise conv+bn(+relu) "
          "fused; last bn+residual add fused", _legacy_block_check, owns=("rep",)))
_add(Rule("timm_legacy_xception_Xception", "timm.models.xception.Xception",
          {"forward_features": X_.legacy_xception_forward_features},
          "entry convs conv+bn+relu fused; exit separable convs: pointwise conv+bn+relu fused", _legacy_xception_check))
_add(Rule("timm_XceptionModule", "timm.models.xception_aligned.XceptionModule",
          {"forward": X_.aligned_module_forward},
          "separable convs: depthwise conv+bn(+act) and pointwise conv+bn(+next ReLU) fused, first ReLU as the "
          "depthwise prologue; last bn+shortcut add fused", _aligned_module_check, owns=("stack", "shortcut")))
_add(Rule("timm_aligned_SeparableConv2d", "timm.models.xception_aligned.SeparableConv2d",
          {"forward": X_.aligned_separable_forward}, "depthwise and pointwise conv+bn+act fused",
          _aligned_separable_check))
_add(Rule("timm_ConvNormAct", "timm.layers.conv_bn_act.ConvNormAct", {"forward": _conv_norm_act_forward},
          "conv+bn+act fused", _conv_norm_act_check))
_add(Rule("timm_PreXceptionModule", "timm.models.xception_aligned.PreXceptionModule", {},
          "", _left_alone("pre-activation Xception (xception41p/65p) blocks are not fused")))
_add(Rule("Sequential", "torch.nn.modules.container.Sequential", {"forward": F_.fused_sequential_forward},
          _SEQUENTIAL_HOW, _sequential_check, handles_hooks=True))
_add(Rule("torchvision_Conv2dNormActivation", "torchvision.ops.misc.Conv2dNormActivation",
          {"forward": F_.fused_sequential_forward}, _SEQUENTIAL_HOW, _sequential_check, handles_hooks=True))


# --------------------------------------------------------------------------------------------------------------
# Fused classes (created on first use, found again by name when unpickling)

_FUSED_CLASSES: Dict[str, type] = {}


def _import_class(path: str) -> type:
    # a qualname may be nested (Outer.Inner): find the longest importable module prefix
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"pyfastblocks.swap: cannot import {path}")


def _fused_class(rule: Rule, base: type) -> type:
    name = f"Fused_{rule.key}"
    cls = _FUSED_CLASSES.get(name)
    if cls is None or cls._fastblocks_base is not base:
        attrs = dict(rule.methods)
        attrs.update(__module__=__name__, __qualname__=name, _fastblocks_fused=True, _fastblocks_base=base,
                     _fastblocks_rule=rule.key,
                     __doc__=f"{base.__module__}.{base.__qualname__} with fused forward ({rule.how}); made by "
                             "pyfastblocks.swap.")
        cls = type(name, (base,), attrs)
        _FUSED_CLASSES[name] = cls
        setattr(sys.modules[__name__], name, cls)
    return cls


def __getattr__(name: str):  # unpickling a swapped model in a fresh process
    if name.startswith("Fused_"):
        for rule in RULES.values():
            if f"Fused_{rule.key}" == name:
                return _fused_class(rule, _import_class(rule.path))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------------------
# Report


def _short(path: str) -> str:
    parts = path.split(".")
    lib = parts[0]
    return f"{parts[-1]} ({lib})" if lib in ("torchvision", "timm", "torch", "pyfastblocks") else path


@dataclass
class SwapReport:
    """What :func:`swap` did. ``swapped``: original class path -> count; ``how``: class path -> what runs fused;
    ``left``: class path -> {reason: count} for recognized classes left untouched, and for other classes that
    hold a BatchNorm or an activation directly ("not a recognized block"); ``already``: blocks that were fused
    already (a pyfastblocks model, or swapped before)."""

    swapped: Counter = field(default_factory=Counter)
    how: Dict[str, str] = field(default_factory=dict)
    left: Dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    left_at: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    already: Counter = field(default_factory=Counter)

    @property
    def total_swapped(self) -> int:
        return sum(self.swapped.values())

    def __str__(self) -> str:
        lines = [f"pyfastblocks.swap: {self.total_swapped} blocks swapped"]
        for path, n in sorted(self.swapped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {_short(path)} x{n}: {self.how.get(path, '')}")
        if self.already:
            lines.append("already fused:")
            for path, n in sorted(self.already.items()):
                lines.append(f"  {_short(path)} x{n}")
        if self.left:
            lines.append("left alone:")
            for path, reasons in sorted(self.left.items()):
                for reason, n in reasons.items():
                    lines.append(f"  {_short(path)} x{n}: {reason}")
        return "\n".join(lines)

    __repr__ = __str__


# --------------------------------------------------------------------------------------------------------------
# Walk


def _hooks_problem(m: nn.Module) -> Optional[str]:
    if "forward" in m.__dict__:
        return "forward is set on the instance"
    for name, sub in m.named_modules():
        if sub is m:
            continue
        if sub._forward_hooks or sub._forward_pre_hooks or getattr(sub, "_forward_hooks_with_kwargs", None):
            return f"hooks on submodule {name!r} (the fused forward would not call it)"
        if "forward" in sub.__dict__:
            return f"forward set on the instance of submodule {name!r}"
    return None


_UNFUSED_LEAVES = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6)


def _visit(m: nn.Module, parent: Optional[nn.Module], name: str, prefix: str, report: SwapReport) -> None:
    cls = type(m)
    owns: Tuple[str, ...] = ()
    if getattr(cls, "_fastblocks_fused", False):
        report.already[F_.class_path(m)] += 1
        rule = RULES.get(F_.class_path(m))
        owns = rule.owns if rule is not None else getattr(cls, "_fastblocks_owns", ())
    else:
        path = F_.class_path(m)
        rule = RULES.get(path)
        if rule is not None:
            try:
                reason = ("forward is set on the instance" if "forward" in m.__dict__ else None) or (
                    None if rule.handles_hooks else _hooks_problem(m)) or rule.check(m, parent, name)
            except Exception as e:  # noqa: BLE001 (a structure the check did not expect: leave the block alone)
                reason = f"unexpected structure ({type(e).__name__}: {e})"
            if reason is None:
                if rule.prepare is not None:
                    rule.prepare(m, parent, name)
                m.__class__ = _fused_class(rule, cls)
                report.swapped[path] += 1
                report.how[path] = rule.how
                owns = rule.owns
            elif reason != "nothing to fuse":
                report.left[path][reason] += 1
                report.left_at[path].append(prefix or "<model>")
        elif any(isinstance(c, _UNFUSED_LEAVES) for c in m.children()) and not isinstance(m, _UNFUSED_LEAVES):
            report.left[path]["not a recognized block"] += 1
            report.left_at[path].append(prefix or "<model>")
    for child_name, child in m.named_children():
        if child_name in owns or child is None:
            continue
        _visit(child, m, child_name, f"{prefix}.{child_name}" if prefix else child_name, report)


def swap(model: nn.Module, inplace: bool = False, report: bool = False):
    """Replace the blocks of ``model`` that pyfastblocks recognizes with fused versions that use the same
    parameters and buffers (state_dict keys and values unchanged; ``isinstance`` with the original class holds).

    Recognized, by exact class and then by structure (see :data:`RULES`; the report names each):

    - torchvision ``BasicBlock``/``Bottleneck``: conv+BN+ReLU fused, conv+BN+add+ReLU tail fused; ``ResNet``: the
      stem. timm ``resnet`` ``BasicBlock``/``Bottleneck`` (any act/norm the epilogue runs, SE, DropPath,
      DropBlock, anti-aliasing: what sits between BN and the add stays a module call, the add + ReLU is still
      fused) and ``ResNet`` (stem).
    - torchvision Inception ``BasicConv2d`` (and GoogLeNet's), ``InceptionA``-``E``: every branch's BN+ReLU and
      the concat in one ``branch_concat`` (InceptionE's inner pairs included).
    - torchvision ``InvertedResidual`` (MobileNetV2) and ``Conv2dNormActivation``; timm
      ``DepthwiseSeparableConv`` (mobilenetv1_*) and ``EfficientNet`` (stem/head), timm ``ConvNormAct``.
    - timm ``legacy_xception`` ``Block`` and ``Xception`` (entry/exit flow); ``xception41/65/71``
      ``XceptionModule`` and ``SeparableConv2d``: the ReLU before a separable conv becomes the depthwise kernel's
      input prologue or the previous pointwise conv's epilogue, the last BN takes the residual add.
    - ``nn.Sequential`` with conv -> BatchNorm -> ReLU/ReLU6 runs (VGG features, downsample pairs).

    Anything else is left untouched; a recognized block that fails a check (another norm or activation module,
    extra children, hooks on its submodules, ``forward`` set on the instance, ...) is left untouched whole, never
    half-swapped, and the report says why. ``TRAINING_BACKEND`` / ``DEPTHWISE_BACKEND`` in
    :mod:`pyfastblocks.models` choose, per device, how batch statistics and depthwise convolutions run. Swap
    before wrapping the model in DDP / DataParallel.

    Args:
        model: the model (any mode, device, dtype; the fused forwards follow ``model.train()``/``eval()``).
        inplace: change ``model`` itself; otherwise a deep copy is swapped and ``model`` is not modified.
        report: also return a :class:`SwapReport` (printable: blocks swapped per type, blocks left and why).

    Returns:
        the swapped model, or ``(model, SwapReport)`` with ``report=True``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    rep = SwapReport()
    _visit(model, None, "", "", rep)
    return (model, rep) if report else model
