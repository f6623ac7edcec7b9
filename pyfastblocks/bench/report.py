"""The report: Markdown tables (printed, and results.md), results.csv and results.json, and the charts."""
import csv
import json
import os
import sys
from dataclasses import asdict, fields
from typing import Any, Dict, List

from .environment import format_environment
from .models import MODEL_VARIANTS
from .rows import Row


def _fmt(v, spec, bold_if_ge1=False):
    if v is None:
        return "-"
    text = format(v, spec)
    return f"**{text}**" if bold_if_ge1 and v >= 1.0 else text


def format_table(rows: List[Row], copy_gbs: float) -> str:
    """The kernels table (speedups >= 1 in bold)."""
    header = ["op", "variant", "mode", "shape", "dtype", "layout", "fused us", "eager us", "compile us",
              "x eager", "x compile", "GB/s", "% copy", "compile s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r.section != "kernels":
            continue
        if r.status != "ok":
            lines.append(f"| {r.op} | {r.variant} | {r.mode} | {r.shape} | {r.dtype} | {r.layout} | "
                         f"{r.status}: {r.note} |")
            continue
        lines.append("| " + " | ".join([
            r.op, r.variant, r.mode, r.shape, r.dtype, r.layout, _fmt(r.fused_us, ".1f"), _fmt(r.eager_us, ".1f"),
            _fmt(r.compile_us, ".1f"), _fmt(r.speedup_vs_eager, ".2f", True), _fmt(r.speedup_vs_compile, ".2f", True),
            _fmt(r.gb_per_s, ".1f"), _fmt(r.pct_of_copy, ".0f"), _fmt(r.compile_s, ".1f"),
        ]) + " |")
    lines.append(f"\ncopy bandwidth measured in this run: {copy_gbs:.1f} GB/s (read + write)")
    return "\n".join(lines)


def format_models_table(rows: List[Row], variants=MODEL_VARIANTS) -> str:
    """The models table, one column group per variant: images/s (``-`` where a variant does not run in that mode),
    the swapped model's speedup over each baseline, the speedups of the variants that report their own (frozen),
    peak MB per call; then the waits before a first result (torch.compile's first calls, freeze)."""
    model_rows = [r for r in rows if r.section == "models"]
    if not model_rows:
        return ""
    baselines = [v for v in variants if v.baseline]
    own = [(w, v) for w in variants if w.speedups for v in baselines]
    waits = [v for v in variants if v.wait]
    header = (["family", "model", "mode", "input", "dtype", "layout"]
              + [f"{v.label} img/s" for v in variants] + [f"x {v.label}" for v in baselines]
              + [f"{w.label} x {v.label}" for w, v in own]
              + [f"peak MB {v.label}" for v in variants]
              + [("freeze s" if v.wait == "freeze_s" else f"{v.label} s") for v in waits])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in model_rows:
        if r.status != "ok":
            lines.append(f"| {r.op} | {r.variant} | {r.mode} | {r.shape} | {r.dtype} | {r.layout} | "
                         f"{r.status}: {r.note} |")
            continue
        lines.append("| " + " | ".join(
            [r.op, r.variant, r.mode, r.shape, r.dtype, r.layout]
            + [_fmt(getattr(r, f"{v.key}_images_per_s", None), ".1f") for v in variants]
            + [_fmt(getattr(r, f"speedup_vs_{v.key}", None), ".2f", True) for v in baselines]
            + [_fmt(getattr(r, f"{w.key}_speedup_vs_{v.key}", None), ".2f", True) for w, v in own]
            + [_fmt(getattr(r, f"{v.key}_peak_mb", None), ".0f") for v in variants]
            + [_fmt(getattr(r, v.wait, None), ".1f") for v in waits]
        ) + (f" {r.note}" if r.note else "") + " |")
    return "\n".join(lines)


def format_report(env: dict, rows: List[Row], copy_gbs: float, summary: Dict[str, Any]) -> str:
    """The whole report in Markdown: environment, kernels table, models table, what swap did, wall time."""
    parts = ["# pyfastblocks-bench", "", format_environment(env)]
    if any(r.section == "kernels" for r in rows):
        parts += ["", "## Kernels", "", format_table(rows, copy_gbs)]
    models = format_models_table(rows)
    if models:
        parts += ["", "## Models", "", models]
    reports = {k: v for k, v in (summary.get("swap_reports") or {}).items() if v}
    if reports:
        parts += ["", "### What pyfastblocks.swap did", ""]
        for name, text in reports.items():
            parts += [f"{name}:", "", "```", text.strip(), "```", ""]
    parts += ["", f"wall time {summary['elapsed_s']:.0f} s, of which torch.compile (first calls) "
                  f"{summary['compile_total_s']:.0f} s"]
    return "\n".join(parts)


def write_rows(out_dir: str, env: dict, rows: List[Row], copy_gbs: float, summary: Dict[str, Any]) -> List[str]:
    """results.json (environment, settings, every row) and results.csv (every row); each replaced whole."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    path = os.path.join(out_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"environment": env, "copy_gbs": copy_gbs, **summary, "rows": [asdict(r) for r in rows]}, f,
                  indent=2)
    os.replace(path + ".tmp", path)
    paths.append(path)
    path = os.path.join(out_dir, "results.csv")
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fld.name for fld in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    os.replace(path + ".tmp", path)
    paths.append(path)
    return paths


def write_outputs(out_dir: str, env: dict, rows: List[Row], copy_gbs: float, summary: Dict[str, Any]) -> List[str]:
    """results.json, results.csv, results.md and the PNG charts (without matplotlib: a note on stderr)."""
    from .charts import write_charts

    paths = write_rows(out_dir, env, rows, copy_gbs, summary)
    path = os.path.join(out_dir, "results.md")
    with open(path, "w") as f:
        f.write(format_report(env, rows, copy_gbs, summary) + "\n")
    paths.append(path)
    try:
        paths += write_charts(rows, copy_gbs, out_dir)
    except ImportError as e:
        print(f"charts not written (matplotlib missing: {e}); pip install 'pyfastblocks[bench]'", file=sys.stderr)
    return paths
