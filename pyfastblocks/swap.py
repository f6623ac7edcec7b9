"""``pyfastblocks.swap(model)``: the fused blocks inside an existing torchvision or timm model.

Each block swap() recognizes (by its exact class, then by its structure) gets a fused ``forward`` by a change of
class: its instance keeps its children, parameters, buffers and attributes, so ``state_dict()`` keys and values are
unchanged and ``isinstance(block, OriginalClass)`` still holds. The fused class is a subclass of the original named
``pyfastblocks.swap.Fused_<rule>`` (picklable). A block that fails a structural check (another norm or activation
module, hooks on its submodules, a ``forward`` set on the instance, ...) is left exactly as it was, and the report
says why.

A swapped block follows the live model. Its fused forward reads the parameters and buffers at every call (nothing
is cached), and before that it checks, in a few attribute reads, that the block is still what swap() recognized:
each child the fused forward runs itself (its rule's ``guards``) has the class it had, no forward / backward hooks
or pre-hooks, no ``forward`` set on the instance (parametrizations change a module's class; pruning and the old
weight_norm / spectral_norm add a forward pre-hook), the containers among them the same children; and no hooks are
registered for every module. Otherwise the block runs its original class's forward, so the result is the
unswapped model's; the ``pyfastblocks`` logger says why at debug level (once per block and reason) and
:attr:`SwapReport.stepped_aside` counts it. Hooks on the swapped block itself run as usual (``Module.__call__``
runs them around the fused forward).
"""
import copy
import importlib
import logging
import sys
import weakref
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
    # the fused forward itself runs a child with hooks as a module (Sequential plans): skip the generic check
    handles_hooks: bool = False
    # the children whose forward the fused forward replaces (paths; "name.**": name and its whole subtree),
    # checked at every call (see the module docstring); a child missing at swap time must stay missing
    guards: Tuple[str, ...] = ()


def _problems(*reasons: Optional[str]) -> Optional[str]:
    found = [r for r in reasons if r]
    return "; ".join(found) if found else None


def _act_problem(m: Optional[nn.Module], name: str, allowed=("relu",)) -> Optional[str]:
    """None when m is an activation the fused forward runs: one of ``allowed`` (spec strings), or any activation
    of the table (pyfastblocks.activations) when ``allowed`` is None."""
    a = F_.act_name(m)
    if allowed is None:
        return None if a is not None else f"{name} is {type(m).__name__}, not an activation of the table"
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
    """torchvision Conv2dNormActivation: [Conv2d, BatchNorm2d, an activation of the table]."""
    if F_.class_path(cna) != "torchvision.ops.misc.Conv2dNormActivation":
        return f"{name} is {type(cna).__name__}, not Conv2dNormActivation"
    layers = list(cna)
    if len(layers) != 3:
        return f"{name} has {len(layers)} layers, not conv/norm/activation"
    return _problems(F_.conv_problem(layers[0], f"{name}[0]"), _bn_problem(layers[1], f"{name}[1]"),
                     _act_problem(layers[2], f"{name}[2]", None))


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
        return "act_dw/act_pw are not activations of the table (or do not compose with their norms)"
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


_SEQUENTIAL_HOW = "conv -> BN -> activation runs: one conv_bn_act each"

RULES: Dict[str, Rule] = {}


def _add(rule: Rule) -> None:
    RULES[rule.path] = rule


_add(Rule("torchvision_BasicBlock", "torchvision.models.resnet.BasicBlock", {"forward": R_.basic_block_forward},
          "conv1+bn1+relu fused; conv2+bn2+add+relu fused", _tv_basic_check,
          guards=("conv1", "bn1", "relu", "conv2", "bn2")))
_add(Rule("torchvision_Bottleneck", "torchvision.models.resnet.Bottleneck", {"forward": R_.bottleneck_forward},
          "conv1/conv2+bn+relu fused; conv3+bn3+add+relu fused", _tv_bottleneck_check,
          guards=("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu")))
_add(Rule("torchvision_ResNet", "torchvision.models.resnet.ResNet", {"_forward_impl": R_.resnet_forward_impl},
          "stem conv1+bn1+relu fused", _tv_resnet_check, guards=("conv1", "bn1", "relu")))
