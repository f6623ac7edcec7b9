"""The fused pieces every model block in :mod:`pyfastblocks.models` and every block :func:`pyfastblocks.swap`
rewrites is made of.

They take the block's own ``nn.Conv2d`` / ``nn.BatchNorm2d`` modules (so parameters, buffers and state_dict keys
never change) and run:

- ``conv_bn_act``: conv -> BN -> activation (``"none"``, ``"relu"``, ``"relu6"``), with an optional ReLU on the
  input (Xception's pre-activation). Eval: the BatchNorm folded into the convolution; training: batch statistics,
  then normalize + activation as one fused pass. See :func:`pyfastblocks.nn.conv_bn_act`; depthwise convolutions
  follow :data:`DEPTHWISE_BACKEND`.
- ``conv_bn_add``: ``act(bn(conv(x)) + residual)``, the tail of a residual block. Eval on CPU: one oneDNN
  convolution with the folded BatchNorm as bias and the add (+ ReLU) as post-ops, so the tail costs no pass of
  its own; elsewhere (training, CUDA): the bare convolution, then BN + add + ReLU as one ``fastblocks::add_relu``
  pass (training uses the batch statistics, running stats updated as BatchNorm does).
- in training, :data:`TRAINING_BACKEND` picks per device how the batch statistics run (fused, or ATen's
  batch_norm followed by the eager activation / add / concat).
- ``bn_act``: a BatchNorm + activation alone (one ``affine_relu`` pass).
- ``concat_tail``: the tail of an Inception module: each branch's last convolution, un-normalized, goes into one
  ``fastblocks::branch_concat`` with every branch's BatchNorm laid end to end.
- the plan-based forward of an ``nn.Sequential`` whose conv -> BN -> activation runs become ``conv_bn_act`` calls.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import ops
from ..nn import batchnorm_scale_bias, is_depthwise
from ..nn import conv_bn_act as _nn_conv_bn_act
from ..nn.conv import _affine_act, _apply_activation, _folded_conv_params, _library_conv_act, onednn_inference_ok

# How a depthwise convolution runs, per device type: "fastblocks" (fastblocks::depthwise_conv2d, BN and
# activation in its epilogue, input ReLU in its prologue), "library" (PyTorch's convolution with groups=C: on
# CPU in eval oneDNN's fused convolution + bias + activation) or "auto". "auto" (the CPU default) takes the
# fastblocks kernel for NCHW inference on layers of fewer than 128 channels, where oneDNN's NCHW depthwise
# convolution is slow (MobileNet's first layer, 32 x 64 x 64: 3.6 ms against 0.42 ms, 2 threads), and the library
# everywhere else: there oneDNN is 1.2-3x faster (channels_last, wider layers, 2 threads; training). Those
# measurements predate the -fopenmp build fix (our CPU kernels then ran on one thread); re-measured with both
# threads (MobileNet v1 / Xception / MobileNet v2 eval, 8 x 160 x 160), a plane-size rule instead of the channel
# count changed the models by -5% to +7%, within noise, so the rule stays.
DEPTHWISE_BACKEND: Dict[str, str] = {"cpu": "auto", "cuda": "fastblocks"}

# How a BatchNorm in training (batch statistics) runs, per device type: "fastblocks" (the statistics turned into a
# scale/bias pair by pyfastblocks.nn.batchnorm_scale_bias, then normalize + activation (+ add, + concat) as one
# fused pass) or "eager" (ATen's batch_norm, then the activation in place, or the add + ReLU / ReLU + concat as one
# fused pass). The CPU default is "eager": there the fused training path is 0.66-0.8x the eager model (the batch
# statistics cost torch.var_mean, 3-15x slower than ATen's batch_norm forward, and its composite backward; and
# the backward of add_relu / branch_concat is 15-25% slower there than eager's add_ + relu_; see the report of
# issue 5), so "eager" runs a training step as the original model does. Eval never uses batch statistics and is
# always fused.
TRAINING_BACKEND: Dict[str, str] = {"cpu": "eager", "cuda": "fastblocks"}

TIMM_BN_ACT = "timm.layers.norm_act.BatchNormAct2d"


def class_path(obj) -> str:
    """``module.QualName`` of an object's class (or of a class); the original class for a swapped module."""
    cls = obj if isinstance(obj, type) else type(obj)
    cls = getattr(cls, "_fastblocks_base", cls)
    return f"{cls.__module__}.{cls.__qualname__}"


