"""The fused pieces every model block in :mod:`pyfastblocks.models` and every block :func:`pyfastblocks.swap`
rewrites is made of.

They take the block's own ``nn.Conv2d`` / ``nn.BatchNorm2d`` modules (so parameters, buffers and state_dict keys
never change), read their live parameters and buffers at every call (nothing is cached: folding a BatchNorm is
O(C)), and run:

- ``conv_bn_act``: conv -> BN -> activation (any of :mod:`pyfastblocks.activations`, given as a spec string:
  the name, or ``"leaky_relu:<slope>"``), with an optional ReLU on the input (Xception's pre-activation). See :func:`pyfastblocks.nn.conv_bn_act`; depthwise convolutions follow
  :data:`DEPTHWISE_BACKEND`.
- ``conv_bn_add``: ``act(bn(conv(x)) + residual)``, the tail of a residual block. Eval on CPU: one oneDNN
  convolution with the BatchNorm folded into its weight and bias and the add (+ activation) as post-ops where
  folding the weight costs less than a pass over the output; elsewhere the bare convolution, then BN + add +
  activation as one ``fastblocks::add_act`` pass (training: batch statistics, running stats updated as BatchNorm
  does).
- in training, :data:`TRAINING_BACKEND` picks per device how the batch statistics run (fused, or ATen's
  batch_norm followed by the eager activation / add / concat).
- ``bn_act``: a BatchNorm + activation alone (one pass).
- ``concat_tail``: the tail of an Inception module: each branch's last convolution, un-normalized, goes into one
  ``fastblocks::branch_concat`` with every branch's BatchNorm laid end to end.
- the plan-based forward of an ``nn.Sequential`` whose conv -> BN -> activation runs become ``conv_bn_act`` calls
  (the plan is made at every call from the Sequential's children as they are).

Every BatchNorm tail goes through :func:`pyfastblocks.nn._tail.bn_tail`, a ``torch.fx`` leaf: under
``torch.fx.symbolic_trace`` the fused forwards trace to the convolutions plus one tail node per BatchNorm group.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import activations, ops
from .. import policy as _policy
from ..nn import _tail, is_depthwise
from ..nn._tail import TRAINING_BACKEND
from ..nn.batchnorm import uses_batch_stats
from ..nn.conv import (_apply_activation, _folded_conv_params, _library_conv_act, fold_into_weight, fused_conv_bn_act,
                       fx_tracing, onednn_inference_ok, zero_padded)

# How a depthwise convolution runs, per device type: pyfastblocks.policy (the same dict).
DEPTHWISE_BACKEND: Dict[str, str] = _policy.DEPTHWISE_BACKEND

# TRAINING_BACKEND (how batch statistics run, per device type): pyfastblocks.policy (the same dict).

TIMM_BN_ACT = "timm.layers.norm_act.BatchNormAct2d"


def class_path(obj) -> str:
    """``module.QualName`` of an object's class (or of a class); the original class for a swapped module."""
    cls = obj if isinstance(obj, type) else type(obj)
    cls = getattr(cls, "_fastblocks_base", cls)
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------------------------
# What the fused ops can do with a module: activation names, BatchNorms (with timm's activation inside), convs


def act_name(m: Optional[nn.Module]) -> Optional[str]:
    """The activation spec (:func:`pyfastblocks.activations.spec`: a table name, or ``"leaky_relu:<slope>"``) of
    an activation module the epilogues run (``None`` / ``nn.Identity``: ``"none"``), else None."""
    return activations.spec_of_module(m)


def compose_acts(first: Optional[str], second: Optional[str]) -> Optional[str]:
    """The one activation spec equal to ``second(first(x))`` (``"none"`` is neutral, idempotent activations merge,
    relu6 absorbs relu), else None."""
    return activations.compose_specs(first, second)


def norm_act(norm: Optional[nn.Module]) -> Optional[Tuple[Optional[_BatchNorm], str]]:
    """``(bn, activation)`` of a norm module the fused ops run: ``nn.BatchNorm2d`` (activation ``"none"``),
    timm's ``BatchNormAct2d`` (its ``act``; its ``drop`` must be an Identity), ``None``/``nn.Identity`` (no BN).
    None when the norm is something else (GroupNorm, FrozenBatchNorm2d, a BN with another activation, ...)."""
    if norm is None or type(norm) is nn.Identity:
        return None, "none"
    if type(norm) is nn.BatchNorm2d:
        return norm, "none"
    if class_path(norm) == TIMM_BN_ACT or getattr(type(norm), "_fastblocks_bn_act", False):
        drop = getattr(norm, "drop", None)
        if drop is not None and type(drop) is not nn.Identity:
            return None
        act = act_name(getattr(norm, "act", None))
        return (norm, act) if act is not None else None
    return None


