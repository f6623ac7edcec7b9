"""The command line: pyfastblocks-bench / python -m pyfastblocks.bench."""
import argparse
import datetime as _dt
import itertools
import os
import sys
import time
from typing import Dict, List, Optional

import torch

from . import timing
from .cases import DTYPES, OPS, SHAPE_SET_NAMES
from .environment import environment, format_environment, other_cpu_load
from .estimate import estimate_seconds
from .kernels import run_case
from .models import MODEL_SETS, default_model_batches, run_model, select_models, swap_function
from .report import format_report, write_outputs, write_rows
from .rows import FAILED, Row

DESCRIPTION = ("pyfastblocks-bench: fused ops and swapped models against eager PyTorch and torch.compile, "
               "measured in one run.")
RESULTS_ROOT = "pyfastblocks-bench-results"  # under the current folder, one new folder per run


def new_results_dir(root: str = RESULTS_ROOT, now: Optional[_dt.datetime] = None) -> str:
    """Creates and returns (absolute) a new folder ``root/<UTC date-time>`` (``...-2``, ``-3``, ... where that
    name is taken): a run never writes into an existing folder unless --out names it."""
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%dT%H-%M-%SZ")
    os.makedirs(root, exist_ok=True)
    for n in itertools.count(1):
        path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
        try:
            os.mkdir(path)  # fails where the folder exists, even if another run created it just now
        except FileExistsError:
            continue
        return os.path.abspath(path)
    raise AssertionError("unreachable")


class _Progress:
    """tqdm's bar on stderr (a plain counter where tqdm is missing)."""

    def __init__(self, total: int):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="pyfastblocks-bench", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}")
        except ImportError:  # pragma: no cover
            self.bar = None
        self.total, self.n = total, 0

    def label(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        else:  # pragma: no cover
            print(f"[{self.n}/{self.total}] {text}", file=sys.stderr, flush=True)

    def step(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="pyfastblocks-bench", description=DESCRIPTION)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, nargs="+", choices=sorted(DTYPES),
                   help="default: fp32 on CPU; fp16 on CUDA (depthwise_conv2d: fp16 and bf16)")
    p.add_argument("--layout", default=None, choices=["nchw", "channels_last"],
                   help="default: channels_last on CUDA, nchw on CPU")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes for every section (default: add_relu/branch_concat 32 64, --quick 8; "
                        "depthwise_conv2d 8 on CPU, 64 on CUDA; models 8 on CPU, 64 on CUDA, --quick 4 / 8)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: fewer shapes, shorter timings, small models at small images, "
                        "models not compiled (under 3 minutes on a 2-core CPU)")
    p.add_argument("--sections", nargs="+", default=["kernels", "models"], choices=["kernels", "models", "sweep"],
                   help="what to run (default: kernels and models). 'sweep': the zoo sweep (pyfastblocks.bench.sweep: "
                        "every torchvision classification model and a list of timm CNNs swapped, checked and their "
                        "eager BN / activation / add / concat passes counted; --quick: a few models; no timings), "
                        "run first; for its own options use python -m pyfastblocks.bench.sweep --help")
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS), help="ops to benchmark")
    p.add_argument("--models", nargs="+", default=None,
                   help="model families or names (resnet inception xception mobilenet vgg, or e.g. resnet50); "
                        "'none' skips the section")
    p.add_argument("--no-compile", action="store_true", help="skip every torch.compile baseline")
    p.add_argument("--model-compile", action="store_true",
                   help="compile the models in --quick too (a model compiles in 30-90 s on a 2-core CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch, used by every timing (default: torch's, one per core; 1 where "
                        "other processes already keep more than half the cores busy, as threads that wait on "
                        "each other then make every time many times longer)")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per measurement")
    p.add_argument("--out", default=None,
                   help="the folder for results.csv, results.json, results.md and the PNG charts (default: a new "
                        f"folder {RESULTS_ROOT}/<UTC date-time>/ under the current folder)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and the time estimate only: nothing is measured, run or written")
    p.add_argument("--shapes", default=None, choices=sorted(SHAPE_SET_NAMES), help=argparse.SUPPRESS)  # tests
    return p.parse_args(argv)


