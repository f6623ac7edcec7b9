"""``pyfastblocks.freeze(model)``: an inference snapshot of a CNN, with the BatchNorms folded into the convolutions
once and every conv -> BN -> activation (-> residual add -> activation) tail run as one call.

How (see :func:`freeze` for the contract):

1. a copy of the model's modules in eval mode (the parameters are read, never changed; whatever the frozen model
   keeps of them is cloned); the blocks :func:`pyfastblocks.swap` changed get their original classes back
   (``type(m)._fastblocks_base``), so the copy is the plain torchvision/timm model;
2. ``torch.fx`` traces it (timm's no-trace modules and functions, and modules with hooks, stay leaves); where the
   whole model does not trace (or has hooks of its own), its children are traced one by one (recursively) and the
   report names the parts whose own code stays eager;
3. the example input runs through the traced graph once, as fake tensors (no arithmetic): every node's shape, dtype
   and strides are known, so weights are packed for the sizes they will see and depthwise convolutions are routed;
4. the graph is rewritten, patterns wherever they occur:

   - conv -> BN -> activations: one :class:`FrozenConv2d` (weight and bias with the BN folded in, in float32 --
     float64 for a float64 model -- and rounded once to the model's dtype);
   - conv -> BN -> add (residual) -> activations: one :class:`FrozenConv2d` with the add as a binary post-op; it
     writes into the residual's memory (oneDNN's sum post-op, no output allocation) where nothing else reads the
     residual afterwards;
   - a BatchNorm that follows no convolution (DenseNet's pre-activation) -> activations: one
     :class:`FrozenAffine` (``ops.affine_act``);
   - ``nn.Linear`` -> activations: :class:`FrozenLinear`;
   - dropout, stochastic depth, ``nn.Identity``: removed (identities in eval);
   - a squeeze-excitation gate ``x * gate`` multiplies x in place where nothing reads x afterwards;
   - everything else (pooling, concat, flatten, activations after unfusable ops) as it is. (Inception's concats
     stay ``torch.cat``: 0.7% of the frozen model's time, and a oneDNN convolution cannot write into a slice.)
5. a lean twin of the graph (:class:`FrozenGraph`) calls the ops directly on the prepacked tensors, so a small
   convolution costs the op and nothing else; the printable graph (and ``torch.compile`` / ``torch.export``) calls
   the modules.

What a :class:`FrozenConv2d` calls, per device and dtype (chosen at freeze time):

- CPU float32 / bfloat16 (oneDNN): ``torch.ops.mkldnn._convolution_pointwise`` with the weight prepacked by
  ``torch.ops.mkldnn._reorder_convolution_weight`` for the input size it sees, the activation as a oneDNN post-op,
  and the residual add through ``_convolution_pointwise.binary`` (whose unary post-op can only be ReLU: other
  activations after an add run in place right after it). This is what Inductor's CPU freezing path calls.
- depthwise convolutions follow ``pyfastblocks.models.DEPTHWISE_BACKEND`` (as in a swapped model): NCHW inference
  on fewer than 128 channels runs ``fastblocks::depthwise_conv2d`` with the activation in its epilogue (and a
  preceding ReLU in its prologue), the rest oneDNN as above.
- CUDA, and CPU dtypes oneDNN does not run (float64, float16): the convolution (cuDNN on CUDA) with the BN folded in,
  then one ``fastblocks`` epilogue pass for bias + activation (``ops.affine_act``) or bias + residual + activation
  (``ops.add_act``). cuDNN's own fused convolution + bias + activation (+ add) has not been measured against this
  (no GPU in the session that wrote it): a session with a GPU should.
- under ``torch.compile`` / ``torch.export``: plain ATen (``F.conv2d``, the add, the activation) on the folded
  weights, which both can trace (the prepacked oneDNN weights cannot be traced).
"""
import copy
import itertools
import math
import operator
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from . import activations as A
from . import ops
from .models._fused import class_path as _class_path

__all__ = ["freeze", "FrozenModel", "FrozenGraph", "FrozenConv2d", "FrozenAffine", "FrozenLinear", "FreezeReport"]

_TIMM_BN_ACT = "timm.layers.norm_act.BatchNormAct2d"
_FROZEN_BN = "torchvision.ops.misc.FrozenBatchNorm2d"
# Modules that are identities in eval.
_EVAL_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout)
# oneDNN's binary (add) convolution takes only these unary post-ops after the add.
_BINARY_UNARY = {"none": None, "relu": "relu"}


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _onednn_dtypes() -> Tuple[torch.dtype, ...]:
    if not torch.backends.mkldnn.is_available():
        return ()
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


# --------------------------------------------------------------------------------------------------------------
# The frozen modules


class _Frozen(nn.Module):
    """A module of a frozen model: tied to the device and dtype it was built for (see :func:`freeze`)."""

    device: torch.device
    dtype: torch.dtype

    def _apply(self, fn, recurse=True):
        probe = torch.empty(0, device=self.device, dtype=self.dtype)
        out = fn(probe)
        if isinstance(out, Tensor) and out.device == probe.device and out.dtype == probe.dtype:
            return nn.Module._apply(self, fn, recurse)  # no change of device or dtype: .to(same), .float(), ...
        raise RuntimeError(
            f"pyfastblocks.freeze: a frozen model is tied to the device and dtype it was frozen for ({self.device}, "
            f"{self.dtype}); it cannot be moved or cast. Freeze the original model again on the new device/dtype: "
            f"freeze(model.to(...))"
        )

    def _load_from_state_dict(self, *args, **kwargs):
        # the oneDNN copies of the weights would not follow: a silently stale model
        raise RuntimeError("pyfastblocks.freeze: a frozen model is a snapshot and does not load a state_dict; load it "
                           "into the original model and freeze that again")