def unhooked(m: nn.Module) -> bool:
    """No forward / backward hooks and no ``forward`` set on the instance: a fused forward may bypass the module's
    call."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "forward" in m.__dict__)


_MODULE = nn.modules.module


def global_hooks() -> bool:
    """Hooks registered for every module (``torch.nn.modules.module.register_module_forward_hook`` and its
    siblings): a fused forward that bypasses a child's call would skip them, so it steps aside."""
    return bool(_MODULE._global_forward_hooks or _MODULE._global_forward_pre_hooks
                or _MODULE._global_backward_hooks or _MODULE._global_backward_pre_hooks)


def plain_conv(conv: nn.Module) -> bool:
    """An ``nn.Conv2d`` (exactly: not timm's Conv2dSame and the like) with zero padding given as numbers."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and unhooked(conv))


def conv_problem(conv: nn.Module, name: str) -> Optional[str]:
    if type(conv) is not nn.Conv2d:
        return f"{name} is {type(conv).__name__}, not nn.Conv2d"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"{name} has padding {conv.padding!r} / padding_mode {conv.padding_mode!r}"
    return None


def norm_problem(norm: nn.Module, name: str) -> Optional[str]:
    if norm_act(norm) is None:
        return f"{name} is {type(norm).__name__} (only nn.BatchNorm2d and timm BatchNormAct2d with an activation of the table fuse)"
    return None


# --------------------------------------------------------------------------------------------------------------
# conv -> BN -> activation


_onednn_ok = onednn_inference_ok  # one rule for nn.conv_bn_act and the models


def conv_bn_act(x: Tensor, conv: nn.Conv2d, bn: Optional[_BatchNorm] = None, activation: str = "relu",
                input_relu: bool = False) -> Tensor:
    """``act(bn(conv(relu(x) if input_relu else x)))``: :func:`pyfastblocks.nn.conv_bn_act`, with depthwise
    convolutions routed by :data:`DEPTHWISE_BACKEND` and batch statistics by :data:`TRAINING_BACKEND`;
    ``activation`` is a spec string (:func:`pyfastblocks.activations.spec`)."""
    depthwise_kernel = None
    if is_depthwise(conv) and not fx_tracing():
        depthwise_kernel = _policy.depthwise_kernel(x, conv)
    name, slope = activations.split(activation)
    return fused_conv_bn_act(x, conv, bn, name, input_relu, depthwise_kernel, swapped=True, negative_slope=slope)


def conv_bn_add(x: Tensor, conv: nn.Conv2d, bn: Optional[_BatchNorm], residual: Tensor, activation: str = "relu",
                add: str = "promote") -> Tensor:
    """``act(bn(conv(x)) + residual)`` (``activation``: a spec string) in (at most) one pass after the conv.

    Eval on CPU: one oneDNN convolution whose weight and bias have the BatchNorm folded in (at this call) and
    whose post-ops are the add and the ReLU, where folding the weight costs less than a pass over the output.
    Otherwise the bare convolution, then ``fastblocks::add_act`` with the BatchNorm (batch statistics in training,
    running statistics in eval) as its scale/bias. The result has the original's dtype: ``add`` says how the
    original adds (``"promote"``: ``bn(conv(x)) + residual``; ``"bn"``: ``out += residual``; ``"residual"``:
    ``residual += bn(conv(x))``), which matters under autocast.
    """
    fx = fx_tracing()
    depthwise = is_depthwise(conv)
    name, slope = activations.split(activation)
    if not fx and (bn is None or not uses_batch_stats(bn)) and not depthwise and zero_padded(conv) \
            and residual.dtype == x.dtype and residual.shape == _conv_output_shape(x, conv) \
            and _onednn_ok(x, conv.weight, residual) and (bn is None or fold_into_weight(x, conv)):
        weight, bias = _folded_conv_params(conv, bn, x)
        attr, scalars, algorithm = activations.get(name).onednn(slope)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, None if bias is None else bias.to(x.dtype), list(conv.padding), list(conv.stride),
            list(conv.dilation), conv.groups, "add", 1.0, None if attr == "none" else attr, scalars, algorithm)
    if depthwise and (fx or _policy.depthwise_kernel(x, conv)):
        y = ops.depthwise_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    elif fx or not zero_padded(conv):
        y = conv._conv_forward(x, conv.weight, conv.bias)
    else:  # oneDNN's convolution where it may run (CPU inference), else F.conv2d
        y = _library_conv_act(x, conv, *_folded_conv_params(conv, None, x), "none")
    if bn is None:
        return _tail.add_act(y, residual, name, add, slope)
    return _tail.bn_tail([y], [_tail.bn_spec(bn)], residual, name, True, add, slope)


def _conv_output_shape(x: Tensor, conv: nn.Conv2d) -> torch.Size:
    sizes = [x.shape[0], conv.out_channels]
    for i in range(2):
        span = x.shape[2 + i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1
        sizes.append(span // conv.stride[i] + 1)
    return torch.Size(sizes)


def bn_act(x: Tensor, bn: Optional[_BatchNorm], activation: str) -> Tensor:
    """``act(bn(x))`` as one pass (``activation``: a spec string)."""
    name, slope = activations.split(activation)
    if bn is None:
        return _apply_activation(x, name, False, slope)
    return _tail.bn_tail([x], [_tail.bn_spec(bn)], None, name, True, negative_slope=slope)


def run_conv_norm_act(x: Tensor, conv: nn.Conv2d, norm: Optional[nn.Module], act: Optional[nn.Module] = None,
                      input_relu: bool = False) -> Tensor:
    """conv -> norm (BatchNorm2d / BatchNormAct2d / none) -> act module, as fused as the modules allow: an
    activation the epilogue cannot run is applied as its module afterwards."""
    bn, inner = norm_act(norm)
    outer = act_name(act)
    combined = compose_acts(inner, outer)
    if combined is not None:
        return conv_bn_act(x, conv, bn, combined, input_relu)
    y = conv_bn_act(x, conv, bn, inner, input_relu)
    return act(y)


# --------------------------------------------------------------------------------------------------------------
# Inception tails


def concat_tail(inputs: Sequence[Tensor], bns: Sequence[_BatchNorm], activation: str = "relu") -> Tensor:
    """``act(cat([bn_i(x_i)], 1))`` as one ``branch_concat`` (the BatchNorms folded, or their batch statistics,
    laid end to end at this call; ``activation``: a spec string)."""
    name, slope = activations.split(activation)
    return _tail.bn_tail(list(inputs), [_tail.bn_spec(bn) for bn in bns], None, name, True, negative_slope=slope)


# --------------------------------------------------------------------------------------------------------------
# nn.Sequential: conv -> BN -> activation runs


def _is_bn(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d or class_path(m) == TIMM_BN_ACT or getattr(type(m), "_fastblocks_bn_act", False)


def sequential_plan(seq: nn.Sequential) -> Optional[List[tuple]]:
    """The fused schedule of a Sequential, or None when it has nothing to fuse.

    Steps: ``("cba", conv, bn_or_None, act)`` for a plain conv followed by a BatchNorm (or a timm BatchNormAct2d)
    and/or activation modules of the table; ``("ba", bn, act)`` for a BatchNorm followed by activations; ``("m", name)`` for
    any other child, run as it is."""
    items = list(seq._modules.items())
    plan: List[tuple] = []
    fused = False
    i = 0
    while i < len(items):
        name, m = items[i]
        j = i + 1
        bn_name, act = None, "none"
        starts_conv = plain_conv(m)
        starts_bn = m is not None and _is_bn(m)
        if starts_conv or starts_bn:
            if starts_bn:
                spec = norm_act(m)
                if spec is None or not unhooked(m):
                    plan.append(("m", name))
                    i += 1
                    continue
                bn_name, act = name, spec[1]
            elif j < len(items) and items[j][1] is not None and _is_bn(items[j][1]):
                spec = norm_act(items[j][1])
                if spec is not None and unhooked(items[j][1]):
                    bn_name, act = items[j][0], spec[1]
                    j += 1
            while j < len(items) and items[j][1] is not None and act_name(items[j][1]) is not None \
                    and unhooked(items[j][1]):
                act = compose_acts(act, act_name(items[j][1]))
                j += 1
            if starts_conv and j > i + 1:
                plan.append(("cba", name, bn_name, act))
                fused = True
            elif starts_bn:
                plan.append(("ba", bn_name, act))
                fused = fused or act != "none"
            else:
                plan.append(("m", name))
                j = i + 1
            i = j
            continue
        plan.append(("m", name))
        i += 1
    return plan if fused else None


def fused_sequential_forward(self: nn.Sequential, x: Tensor) -> Tensor:
    """The forward of a swapped / pyfastblocks Sequential: its conv -> BN -> act runs fused. The plan is made at
    every call from the children as they are (a child with hooks runs as itself; with hooks registered for every
    module, the Sequential runs as nn.Sequential)."""
    mods = self._modules
    plan = None if global_hooks() else sequential_plan(self)
    if plan is None:
        for m in mods.values():
            x = m(x)
        return x
    for step in plan:
        x = run_plan_step(mods, step, x)
    return x


def run_plan_step(mods: Dict[str, nn.Module], step: tuple, x: Tensor) -> Tensor:
    """One step of a :func:`sequential_plan` on the Sequential's children ``mods``."""
    kind = step[0]
    if kind == "m":
        return mods[step[1]](x)
    if kind == "cba":
        return conv_bn_act(x, mods[step[1]], mods[step[2]] if step[2] is not None else None, step[3])
    return bn_act(x, mods[step[1]], step[2])