_add(Rule("timm_BasicBlock", "timm.models.resnet.BasicBlock", {"forward": T_.timm_basic_block_forward},
          "conv+bn+act fused; bn2+add+act2 fused unless se/drop_path sit between", _timm_block_check(2),
          guards=("conv1", "bn1.**", "drop_block", "act1", "conv2", "bn2.**", "act2")))
_add(Rule("timm_Bottleneck", "timm.models.resnet.Bottleneck", {"forward": T_.timm_bottleneck_forward},
          "conv+bn+act fused; bn3+add+act3 fused unless se/drop_path sit between", _timm_block_check(3),
          guards=("conv1", "bn1.**", "act1", "conv2", "bn2.**", "drop_block", "act2", "conv3", "bn3.**", "act3")))
_add(Rule("timm_ResNet", "timm.models.resnet.ResNet", {"forward_features": T_.timm_resnet_forward_features},
          "stem conv1+bn1+act1 fused", _timm_resnet_check, guards=("conv1.**", "bn1.**", "act1")))
_add(Rule("torchvision_InvertedResidual", "torchvision.models.mobilenetv2.InvertedResidual",
          {"forward": MB_.inverted_residual_forward},
          "expand/depthwise conv+bn+relu6 fused; project conv+bn(+add) fused", _tv_inverted_residual_check,
          owns=("conv",), guards=("conv.**",)))
_add(Rule("timm_DepthwiseSeparableConv", "timm.models._efficientnet_blocks.DepthwiseSeparableConv",
          {"forward": MB_.depthwise_separable_forward},
          "depthwise conv+bn+act fused; pointwise conv+bn+act (or +add) fused", _timm_ds_check,
          guards=("conv_s2d", "bn_s2d.**", "conv_dw", "bn1.**", "conv_pw", "bn2.**")))
_add(Rule("timm_EfficientNet", "timm.models.efficientnet.EfficientNet",
          {"forward_features": MB_.efficientnet_forward_features}, "stem (and head) conv+bn+act fused",
          _timm_efficientnet_check, guards=("conv_stem", "bn1.**", "conv_head", "bn2.**")))
_add(Rule("torchvision_BasicConv2d", _TV_INCEPTION + "BasicConv2d", {"forward": I_.basic_conv2d_forward},
          "conv+bn+relu fused", _basic_conv2d_check, guards=("conv", "bn")))
_add(Rule("torchvision_googlenet_BasicConv2d", "torchvision.models.googlenet.BasicConv2d",
          {"forward": I_.basic_conv2d_forward}, "conv+bn+relu fused", _basic_conv2d_check, guards=("conv", "bn")))
for _kind, _fn in (("InceptionA", I_.inception_a_forward), ("InceptionB", I_.inception_b_forward),
                   ("InceptionC", I_.inception_c_forward), ("InceptionD", I_.inception_d_forward),
                   ("InceptionE", I_.inception_e_forward)):
    _add(Rule(f"torchvision_{_kind}", _TV_INCEPTION + _kind, {"forward": _fn},
              "branch tails (BN+ReLU of every branch) + concat: one branch_concat"
              + (" (the max-pool branch concatenated after)" if _kind in ("InceptionB", "InceptionD") else ""),
              _inception_check(_kind), guards=tuple(f"{c}.**" for c in _INCEPTION_CHILDREN[_kind])))
_add(Rule("timm_legacy_xception_Block", "timm.models.xception.Block", {"forward": X_.legacy_block_forward},
          "ReLU before each separable conv as the depthwise prologue/previous epilogue; pointwise conv+bn(+relu) "
          "fused; last bn+residual add fused", _legacy_block_check, owns=("rep",), guards=("rep.**", "skip", "skipbn")))
_add(Rule("timm_legacy_xception_Xception", "timm.models.xception.Xception",
          {"forward_features": X_.legacy_xception_forward_features},
          "entry convs conv+bn+relu fused; exit separable convs: pointwise conv+bn+relu fused", _legacy_xception_check,
          guards=("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3.**", "bn3", "act3", "conv4.**", "bn4",
                  "act4")))
