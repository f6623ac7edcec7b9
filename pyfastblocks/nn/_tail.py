"""The BatchNorm tail of every fused block as one function of tensors: ``act(bn(x))``, ``act(bn(x) + residual)``
and ``act(cat([bn_i(x_i)], 1))``, each one fused pass (``fastblocks::branch_concat`` / ``fastblocks::add_act``), for
any activation of the table (:mod:`pyfastblocks.activations`).

:func:`bn_tail` takes each BatchNorm as a *spec* (:func:`bn_spec`: its tensors and settings, read from the module
at the call), never the module, and nothing is cached: the tail is a function of the module's live state at each
call. It is a ``torch.fx`` leaf (``torch.fx.wrap``): a symbolically traced swapped model keeps each tail as one
``call_function`` node that decides, at run time and on real tensors, what ``nn.BatchNorm2d`` would (the batch
or the running statistics are fixed when tracing, as the traced module's mode is).

- Running statistics (eval): the BatchNorm folded into the op's per-channel scale/bias (O(C) per call).
- Batch statistics (training, or no running stats): ATen's statistics kernel (``batch_norm_update_stats``, which
  also updates the running statistics as BatchNorm does), then the one fused pass. Its backward is exact as
  eager's: the op's backward without scale gives the gradient at the BatchNorm's output, and ATen's
  ``native_batch_norm_backward`` carries it through the statistics (centered sums, eager's very function;
  differentiating through ``var_mean`` with an uncentered ``sum(g * x)`` lost 2-4x of float32 precision where a
  channel's mean is large against its spread and there are few values per channel).
- ``TRAINING_BACKEND`` (``swapped=True``: the models' and swap's calls) may send batch statistics to ATen's
  ``batch_norm`` followed by eager activation / add / concat; an empty batch or one value per channel always goes
  there (BatchNorm's own results and errors).
- dtypes (``swapped=True``): the result has the dtype eager PyTorch gives (BatchNorm keeps its input's dtype, the
  add and the concat promote), also under autocast, where the tail runs with autocast off (eager's BatchNorm, add
  and ReLU are not autocast ops).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import activations, ops
from .. import policy as _policy
from .._autocast import _data as _autocast_data
from .._layout import accumulation_dtype
from .batchnorm import fold_batchnorm

__all__ = ["TRAINING_BACKEND", "add_act", "bn_spec", "bn_tail", "scale_act"]

# How batch statistics run in the models and swapped blocks, per device type: pyfastblocks.policy (the same dict).
TRAINING_BACKEND: Dict[str, str] = _policy.TRAINING_BACKEND

# (weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps, training, track_running_stats)
Spec = tuple


def bn_spec(bn) -> Spec:
    """A BatchNorm module as :func:`bn_tail` takes it: its live tensors and settings (read now, not kept)."""
    return (bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.momentum, bn.eps,
            bn.training, bn.track_running_stats)


def _batch_stats_mode(spec: Spec) -> bool:
    # nn.BatchNorm2d.forward: batch statistics in training, or in eval without running statistics
    return spec[7] or (spec[2] is None and spec[3] is None)


def _eager_batchnorm(x: Tensor, spec: Spec) -> Tensor:
    """``nn.BatchNorm2d.forward`` on the spec's tensors (num_batches_tracked and the running stats updated as it
    does; its errors, e.g. one value per channel in training)."""
    weight, bias, running_mean, running_var, tracked, momentum, eps, training, track = spec
    factor = 0.0 if momentum is None else momentum
    if training and track and tracked is not None:
        tracked.add_(1)
        factor = 1.0 / float(tracked) if momentum is None else momentum
    use_running = not training or track
    return F.batch_norm(x, running_mean if use_running else None, running_var if use_running else None, weight, bias,
                        _batch_stats_mode(spec), factor, eps)


def _batch_statistics(x: Tensor, spec: Spec, acc: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Batch mean and biased variance of x per channel, in acc; num_batches_tracked and the running statistics
    updated as BatchNorm updates them (ATen's kernel: ``batch_norm_update_stats``)."""
    _, _, running_mean, running_var, tracked, momentum, _, training, track = spec
    factor = 0.0 if momentum is None else momentum
    if training and track and tracked is not None:
        tracked.add_(1)
        factor = 1.0 / float(tracked) if momentum is None else momentum
    update = training and track and running_mean is not None and running_var is not None
    # ATen's kernel has no fake / meta impl: torch.compile and the meta device take var_mean
    aten = not torch.compiler.is_compiling() and x.device.type in ("cpu", "cuda")
    with torch.no_grad():
        if aten and update and running_mean.dtype == acc and running_var.dtype == acc:
            mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, factor)
        elif aten and x.dtype == acc and not update:
            mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        else:  # statistics in acc (half running statistics, half data without running statistics, tracing)
            dims = [0, *range(2, x.dim())]
            var, mean = torch.var_mean(x.to(acc), dim=dims, correction=0)
            if update:
                count = x.numel() // x.size(1)
                running_mean.mul_(1 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
                running_var.mul_(1 - factor).add_((var * (count / (count - 1))).to(running_var.dtype), alpha=factor)
    return mean.to(acc), var.to(acc)


def _run_op(inputs: Sequence[Tensor], residual: Optional[Tensor], scale: Tensor, shift: Tensor, activation: str,
            negative_slope: float) -> Tensor:
    if residual is not None:
        return ops.add_act(inputs[0], residual, scale, shift, activation, negative_slope)
    if len(inputs) == 1:  # the one-input op (its errors name 'x')
        return ops.affine_act(inputs[0], scale, shift, activation, negative_slope)
    return ops.branch_concat(list(inputs), scale, shift, activation, negative_slope)


def _cat(pairs: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    if len(pairs) == 1:
        return pairs[0]
    return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])