# --------------------------------------------------------------------------------------------------------------
# What the fused ops can do with a module: activation names, BatchNorms (with timm's activation inside), convs


def act_name(m: Optional[nn.Module]) -> Optional[str]:
    """``"none"``, ``"relu"`` or ``"relu6"`` for the activation modules the epilogues run, else None."""
    if m is None:
        return "none"
    t = type(m)
    if t is nn.Identity:
        return "none"
    if t is nn.ReLU:
        return "relu"
    if t is nn.ReLU6:
        return "relu6"
    if t is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0:
        return "relu6"
    return None


def compose_acts(first: Optional[str], second: Optional[str]) -> Optional[str]:
    """The one activation equal to ``second(first(x))`` (relu and relu6 are idempotent, relu6 absorbs relu)."""
    if first is None or second is None:
        return None
    if first == "none":
        return second
    if second == "none" or first == second:
        return first
    return "relu6"  # {relu, relu6}


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
    """No forward hooks and no ``forward`` set on the instance: a fused forward may bypass the module's call."""
    return not m._forward_hooks and not m._forward_pre_hooks and "forward" not in m.__dict__


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
        return f"{name} is {type(norm).__name__} (only nn.BatchNorm2d and timm BatchNormAct2d with ReLU/ReLU6 fuse)"
    return None


# --------------------------------------------------------------------------------------------------------------
# conv -> BN -> activation


def _uses_batch_stats(bn: Optional[_BatchNorm]) -> bool:
    return bn is not None and (bn.training or bn.running_mean is None or bn.running_var is None)


def _eager_batch_stats(bn: Optional[_BatchNorm], x: Tensor) -> bool:
    """Run this BatchNorm as ATen's batch_norm (TRAINING_BACKEND "eager", batch statistics in use)?"""
    return _uses_batch_stats(bn) and TRAINING_BACKEND.get(x.device.type, "fastblocks") == "eager"


def _batchnorm(bn: _BatchNorm, y: Tensor) -> Tensor:
    """The BatchNorm alone (a timm BatchNormAct2d without its activation), as ``nn.BatchNorm2d`` runs it."""
    return _BatchNorm.forward(bn, y)


_onednn_ok = onednn_inference_ok  # one rule for nn.conv_bn_act and the models


def _library_conv_bn_act(x: Tensor, conv: nn.Conv2d, bn: Optional[_BatchNorm], activation: str,
                         input_relu: bool) -> Tensor:
    """conv -> BN -> act with the convolution left to PyTorch (oneDNN on CPU): the path of
    ``nn.conv_bn_act`` for non-depthwise convolutions, here for depthwise ones."""
    if input_relu:
        x = torch.relu(x)
    if _uses_batch_stats(bn):
        y = conv._conv_forward(x, conv.weight, conv.bias)
        return _affine_act(y, *batchnorm_scale_bias(bn, y), activation)
    return _library_conv_act(x, conv, *_folded_conv_params(conv, bn, x), activation)


def _fastblocks_depthwise(x: Tensor, weight: Optional[Tensor] = None) -> bool:
    backend = DEPTHWISE_BACKEND.get(x.device.type, "fastblocks")
    if backend == "auto":
        grad = torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad))
        return not grad and x.dim() == 4 and x.shape[1] < 128 and x.is_contiguous() \
            and not x.is_contiguous(memory_format=torch.channels_last)
    return backend == "fastblocks"