def _pair(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


class FrozenConv2d(_Frozen):
    """``post(act(conv(x) * bn) + other)``: a convolution with its BatchNorm folded into ``weight``/``bias``, its
    activation, and optionally a residual add followed by another activation. ``forward(x, other=None)``.

    Buffers: ``weight`` ``[C_out, C_in / groups, kh, kw]`` and ``bias`` ``[C_out]`` (folded, in the frozen dtype).
    ``backend``: ``"onednn"`` (prepacked oneDNN convolution with post-ops), ``"depthwise"``
    (``fastblocks::depthwise_conv2d``) or ``"aten"`` (``F.conv2d`` then one fastblocks epilogue pass); see the
    module docstring. The oneDNN weight is packed at construction, for ``input_size``, and again after unpickling.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups: int,
                 activation: Tuple[str, float] = ("none", A.DEFAULT_NEGATIVE_SLOPE), add: bool = False,
                 post: Tuple[str, float] = ("none", A.DEFAULT_NEGATIVE_SLOPE), backend: str = "aten",
                 input_relu: bool = False, input_size: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.stride, self.padding, self.dilation, self.groups = _pair(stride), _pair(padding), _pair(dilation), groups
        self.activation, self.negative_slope = activation
        self.add = add
        self.post, self.post_slope = post if add else ("none", A.DEFAULT_NEGATIVE_SLOPE)
        if add and self.activation != "none":
            raise ValueError("FrozenConv2d: an activation before the residual add is not a fused form")
        if input_relu and backend != "depthwise":
            raise ValueError("FrozenConv2d: input_relu needs the depthwise backend")
        self.backend = backend
        self.input_relu = input_relu
        self.input_size = list(input_size) if input_size is not None else None
        # the residual's memory takes the output (lean graph, oneDNN): freeze decides where nothing can tell
        self.inplace_add = False
        self.device, self.dtype = weight.device, weight.dtype
        self._packed: Optional[Tensor] = None
        if backend == "onednn":
            self._pack()

    def _pack(self) -> None:
        self._packed = torch.ops.mkldnn._reorder_convolution_weight(
            self.weight, self.padding, self.stride, self.dilation, self.groups, self.input_size)
        attr, scalars, algorithm = A.get(self.activation).onednn(self.negative_slope)
        self._unary = (attr, scalars, algorithm)
        self._binary_unary = _BINARY_UNARY.get(self.post)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None  # an opaque oneDNN tensor: packed again after unpickling / deepcopy
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.backend == "onednn" and self._packed is None:
            self._pack()

    def forward(self, x: Tensor, other: Optional[Tensor] = None) -> Tensor:
        if _tracing():
            return self._plain(x, other)
        if self.backend == "onednn":
            if other is None:
                attr, scalars, algorithm = self._unary
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self._packed, self.bias, self.padding, self.stride, self.dilation, self.groups, attr, scalars,
                    algorithm)
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                x, other, self._packed, self.bias, self.padding, self.stride, self.dilation, self.groups, "add", 1.0,
                self._binary_unary, [], None)
            if self._binary_unary is None and self.post != "none":
                y = A.apply(y, self.post, self.post_slope, inplace=True)
            return y
        if self.backend == "depthwise":
            y = ops.depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                     self.activation, self.input_relu, self.negative_slope)
            return y if other is None else ops.add_act(y, other, None, None, self.post, self.post_slope)
        if other is not None:
            y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
            return ops.add_act(y, other, None, self.bias, self.post, self.post_slope)
        if self.activation == "none":
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        return ops.affine_act(y, None, self.bias, self.activation, self.negative_slope)

    def emit(self, graph: fx.Graph, args: tuple, const) -> fx.Node:
        """The calls of ``forward`` as nodes of a lean graph, on the constants ``const(tensor)`` returns."""
        x, other = args[0], (args[1] if len(args) > 1 else None)
        w, b = const(self._packed if self.backend == "onednn" else self.weight), const(self.bias)
        geometry = (self.padding, self.stride, self.dilation, self.groups)
        fb = torch.ops.fastblocks
        if self.backend == "onednn":
            if other is None:
                return graph.call_function(torch.ops.mkldnn._convolution_pointwise.default,
                                           (x, w, b) + geometry + self._unary)
            if self.inplace_add:
                y = graph.call_function(torch.ops.mkldnn._convolution_pointwise_.binary,
                                        (other, x, w, b) + geometry + ("add", 1.0, self._binary_unary, [], None))
            else:
                y = graph.call_function(torch.ops.mkldnn._convolution_pointwise.binary,
                                        (x, other, w, b) + geometry + ("add", 1.0, self._binary_unary, [], None))
            if self._binary_unary is None and self.post != "none":
                y = graph.call_function(A.apply, (y, self.post, self.post_slope, True))
            return y
        if self.backend == "depthwise":
            y = graph.call_function(fb.depthwise_conv2d.default, (x, w, b, self.stride, self.padding, self.dilation,
                                                                   self.activation, self.input_relu,
                                                                   self.negative_slope))
            if other is None:
                return y
            return graph.call_function(fb.add_act.default, (y, other, None, None, self.post, self.post_slope))
        conv = (self.stride, self.padding, self.dilation, self.groups)
        if other is not None:
            y = graph.call_function(torch.conv2d, (x, w, None) + conv)
            return graph.call_function(fb.add_act.default, (y, other, None, b, self.post, self.post_slope))
        if self.activation == "none":
            return graph.call_function(torch.conv2d, (x, w, b) + conv)
        y = graph.call_function(torch.conv2d, (x, w, None) + conv)
        return graph.call_function(fb.branch_concat.default, ([y], None, b, self.activation, self.negative_slope))

    def _plain(self, x: Tensor, other: Optional[Tensor]) -> Tensor:
        """The same function in plain ATen ops (what torch.compile / torch.export trace)."""
        if self.input_relu:
            x = torch.relu(x)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        y = A.get(self.activation).function(y, self.negative_slope)
        if other is not None:
            y = A.get(self.post).function(y + other, self.post_slope)
        return y

    def extra_repr(self) -> str:
        out, inp, kh, kw = self.weight.shape
        s = (f"{inp * self.groups}, {out}, kernel_size=({kh}, {kw}), stride={tuple(self.stride)}, "
             f"padding={tuple(self.padding)}")
        if self.dilation != [1, 1]:
            s += f", dilation={tuple(self.dilation)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.input_relu:
            s += ", input_relu=True"
        s += f", activation={self.activation!r}"
        if self.add:
            s += f", add=True, post={self.post!r}"
        return s + f", backend={self.backend!r}"


class FrozenAffine(_Frozen):
    """``act(x * scale[c] + bias[c])``: a BatchNorm that follows no convolution, folded, with its activation, as one
    ``fastblocks::affine_act`` pass. Buffers ``scale``, ``bias`` ``[C]`` (float32 for half-precision data)."""

    def __init__(self, scale: Tensor, bias: Tensor, activation: Tuple[str, float], dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.activation, self.negative_slope = activation
        self.device, self.dtype = scale.device, dtype

    def forward(self, x: Tensor) -> Tensor:
        if _tracing():
            shape = [1, -1] + [1] * (x.dim() - 2)
            y = x * self.scale.view(shape).to(x.dtype) + self.bias.view(shape).to(x.dtype)
            return A.get(self.activation).function(y, self.negative_slope)
        return ops.affine_act(x, self.scale, self.bias, self.activation, self.negative_slope)

    def emit(self, graph: fx.Graph, args: tuple, const) -> fx.Node:
        return graph.call_function(torch.ops.fastblocks.branch_concat.default,
                                   ([args[0]], const(self.scale), const(self.bias), self.activation,
                                    self.negative_slope))

    def extra_repr(self) -> str:
        return f"{self.scale.numel()}, activation={self.activation!r}"


class FrozenLinear(_Frozen):
    """``act(x @ weight.T + bias)``: ``nn.Linear`` and the activations that follow it. ``backend``: ``"mkl"``
    (``torch.ops.mkl._mkl_linear`` with the weight packed for ``batch_size`` rows, what Inductor's CPU freezing
    calls), ``"onednn"`` (``torch.ops.mkldnn._linear_pointwise``, packed weight, activation as a post-op) or
    ``"aten"`` (``F.linear`` then the activation in place)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], activation: Tuple[str, float], backend: str,
                 batch_size: int, input_dim: int = 2) -> None:
        super().__init__()
        self.input_dim = input_dim  # of the example's input: the lean graph calls the packed op for 2-D ones
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.activation, self.negative_slope = activation
        self.backend = backend
        self.batch_size = int(batch_size)
        self.device, self.dtype = weight.device, weight.dtype
        self._packed: Optional[Tensor] = None
        self._pack()

    def _pack(self) -> None:
        if self.backend == "mkl":
            # MKL's packed matrix depends on its address's alignment: never copied, packed again after unpickling
            self._packed = torch.ops.mkl._mkl_reorder_linear_weight(self.weight, self.batch_size)
        elif self.backend == "onednn":
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, self.batch_size)
            self._unary = A.get(self.activation).onednn(self.negative_slope)

    __getstate__ = FrozenConv2d.__getstate__

    def __setstate__(self, state):
        nn.Module.__setstate__(self, state)
        if self._packed is None:
            self._pack()

    def forward(self, x: Tensor) -> Tensor:
        if _tracing() or x.dim() != 2:
            return A.get(self.activation).function(F.linear(x, self.weight, self.bias), self.negative_slope)
        if self.backend == "mkl":
            y = torch.ops.mkl._mkl_linear(x, self._packed, self.weight, self.bias, self.batch_size)
        elif self.backend == "onednn":
            attr, scalars, algorithm = self._unary
            return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, attr, scalars, algorithm or "")
        else:
            y = F.linear(x, self.weight, self.bias)
        return A.apply(y, self.activation, self.negative_slope, inplace=True)

    def emit(self, graph: fx.Graph, args: tuple, const) -> Optional[fx.Node]:
        if self.input_dim != 2 or self.backend != "onednn":
            return None  # the module itself
        attr, scalars, algorithm = self._unary
        return graph.call_function(torch.ops.mkldnn._linear_pointwise.default,
                                   (args[0], const(self._packed), const(self.bias), attr, scalars, algorithm or ""))

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, "
                f"activation={self.activation!r}, backend={self.backend!r}")