class FusedSequential(nn.Sequential):
    """An ``nn.Sequential`` whose conv -> BN -> activation runs go through :func:`conv_bn_act` (same children,
    same state_dict keys)."""

    _fastblocks_fused = True

    forward = fused_sequential_forward


class ConvBNAct(FusedSequential):
    """``Sequential(conv, bn, act)`` (torchvision's ``Conv2dNormActivation`` layout: keys ``0.weight``,
    ``1.weight``, ...), fused."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: Optional[str] = "relu6", eps: float = 1e-5) -> None:
        padding = (kernel_size - 1) // 2
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
                  nn.BatchNorm2d(out_channels, eps=eps)]
        if activation == "relu6":
            layers.append(nn.ReLU6(inplace=True))
        elif activation == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif activation not in (None, "none"):
            raise ValueError(f"ConvBNAct: argument 'activation' must be 'relu', 'relu6' or None, got {activation!r}")
        super().__init__(*layers)
        self.out_channels = out_channels


def load_weights(model: nn.Module, weights) -> nn.Module:
    """Load ``weights`` (a state_dict, or a path to one saved with ``torch.save``) with ``strict=True``."""
    if weights is None:
        return model
    if not isinstance(weights, dict) and not hasattr(weights, "keys"):
        weights = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(weights, dict) and "state_dict" in weights and isinstance(weights["state_dict"], dict):
            weights = weights["state_dict"]
    model.load_state_dict(weights, strict=True)
    return model


# --------------------------------------------------------------------------------------------------------------
# Squeeze-excitation gates: ``y * gate[n, c]`` applied in the pass that follows where that pass is elementwise


def _tv_se_gate(se: nn.Module, y: Tensor) -> Tensor:
    return se._scale(y)  # torchvision's own method: avgpool, fc1, activation, fc2, scale_activation


def _timm_se_module_gate(se: nn.Module, y: Tensor) -> Tensor:
    # timm.layers.squeeze_excite.SEModule.forward without the final product
    x_se = y.mean((2, 3), keepdim=True)
    if se.add_maxpool:
        x_se = 0.5 * x_se + 0.5 * y.amax((2, 3), keepdim=True)
    x_se = se.fc1(x_se)
    x_se = se.act(se.bn(x_se))
    x_se = se.fc2(x_se)
    return se.gate(x_se)


def _timm_effective_se_gate(se: nn.Module, y: Tensor) -> Tensor:
    # timm.layers.squeeze_excite.EffectiveSEModule.forward without the final product
    x_se = y.mean((2, 3), keepdim=True)
    if se.add_maxpool:
        x_se = 0.5 * x_se + 0.5 * y.amax((2, 3), keepdim=True)
    x_se = se.fc(x_se)
    return se.gate(x_se)


def _timm_block_se_gate(se: nn.Module, y: Tensor) -> Tensor:
    # timm.models._efficientnet_blocks.SqueezeExcite.forward without the final product
    x_se = y.mean((2, 3), keepdim=True)
    x_se = se.conv_reduce(x_se)
    x_se = se.act1(x_se)
    x_se = se.conv_expand(x_se)
    return se.gate(x_se)


def _timm_eca_gate(se: nn.Module, y: Tensor) -> Tensor:
    # timm.layers.eca.EcaModule.forward without the final product
    g = y.mean((2, 3)).view(y.shape[0], 1, -1)
    g = se.conv(g)
    if se.conv2 is not None:
        g = se.act(g)
        g = se.conv2(g)
    return se.gate(g).view(y.shape[0], -1, 1, 1)


# class path -> (children it must have exactly, attributes it must have, gate function)
SE_GATES = {
    "torchvision.ops.misc.SqueezeExcitation": (("avgpool", "fc1", "fc2", "activation", "scale_activation"), (),
                                               _tv_se_gate),
    "timm.layers.squeeze_excite.SEModule": (("fc1", "bn", "act", "fc2", "gate"), ("add_maxpool",),
                                            _timm_se_module_gate),
    "timm.layers.squeeze_excite.EffectiveSEModule": (("fc", "gate"), ("add_maxpool",), _timm_effective_se_gate),
    "timm.models._efficientnet_blocks.SqueezeExcite": (("conv_reduce", "act1", "conv_expand", "gate"), (),
                                                        _timm_block_se_gate),
    "timm.layers.eca.EcaModule": (("conv", "act", "conv2", "gate"), (), _timm_eca_gate),
}


def se_kind(se: Optional[nn.Module]) -> Optional[str]:
    """The class path of a squeeze-excitation module whose gate :func:`se_gate` computes (the children and
    attributes its forward reads are there, no forward set on the instance), else None."""
    if se is None:
        return None
    path = class_path(se)
    entry = SE_GATES.get(path)
    if entry is None:
        return None
    children, attributes, _ = entry
    if tuple(sorted(k for k, v in se._modules.items())) != tuple(sorted(children)):
        return None
    if any(not hasattr(se, a) for a in attributes) or "forward" in se.__dict__:
        return None
    return path


def se_gate(se: Optional[nn.Module], y: Tensor) -> Optional[Tensor]:
    """The gate ``g`` (``[N, C, 1, 1]``) the squeeze-excitation module ``se`` multiplies ``y`` by (``se(y) ==
    y * g``), computed as its forward computes it (its submodules called as modules), or None when ``se`` is not a
    gate this knows (then the caller runs ``se`` itself)."""
    path = se_kind(se)
    if path is None or se._forward_hooks or se._forward_pre_hooks or global_hooks():
        return None
    return SE_GATES[path][2](se, y)


def _per_sample_channels(tensors: Sequence[Tensor], gate: Tensor) -> Optional[List[Tensor]]:
    """The tensors as ``[1, N*C, H, W]`` views (the gate's per-(sample, channel) scale becomes a per-channel one for
    the epilogue ops), where that is a view: one sample (any layout) or contiguous NCHW; else None."""
    n, c = tensors[0].shape[:2]
    if gate.shape != (n, c, 1, 1) or any(t.shape != tensors[0].shape for t in tensors):
        return None
    if n == 1:
        return list(tensors)
    if all(t.is_contiguous() for t in tensors):
        return [t.view(1, n * c, *t.shape[2:]) for t in tensors]
    return None


def gated_add_act(y: Tensor, gate: Tensor, residual: Tensor, activation: str, add: str = "promote") -> Tensor:
    """``act(y * gate + residual)`` (``gate``: ``[N, C, 1, 1]``, a squeeze-excitation gate; ``activation``: a spec
    string; ``add`` as :func:`pyfastblocks.nn._tail.bn_tail`) in one ``fastblocks::add_act`` pass where the
    per-(sample, channel) gate can be its per-channel scale (one sample, or contiguous NCHW data); else the
    product, then the add + activation in one pass."""
    name, slope = activations.split(activation)
    if not fx_tracing() and gate.dtype == y.dtype == residual.dtype:
        views = _per_sample_channels([y, residual], gate)
        if views is not None:
            out = _tail.add_act(views[0], views[1], name, add, slope, scale=gate.reshape(-1))
            return out.view(y.shape)
    return _tail.add_act(y * gate, residual, name, add, slope)


def gated_act(y: Tensor, gate: Tensor, activation: str) -> Tensor:
    """``act(y * gate)`` (``gate``: ``[N, C, 1, 1]``) in one ``fastblocks::affine_act`` pass where the gate can be
    its per-channel scale (as :func:`gated_add_act`); else the product and the activation in place."""
    name, slope = activations.split(activation)
    if not fx_tracing() and gate.dtype == y.dtype:
        views = _per_sample_channels([y], gate)
        if views is not None:
            return _tail.scale_act(views[0], gate.reshape(-1), name, slope).view(y.shape)
    return _apply_activation(y * gate, name, True, slope)


# --------------------------------------------------------------------------------------------------------------
# Chains of (conv, norm) pairs and module calls with an optional residual at the end (timm's EfficientNet /
# MobileNet blocks and their kin)


def conv_norm_act(x: Tensor, conv: nn.Module, norm: Optional[nn.Module], act: Optional[nn.Module] = None) -> Tensor:
    """conv -> norm (BatchNorm2d / BatchNormAct2d / none) -> act module, as fused as the modules allow: a plain
    conv goes through :func:`run_conv_norm_act`; any other conv module (timm's Conv2dSame, MixedConv2d,
    CondConv2d, ...) runs as itself, then the norm + activation are one pass."""
    if plain_conv(conv):
        return run_conv_norm_act(x, conv, norm, act)
    y = conv(x)
    spec = norm_act(norm)
    a = act_name(act)
    combined = compose_acts(spec[1], a) if spec is not None else None
    if spec is not None and combined is not None:
        return bn_act(y, spec[0], combined)
    y = norm(y) if norm is not None else y
    return act(y) if act is not None else y


TIMM_DROP_PATH = "timm.layers.drop.DropPath"
TV_STOCHASTIC_DEPTH = "torchvision.ops.stochastic_depth.StochasticDepth"


def drop_path_inactive(m: Optional[nn.Module]) -> bool:
    """Is this drop-path module the identity now (None / nn.Identity, timm's DropPath or torchvision's
    StochasticDepth in eval or with probability 0, no hooks)? Then a fused forward may skip it."""
    if m is None or type(m) is nn.Identity:
        return True
    path = class_path(m)
    if not unhooked(m):
        return False
    if path == TIMM_DROP_PATH:
        return not m.training or m.drop_prob == 0.0
    if path == TV_STOCHASTIC_DEPTH:
        return not m.training or m.p == 0.0
    return False


def _is_identity(m: Optional[nn.Module]) -> bool:
    return m is None or type(m) is nn.Identity


def chain_forward(steps: Sequence[tuple], skip: str = "has_skip", drop_path: str = "drop_path",
                  add: str = "promote"):
    """The fused forward of a block that runs ``steps`` on its input in order and, where ``getattr(self, skip)``,
    returns ``drop_path(h) + input``. A step is ``("cn", conv, norm)`` (children's names: conv -> norm (+ its
    activation), fused; a missing conv skips the step) or ``("m", name)`` (a child run as it is; a missing one or
    an nn.Identity is skipped). The last conv + norm takes the residual add where nothing but identities and an
    inactive drop-path follow it."""
    last_cn = max(i for i, s in enumerate(steps) if s[0] == "cn")

    def forward(self, x: Tensor) -> Tensor:
        mods = self._modules
        residual = bool(getattr(self, skip, False)) if skip else False
        h = x
        for i, step in enumerate(steps):
            if step[0] == "m":
                m = mods.get(step[1])
                if not _is_identity(m):
                    h = m(h)
                continue
            conv, norm = mods.get(step[1]), mods.get(step[2])
            if conv is None:
                continue
            if i == last_cn and residual and plain_conv(conv) \
                    and all(_is_identity(mods.get(s[1])) for s in steps[i + 1:]) \
                    and drop_path_inactive(mods.get(drop_path)):
                spec = norm_act(norm)
                if spec is not None and spec[1] == "none":
                    return conv_bn_add(h, conv, spec[0], x, activation="none", add=add)
            h = conv_norm_act(h, conv, norm)
        if residual:
            dp = mods.get(drop_path)
            if not drop_path_inactive(dp):
                h = dp(h)
            return h + x if add == "promote" else h.add_(x)
        return h
    return forward