def conv_bn_act(x: Tensor, conv: nn.Conv2d, bn: Optional[_BatchNorm] = None, activation: str = "relu",
                input_relu: bool = False) -> Tensor:
    """``act(bn(conv(relu(x) if input_relu else x)))``: :func:`pyfastblocks.nn.conv_bn_act`, with depthwise
    convolutions routed by :data:`DEPTHWISE_BACKEND` and batch statistics by :data:`TRAINING_BACKEND`."""
    if _eager_batch_stats(bn, x):
        if is_depthwise(conv) and _fastblocks_depthwise(x, conv.weight):
            y = ops.depthwise_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, "none",
                                     input_relu)
        else:
            y = conv._conv_forward(torch.relu(x) if input_relu else x, conv.weight, conv.bias)
        return _apply_activation(_batchnorm(bn, y), activation, inplace=True)
    if is_depthwise(conv) and not _fastblocks_depthwise(x, conv.weight):
        return _library_conv_bn_act(x, conv, bn, activation, input_relu)
    return _nn_conv_bn_act(x, conv, bn, activation, input_relu)


def conv_bn_add(x: Tensor, conv: nn.Conv2d, bn: Optional[_BatchNorm], residual: Tensor, relu: bool) -> Tensor:
    """``act(bn(conv(x)) + residual)``, act = ReLU if ``relu`` else none, in (at most) one pass after the conv.

    Eval on CPU: one oneDNN convolution whose bias is the folded BatchNorm and whose post-ops are the add and the
    ReLU. Otherwise the bare convolution, then ``fastblocks::add_relu`` with the BatchNorm (batch statistics in
    training, running statistics in eval) as its scale/bias.
    """
    batch_stats = _uses_batch_stats(bn)
    if not batch_stats and not is_depthwise(conv) and residual.dtype == x.dtype and _onednn_ok(x, conv.weight, residual):
        weight, bias = _folded_conv_params(conv, bn, x)
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, weight, None if bias is None else bias.to(x.dtype), list(conv.padding), list(conv.stride),
            list(conv.dilation), conv.groups, "add", 1.0, "relu" if relu else None, [], None)
    if is_depthwise(conv) and _fastblocks_depthwise(x, conv.weight):
        y = ops.depthwise_conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    else:
        y = conv._conv_forward(x, conv.weight, conv.bias)
    if _eager_batch_stats(bn, x):
        y = _batchnorm(bn, y)
        y += residual  # in training the fused add_relu's backward is slower on CPU than these eager passes
        return torch.relu_(y) if relu else y
    if bn is None:
        return ops.add_relu(y, residual, relu=relu)
    scale, shift = batchnorm_scale_bias(bn, y)
    return ops.add_relu(y, residual, scale, shift, relu=relu)


def bn_act(x: Tensor, bn: Optional[_BatchNorm], activation: str) -> Tensor:
    """``act(bn(x))`` as one pass (``affine_relu``; ReLU6 adds a clamp)."""
    if bn is None:
        return _apply_activation(x, activation, inplace=False)
    if _eager_batch_stats(bn, x):
        return _apply_activation(_batchnorm(bn, x), activation, inplace=True)
    return _affine_act(x, *batchnorm_scale_bias(bn, x), activation)


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


