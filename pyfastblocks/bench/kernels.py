"""The kernels section: check one case against eager, then time it against eager and torch.compile."""
import torch

from . import gate, timing
from .cases import DTYPES, Case
from .rows import Row


def run_case(case: Case, device: torch.device, copy_gbs: float, min_run_time: float, use_compile: bool) -> Row:
    """The row of one case: WRONG (not timed) where the fused result is off, else its times, speedups, GB/s."""
    row = Row(case.op, case.variant, "x".join(map(str, case.shape)), case.dtype, case.layout, mode=case.mode)
    dtype = DTYPES[case.dtype]
    try:
        fused_out, eager_out = gate.as_tuple(case.fused()), gate.as_tuple(case.eager())
    except Exception as e:  # noqa: BLE001
        row.status = "error"
        row.note = gate.describe(e)
        return row
    if case.to_eager is not None:
        fused_out = case.to_eager(fused_out)
    ok, row.max_abs_err = gate.check_close(fused_out, eager_out, dtype, case.scaled_tolerance)
    if not ok:
        row.status = "WRONG"
        what = "result" if case.mode == "fwd" else "result or gradients"
        row.note = f"fused {what} differ from eager (max abs err {row.max_abs_err:.3g}): not timed"
        return row
    calls = {"fused": case.fused, "eager": case.eager}
    if use_compile:
        torch._dynamo.reset()  # the cases share code objects: never hit dynamo's recompile limit
        try:
            compile_fn = lambda f: torch.compile(f, dynamic=False)  # noqa: E731
            compiled = case.compiled(compile_fn) if case.compiled else compile_fn(case.eager)
            row.compile_s, compiled_out = timing.compile_time_s(compiled, device)
            if not gate.check_close(compiled_out, eager_out, dtype, case.scaled_tolerance)[0]:
                row.note = "torch.compile result differs from eager"
            calls["compile"] = compiled
        except Exception as e:  # noqa: BLE001 (a failing baseline is reported, not fatal)
            row.note = f"torch.compile failed: {gate.describe(e)}"
    us = timing.measure_us(calls, min_run_time)
    row.fused_us, row.eager_us, row.compile_us = us["fused"], us["eager"], us.get("compile")
    row.speedup_vs_eager = row.eager_us / row.fused_us
    if row.compile_us is not None:
        row.speedup_vs_compile = row.compile_us / row.fused_us
    row.gb_per_s = case.bytes_moved / (row.fused_us * 1e-6) / 1e9
    row.pct_of_copy = 100.0 * row.gb_per_s / copy_gbs
    return row