class FrozenGraph(nn.Module):
    """A traced and rewritten part of a frozen model.

    ``graph_module`` (a ``torch.fx.GraphModule``) calls the :class:`FrozenConv2d` / :class:`FrozenAffine` /
    :class:`FrozenLinear` modules: it is what ``print``, ``state_dict()``, ``torch.compile`` and ``torch.export`` see.
    Otherwise its lean twin runs: the same graph with every frozen module's calls inlined as direct op calls on
    its (prepacked) tensors, so that a small convolution costs the op and nothing else (no module call, no
    checks); it is derived, never pickled, and rebuilt after unpickling or deepcopy."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        super().__init__()
        self.graph_module = graph_module
        self._build_lean()

    def _build_lean(self) -> None:
        self.__dict__["_lean"] = _lean_graph(self.graph_module)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_lean", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._build_lean()

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph

    @property
    def code(self) -> str:
        return self.graph_module.code

    def forward(self, *args, **kwargs):
        if _tracing():
            return self.graph_module(*args, **kwargs)
        return self._lean(*args, **kwargs)


def _lean_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with each frozen module's call replaced by the op calls of its ``emit`` (constants: plain attributes
    of the lean module, so each costs one instance-dict lookup)."""
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    attrs: Dict[str, Any] = {}
    names: Dict[int, str] = {}
    modules = dict(gm.named_modules())

    def const(t: Optional[Tensor]):
        if t is None:
            return None
        name = names.get(id(t))
        if name is None:
            name = names[id(t)] = f"_c{len(names)}"
            attrs[name] = t
        return graph.get_attr(name)

    for node in gm.graph.nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        out = None
        if hasattr(m, "emit"):
            out = m.emit(graph, tuple(env[a] for a in node.args), const)
        if out is None:
            out = graph.node_copy(node, lambda n: env[n])
            if node.op in ("call_module", "get_attr"):
                attrs[node.target] = fx.graph_module._get_attr(gm, node.target)
        env[node] = out
    lean = fx.GraphModule(attrs, graph, "Lean" + type(gm).__name__)
    for name in names.values():  # plain attributes: a buffer would be looked up through Module.__getattr__
        lean.__dict__[name] = lean._buffers.pop(name)
    return lean


# --------------------------------------------------------------------------------------------------------------
# The frozen model