class _BatchNormTail(torch.autograd.Function):
    """The fused tail with its gradient taken as eager's: the epilogue op's backward gives the gradient at each
    BatchNorm output (act'(z) * grad, z recomputed from the inputs as the op's own backward does: the output is not
    kept, so what the model does to it in place afterwards cannot spoil the gradient); ATen's
    native_batch_norm_backward (batch statistics: through them; running ones: the eval formula) gives those of the
    BatchNorm's input, weight and bias.

    Arguments after the constants: k inputs, the residual (or None), k weights, k biases, k means, k variances
    (batch statistics, or the running ones for an eval BatchNorm)."""

    @staticmethod
    def forward(ctx, activation, negative_slope, eps, train, k, *tensors):
        inputs, residual = tensors[:k], tensors[k]
        weights, biases = tensors[k + 1:2 * k + 1], tensors[2 * k + 1:3 * k + 1]
        means, variances = tensors[3 * k + 1:4 * k + 1], tensors[4 * k + 1:]
        acc = accumulation_dtype(inputs[0].dtype)
        pairs = [fold_batchnorm(m, v, w, b, e, acc) for m, v, w, b, e in zip(means, variances, weights, biases, eps)]
        scale, shift = _cat(pairs)
        out = _run_op(inputs, residual, scale, shift, activation, negative_slope)
        # z needs the inputs (and the residual) for every activation but "none"
        keep = activation != "none"
        ctx.save_for_backward(*inputs, residual if keep else None, scale if keep else None, shift if keep else None,
                              *weights, *means, *variances)
        ctx.activation, ctx.negative_slope, ctx.eps, ctx.train, ctx.k = activation, negative_slope, eps, train, k
        ctx.channels = [t.shape[1] for t in inputs]
        ctx.add = residual is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        k = ctx.k
        saved = ctx.saved_tensors
        inputs, residual, scale, shift = saved[:k], saved[k], saved[k + 1], saved[k + 2]
        weights = saved[k + 3:2 * k + 3]
        means, variances = saved[2 * k + 3:3 * k + 3], saved[3 * k + 3:]
        needs = ctx.needs_input_grad[5:]  # after activation, negative_slope, eps, train, k
        if ctx.add:
            # the gradient at bn(x) + residual, which is the residual's and the BatchNorm output's
            _, gz, _, _ = torch.ops.fastblocks.add_act_backward.default(
                grad, inputs[0], residual, scale, shift, ctx.activation, ctx.negative_slope, False)
            gzs = [gz]
        else:
            # the gradient at each BatchNorm output (one pass for every branch, in the branches' own layouts)
            gzs, _, _ = torch.ops.fastblocks.branch_concat_backward.default(
                grad, ctx.channels, list(inputs) if ctx.activation != "none" else [], scale, shift, ctx.activation,
                ctx.negative_slope, False, True)
        grad_residual = gzs[0] if ctx.add and needs[k] else None
        grad_inputs, grad_weights, grad_biases = [], [], []
        for i in range(k):
            x, w, mean, var = inputs[i], weights[i], means[i], variances[i]
            mask = [needs[i], w is not None and needs[k + 1 + i], needs[2 * k + 1 + i]]
            if not any(mask):
                grad_inputs.append(None), grad_weights.append(None), grad_biases.append(None)
                continue
            # mixed precision as ATen runs it: half data with float32 weight and statistics
            w32 = None if w is None else w.to(mean.dtype)
            if ctx.train[i]:
                invstd = torch.rsqrt(var + ctx.eps[i])
                gx, gw, gb = torch.ops.aten.native_batch_norm_backward.default(
                    gzs[i], x, w32, None, None, mean, invstd, True, ctx.eps[i], mask)
            else:
                gx, gw, gb = torch.ops.aten.native_batch_norm_backward.default(
                    gzs[i], x, w32, mean, var, None, None, False, ctx.eps[i], mask)
            grad_inputs.append(gx if mask[0] else None)
            grad_weights.append(gw.to(w.dtype) if mask[1] and gw is not None else None)
            grad_biases.append(gb if mask[2] else None)
        return (None, None, None, None, None, *grad_inputs, grad_residual, *grad_weights, *grad_biases,
                *([None] * (2 * k)))