def _ones_zeros(owner: nn.Module, channels: int, like: Tensor, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    if torch.compiler.is_compiling():
        return (torch.ones(channels, device=like.device, dtype=dtype),
                torch.zeros(channels, device=like.device, dtype=dtype))
    key = (channels, like.device, dtype)
    cached = owner.__dict__.get("_fastblocks_identity_affine")
    if cached is None or cached[0] != key:
        cached = (key, torch.ones(channels, device=like.device, dtype=dtype),
                  torch.zeros(channels, device=like.device, dtype=dtype))
        object.__setattr__(owner, "_fastblocks_identity_affine", cached)
    return cached[1], cached[2]


def concat_tail(owner: nn.Module, inputs: Sequence[Tensor], bns: Sequence[Optional[_BatchNorm]],
                relu: bool = True) -> Tensor:
    """``act(cat([bn_i(x_i)], 1))`` as one ``branch_concat`` (a None BatchNorm passes its input unchanged).

    In eval the folded pairs of the BatchNorms are cached by ``batchnorm_scale_bias``; their concatenation is
    cached on ``owner`` while those cached pairs are the same objects."""
    if any(_eager_batch_stats(bn, x) for x, bn in zip(inputs, bns)):
        ys = [x if bn is None else _batchnorm(bn, x) for x, bn in zip(inputs, bns)]
        return torch.cat([torch.relu_(y) if relu and bn is not None else (torch.relu(y) if relu else y)
                          for y, bn in zip(ys, bns)], 1)
    pairs = []
    for x, bn in zip(inputs, bns):
        if bn is None:
            acc = torch.float64 if x.dtype == torch.float64 else torch.float32
            pairs.append(_ones_zeros(owner, x.shape[1], x, acc) if x.shape[1] else (x.new_empty(0, dtype=acc),) * 2)
        else:
            pairs.append(batchnorm_scale_bias(bn, x))
    if len(pairs) == 1:
        return ops.branch_concat(list(inputs), pairs[0][0], pairs[0][1], relu=relu)
    training = any(_uses_batch_stats(bn) for bn in bns)
    cacheable = not training and not torch.compiler.is_compiling() and not any(
        p.requires_grad for pair in pairs for p in pair)
    key = tuple(id(t) for pair in pairs for t in pair)
    cached = owner.__dict__.get("_fastblocks_cat")
    if cacheable and cached is not None and cached[0] == key:
        scale, bias = cached[1], cached[2]
    else:
        dtype = pairs[0][0].dtype
        scale = torch.cat([p[0].to(dtype) for p in pairs])
        bias = torch.cat([p[1].to(dtype) for p in pairs])
        if cacheable:
            # the pairs are kept so that their ids stay unique while this entry lives
            object.__setattr__(owner, "_fastblocks_cat", (key, scale, bias, pairs))
    return ops.branch_concat(list(inputs), scale, bias, relu=relu)


# --------------------------------------------------------------------------------------------------------------
# nn.Sequential: conv -> BN -> activation runs


def _is_bn(m: nn.Module) -> bool:
    return type(m) is nn.BatchNorm2d or class_path(m) == TIMM_BN_ACT or getattr(type(m), "_fastblocks_bn_act", False)


def sequential_plan(seq: nn.Sequential) -> Optional[List[tuple]]:
    """The fused schedule of a Sequential, or None when it has nothing to fuse.

    Steps: ``("cba", conv, bn_or_None, act)`` for a plain conv followed by a BatchNorm (or a timm BatchNormAct2d)
    and/or ReLU/ReLU6 modules; ``("ba", bn, act)`` for a BatchNorm followed by activations; ``("m", name)`` for
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


def _sequential_signature(seq: nn.Sequential) -> tuple:
    return tuple((k, id(v)) for k, v in seq._modules.items())


def cached_plan(module: nn.Module, key, compute):
    """``compute(module)``, cached on the module (a plain attribute: not in its state_dict) while ``key`` is
    unchanged; not cached while torch.compile traces (the plan is plain Python it then traces away)."""
    if torch.compiler.is_compiling():
        return compute(module)
    cached = module.__dict__.get("_fastblocks_plan")
    if cached is None or cached[0] != key:
        cached = (key, compute(module))
        object.__setattr__(module, "_fastblocks_plan", cached)
    return cached[1]


def fused_sequential_forward(self: nn.Sequential, x: Tensor) -> Tensor:
    """The forward of a swapped / pyfastblocks Sequential: its conv -> BN -> act runs fused. The plan is
    recomputed when the Sequential's children change (append, slicing, item assignment)."""
    plan = cached_plan(self, _sequential_signature(self), sequential_plan)
    mods = self._modules
    if plan is None:
        for m in mods.values():
            x = m(x)
        return x
    for step in plan:
        kind = step[0]
        if kind == "m":
            x = mods[step[1]](x)
        elif kind == "cba":
            x = conv_bn_act(x, mods[step[1]], mods[step[2]] if step[2] is not None else None, step[3])
        else:
            x = bn_act(x, mods[step[1]], step[2])
    return x


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
