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
import pkgutil
import sys
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from torch import nn

from .models import _fused as F_
from .models._rules import Rule

__all__ = ["swap", "SwapReport", "RULES", "Rule"]


# --------------------------------------------------------------------------------------------------------------
# Rules: every module of pyfastblocks.models that declares SWAP_RULES (one module per family: its fused forwards,
# its checks, its rules). A new family is one new module there.


def _family_modules() -> List[str]:
    from . import models

    return sorted(info.name for info in pkgutil.iter_modules(models.__path__))


def _collect_rules() -> Dict[str, Rule]:
    rules: Dict[str, Rule] = {}
    keys: Dict[str, str] = {}
    for name in _family_modules():
        module = importlib.import_module(f".models.{name}", __package__)
        for rule in getattr(module, "SWAP_RULES", ()):
            if rule.path in rules or rule.key in keys:
                raise RuntimeError(f"pyfastblocks.swap: two rules for {rule.path} / key {rule.key} "
                                   f"(pyfastblocks.models.{name} and pyfastblocks.models.{keys.get(rule.key)})")
            rules[rule.path] = rule
            keys[rule.key] = name
    return rules


RULES: Dict[str, Rule] = _collect_rules()


def _rule_for(cls: type) -> Tuple[Optional[Rule], str]:
    """The rule for a class, and the key of its fused class: by exact class path, else the nearest base class
    whose rule applies to ``subclasses`` that override none of its methods (e.g. an ``nn.Sequential`` subclass
    without a forward of its own)."""
    path = F_.class_path(cls)
    rule = RULES.get(path)
    if rule is not None:
        return rule, rule.key
    for base in cls.__mro__[1:]:
        rule = RULES.get(F_.class_path(base))
        if rule is not None and rule.subclasses:
            if all(getattr(cls, meth) is getattr(base, meth) for meth in rule.methods):
                return rule, _subclass_key(rule, path)
            return None, ""  # overrides a method the rule replaces: not what the rule knows
    return None, ""


# a fused subclass's key names the rule and the original class (dots as "_dot_"), so unpickling finds both
_DOT = "_dot_"


def _subclass_key(rule: Rule, path: str) -> str:
    return f"{rule.key}_of_{path.replace('.', _DOT)}"


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


def _fused_class(rule: Rule, base: type, key: Optional[str] = None) -> type:
    name = f"Fused_{key or rule.key}"
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
            prefix = f"Fused_{rule.key}_of_"
            if rule.subclasses and name.startswith(prefix):
                path = name[len(prefix):].replace(_DOT, ".")
                return _fused_class(rule, _import_class(path), name[len("Fused_"):])
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
        rule = _rule_for(getattr(cls, "_fastblocks_base", cls))[0]
        owns = rule.owns if rule is not None else getattr(cls, "_fastblocks_owns", ())
    else:
        path = F_.class_path(m)
        rule, key = _rule_for(cls)
        if rule is not None:
            try:
                reason = ("forward is set on the instance" if "forward" in m.__dict__ else None) or (
                    None if rule.handles_hooks else _hooks_problem(m)) or rule.check(m, parent, name)
            except Exception as e:  # noqa: BLE001 (a structure the check did not expect: leave the block alone)
                reason = f"unexpected structure ({type(e).__name__}: {e})"
            if reason is None:
                m.__class__ = _fused_class(rule, cls, key)
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

    Recognized, by exact class and then by structure (:data:`RULES`, gathered from the ``SWAP_RULES`` of the
    family modules in :mod:`pyfastblocks.models`; the report names each):

    - ResNet (``models/resnet.py``): torchvision ``BasicBlock``/``Bottleneck`` (conv+BN+ReLU fused, conv+BN+add+ReLU
      tail fused) and ``ResNet`` (stem); timm ``BasicBlock``/``Bottleneck`` (any norm/activation the epilogue runs;
      a squeeze-excitation gate is applied in the add's pass; DropBlock, anti-aliasing, other attention and an
      active drop-path stay module calls) and ``ResNet`` (stem).
    - Inception (``models/inception.py``): torchvision Inception-v3 and GoogLeNet ``BasicConv2d`` and Inception
      modules, timm Inception-v3 / v4 / Inception-ResNet-v2 modules: every branch's last BN + activation and the
      concat in one ``branch_concat``; Inception-ResNet blocks' scale + residual add + activation in one pass.
    - DenseNet (``models/densenet.py``): torchvision ``_DenseLayer`` and timm ``DenseLayer``: cat + BN + ReLU in
      one ``branch_concat`` (eval), conv1 + BN + ReLU fused.
    - MobileNet (``models/mobilenet.py``): torchvision ``InvertedResidual`` (MobileNetV2); timm
      ``DepthwiseSeparableConv`` and ``EfficientNet`` (stem/head).
    - Xception (``models/xception.py``): timm ``legacy_xception`` ``Block`` and ``Xception``; ``xception41/65/71``
      ``XceptionModule`` and ``SeparableConv2d``: the ReLU before a separable conv becomes the depthwise kernel's
      input prologue or the previous pointwise conv's epilogue, the last BN takes the residual add.
    - Containers (``models/sequential.py``): ``nn.Sequential`` and its subclasses without a forward of their own
      (conv -> BN -> activation runs, BN -> activation runs), torchvision ``Conv2dNormActivation``, timm
      ``ConvNormAct``. swap() visits the children of every block it does not recognize, so these still fuse
      inside unknown families.

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

    ``TRAINING_BACKEND`` / ``DEPTHWISE_BACKEND`` in :mod:`pyfastblocks.policy` (the one policy table; the same dicts
    are in :mod:`pyfastblocks.models`) choose, per device, how batch
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