def _eager_add(y: Tensor, residual: Tensor, add: str) -> Tensor:
    """``y + residual`` as the original block writes it: ``"promote"`` (``a + b``), ``"bn"`` (``y += residual``:
    y's dtype), ``"residual"`` (``residual += y``: the residual's dtype; computed out of place)."""
    if add == "bn" or (add == "promote" and torch.promote_types(y.dtype, residual.dtype) == y.dtype):
        return y.add_(residual)
    out = y + residual
    return out.to(residual.dtype) if add == "residual" else out


def _eager_tail(inputs: Sequence[Tensor], specs: Sequence[Spec], residual: Optional[Tensor],
                activation: str, negative_slope: float, add: str = "promote") -> Tensor:
    """The tail as eager PyTorch runs it: ATen's batch_norm per input, then the add and the activation in place
    (the concat after the activations)."""
    ys = [_eager_batchnorm(x, s) for x, s in zip(inputs, specs)]
    if residual is not None:
        return activations.apply(_eager_add(ys[0], residual, add), activation, negative_slope, inplace=True)
    ys = [activations.apply(y, activation, negative_slope, inplace=True) for y in ys]
    return ys[0] if len(ys) == 1 else torch.cat(ys, 1)


_AUTOCAST_AVAILABLE: Dict[str, bool] = {}  # per device type (a property of the build, not of any model)


def _autocast_on(device_type: str) -> bool:
    available = _AUTOCAST_AVAILABLE.get(device_type)
    if available is None:
        available = _AUTOCAST_AVAILABLE[device_type] = torch.amp.is_autocast_available(device_type)
    return available and torch.is_autocast_enabled(device_type)


def _wants_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def bn_tail(inputs: List[Tensor], specs: List[Spec], residual: Optional[Tensor] = None, activation: str = "relu",
            swapped: bool = False, add: str = "promote", negative_slope: float = 0.01) -> Tensor:
    """``act(cat([bn_i(inputs[i])], 1))``, or ``act(bn(inputs[0]) + residual)`` with a residual, as one fused pass.

    ``inputs``: ``[N, C_i, ...]`` tensors agreeing in every dim but 1 (one, with a residual of its shape).
    ``specs``: one :func:`bn_spec` per input. ``activation`` / ``negative_slope``: an entry of
    :mod:`pyfastblocks.activations`. Same values (to rounding), running-statistics updates and errors as the eager
    modules.

    ``swapped``: called for a model / swapped block, which must equal the eager original: batch statistics follow
    :data:`TRAINING_BACKEND`, and the result has eager's dtype (BatchNorm keeps its input's dtype, the add and the
    concat promote, autocast touches none of them). Otherwise (the ``pyfastblocks.nn`` modules) batch statistics
    always run fused, and under autocast the data runs in the autocast dtype as the ops' autocast rules have it
    (:mod:`pyfastblocks._autocast`). ``add`` (with a residual, ``swapped``): how the original adds, which sets
    the result's dtype: ``"promote"`` (``bn(x) + residual``), ``"bn"`` (``out += residual``: the BatchNorm
    output's dtype), ``"residual"`` (``residual += bn(x)``: the residual's dtype).
    """
    x0 = inputs[0]
    batch = [_batch_stats_mode(s) for s in specs]
    if swapped and residual is not None and residual.shape != x0.shape:  # the original's add broadcasts
        return _eager_tail(inputs, specs, residual, activation, negative_slope, add)
    if any(batch):
        eager = swapped and _policy.training_backend(x0.device.type) == "eager"
        # an empty batch / one value per channel: BatchNorm's own result (empty) or error
        if eager or any(b and x.numel() <= x.size(1) for x, b in zip(inputs, batch)):
            return _eager_tail(inputs, specs, residual, activation, negative_slope, add)
    data = list(inputs) + ([] if residual is None else [residual])
    device_type = x0.device.type
    autocast = _autocast_on(device_type)
    if swapped:
        data = _promoted(data, None if residual is None else _ADD_DTYPE[add](x0, residual))
    elif autocast:  # what the ops' autocast rules would do, up front (the backward needs the data as run)
        dtype = torch.get_autocast_dtype(device_type)
        data = [_autocast_data(t, device_type, dtype) for t in data]
    inputs, residual = data[:len(inputs)], (data[-1] if residual is not None else None)
    if swapped and autocast:
        # eager's BatchNorm, add, ReLU and cat are not autocast ops: the fused tail keeps the data's dtype
        with torch.autocast(device_type, enabled=False):
            return _bn_tail(inputs, specs, residual, activation, negative_slope, batch)
    return _bn_tail(inputs, specs, residual, activation, negative_slope, batch)


