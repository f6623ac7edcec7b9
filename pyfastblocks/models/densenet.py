"""The DenseNet family's swap() rules: torchvision ``_DenseLayer`` and timm ``DenseLayer`` (the transitions are
``nn.Sequential`` subclasses: the Sequential rule fuses their BN -> ReLU).

A dense layer is ``conv2(act2(norm2(conv1(act1(norm1(cat(inputs)))))))``: the concat, norm1 and its activation are
one ``branch_concat`` pass in eval (norm1's per-channel scale/bias laid over the inputs' channel ranges; without
running statistics, the concat and then one fused BN + activation pass), conv1 + norm2 + act2 one
:func:`conv_bn_act`; conv2 and the dropout run as the original's. In training (batch statistics) a dense layer runs
its original forward (see :func:`dense_layer_forward`); the transitions stay fused.
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import activations
from ..nn import _tail
from ..nn.batchnorm import uses_batch_stats
from ..nn.conv import fx_tracing
from . import _rules as R
from ._fused import act_name, bn_act, compose_acts, conv_bn_act, norm_act


def _act(self, norm: str, act: str) -> str:
    bn_spec = norm_act(self._modules[norm])
    return compose_acts(bn_spec[1], act_name(self._modules.get(act)))


def _sliced_specs(bn, widths: List[int]) -> list:
    """bn's spec (:func:`pyfastblocks.nn._tail.bn_spec`) cut into the channel ranges of the concat's inputs (running
    statistics only: a cut is exact per channel)."""
    w, b, mean, var, tracked, momentum, eps, training, track = _tail.bn_spec(bn)
    specs, start = [], 0
    for c in widths:
        s = slice(start, start + c)
        specs.append((None if w is None else w[s], None if b is None else b[s], mean[s], var[s], tracked, momentum,
                      eps, training, track))
        start += c
    return specs


# fastblocks::branch_concat takes at most this many inputs (csrc/common/epilogue_args.h: kMaxBranches)
MAX_CONCAT_INPUTS = 64


def cat_norm_act(inputs: List[Tensor], norm, activation: str) -> Tensor:
    """``act(norm(cat(inputs, 1)))``: one branch_concat with norm's running statistics (beyond
    :data:`MAX_CONCAT_INPUTS` inputs, the oldest ones are concatenated first, eagerly), else the concat and one
    fused BN + activation pass."""
    bn = norm_act(norm)[0]
    if len(inputs) > 1 and bn is not None and not uses_batch_stats(bn) and not fx_tracing() \
            and sum(t.shape[1] for t in inputs) == bn.num_features:
        if len(inputs) > MAX_CONCAT_INPUTS:
            cut = len(inputs) - MAX_CONCAT_INPUTS + 1
            inputs = [torch.cat(inputs[:cut], 1)] + list(inputs[cut:])
        name, slope = activations.split(activation)
        return _tail.bn_tail(list(inputs), _sliced_specs(bn, [t.shape[1] for t in inputs]), None, name, True,
                             negative_slope=slope)
    x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)
    return bn_act(x, bn, activation)


def dense_layer_forward(self, x) -> Tensor:
    """torchvision ``_DenseLayer`` / timm ``DenseLayer`` (input: a tensor or the list of the block's features)."""
    feats = [x] if isinstance(x, Tensor) else list(x)
    checkpointing = getattr(self, "memory_efficient", False) or getattr(self, "grad_checkpointing", False)
    if checkpointing and any(getattr(t, "requires_grad", False) for t in feats):
        return type(self)._fastblocks_base.forward(self, x)  # the original's activation checkpointing
    if uses_batch_stats(norm_act(self.norm1)[0]) or uses_batch_stats(norm_act(self.norm2)[0]):
        # batch statistics: the original's forward. Through the fused tails, densenet121's float32 gradients came
        # out 2.2e-2 from a float64 run on one draw where eager's were 0.99e-2 (tests/test_training_models.py's
        # bound is 1e-2): not resolved, so training runs as the original
        return type(self)._fastblocks_base.forward(self, x)
    h = cat_norm_act(feats, self.norm1, _act(self, "norm1", "relu1"))
    h = conv_bn_act(h, self.conv1, norm_act(self.norm2)[0], _act(self, "norm2", "relu2"))
    h = self.conv2(h)
    if self.drop_rate > 0:
        h = F.dropout(h, p=self.drop_rate, training=self.training)
    return h


def _dense_layer_check(m, parent, name):
    problem = R.children_problem(m, ("norm1", "conv1", "norm2", "conv2"), ("relu1", "relu2"))
    if problem:
        return problem
    problem = R.problems(R.norm_problem(m.norm1, "norm1"), R.norm_problem(m.norm2, "norm2"),
                         R.conv_problem(m.conv1, "conv1"), R.has_attributes(m, "drop_rate"),
                         *(R.act_problem(m._modules[a], a, None) for a in ("relu1", "relu2") if a in m._modules))
    if problem:
        return problem
    if norm_act(m.norm1)[0] is None or norm_act(m.norm2)[0] is None:
        return "norm1/norm2 are not BatchNorms"
    for norm, act in (("norm1", "relu1"), ("norm2", "relu2")):
        if _act(m, norm, act) is None:
            return f"{norm}'s activation and {act} do not compose into one activation of the table"
    return None


_HOW = ("eval: cat + norm1 + act1 one branch_concat, conv1 + norm2 + act2 fused, conv2 as it is; training: the "
        "original forward")
_GUARDS = ("norm1.**", "relu1", "conv1", "norm2.**", "relu2")

SWAP_RULES = [
    R.Rule("torchvision_DenseLayer", "torchvision.models.densenet._DenseLayer", {"forward": dense_layer_forward},
           _HOW, _dense_layer_check, guards=_GUARDS),
    R.Rule("timm_DenseLayer", "timm.models.densenet.DenseLayer", {"forward": dense_layer_forward}, _HOW,
           _dense_layer_check, guards=_GUARDS),
]