@dataclass
class FreezeReport:
    """What :func:`freeze` did. ``fused``: pattern -> count (``"conv+bn+relu"``, ``"conv+bn+add+relu"``,
    ``"bn+relu"``, ...); ``backends``: FrozenConv2d/FrozenLinear backend -> count; ``removed``: eval identities
    dropped (dropout, ...); ``unfrozen``: (module path, why) of parts whose own code runs eagerly (their children are
    frozen where they traced); ``seconds``: how long freeze took."""

    fused: Counter = field(default_factory=Counter)
    backends: Counter = field(default_factory=Counter)
    removed: Counter = field(default_factory=Counter)
    unfrozen: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [f"pyfastblocks.freeze: {sum(self.fused.values())} fused calls in {self.seconds:.2f} s"]
        lines += [f"  {k} x{n}" for k, n in sorted(self.fused.items(), key=lambda kv: -kv[1])]
        if self.backends:
            lines.append("backends: " + ", ".join(f"{k} x{n}" for k, n in sorted(self.backends.items())))
        if self.removed:
            lines.append("removed (identities in eval): " + ", ".join(f"{k} x{n}" for k, n in self.removed.items()))
        if self.unfrozen:
            lines.append("left unfrozen (their own forward runs eagerly):")
            lines += [f"  {path or '<model>'}: {why}" for path, why in self.unfrozen]
        return "\n".join(lines)

    __repr__ = __str__