def _bn_tail(inputs, specs, residual, activation, negative_slope, batch) -> Tensor:
    acc = accumulation_dtype(inputs[0].dtype)
    if any(batch):
        stats = [_batch_statistics(x, s, acc) if b else (s[2], s[3]) for x, s, b in zip(inputs, specs, batch)]
    else:
        stats = [(s[2], s[3]) for s in specs]
    weights, biases = [s[0] for s in specs], [s[1] for s in specs]
    if _wants_grad(list(inputs) + [residual] + weights + biases):
        return _BatchNormTail.apply(activation, negative_slope, [s[6] for s in specs], batch, len(inputs), *inputs,
                                    residual, *weights, *biases, *[m for m, _ in stats], *[v for _, v in stats])
    pairs = [fold_batchnorm(m, v, s[0], s[1], s[6], acc) for (m, v), s in zip(stats, specs)]
    return _run_op(inputs, residual, *_cat(pairs), activation, negative_slope)


# The result dtype of the residual add, by how the original writes it (see bn_tail's ``add``).
_ADD_DTYPE = {
    "promote": lambda y, residual: None,
    "bn": lambda y, residual: y.dtype,
    "residual": lambda y, residual: residual.dtype,
}


def _promoted(tensors: Sequence[Tensor], dtype: Optional[torch.dtype] = None) -> List[Tensor]:
    """The tensors in ``dtype``, by default their promoted dtype (eager's add / cat)."""
    if dtype is None:
        dtype = tensors[0].dtype
        if all(t.dtype == dtype for t in tensors):
            return list(tensors)
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
    return [t if t.dtype == dtype else t.to(dtype) for t in tensors]


def add_act(y: Tensor, residual: Tensor, activation: str = "relu", add: str = "promote",
            negative_slope: float = 0.01, scale: Optional[Tensor] = None) -> Tensor:
    """``act(y + residual)`` as one ``fastblocks::add_act`` pass, with eager's result dtype (``add``: as in
    :func:`bn_tail`; autocast leaves the add alone). ``scale`` (``[C]``): ``act(y * scale[c] + residual)``, the
    product in the same pass (a squeeze-excitation gate, a residual branch's scale). Broadcasting shapes run as eager
    ops."""
    if y.shape != residual.shape:
        if scale is not None:
            y = y * scale.view(-1, *([1] * (y.dim() - 2)))
        out = _eager_add(y.clone() if add == "bn" and scale is None else y, residual, add)
        return activations.apply(out, activation, negative_slope, inplace=True)
    y, residual = _promoted([y, residual], _ADD_DTYPE[add](y, residual))
    if scale is not None and scale.dtype not in (y.dtype, torch.float32):
        scale = scale.to(y.dtype)
    device_type = y.device.type
    if _autocast_on(device_type):
        with torch.autocast(device_type, enabled=False):
            return ops.add_act(y, residual, scale, None, activation, negative_slope)
    return ops.add_act(y, residual, scale, None, activation, negative_slope)


def scale_act(x: Tensor, scale: Tensor, activation: str = "relu", negative_slope: float = 0.01) -> Tensor:
    """``act(x * scale[c])`` as one ``fastblocks::affine_act`` pass, in x's dtype (eager's product of x and a
    scale of its dtype; autocast leaves it alone)."""
    if scale.dtype not in (x.dtype, torch.float32):
        scale = scale.to(x.dtype)
    device_type = x.device.type
    if _autocast_on(device_type):
        with torch.autocast(device_type, enabled=False):
            return ops.affine_act(x, scale, None, activation, negative_slope)
    return ops.affine_act(x, scale, None, activation, negative_slope)


torch.fx.wrap("bn_tail")
torch.fx.wrap("add_act")
torch.fx.wrap("scale_act")