def main(argv=None) -> int:
    """The command: returns 0, or 1 where a case gave a wrong result or an error. Leaves torch's thread count
    and random state as it found them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    threads = torch.get_num_threads()
    rng_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=rng_devices):
            rc = 0
            if "sweep" in args.sections:
                from .sweep import main as sweep_main

                rc = sweep_main(["--quick"] if args.quick else [])
                args.sections = [s for s in args.sections if s != "sweep"]
                if not args.sections:
                    return rc
            return max(rc, _main(args, argv))
    finally:
        torch.set_num_threads(threads)


def _main(args, argv: List[str]) -> int:
    t_start = time.perf_counter()
    if args.device and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("pyfastblocks-bench: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.dry_run:
        out_dir = None
        print("pyfastblocks-bench dry run: the plan and its time estimate only (nothing is measured, run or "
              "written)", flush=True)
    else:
        out_dir = os.path.abspath(args.out) if args.out else new_results_dir()
        os.makedirs(out_dir, exist_ok=True)
        print(f"pyfastblocks-bench: results go to {out_dir}" + ("" if args.out else " (--out DIR chooses another)"),
              flush=True)
    threads_note = ""
    if args.threads:
        torch.set_num_threads(args.threads)
    elif (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu" and torch.get_num_threads() > 1:
        busy = other_cpu_load()
        if busy is not None and busy > 0.5 * (os.cpu_count() or 1):
            threads_note = (f"other processes kept {busy:.1f} of {os.cpu_count()} cores busy at the start, so 1 "
                            f"thread (--threads {torch.get_num_threads()} uses them all anyway)")
            torch.set_num_threads(1)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    layout = args.layout or ("channels_last" if cuda else "nchw")
    shape_set = args.shapes or ("quick" if args.quick else "full")
    short = args.quick or shape_set != "full"
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.3)
    use_compile = not args.no_compile
    model_compile = use_compile and (args.model_compile or not short)

    def dtypes_for(op):
        return [DTYPES[d] for d in args.dtype] if args.dtype else OPS[op].default_dtypes(cuda)

    def batches_for(op):
        return args.batch or OPS[op].batches(cuda, short)

    env = environment(device, argv)
    if threads_note:
        env["threads_note"] = threads_note
    print(f"pyfastblocks-bench on {env['device']} ({device})")
    print(format_environment(env))
    if args.dry_run:
        copy_gbs = timing.ASSUMED_COPY_GBS[device.type]
        print(f"copy bandwidth: not measured in a dry run; the estimate assumes {copy_gbs:.0f} GB/s")
    else:
        copy_gbs = timing.copy_bandwidth_gbs(device, min_run_time, numel=(1 << 20) if shape_set == "tiny" else None)
        print(f"copy bandwidth: {copy_gbs:.1f} GB/s (read + write)")

    run_kernels = "kernels" in args.sections
    run_models = "models" in args.sections
    kernel_plan, op_plans = [], []
    if run_kernels:
        for op in args.ops:
            for dtype in dtypes_for(op):
                plan = OPS[op].plan(batches_for(op), OPS[op].shapes[shape_set],
                                    torch.empty((), dtype=dtype).element_size())
                op_plans.append((op, dtype, plan))
                kernel_plan += plan
    swap, why_no_swap = swap_function() if run_models else (None, "")
    model_list = select_models(MODEL_SETS[shape_set], args.models) if run_models else []
    model_dtypes = [DTYPES[d] for d in args.dtype] if args.dtype else [torch.float16 if cuda else torch.float32]
    model_batches = args.batch or default_model_batches(cuda, short)
    planned_model_runs = [(m, dt, b) for m in model_list for dt in model_dtypes for b in model_batches]
    model_runs = planned_model_runs if swap else []

    model_warmup = 1 if shape_set != "full" else 2
    est = estimate_seconds(kernel_plan, [(m[1], m[3], b) for m, _, b in model_runs], device, copy_gbs,
                           min_run_time, use_compile, model_compile, model_warmup)
    print(f"plan: {len(kernel_plan)} kernel cases, {len(model_runs)} model runs (eval + train each); "
          f"estimated time ~{est['total_s'] / 60:.1f} min (timing ~{est['timing_s'] / 60:.1f} min, "
          f"torch.compile ~{est['compile_s'] / 60:.1f} min with a cold inductor cache)", flush=True)
    if run_models and not swap:
        would = estimate_seconds([], [(m[1], m[3], b) for m, _, b in planned_model_runs], device, copy_gbs,
                                 min_run_time, use_compile, model_compile, model_warmup)["total_s"]
        print(f"models: unavailable ({why_no_swap}); with pyfastblocks.swap, its {len(planned_model_runs)} "
              f"model runs would add ~{would / 60:.1f} min")
    elif run_models and swap and not model_compile and use_compile:
        print("models: torch.compile of the models is skipped in this short run (--model-compile runs it)")
    if args.dry_run:
        print(f"dry run: nothing written (a run writes into a new folder {RESULTS_ROOT}/<UTC date-time>/, "
              "or into --out DIR)")
        return 0

    rows: List[Row] = []
    swap_reports: Dict[str, str] = {}
    settings = {"device": str(device), "layout": layout, "shapes": shape_set, "quick": args.quick,
                "min_run_time": min_run_time, "compile": use_compile, "model_compile": model_compile,
                "threads": torch.get_num_threads(), "sections": args.sections, "ops": args.ops}

    def summary(complete: bool):
        return {"settings": settings, "estimate": est, "complete": complete,
                "elapsed_s": time.perf_counter() - t_start,
                "compile_total_s": sum((r.compile_s or 0.0) + (r.compile_freezing_s or 0.0) for r in rows),
                "swap_reports": swap_reports}

    progress = _Progress(len(kernel_plan) + 2 * len(model_runs))
    complete = False
    try:
        for op, dtype, plan in op_plans:
            for case in OPS[op].cases(device, dtype, layout, batches_for(op), OPS[op].shapes[shape_set]):
                progress.label(f"{case.op} {case.variant} {case.mode} {'x'.join(map(str, case.shape))}")
                rows.append(run_case(case, device, copy_gbs, min_run_time, use_compile))
                progress.step()
                write_rows(out_dir, env, rows, copy_gbs, summary(False))  # a run cut short keeps its rows
        for (family, name, source, image), dtype, batch in model_runs:
            rows += run_model(family, name, source, image, batch, device, dtype, layout, swap, min_run_time,
                              model_compile, swap_reports, progress, warmup=model_warmup)
            write_rows(out_dir, env, rows, copy_gbs, summary(False))
        complete = True
    finally:
        progress.close()
        if not complete:
            print(f"pyfastblocks-bench stopped early: the {len(rows)} rows measured so far are in {out_dir} "
                  "(results.json, results.csv)", flush=True)
    if run_models and not swap:
        rows.append(Row("models", "-", "-", "-", layout, section="models", mode="-", status="unavailable",
                        note=why_no_swap))
    elif run_models and swap and not model_compile and use_compile:
        for r in rows:
            if r.section == "models" and r.status == "ok" and not r.note:
                r.note = "(not compiled in a short run)"

    done = summary(True)
    print()
    print(format_report(env, rows, copy_gbs, done))
    paths = write_outputs(out_dir, env, rows, copy_gbs, done)
    failed = [r for r in rows if r.status in FAILED]
    if failed:
        print(f"{len(failed)} case(s) gave a wrong result or an error: no speed reported for them", file=sys.stderr,
              flush=True)
    print(f"results in {out_dir}: {', '.join(os.path.basename(p) for p in paths)}", flush=True)
    return 1 if failed else 0