class FrozenModel(nn.Module):
    """The inference snapshot :func:`freeze` returns: ``module`` (a ``torch.fx.GraphModule``, or the model with its
    traceable parts frozen) behind the contract checks.

    Attributes: ``device``, ``dtype``, ``memory_format`` (what it was frozen for), ``report`` (a
    :class:`FreezeReport`)."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 memory_format: Optional[torch.memory_format], report: FreezeReport) -> None:
        super().__init__()
        self.module = module
        self.device, self.dtype = device, dtype
        # by name: torch.save's pickle protocol cannot pickle a torch.memory_format
        self._memory_format = {torch.channels_last: "channels_last", torch.contiguous_format: "contiguous_format",
                               None: None}[memory_format]
        self.report = report
        self.eval()

    @property
    def memory_format(self) -> Optional[torch.memory_format]:
        return None if self._memory_format is None else getattr(torch, self._memory_format)

    _apply = _Frozen._apply
    _load_from_state_dict = _Frozen._load_from_state_dict

    def graph_modules(self) -> List[fx.GraphModule]:
        """The traced (frozen) graphs: one for a model that traced whole, else one per traced part."""
        return [m.graph_module for m in self.modules() if isinstance(m, FrozenGraph)]

    def _check(self, t: Tensor, where: str) -> Tensor:
        if t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"pyfastblocks.freeze: a frozen model is for inference and has no gradients, but {where} requires "
                "grad. Call it under torch.no_grad() / torch.inference_mode() (or detach the input); to train, use "
                "the original (or swapped) model.")
        if t.device != self.device:
            raise RuntimeError(f"pyfastblocks.freeze: the model was frozen for {self.device}, but {where} is on "
                               f"{t.device}; freeze the model again for that device.")
        if t.is_floating_point() and t.dtype != self.dtype:
            raise RuntimeError(f"pyfastblocks.freeze: the model was frozen for {self.dtype}, but {where} is "
                               f"{t.dtype}; convert the input, or freeze the model again for that dtype.")
        if self.memory_format is not None and t.dim() == 4:
            t = t.contiguous(memory_format=self.memory_format)
        return t

    def forward(self, *args, **kwargs):
        if self.training:
            raise RuntimeError(
                "pyfastblocks.freeze: a frozen model is for inference only and was called in training mode "
                "(after .train()); call .eval() on it, or train the original (or swapped) model and freeze it again.")
        args = tuple(self._check(a, f"input {i}") if isinstance(a, Tensor) else a for i, a in enumerate(args))
        kwargs = {k: self._check(v, f"input {k!r}") if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        return self.module(*args, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Recognizing modules and calls in a traced graph


def _norm(m: nn.Module) -> Optional[Tuple[Tensor, Tensor, Tuple[str, float]]]:
    """``(scale, shift, activation)`` in float64 of an eval BatchNorm with running statistics (``nn.BatchNorm2d``,
    ``nn.SyncBatchNorm`` in eval, timm's ``BatchNormAct2d`` with a table activation, torchvision's
    ``FrozenBatchNorm2d``), else None."""
    path = _class_path(m)
    act = ("none", A.DEFAULT_NEGATIVE_SLOPE)
    if type(m) in (nn.BatchNorm2d, nn.SyncBatchNorm) or path == _TIMM_BN_ACT:
        if m.training or m.running_mean is None or m.running_var is None:
            return None
        if path == _TIMM_BN_ACT:
            drop = getattr(m, "drop", None)
            if drop is not None and not isinstance(drop, _EVAL_IDENTITIES):
                return None
            act = A.from_module(getattr(m, "act", None))
            if act is None:
                return None
    elif path != _FROZEN_BN:
        return None
    with torch.no_grad():
        scale, shift = ops.batchnorm_fold(m.running_mean, m.running_var, m.weight, m.bias, float(m.eps),
                                          dtype=torch.float64)
    return scale, shift, act


def _conv_padding(conv: nn.Module) -> Optional[List[int]]:
    """The explicit symmetric zero padding of a plain 2-D ``nn.Conv2d``, else None."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or conv.weight.dim() != 4:
        return None
    if conv.padding == "valid":
        return [0, 0]
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return [t // 2 for t in total] if all(t % 2 == 0 for t in total) else None
    return _pair(conv.padding)


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels and conv.groups > 1 and conv.out_channels % conv.in_channels == 0


def _unhooked(m: Optional[nn.Module]) -> bool:
    """No hooks and no ``forward`` set on the instance: the module's call is its class's function, which freeze may
    replace (a module with hooks is traced as a leaf and kept, hooks and all)."""
    return m is not None and not (m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__)


def _activation(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[Tuple[str, float]]:
    """The table activation a node applies to its first argument, or None."""
    if node.op == "call_module":
        m = modules[node.target]
        if type(m) is nn.Identity or len(node.args) != 1 or node.kwargs or not _unhooked(m):
            return None
        return A.from_module(m)
    if node.op in ("call_function", "call_method"):
        return A.from_call(node.target, node.args, node.kwargs)
    return None


def _mutates(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """Might this node change one of its inputs in place? (in-place modules and functions, ``x.op_()``, ``+=``)"""
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        if node.target in (operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                           operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor):
            return True
        if node.kwargs.get("inplace") is True or (name.endswith("_") and not name.endswith("__")):
            return True
        return A.from_call(node.target, node.args, node.kwargs) is not None and any(a is True for a in node.args[1:])
    return False


_REDUCTIONS = {"mean", "sum", "amax", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "adaptive_max_pool2d"}


def _reduces(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """A node that reads its first argument into a new, smaller tensor (pooling, mean, sum): no alias of it."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d,
                                                      nn.AdaptiveMaxPool2d))
    if node.op == "call_method":
        return node.target in _REDUCTIONS
    if node.op == "call_function":
        return getattr(node.target, "__name__", "") in _REDUCTIONS and getattr(node.target, "__module__", "") in (
            "torch", "torch.nn.functional", "torch._C._nn", None)
    return False


def _meta(node) -> Optional[Tensor]:
    """The (fake) tensor a node produced on the example input, or None (not a tensor, or not run)."""
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, Tensor) else None


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_identity(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[str]:
    """A name for a node that returns its first argument unchanged in eval, else None."""
    if node.op == "call_module" and isinstance(modules[node.target], _EVAL_IDENTITIES) and len(node.args) == 1 \
            and _unhooked(modules[node.target]):
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        name, mod = getattr(node.target, "__name__", ""), getattr(node.target, "__module__", "") or ""
        if name == "stochastic_depth" and mod.startswith("torchvision"):
            training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
            return "stochastic_depth" if training is False else None
        if node.target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout):
            training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", True)
            inplace = node.args[3] if len(node.args) > 3 else node.kwargs.get("inplace", False)
            return node.target.__name__ if training is False and not inplace else None
    return None


# --------------------------------------------------------------------------------------------------------------
# Rewriting a traced graph


@dataclass
class _Context:
    device: torch.device
    dtype: torch.dtype
    report: FreezeReport


def _depthwise_route(conv: nn.Conv2d, meta, ctx: _Context) -> bool:
    """Does this depthwise convolution run fastblocks::depthwise_conv2d? The rule of a swapped model
    (:func:`pyfastblocks.policy.depthwise_kernel`) decided on an (unfilled) tensor like the one it will see."""
    from . import policy

    like = torch.empty_strided(tuple(meta.shape), tuple(meta.stride()), dtype=meta.dtype, device=ctx.device)
    with torch.no_grad():
        return bool(policy.depthwise_kernel(like, conv))


def _conv_backend(conv: nn.Conv2d, meta, ctx: _Context) -> str:
    if _is_depthwise(conv) and _depthwise_route(conv, meta, ctx):
        return "depthwise"
    if ctx.device.type == "cpu" and ctx.dtype in _onednn_dtypes():
        return "onednn"
    if _is_depthwise(conv):
        return "depthwise"
    return "aten"


class _Rewriter:
    def __init__(self, gm: fx.GraphModule, ctx: _Context) -> None:
        self.gm, self.ctx = gm, ctx
        self.graph = gm.graph
        self.modules = dict(gm.named_modules())
        self.calls = Counter(n.target for n in self.graph.nodes if n.op == "call_module")
        self.names: set = set()

    def run(self) -> None:
        self.drop_identities()
        for node in list(self.graph.nodes):
            if node.graph is None or getattr(node, "_erased", False):
                continue
            if node.op != "call_module":
                continue
            m = self.modules.get(node.target)
            if not _unhooked(m):
                continue
            simple = len(node.args) == 1 and not node.kwargs and _meta(node.args[0]) is not None
            if simple and _conv_padding(m) is not None:
                self.conv_chain(node, m)
            elif simple and type(m) is nn.Linear:
                self.linear_chain(node, m)
        for node in list(self.graph.nodes):
            if getattr(node, "_erased", False) or node.op != "call_module":
                continue
            m = self.modules.get(node.target)
            if _unhooked(m) and _norm(m) is not None and len(node.args) == 1 and _meta(node) is not None:
                self.norm_chain(node, m)
        self.mark_inplace_adds()
        self.inplace_gates()
        for node in self.graph.nodes:  # the example's fake tensors are not needed any more
            node.meta.pop("val", None)
        self.graph.lint()
        self.gm.delete_all_unused_submodules()
        self.gm.recompile()

    # ---- helpers

    def mark_inplace_adds(self) -> None:
        """Let a oneDNN residual convolution add into its residual's memory (oneDNN's sum post-op: no output
        allocation) where nothing can tell: the residual is a fresh output of a frozen call, of the output's strides,
        and every other node that reads it is a frozen call that reads it as its input and runs before."""
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        frozen = (FrozenConv2d, FrozenAffine, FrozenLinear)
        for node in self.graph.nodes:
            m = self.modules.get(node.target) if node.op == "call_module" else None
            if not isinstance(m, FrozenConv2d) or not m.add or m.backend != "onednn":
                continue
            x, other = node.args
            if other is x or other.op != "call_module" or not isinstance(self.modules.get(other.target), frozen):
                continue
            mo, mv = _meta(other), _meta(node)
            if mo is None or mv is None or mo.stride() != mv.stride() or mo.dtype != mv.dtype:
                continue
            readers = [u for u in other.users if u is not node]
            if all(order[u] < order[node] and u.op == "call_module" and isinstance(self.modules.get(u.target), frozen)
                   and u.args[0] is other and all(a is not other for a in u.args[1:]) for u in readers):
                m.inplace_add = True

    def inplace_gates(self) -> None:
        """``x * gate`` (a squeeze-excitation gate, broadcast over x) as ``x.mul_(gate)`` where x is a fresh output of
        a frozen call that nothing reads afterwards (only reductions and frozen calls read it before): a large output
        costs an allocation (page faults) on top of its pass."""
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        frozen = (FrozenConv2d, FrozenAffine, FrozenLinear)
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target not in (operator.mul, torch.mul) or len(node.args) != 2 \
                    or node.kwargs:
                continue
            out = _meta(node)
            for x, gate in (node.args, node.args[::-1]):
                mx = _meta(x)
                if mx is None or out is None or not isinstance(gate, fx.Node) or gate is x or \
                        tuple(mx.shape) != tuple(out.shape) or mx.dtype != out.dtype or mx.stride() != out.stride():
                    continue
                if x.op != "call_module" or not isinstance(self.modules.get(x.target), frozen):
                    continue
                readers = [u for u in x.users if u is not node]
                if all(order[u] < order[node] and _reduces(u, self.modules) for u in readers):
                    with self.graph.inserting_before(node):
                        new = self.graph.call_method("mul_", (x, gate))
                    new.meta = dict(node.meta)
                    node.replace_all_uses_with(new)
                    self.graph.erase_node(node)
                    self.ctx.report.fused["gate (in place)"] += 1
                    break

    def drop_identities(self) -> None:
        for node in list(self.graph.nodes):
            kind = _is_identity(node, self.modules)
            if kind is not None and isinstance(node.args[0], fx.Node):
                node.replace_all_uses_with(node.args[0])
                self.graph.erase_node(node)
                self.ctx.report.removed[kind] += 1

    def activations_after(self, node: fx.Node, act: Tuple[str, float]) -> Tuple[List[fx.Node], Tuple[str, float]]:
        """The activation nodes that follow ``node`` as its only user, one after another, composed with ``act``."""
        chain = []
        while True:
            user = _only_user(node)
            if user is None or not user.args or user.args[0] is not node:
                break
            a = _activation(user, self.modules)
            both = A.compose(act, a)
            if a is None or both is None or any(x is node for x in list(user.args[1:]) + list(user.kwargs.values())):
                break
            chain.append(user)
            act, node = both, user
        return chain, act

    def new_name(self, base: str) -> str:
        """``base`` itself (the module a node called, replaced) when only that node calls it, else a fresh name."""
        name, k = base, 0
        while (k == 0 and (self.calls[base] != 1 or base in self.names)) or (k and name in self.modules):
            k += 1
            name = f"{base}_frozen{k}"
        self.names.add(name)
        return name

    def replace(self, chain: List[fx.Node], before: fx.Node, target: str, module: nn.Module, args: tuple) -> None:
        """Put ``module`` at ``target``, call it before ``before`` with ``args``; the chain's last node's users
        take its output; the chain's nodes go."""
        self.gm.add_submodule(target, module)
        self.modules[target] = module
        with self.graph.inserting_before(before):
            new = self.graph.call_module(target, args)
        new.meta = dict(chain[-1].meta)
        chain[-1].replace_all_uses_with(new)
        for n in reversed(chain):
            self.graph.erase_node(n)

    # ---- patterns

    def conv_chain(self, node: fx.Node, conv: nn.Conv2d) -> None:
        ctx, modules = self.ctx, self.modules
        chain = [node]
        pattern = ["conv"]
        norm = None
        act = ("none", A.DEFAULT_NEGATIVE_SLOPE)
        user = _only_user(node)
        if user is not None and user.op == "call_module" and user.args == (node,) and not user.kwargs and \
                _unhooked(modules[user.target]):
            norm = _norm(modules[user.target])
            if norm is not None and norm[0].numel() == conv.out_channels:
                chain.append(user)
                act = norm[2]
                pattern.append("bn")
            else:
                norm = None
        acts, act = self.activations_after(chain[-1], act)
        chain += acts
        other, post, add_at = None, ("none", A.DEFAULT_NEGATIVE_SLOPE), len(chain)
        user = _only_user(chain[-1])
        if act[0] == "none" and user is not None and self.is_residual_add(user, chain[-1]):
            other = user.args[1] if user.args[0] is chain[-1] else user.args[0]
            chain.append(user)
            post_acts, post = self.activations_after(user, post)
            chain += post_acts
        # A ReLU before a depthwise convolution that only feeds it: the depthwise kernel's input prologue.
        x = node.args[0]
        meta_in = _meta(x)
        backend = _conv_backend(conv, meta_in, ctx)
        input_relu = False
        if backend == "depthwise" and _only_user(x) is node and isinstance(x.args[0], fx.Node) and \
                _activation(x, modules) == ("relu", A.DEFAULT_NEGATIVE_SLOPE) and \
                (not _mutates(x, modules) or len(x.args[0].users) == 1):
            input_relu = True  # (an in-place ReLU only where nothing else reads what it changed)
        # Where the fused call goes: at the conv when every input is there already; else (the residual comes
        # later) at the end of the chain. Either way no node in between may change an input in place.
        position = node
        if other is not None:
            between, seen_other, n = [], False, node.next
            while n is not chain[-1]:
                if n not in chain:
                    between.append(n)
                    seen_other = seen_other or n is other
                n = n.next
            if any(_mutates(n, modules) for n in between):
                chain, other, post = chain[:add_at], None, ("none", A.DEFAULT_NEGATIVE_SLOPE)
            elif seen_other:
                position = chain[-1]
        # folded in float32 (float64 for a float64 model), rounded once to the model's dtype
        acc = _accumulation(ctx.dtype)
        weight = conv.weight.detach().to(acc, copy=True)  # copies: the snapshot shares no memory with the model
        bias = conv.bias.detach().to(acc, copy=True) if conv.bias is not None else None
        if norm is not None:
            scale, shift = norm[0].to(weight.device, acc), norm[1].to(weight.device, acc)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = shift if bias is None else shift + bias * scale
        dtype = ctx.dtype
        frozen = FrozenConv2d(
            weight.to(device=ctx.device, dtype=dtype).contiguous(),
            None if bias is None else bias.to(device=ctx.device, dtype=dtype),
            conv.stride, _conv_padding(conv), conv.dilation, conv.groups, activation=act, add=other is not None,
            post=post, backend=backend, input_relu=input_relu, input_size=list(meta_in.shape))
        args = (x.args[0] if input_relu else x,) + ((other,) if other is not None else ())
        if act[0] != "none":
            pattern.append(act[0])
        if other is not None:
            pattern.append("add")
            if post[0] != "none":
                pattern.append(post[0])
        if input_relu:
            pattern.insert(0, "relu")
        self.replace(chain, position, self.new_name(node.target), frozen, args)
        if input_relu:
            self.graph.erase_node(x)
        self.ctx.report.fused["+".join(pattern)] += 1
        self.ctx.report.backends[f"conv:{backend}"] += 1

    def is_residual_add(self, add: fx.Node, value: fx.Node) -> bool:
        """``add`` is ``value + other`` (``+``, ``+=``, ``torch.add`` without alpha) with ``other`` a tensor of
        value's shape and dtype (no broadcasting), and an in-place add changes nothing another node reads."""
        if add.op != "call_function" or add.target not in (operator.add, operator.iadd, torch.add) or \
                len(add.args) != 2 or add.kwargs:
            return False
        a, b = add.args
        if (a is value) == (b is value):
            return False
        other = b if a is value else a
        mv, mo = _meta(value), _meta(other)
        if mo is None or mv is None or tuple(mo.shape) != tuple(mv.shape) or mo.dtype != mv.dtype:
            return False
        if add.target is operator.iadd and a is other and len(other.users) > 1:
            return False  # `other += value` changes other, which another node reads
        return True

    def linear_chain(self, node: fx.Node, linear: nn.Linear) -> None:
        ctx = self.ctx
        acts, act = self.activations_after(node, ("none", A.DEFAULT_NEGATIVE_SLOPE))
        meta_in = _meta(node.args[0])
        rows = int(math.prod(meta_in.shape[:-1])) if len(meta_in.shape) > 1 else 1
        backend = _linear_backend(ctx)
        frozen = FrozenLinear(linear.weight.detach().to(ctx.device, ctx.dtype, copy=True).contiguous(),
                              None if linear.bias is None else linear.bias.detach().to(ctx.device, ctx.dtype,
                                                                                        copy=True),
                              act, backend, max(rows, 1), len(meta_in.shape))
        self.replace([node] + acts, node, self.new_name(node.target), frozen, (node.args[0],))
        ctx.report.fused["linear" + ("+" + act[0] if act[0] != "none" else "")] += 1
        ctx.report.backends[f"linear:{backend}"] += 1

    def norm_chain(self, node: fx.Node, m: nn.Module) -> None:
        ctx = self.ctx
        scale, shift, act = _norm(m)
        acts, act = self.activations_after(node, act)
        meta = _meta(node)
        if meta is None or len(meta.shape) < 2 or meta.shape[1] != scale.numel():
            return
        acc = _accumulation(ctx.dtype)
        frozen = FrozenAffine(scale.to(ctx.device, acc), shift.to(ctx.device, acc), act, ctx.dtype)
        self.replace([node] + acts, node, self.new_name(node.target), frozen, (node.args[0],))
        ctx.report.fused["bn" + ("+" + act[0] if act[0] != "none" else "")] += 1


# Linear: which backend (see FrozenLinear). "aten" unless measured otherwise.
LINEAR_BACKEND: Dict[str, str] = {"cpu": "onednn"}


def _linear_backend(ctx: _Context) -> str:
    choice = LINEAR_BACKEND.get(ctx.device.type, "aten")
    if choice == "mkl" and (ctx.dtype != torch.float32 or not torch._C.has_mkl):
        choice = "onednn" if ctx.dtype in _onednn_dtypes() else "aten"
    if choice == "onednn" and ctx.dtype not in _onednn_dtypes():
        choice = "aten"
    return choice


# --------------------------------------------------------------------------------------------------------------
# Tracing


def _tracer() -> fx.Tracer:
    """An FX tracer that keeps timm's no-trace modules and functions as leaves (where timm is in use)."""
    leaves: Tuple[type, ...] = ()
    functions: Tuple = ()
    if "timm" in sys.modules:
        try:
            from timm.layers import _fx as timm_fx

            leaves = tuple(timm_fx.get_notrace_modules())
            functions = tuple(f for f in timm_fx.get_notrace_functions() if callable(f))
        except Exception:  # noqa: BLE001 (another timm version: trace through its modules)
            pass

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            # a module with hooks is called as a module (tracing through it would drop its hooks)
            return isinstance(m, leaves) or not _unhooked(m) or super().is_leaf_module(m, qualname)

    return Tracer(autowrap_functions=functions)


def _trace(m: nn.Module) -> fx.GraphModule:
    tracer = _tracer()
    graph = tracer.trace(m)
    return fx.GraphModule(tracer.root, graph, type(m).__name__)


def _freeze_traced(gm: fx.GraphModule, example_args: tuple, ctx: _Context) -> "FrozenGraph":
    # every node's shape, dtype and strides on the example input, computed by fake tensors (no arithmetic)
    with torch.no_grad():
        FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*example_args)
    _Rewriter(gm, ctx).run()
    return FrozenGraph(gm)


def _example_inputs(model: nn.Module, example_args: tuple) -> Dict[int, tuple]:
    """The positional inputs of every submodule's first call on the example input (id(module) -> args)."""
    seen: Dict[int, tuple] = {}
    handles = []

    def hook(m, args):
        seen.setdefault(id(m), args)

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(*example_args)
    finally:
        for h in handles:
            h.remove()
    return seen


def _freeze_tree(m: nn.Module, path: str, example_args: Optional[tuple], root: nn.Module, root_args: tuple,
                 inputs: Dict[int, tuple], ctx: _Context) -> nn.Module:
    """``m`` traced and frozen; where it does not trace, its children one by one (``m``'s own code stays eager).
    ``inputs`` (filled on the first failure): every submodule's first positional inputs on the example."""
    if example_args is None:
        ctx.report.unfrozen.append((path, "not called on the example input"))
        return m
    if not _unhooked(m):
        error = "has hooks (or a forward set on the instance), which a traced graph would not run"
    else:
        try:
            gm = _trace(m)
        except Exception as e:  # noqa: BLE001 (any tracing failure: data-dependent control flow, ...)
            error = f"does not trace with torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        else:
            return _freeze_traced(gm, example_args, ctx)
    ctx.report.unfrozen.append((path, error))
    if not inputs:
        inputs.update(_example_inputs(root, root_args))
    for name, child in list(m.named_children()):
        if child is None:
            continue
        args = inputs.get(id(child))
        if args is not None and not all(isinstance(a, Tensor) for a in args):
            args = None
        setattr(m, name, _freeze_tree(child, f"{path}.{name}" if path else name, args, root, root_args, inputs, ctx))
    return m


# --------------------------------------------------------------------------------------------------------------
# freeze()


def _unswap(model: nn.Module) -> None:
    """Give swapped blocks their original classes back, and drop pyfastblocks' per-instance caches."""
    for m in model.modules():
        base = getattr(type(m), "_fastblocks_base", None)
        if base is not None:
            m.__class__ = base
        for key in [k for k in m.__dict__ if k.startswith("_fastblocks_")]:
            del m.__dict__[key]


def _own_tensors(model: nn.Module, originals: Dict[int, Tensor]) -> None:
    """Clone every parameter and buffer ``model`` shares with the original (ties kept), without gradients."""
    clones: Dict[int, Tensor] = {}
    for m in model.modules():
        for table, make in ((m._parameters, lambda t: nn.Parameter(t.detach().clone(), requires_grad=False)),
                            (m._buffers, lambda t: t.detach().clone())):
            for name, t in table.items():
                if t is not None and id(t) in originals:
                    if id(t) not in clones:
                        clones[id(t)] = make(t)
                    table[name] = clones[id(t)]


def _model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _default_example(model: nn.Module, device: torch.device, dtype: torch.dtype) -> Tensor:
    """One image of the size the model was made for: timm's ``pretrained_cfg['input_size']``, 299 for
    torchvision's Inception3, else 224; channels from the first convolution."""
    channels = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    size = (channels, 224, 224)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and len(cfg.get("input_size", ())) == 3:
        size = tuple(cfg["input_size"])
    elif _class_path(model) == "torchvision.models.inception.Inception3":
        size = (channels, 299, 299)
    return torch.randn(1, *size, device=device, dtype=dtype)


def freeze(model: nn.Module, example_input=None, *,
           memory_format: Optional[torch.memory_format] = torch.channels_last) -> FrozenModel:
    """An inference snapshot of ``model`` (a torchvision / timm CNN, swapped or not; ``model`` is not modified).

    BatchNorms are folded into the convolutions' weights once; on the CPU (float32, bfloat16) the weights are
    prepacked for oneDNN and every conv -> BN -> activation, and every conv -> BN -> residual add -> activation, is one
    oneDNN convolution with post-ops (see the module docstring for every pattern and backend). ``freeze`` takes
    seconds (it traces the model with ``torch.fx`` and runs the example input through it once), never a compile.

    The contract:

    - a frozen model is for inference: calling it in training mode (after ``.train()``), or with an input that
      requires grad while grad mode is on, raises ``RuntimeError``; its outputs carry no gradient;
    - it is a snapshot: changing the original model afterwards (weights, BatchNorm statistics, modules) does not
      change it; freeze again;
    - it is tied to the device and dtype it was frozen for: ``.to()`` / ``.cuda()`` / ``.half()`` to another one
      raises ``RuntimeError`` (no-op conversions pass); inputs on another device or of another floating dtype raise;
      freeze ``model.to(...)`` again instead;
    - 4-D inputs are converted to ``memory_format`` on entry (a no-op when they already are): the output of a
      convolutional layer comes out in that format; ``memory_format=None`` keeps the input's layout (the weights are
      then packed for the example input's layout);
    - it holds the folded weights as buffers (``state_dict()``) and, for oneDNN, their prepacked copies (not in the
      state_dict, packed again after unpickling or deepcopy): about twice the weights' memory; it does not load a
      state_dict (``RuntimeError``: load into the original and freeze again);
    - modules with forward hooks (or a ``forward`` set on the instance) are kept as they are, hooks and all, and not
      fused into their neighbours;
    - under ``torch.compile`` / ``torch.export`` it runs as plain ATen ops on the folded weights (the prepacked oneDNN
      weights cannot be traced), which both handle.

    Args:
        model: an ``nn.Module`` whose parameters are all on one device in one floating dtype.
        example_input: a tensor (or a tuple of positional arguments) like the inputs the frozen model will see:
            its sizes choose the oneDNN weight formats and the depthwise routing. Default: one image of the model's
            input size (timm's ``pretrained_cfg``, 299 for Inception-v3, else 224), random.
        memory_format: ``torch.channels_last`` (default), ``torch.contiguous_format``, or None (see above).

    Returns:
        a :class:`FrozenModel` (an ``nn.Module``); ``.report`` says what was fused, by which backend, what was left
        unfrozen and why, and how long freeze took.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ValueError: ``example_input`` is not on the model's device or in
        its dtype, or ``memory_format`` is not one of the above.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze: argument 'model' must be an nn.Module, got {type(model).__name__}")
    if memory_format not in (torch.channels_last, torch.contiguous_format, None):
        raise ValueError(f"freeze: argument 'memory_format' must be torch.channels_last, torch.contiguous_format or "
                         f"None, got {memory_format!r}")
    # The modules are copied, their parameters and buffers not (most are folded into new tensors); whatever the
    # frozen model still holds of the original's is cloned at the end.
    originals = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    copy_ = copy.deepcopy(model, dict(originals))
    _unswap(copy_)
    copy_.eval()
    device, dtype = _model_device_dtype(copy_)
    if example_input is None:
        example_input = _default_example(copy_, device, dtype)
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    for i, a in enumerate(args):
        if isinstance(a, Tensor):
            if a.device != device or (a.is_floating_point() and a.dtype != dtype):
                raise ValueError(f"freeze: argument 'example_input' ({i}) must be on {device} in {dtype} like the "
                                 f"model, got {a.device} {a.dtype}")
    args = tuple(a.detach().contiguous(memory_format=memory_format) if isinstance(a, Tensor) and a.dim() == 4
                 and memory_format is not None else (a.detach() if isinstance(a, Tensor) else a) for a in args)
    report = FreezeReport()
    ctx = _Context(device, dtype, report)
    frozen = _freeze_tree(copy_, "", args, copy_, args, {}, ctx)
    _own_tensors(frozen, originals)
    report.seconds = time.perf_counter() - start
    return FrozenModel(frozen, device, dtype, memory_format, report)
