"""The rules :func:`pyfastblocks.swap` applies, and the structural checks the family modules share.

A family module (``pyfastblocks/models/<family>.py``) holds its fused forwards and ends with
``SWAP_RULES = [Rule(...), ...]``; :mod:`pyfastblocks.swap` finds every module of this package that has one.
Adding a family is one new module here (plus its tests).
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

from torch import nn

from ._fused import act_name, class_path, conv_problem, norm_act, norm_problem  # noqa: F401 (re-exported)

__all__ = ["Rule", "problems", "act_problem", "children_problem", "bn_problem", "cna_problem", "conv_problem",
           "norm_problem", "left_alone", "has_attributes", "is_identity"]


@dataclass(frozen=True)
class Rule:
    """One class swap() rewrites: ``methods`` replace the original's, after ``check`` found nothing wrong.

    ``subclasses``: the rule also applies, by structure, to subclasses of ``path`` that do not override any of
    ``methods`` (an ``nn.Sequential`` subclass without a forward of its own is a Sequential)."""

    key: str  # the fused class is pyfastblocks.swap.Fused_<key>
    path: str  # "module.QualName" of the original class
    methods: Dict[str, Callable]
    how: str  # what runs fused, for the report
    check: Callable[[nn.Module, Optional[nn.Module], str], Optional[str]] = lambda m, parent, name: None
    owns: Tuple[str, ...] = ()  # children the fused forward runs itself: their subtrees are not visited
    # the fused forward itself runs a child with hooks as a module (Sequential plans): skip the generic check
    handles_hooks: bool = False
    # the children whose forward the fused forward replaces (paths; "name.**": name and its whole subtree),
    # checked at every call (see pyfastblocks.swap); a child missing at swap time must stay missing
    guards: Tuple[str, ...] = ()
    subclasses: bool = False


def problems(*reasons: Optional[str]) -> Optional[str]:
    found = [r for r in reasons if r]
    return "; ".join(found) if found else None


def act_problem(m: Optional[nn.Module], name: str, allowed: Optional[Sequence[str]] = ("relu",)) -> Optional[str]:
    """None when m is an activation the fused forward runs: one of ``allowed`` (spec strings), or any activation
    of the table (pyfastblocks.activations) when ``allowed`` is None."""
    a = act_name(m)
    if allowed is None:
        return None if a is not None else f"{name} is {type(m).__name__}, not an activation of the table"
    if a not in allowed:
        return f"{name} is {type(m).__name__}, the fused forward needs {'/'.join(allowed)}"
    return None


def children_problem(m: nn.Module, required, optional=()) -> Optional[str]:
    names = set(m._modules)
    missing = [n for n in required if m._modules.get(n) is None]
    extra = sorted(names - set(required) - set(optional))
    if missing:
        return f"missing children {missing}"
    if extra:
        return f"unexpected children {extra}"
    return None


def bn_problem(bn, name: str) -> Optional[str]:
    """A plain nn.BatchNorm2d (torchvision blocks call it as a BatchNorm, with no activation inside)."""
    if type(bn) is not nn.BatchNorm2d:
        return f"{name} is {type(bn).__name__}, not nn.BatchNorm2d"
    return None


CNA = "torchvision.ops.misc.Conv2dNormActivation"


def cna_problem(cna, name: str) -> Optional[str]:
    """torchvision Conv2dNormActivation: [Conv2d, BatchNorm2d, an activation of the table] or [Conv2d,
    BatchNorm2d] (built with ``activation_layer=None``)."""
    if class_path(cna) != CNA:
        return f"{name} is {type(cna).__name__}, not Conv2dNormActivation"
    layers = list(cna)
    if len(layers) not in (2, 3):
        return f"{name} has {len(layers)} layers, not conv/norm(/activation)"
    return problems(conv_problem(layers[0], f"{name}[0]"), bn_problem(layers[1], f"{name}[1]"),
                    act_problem(layers[2], f"{name}[2]", None) if len(layers) == 3 else None)


def cna_parts(cna) -> Tuple[nn.Conv2d, nn.BatchNorm2d, str]:
    """(conv, bn, activation spec) of a checked Conv2dNormActivation."""
    layers = list(cna)
    return layers[0], layers[1], act_name(layers[2]) if len(layers) > 2 else "none"


def left_alone(reason: str):
    return lambda m, parent, name: reason


def has_attributes(m: nn.Module, *names: str) -> Optional[str]:
    return problems(*(None if hasattr(m, a) else f"no attribute {a}" for a in names))


def is_identity(m: Optional[nn.Module]) -> bool:
    return m is None or type(m) is nn.Identity


def timm_cna_problem(m: nn.Module, name: str, activations: Optional[Sequence[str]] = None) -> Optional[str]:
    """timm ``ConvNormAct`` with a plain conv, a BatchNorm(Act) norm and no anti-aliasing (``activations``: the
    specs its norm's activation may have; None: any of the table)."""
    if class_path(m) != "timm.layers.conv_bn_act.ConvNormAct":
        return f"{name} is {type(m).__name__}, not ConvNormAct"
    p = problems(conv_problem(getattr(m, "conv", None), f"{name}.conv"),
                 norm_problem(getattr(m, "bn", None), f"{name}.bn"),
                 None if getattr(m, "aa", None) is None or type(m.aa) is nn.Identity else f"{name} has anti-aliasing")
    if p:
        return p
    act = norm_act(m.bn)[1]
    if activations is not None and act not in activations:
        return f"{name}'s activation is {act}, the fused forward needs {'/'.join(activations)}"
    return None
