"""The activation table, Python side: every activation the fused epilogues apply, by torch's functional name.

The C++ side (value and derivative, CPU and CUDA) is ``csrc/common/activation.h``; the two lists hold the same names
in the same meaning. Everything in pyfastblocks that needs to know an activation goes through this table:

- the ops (``pyfastblocks.ops``) check names with :func:`get` and decide what their backward keeps with
  :attr:`Activation.grad_from_output`;
- ``swap()``, the models and ``freeze()`` recognize activation modules with :func:`from_module` (``nn.ReLU``,
  ``nn.SiLU``, ``nn.GELU(approximate=...)``, timm's own classes, ...); ``freeze()`` (which sees a traced graph)
  recognizes functional calls (``F.relu(x, inplace=True)``, ``x.relu()``, ``F.gelu(x, approximate="tanh")``) with
  :func:`from_call`;
- eager fallbacks and references call :attr:`Activation.function`;
- CPU inference hands the activation to oneDNN's fused convolution as the post-op :attr:`Activation.onednn`.

Adding an activation: one :class:`Activation` entry here, one functor + one line in ``csrc/common/activation.h``, and
the tests (which iterate this table).
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Activation", "ACTIVATIONS", "NAMES", "get", "from_module", "from_call", "apply", "compose", "check",
           "spec", "spec_of_module", "split", "compose_specs"]

DEFAULT_NEGATIVE_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    """One entry of the table.

    Attributes:
        name: torch's functional name (the ops' ``activation`` argument).
        function: ``function(x, negative_slope) -> Tensor``, the eager PyTorch equivalent (the reference and the
            fallback); ``negative_slope`` is only used by ``leaky_relu``.
        modules: ``nn.Module`` classes (or ``"module.QualName"`` paths, for libraries that are not imported here)
            that apply this activation; ``match`` refines the decision for classes with arguments.
        match: ``match(module) -> negative_slope or None``: whether a module of one of ``modules`` applies exactly this
            activation (and with which slope); the default accepts every instance.
        grad_from_output: ``grad_from_output(negative_slope) -> bool``: the gradient follows from the output alone
            (ReLU-like), so a backward may keep the output instead of the pre-activation.
        idempotent: ``act(act(x)) == act(x)`` (two in a row are one).
        onednn: ``onednn(negative_slope) -> (attr, scalars, algorithm)``: the unary post-op of
            ``torch.ops.mkldnn._convolution_pointwise`` that applies this activation.
        function_: the in-place form of ``function`` where torch has one (None: none).
        calls: the functions (``F.relu``, ``torch.relu_``, ...) and tensor method names (``"relu"``) that apply this
            activation to their first argument; ``match_call`` refines the decision for those with arguments.
        match_call: ``match_call(target, args, kwargs) -> negative_slope or None`` for a call of ``target``, one of
            ``calls`` (``args`` starts with the input); the default accepts every call.
    """

    name: str
    function: Callable[[Tensor, float], Tensor]
    modules: Tuple = ()
    match: Callable[[nn.Module], Optional[float]] = field(default=lambda m: DEFAULT_NEGATIVE_SLOPE)
    grad_from_output: Callable[[float], bool] = field(default=lambda slope: False)
    idempotent: bool = False
    onednn: Callable[[float], Tuple[str, List[float], Optional[str]]] = field(default=lambda slope: ("none", [], None))
    function_: Optional[Callable[[Tensor, float], Tensor]] = None
    calls: Tuple = ()
    match_call: Callable[[object, tuple, dict], Optional[float]] = field(
        default=lambda target, args, kwargs: DEFAULT_NEGATIVE_SLOPE)


def _hardtanh_relu6(m: nn.Module) -> Optional[float]:
    return DEFAULT_NEGATIVE_SLOPE if m.min_val == 0.0 and m.max_val == 6.0 else None


def _gelu(approximate: str) -> Callable[[nn.Module], Optional[float]]:
    return lambda m: DEFAULT_NEGATIVE_SLOPE if getattr(m, "approximate", "none") == approximate else None


def _argument(args: tuple, kwargs: dict, index: int, name: str, default):
    """Argument ``index`` (counting the input as 0) or keyword ``name`` of a call, else ``default``."""
    return args[index] if len(args) > index else kwargs.get(name, default)


def _relu6_call(target, args: tuple, kwargs: dict) -> Optional[float]:
    if target is not F.hardtanh:  # F.relu6(x, inplace)
        return DEFAULT_NEGATIVE_SLOPE
    low, high = _argument(args, kwargs, 1, "min_val", -1.0), _argument(args, kwargs, 2, "max_val", 1.0)
    return DEFAULT_NEGATIVE_SLOPE if low == 0.0 and high == 6.0 else None


def _gelu_call(approximate: str) -> Callable[[object, tuple, dict], Optional[float]]:
    return lambda target, args, kwargs: DEFAULT_NEGATIVE_SLOPE if _argument(args, kwargs, 1, "approximate", "none") == \
        approximate else None


def _leaky_call(target, args: tuple, kwargs: dict) -> Optional[float]:
    slope = _argument(args, kwargs, 1, "negative_slope", DEFAULT_NEGATIVE_SLOPE)
    return float(slope) if isinstance(slope, (int, float)) and not isinstance(slope, bool) else None


_TIMM = "timm.layers.activations."

_ENTRIES = [
    Activation("none", lambda x, s: x, (nn.Identity,), grad_from_output=lambda s: True, idempotent=True,
               onednn=lambda s: ("none", [], None), function_=lambda x, s: x),
    Activation("relu", lambda x, s: F.relu(x), (nn.ReLU,), grad_from_output=lambda s: True, idempotent=True,
               onednn=lambda s: ("relu", [], None), function_=lambda x, s: torch.relu_(x),
               calls=(F.relu, F.relu_, torch.relu, torch.relu_, "relu", "relu_")),
    Activation("relu6", lambda x, s: F.relu6(x), (nn.ReLU6, nn.Hardtanh),
               match=lambda m: _hardtanh_relu6(m) if type(m) is nn.Hardtanh else DEFAULT_NEGATIVE_SLOPE,
               grad_from_output=lambda s: True, idempotent=True, onednn=lambda s: ("hardtanh", [0.0, 6.0], None),
               function_=lambda x, s: F.hardtanh(x, 0.0, 6.0, inplace=True), calls=(F.relu6, F.hardtanh),
               match_call=_relu6_call),
    Activation("leaky_relu", lambda x, s: F.leaky_relu(x, s), (nn.LeakyReLU,), match=lambda m: float(m.negative_slope),
               grad_from_output=lambda s: s >= 0, onednn=lambda s: ("leaky_relu", [s], None),
               function_=lambda x, s: F.leaky_relu(x, s, inplace=True), calls=(F.leaky_relu, F.leaky_relu_),
               match_call=_leaky_call),
    Activation("silu", lambda x, s: F.silu(x), (nn.SiLU, _TIMM + "Swish"), onednn=lambda s: ("swish", [], None),
               function_=lambda x, s: F.silu(x, inplace=True), calls=(F.silu,)),
    Activation("hardswish", lambda x, s: F.hardswish(x), (nn.Hardswish, _TIMM + "HardSwish"),
               onednn=lambda s: ("hardswish", [], None), function_=lambda x, s: F.hardswish(x, inplace=True),
               calls=(F.hardswish,)),
    Activation("gelu", lambda x, s: F.gelu(x), (nn.GELU, _TIMM + "GELU"), match=_gelu("none"),
               onednn=lambda s: ("gelu", [], "none"), calls=(F.gelu,), match_call=_gelu_call("none")),
    Activation("gelu_tanh", lambda x, s: F.gelu(x, approximate="tanh"), (nn.GELU, _TIMM + "GELUTanh"),
               match=lambda m: _gelu("tanh")(m) if type(m) is nn.GELU else DEFAULT_NEGATIVE_SLOPE,
               onednn=lambda s: ("gelu", [], "tanh"), calls=(F.gelu,), match_call=_gelu_call("tanh")),
]

ACTIVATIONS: Dict[str, Activation] = {a.name: a for a in _ENTRIES}
NAMES: Tuple[str, ...] = tuple(ACTIVATIONS)


def check(activation, where: str, arg: str = "activation") -> str:
    """``activation`` itself when it names an entry of the table, else a ValueError naming ``where`` and ``arg``."""
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{where}: argument '{arg}' must be one of {list(NAMES)}, got {activation!r}")
    return activation


def get(activation: str, where: str = "pyfastblocks", arg: str = "activation") -> Activation:
    """The table entry of ``activation`` (ValueError naming ``where``/``arg`` when unknown)."""
    return ACTIVATIONS[check(activation, where, arg)]


def apply(x: Tensor, activation: str, negative_slope: float = DEFAULT_NEGATIVE_SLOPE, inplace: bool = False) -> Tensor:
    """``activation`` applied by eager PyTorch (``inplace``: in place where torch has the in-place form)."""
    entry = get(activation)
    if inplace and entry.function_ is not None:
        return entry.function_(x, negative_slope)
    return entry.function(x, negative_slope)


def _class_path(cls: type) -> str:
    cls = getattr(cls, "_fastblocks_base", cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def from_module(m: Optional[nn.Module]) -> Optional[Tuple[str, float]]:
    """``(name, negative_slope)`` of the activation module ``m`` applies (``None``/``nn.Identity``: ``"none"``), or
    None when ``m`` is not an activation of the table (exact classes only: a subclass may compute something else)."""
    if m is None:
        return "none", DEFAULT_NEGATIVE_SLOPE
    cls = type(m)
    path = _class_path(cls)
    for entry in _ENTRIES:
        for k in entry.modules:
            if (cls is k) if isinstance(k, type) else (path == k):
                slope = entry.match(m)
                if slope is not None:
                    return entry.name, slope
    return None


def from_call(target, args: tuple = (), kwargs: Optional[dict] = None) -> Optional[Tuple[str, float]]:
    """``(name, negative_slope)`` of the activation a call applies to its first argument, or None.

    ``target`` is a function (``F.relu``, ``torch.relu_``, ``F.hardtanh``, ...) or a tensor method's name
    (``"relu"``); ``args`` start with the input (as a traced graph records them: ``F.leaky_relu(x, 0.2)`` is
    ``from_call(F.leaky_relu, (x, 0.2))``)."""
    kwargs = kwargs or {}
    for entry in _ENTRIES:
        for k in entry.calls:
            if k is target or (isinstance(k, str) and k == target):
                slope = entry.match_call(target, tuple(args), kwargs)
                if slope is not None:
                    return entry.name, slope
    return None


def compose(first: Optional[Tuple[str, float]], second: Optional[Tuple[str, float]]) -> Optional[Tuple[str, float]]:
    """The one activation equal to ``second(first(x))``, or None when there is none in the table."""
    if first is None or second is None:
        return None
    if first[0] == "none":
        return second
    if second[0] == "none":
        return first
    if first == second and ACTIVATIONS[first[0]].idempotent:
        return first
    if {first[0], second[0]} == {"relu", "relu6"}:  # relu6 absorbs relu in either order
        return "relu6", DEFAULT_NEGATIVE_SLOPE
    return None


# ---------------------------------------------------------------------------------------------------------------
# Activation specs: one string for an activation and its argument, for the fused forwards of pyfastblocks.models /
# swap(), which pass activations around as plain strings (constants to torch.compile and torch.fx): the table's
# name, or "leaky_relu:<slope>" for a LeakyReLU whose slope is not the default. The public ops take (activation,
# negative_slope) instead.


def spec(activation: str, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> str:
    """The spec string of ``activation`` with ``negative_slope``."""
    if activation == "leaky_relu" and negative_slope != DEFAULT_NEGATIVE_SLOPE:
        return f"leaky_relu:{float(negative_slope)!r}"
    return activation


def split(activation_spec: str) -> Tuple[str, float]:
    """``(name, negative_slope)`` of a spec string (a plain table name gives the default slope)."""
    name, sep, slope = activation_spec.partition(":")
    return (name, float(slope)) if sep else (name, DEFAULT_NEGATIVE_SLOPE)


def spec_of_module(m: Optional[nn.Module]) -> Optional[str]:
    """The spec string of the activation module ``m`` applies (:func:`from_module`), or None."""
    found = from_module(m)
    return None if found is None else spec(*found)


def compose_specs(first: Optional[str], second: Optional[str]) -> Optional[str]:
    """:func:`compose` on spec strings."""
    if first is None or second is None:
        return None
    found = compose(split(first), split(second))
    return None if found is None else spec(*found)
