"""The correctness gate: a case or a model is timed only when its result equals the eager one within the
dtype's tolerance (outputs, and gradients for backward cases and training steps)."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# Whole models, swapped against original: relative error of the outputs (max |difference| over max |original|)
# and, for a training step, of all parameter gradients together (norm of the difference over the norm). BatchNorm
# folding and another summation order change the rounding over ~50 layers, not the result; measured on this
# project's CPU in fp32 at the default sizes: 1e-6..5e-5 (a wrong block gives 1e-2 and more).
MODEL_TOLERANCES = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}
# A training step's gradients (all parameters as one vector): loose, since training-mode BatchNorm amplifies
# rounding differences (random-init Inception v3 in fp32: 1-3%, others 1e-5; in float64 all match to 1e-12).
GRADIENT_TOLERANCES = {torch.float32: 1e-1, torch.float16: 2e-1, torch.bfloat16: 3e-1}


def describe(e: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def as_tuple(out) -> Tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(out)


def check_close(fused_out, eager_out, dtype: torch.dtype, scaled: bool = False) -> Tuple[bool, float]:
    """(every output within the dtype's tolerance, largest absolute error). NaN/inf never pass."""
    rtol, atol = TOLERANCES[dtype]
    fused_out, eager_out = as_tuple(fused_out), as_tuple(eager_out)
    if len(fused_out) != len(eager_out):
        return False, math.inf
    ok, worst = True, 0.0
    for a, b in zip(fused_out, eager_out):
        if a.shape != b.shape:
            return False, math.inf
        a, b = a.detach().double(), b.detach().double()
        if a.numel() == 0:
            continue
        err = (a - b).abs().max().item()
        worst = max(worst, err) if not math.isnan(err) else math.inf
        tol = atol * max(1.0, b.abs().max().item()) if scaled else atol
        if not torch.allclose(a, b, rtol=rtol, atol=tol):
            ok = False
    return ok, worst


# models


def logits(out) -> torch.Tensor:
    """A classifier's logits from what its forward returns (a tensor, an object with .logits, or a tuple)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b| (inf for another shape or NaN)."""
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    err = (a - b).abs().max().item()
    return err / max(b.abs().max().item(), 1e-12) if not math.isnan(err) else math.inf


class NotFinite(Exception):
    """The original model's output is not finite: nothing to compare against."""


def require_finite(t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise NotFinite()


def train_errors(original, swapped, x, labels) -> Tuple[float, Optional[float]]:
    """One forward+backward of each model (same dropout draws): (relative error of the outputs, relative error of
    the gradients of the parameters both models name alike, taken as one vector; None where no name is shared).

    One vector, not per tensor: per tensor it would be meaningless for gradients that are zero in exact
    arithmetic, such as the bias of a BatchNorm whose output only feeds convolutions and training-mode BatchNorms.
    """
    grads, outs = [], []
    for model in (original, swapped):
        torch.manual_seed(0)
        out = logits(model(x))
        F.cross_entropy(out.float(), labels).backward()
        if model is original:
            require_finite(out)
        outs.append(out.detach())
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    out_err = relative_error(outs[1], outs[0])
    common = [n for n in grads[0] if n in grads[1] and grads[1][n].shape == grads[0][n].shape]
    if not common:
        return out_err, None
    diff = math.sqrt(sum((grads[1][n].double() - grads[0][n].double()).pow(2).sum().item() for n in common))
    norm = math.sqrt(sum(grads[0][n].double().pow(2).sum().item() for n in common))
    grad_err = diff / max(norm, 1e-30)
    return out_err, (math.inf if math.isnan(grad_err) else grad_err)


def check_train(original, swapped, x, labels, dtype) -> Tuple[bool, float, str]:
    """Is one training step of the swapped model the original's? (ok, worst error, what is off or not compared).

    Outputs within ``MODEL_TOLERANCES``, gradients within ``GRADIENT_TOLERANCES`` (loose: training-mode BatchNorm
    amplifies rounding differences in the gradients of some random-init models to a few % in fp32, while a wrong
    kernel or a dropped gradient path is off by far more. In float64 the swapped models tested here match their
    originals to 1e-12, gradients included: the exactness of the swap is the test suite's job, too slow here).
    """
    out_err, grad_err = train_errors(original, swapped, x, labels)
    problems = []
    if not out_err <= MODEL_TOLERANCES[dtype]:
        problems.append(f"outputs {out_err:.3g} (tolerance {MODEL_TOLERANCES[dtype]:g})")
    if grad_err is not None and not grad_err <= GRADIENT_TOLERANCES[dtype]:
        problems.append(f"gradients {grad_err:.3g} (tolerance {GRADIENT_TOLERANCES[dtype]:g})")
    note = "; ".join(problems)
    if grad_err is None:
        note = (note + "; " if note else "") + "gradients not compared (no parameter names in common)"
    return not problems, max(out_err, grad_err or 0.0), note


def check_eval(original_call, swapped_call, dtype) -> Tuple[bool, float, str]:
    """Is the swapped model's eval output the original's within ``MODEL_TOLERANCES``? (ok, error, what)."""
    reference = original_call()
    require_finite(reference)
    err = relative_error(swapped_call(), reference)
    tol = MODEL_TOLERANCES[dtype]
    return err <= tol, err, f"outputs {err:.3g} (tolerance {tol:g})"