_add(Rule("timm_XceptionModule", "timm.models.xception_aligned.XceptionModule",
          {"forward": X_.aligned_module_forward},
          "separable convs: depthwise conv+bn(+act) and pointwise conv+bn(+next ReLU) fused, first ReLU as the "
          "depthwise prologue; last bn+shortcut add fused", _aligned_module_check, owns=("stack", "shortcut"),
          guards=("stack.**", "shortcut.**")))
_add(Rule("timm_aligned_SeparableConv2d", "timm.models.xception_aligned.SeparableConv2d",
          {"forward": X_.aligned_separable_forward}, "depthwise and pointwise conv+bn+act fused",
          _aligned_separable_check, guards=("conv_dw", "bn_dw.**", "act_dw", "conv_pw", "bn_pw.**", "act_pw")))
_add(Rule("timm_ConvNormAct", "timm.layers.conv_bn_act.ConvNormAct", {"forward": _conv_norm_act_forward},
          "conv+bn+act fused", _conv_norm_act_check, guards=("conv", "bn.**")))
_add(Rule("timm_PreXceptionModule", "timm.models.xception_aligned.PreXceptionModule", {},
          "", _left_alone("pre-activation Xception (xception41p/65p) blocks are not fused")))
# Sequentials: the plan, made at every call, runs a child with hooks as itself (no guarded children)
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


# ---- the guard: is the block still what swap() recognized?

_log = logging.getLogger("pyfastblocks")
_UNFUSED_SEEN: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()
_REPORTED_AT: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _signature(m: nn.Module, guards: Tuple[str, ...]) -> tuple:
    """What swap() recognized, for the guard: ``(keys, class, child names)`` per guarded child (every module of a
    ``"name.**"`` subtree, with its child names; ``None`` for a guarded child outside a subtree, () for a leaf)."""
    entries = []
    for path in guards:
        subtree = path.endswith(".**")
        keys = tuple((path[:-3] if subtree else path).split("."))
        node = _child(m, keys)
        if subtree and node is not None:
            for name, sub in node.named_modules(remove_duplicate=False):
                entries.append((keys + tuple(name.split(".")) if name else keys, type(sub), tuple(sub._modules)))
        else:
            entries.append((keys, type(node), None))
    return tuple(entries)


def _child(m: Optional[nn.Module], keys: Tuple[str, ...]) -> Optional[nn.Module]:
    for k in keys:
        if m is None:
            return None
        m = m._modules.get(k)
    return m


def _drift(block: nn.Module) -> Optional[str]:
    """Why ``block`` is no longer what swap() recognized, or None (the fused forward may run): a few attribute
    reads per guarded child, at every call."""
    if F_.global_hooks():
        return "hooks are registered for every module (register_module_forward_hook and the like)"
    for keys, cls, children in getattr(block, "_fastblocks_expect", ()):
        m = block
        for k in keys:
            m = m._modules.get(k) if m is not None else None
        if type(m) is not cls:
            what = "parametrized " if hasattr(m, "parametrizations") else ""
            return f"{'.'.join(keys)} is now {what}{type(m).__name__}, swap() recognized {cls.__name__}"
        if m is None:
            continue
        d = m.__dict__  # instance attributes, read from the dict (faster than attribute lookups on a Module)
        if d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"] or d["_backward_pre_hooks"]:
            return (f"hooks on {'.'.join(keys)} (a forward / backward hook or pre-hook: also pruning, "
                    "weight_norm, spectral_norm, quantization observers)")
        if "forward" in d:
            return f"forward is set on the instance of {'.'.join(keys)}"
        if children is not None and (tuple(d["_modules"]) != children if children else d["_modules"]):
            return f"the children of {'.'.join(keys) or 'the block'} changed"
    return None


def _ran_unfused(block: nn.Module, reason: str) -> None:
    seen = _UNFUSED_SEEN.get(block)
    if seen is None:
        seen = _UNFUSED_SEEN[block] = set()
    at = _REPORTED_AT.get(block)
    where = at[1] if at is not None else F_.class_path(block)
    if reason not in seen:
        seen.add(reason)
        _log.debug("swapped block %s ran its original forward: %s", where, reason)
    report = at[0]() if at is not None else None
    if report is not None:
        report.stepped_aside[where][reason] += 1


def _guarded(name: str, fused: Callable, base: type) -> Callable:
    original = getattr(base, name)

    def method(self, *args, **kwargs):
        reason = _drift(self)
        if reason is not None:
            _ran_unfused(self, reason)
            return original(self, *args, **kwargs)
        return fused(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = fused.__doc__
    method.__wrapped__ = fused
    return method


def _fused_class(rule: Rule, base: type) -> type:
    name = f"Fused_{rule.key}"
    cls = _FUSED_CLASSES.get(name)
    if cls is None or cls._fastblocks_base is not base:
        attrs = {method: _guarded(method, fn, base) for method, fn in rule.methods.items()}
        attrs.update(__module__=__name__, __qualname__=name, _fastblocks_fused=True, _fastblocks_base=base,
                     _fastblocks_rule=rule.key,
                     __doc__=f"{base.__module__}.{base.__qualname__} with fused forward ({rule.how}); made by "
                             "pyfastblocks.swap. At every call it checks that the block is still what swap() "
                             "recognized, else it runs the original forward.")
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
    already (a pyfastblocks model, or swapped before); ``stepped_aside``: filled while the model runs, block path
    -> {reason: calls} for swapped blocks that ran their original forward because they changed after swap()
    (hooks, parametrizations, replaced children, ...)."""

    swapped: Counter = field(default_factory=Counter)
    how: Dict[str, str] = field(default_factory=dict)
    left: Dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    left_at: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    already: Counter = field(default_factory=Counter)
    stepped_aside: Dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

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
        if self.stepped_aside:
            lines.append("ran unfused since swap() (the block changed):")
            for path, reasons in sorted(self.stepped_aside.items()):
                for reason, n in reasons.items():
                    lines.append(f"  {path} ({n} calls): {reason}")
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
        if not F_.unhooked(sub) and "forward" not in sub.__dict__:
            return f"hooks on submodule {name!r} (the fused forward would not call it)"
        if "forward" in sub.__dict__:
            return f"forward set on the instance of submodule {name!r}"
    return None


_UNFUSED_LEAVES = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6)


def _visit(m: nn.Module, parent: Optional[nn.Module], name: str, prefix: str, report: SwapReport,
           swapped: List[tuple]) -> None:
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
                m.__class__ = _fused_class(rule, cls)
                swapped.append((m, rule, prefix or "<model>"))
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
        _visit(child, m, child_name, f"{prefix}.{child_name}" if prefix else child_name, report, swapped)


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
    half-swapped, and the report says why.

    The swapped model follows the live model: every fused forward reads the parameters and buffers at each call
    (in-place weight loads, BatchNorm recalibration, ``.to()``, inference mode are seen), and a block that changed
    after swap() (hooks or pre-hooks on a child it runs itself, a parametrization or pruning of their weights, a
    replaced child of another class, hooks for every module) runs its original forward instead; the report's
    ``stepped_aside`` and the ``pyfastblocks`` logger (debug) say which and why. ``torch.fx.symbolic_trace`` and
    torchvision's ``create_feature_extractor`` trace the fused forwards (each BatchNorm tail one node; the mode
    at trace time decides batch or running statistics, as for any traced module).

    ``TRAINING_BACKEND`` / ``DEPTHWISE_BACKEND`` in :mod:`pyfastblocks.models` choose, per device, how batch
    statistics and depthwise convolutions run. Swap before wrapping the model in DDP / DataParallel.

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
    swapped: List[tuple] = []
    _visit(model, None, "", "", rep, swapped)
    # what each guard expects, recorded once every block is swapped (children that are swapped blocks themselves
    # have their fused class by then); a plain attribute, not in the state_dict
    for m, rule, where in swapped:
        object.__setattr__(m, "_fastblocks_expect", _signature(m, rule.guards))
        _REPORTED_AT[m] = (weakref.ref(rep), where)
    return (model, rep) if report else model
