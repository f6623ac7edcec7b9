"""The plan of the one-call GPU check: its steps, each step's command and time budget, in one place.

scripts/gpu_check.sh runs this plan (it reads it with ``python3 scripts/gpu_check_plan.py bash``), and
tests/test_gpu_check.py checks it (every step bounded, the budgets under TOTAL_LIMIT_S, the order). The check must
fit one call of the lent GPU machine (an H100/H200 with 16 CPU cores; 10 minutes a call, 15 minutes a session), so
the steps come most valuable first and a timeout loses only the tail.

Besides the plan, this file holds the two small helpers the shell runner calls after steps (standard library
only: it runs before anything is built):

    python3 scripts/gpu_check_plan.py bash                  # the plan as bash arrays (for gpu_check.sh)
    python3 scripts/gpu_check_plan.py table                 # the plan as a Markdown table
    python3 scripts/gpu_check_plan.py merge-bench OUT DIR.. # pyfastblocks-bench result folders -> OUT.json, OUT.md
    python3 scripts/gpu_check_plan.py report OUT STEPS_TSV  # OUT/README.md and OUT/steps.json from the step results

Commands run under ``bash -c`` with these variables set by gpu_check.sh: PY (``python3 -P``: the installed
pyfastblocks, never the uncompiled source tree), OUT (the folder that comes back), WORK (scratch, not kept),
NPROC (CPU cores), WORKERS (pytest-xdist workers), SANITIZER (compute-sanitizer's path, or empty) and PLAN (this
file).
"""
import datetime as _dt
import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional

# One device call runs at most 10 minutes; the check keeps under 8 so that the machine's start, the transfers and
# a slow step leave room in the call.
TOTAL_LIMIT_S = 480
# A step still running at its budget gets SIGTERM, and SIGKILL this much later: the worst case of the whole check
# is the budgets plus this per step, and that must stay under TOTAL_LIMIT_S.
KILL_AFTER_S = 3


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    budget_s: int  # the step is killed (SIGTERM, then SIGKILL KILL_AFTER_S later) when it runs longer
    why: str  # what evidence it gives and why its budget is what it is
    command: str  # bash, run as `timeout <budget_s> bash -c <command>` from the repository root
    after: str = ""  # bash run after the step whatever its outcome (collects partial results); must be instant
    required: bool = False  # when it fails, the steps after it cannot run and are skipped


# The kernel benchmark runs (pyfastblocks-bench flags; each writes results.json/.md into $WORK/bench/<name>):
# never-measured-on-a-GPU first, the torch.compile baselines (a compile per case) last.
BENCH_COMMON = "--sections kernels --quick --batch 64 --min-run-time 0.1"
BENCH_RUNS = [
    ("1-fp16-bf16-channels-last", "--ops depthwise_conv2d branch_concat add_relu --no-compile"),
    ("2-fp32-nchw", "--dtype fp32 --layout nchw --ops depthwise_conv2d branch_concat add_relu --no-compile"),
    ("3-fp16-channels-last-vs-compile", "--ops branch_concat add_relu"),
]

STEPS: List[Step] = [
    Step(
        "build", "environment and build for this card only", 140,
        "nvidia-smi, torch and the tools, then `pip install .` with TORCH_CUDA_ARCH_LIST = this card's capability "
        "and MAX_JOBS = cores. Measured on the project's 2-core CPU machine (benchmarks/results/2026-11-29-cpu-build): "
        "the slowest unit is csrc/cuda/depthwise_input_grad_kernel.cu (104 s for sm_80 + sm_90 + PTX on an idle "
        "core; one arch here takes about half), every CPU unit 20 s or less, the AVX2 units a second ninja run of "
        "~30 s; with 16 jobs the build is about that chain, ~90 s, plus pip and the link: ~100 s. 140 s leaves 40% "
        "more for a slower host CPU.",
        r"""nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader \
  || echo "nvidia-smi: not available"
$PY -c "import sys, torch; p = torch.cuda.get_device_properties(0); print('python', sys.version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda, '|', p.name, 'capability %d.%d' % (p.major, p.minor), '|', p.multi_processor_count, 'SMs |', round(p.total_memory / 2**30), 'GiB')" || exit 1
echo "cores $NPROC | pytest workers $WORKERS | commit $GPU_CHECK_COMMIT | compute-sanitizer: ${SANITIZER:-not found}"
[ -n "$SANITIZER" ] && "$SANITIZER" --version | tail -n 1
arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || exit 1
echo "pip install . with TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$NPROC (log: $WORK/build.log)"
if ! TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$NPROC" FORCE_CUDA=1 \
    python3 -m pip install --no-build-isolation --no-deps -v . > "$WORK/build.log" 2>&1; then
  tail -n 60 "$WORK/build.log"; exit 1
fi
grep -E "(error|warning)[: ]" "$WORK/build.log" | grep -v -i -E "pip|setuptools|deprecat" | head -n 20
for f in build/temp.*/.ninja_log; do
  [ -f "$f" ] && awk 'NR > 1 {printf "%6.1f s  %s\n", ($2 - $1) / 1000, $4}' "$f" | sort -rn | head -n 5 | sed 's/^/slowest compile: /'
done
$PY -c "import pyfastblocks; i = pyfastblocks.build_info(); print(i); assert i['cuda_compiled'] and i['cuda_available'], 'the CUDA kernels were not built, or torch sees no GPU'"
""",
        required=True,
    ),
    Step(
        "cuda-tests", "the CUDA tests (pytest -m cuda), in parallel workers", 75,
        "Every test item that runs CUDA code (the `cuda` marker, tests/conftest.py): CUDA against CPU and float64, "
        "the GPU against the emulator of every tiled depthwise program, tensors past 2^31 elements, streams and "
        "threads, mixed devices, bad input on CUDA; not the CPU suite CI already runs. Their CPU counterparts take "
        "~30-60 s of one core here; 8 workers (2 threads each) plus their start (~10 s each, in parallel) fit 75 s.",
        r"""XDIST=""; $PY -c "import xdist" 2> /dev/null && XDIST="-n $WORKERS"
PER_TEST=""; $PY -c "import pytest_timeout" 2> /dev/null && PER_TEST="--timeout=60"
OMP_NUM_THREADS=2 $PY -m pytest -m cuda $XDIST $PER_TEST -q -rfEs --tb=short --durations=10 -p no:cacheprovider tests
""",
    ),
    Step(
        "memcheck", "compute-sanitizer memcheck over every kernel", 40,
        "scripts/sanitizer_workload.py launches every CUDA kernel of the project per program, path, dtype and "
        "activation on small tensors (~500 runs, ~1,500 launches of ours); only fastblocks kernels are "
        "instrumented (--kernel-name), and torch's "
        "caching allocator is off so that each tensor is its own allocation (an overrun inside a cached block is "
        "invisible to memcheck). Python, torch and CUDA start in ~10 s under the sanitizer.",
        r"""[ -n "$SANITIZER" ] || { echo "compute-sanitizer: not found"; exit 2; }
PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --kernel-name kns=fastblocks --error-exitcode 9 \
  --print-limit 20 $PY scripts/sanitizer_workload.py
""",
    ),
    Step(
        "racecheck", "compute-sanitizer racecheck over every kernel", 30,
        "The same workload for shared-memory hazards (the tiled depthwise programs, the block reductions of the "
        "backward kernels), with one activation per op (shared-memory access does not depend on it; racecheck "
        "slows shared-memory accesses by orders of magnitude): ~220 runs.",
        r"""[ -n "$SANITIZER" ] || { echo "compute-sanitizer: not found"; exit 2; }
"$SANITIZER" --tool racecheck --kernel-name kns=fastblocks --error-exitcode 9 --print-limit 20 \
  $PY scripts/sanitizer_workload.py --one-activation
""",
    ),
    Step(
        "kernel-bench", "kernel benchmarks (fp16/bf16 channels_last, fp32 NCHW; vs eager and torch.compile)", 65,
        "pyfastblocks-bench's kernels section at batch 64 on its short shape list, each run measuring the copy "
        "bandwidth it reports % of: every op in fp16/bf16 channels_last (depthwise in both; branch_concat and "
        "depthwise never ran on a GPU yet) and in fp32 NCHW against eager PyTorch (~22 and ~14 cases, ~0.4 s "
        "each, ~7 s of start-up per run: ~15 s per run), then branch_concat and add_relu fp16 against "
        "torch.compile last (a compile per case: ~10 s for the first, ~3 s each after: ~30 s).",
        "".join(f'$PY -m pyfastblocks.bench {BENCH_COMMON} {flags} --out "$WORK/bench/{name}"\n'
                for name, flags in BENCH_RUNS),
        after=r"""python3 "$PLAN" merge-bench "$OUT/kernels" "$WORK"/bench/*/""",
    ),
    Step(
        "model-bench", "models: eval batch 64 fp16 channels_last, profile split, training step, torch.compile", 110,
        "benchmarks/gpu_models.py: ResNet-50, Inception-v3, Xception, MobileNet v1/v2, EfficientNet-B0 swapped vs "
        "eager (~4 s each), the torch.profiler split of the swapped ResNet-50 forward (~5 s), one training step "
        "of ResNet-50 and MobileNetV2 (~8 s each), then torch.compile of ResNet-50 (cold cache, ~40-60 s) last, "
        "so that a slow compile loses only itself. Results are written after each part.",
        r"""$PY benchmarks/gpu_models.py --out "$OUT" --time-budget 105
""",
    ),
]

# What comes back under $OUT (the device machine returns at most 8 files), ready to commit as
# benchmarks/results/<date>-<card>/.
OUT_FILES = {
    "README.md": "the summary: card, commit, each step's budget, wall time and outcome, the headline figures",
    "gpu_check.log": "everything the steps printed",
    "steps.json": "each step's budget, wall time and exit status",
    "kernels.json": "the kernel benchmark runs (pyfastblocks-bench JSON, one entry per run)",
    "kernels.md": "the kernel benchmark tables",
    "models.json": "benchmarks/gpu_models.py results",
    "models.md": "benchmarks/gpu_models.py tables",
}
MAX_OUT_FILES = 8


def total_budget_s() -> int:
    return sum(s.budget_s for s in STEPS)


def worst_case_s() -> int:
    """The longest the check can take: every step killed at its budget, SIGKILL needed each time."""
    return total_budget_s() + KILL_AFTER_S * len(STEPS)


# ------------------------------------------------------------------------------------------------------------
# Output for the shell runner and for people.


def as_bash() -> str:
    """The plan as bash array assignments (eval'd by gpu_check.sh)."""
    lines = [f"TOTAL_LIMIT_S={TOTAL_LIMIT_S}", f"KILL_AFTER_S={KILL_AFTER_S}", f"WORST_CASE_S={worst_case_s()}",
             f"OUT_FILES=({' '.join(shlex.quote(f) for f in OUT_FILES)})"]
    for name, values in (("STEP_IDS", [s.id for s in STEPS]), ("STEP_TITLES", [s.title for s in STEPS]),
                         ("STEP_BUDGETS", [str(s.budget_s) for s in STEPS]),
                         ("STEP_COMMANDS", [s.command for s in STEPS]), ("STEP_AFTER", [s.after for s in STEPS]),
                         ("STEP_REQUIRED", ["1" if s.required else "0" for s in STEPS])):
        lines.append(f"{name}=({' '.join(shlex.quote(v) for v in values)})")
    return "\n".join(lines) + "\n"


def as_table(measured: Optional[dict] = None, why: bool = True) -> str:
    """The plan as a Markdown table; with `measured` (read_steps), each step's wall time and outcome too."""
    head = ["#", "step", "budget s"] + (["wall s", "outcome"] if measured is not None else []) + (["what"] if why else [])
    rows = [head, ["---"] * len(head)]
    for i, s in enumerate(STEPS, 1):
        cells = [str(i), f"`{s.id}`: {s.title}", str(s.budget_s)]
        if measured is not None:
            m = measured.get(s.id, {})
            cells += [f"{m['wall_s']:.0f}" if m.get("wall_s") is not None else "-", m.get("outcome", "not run")]
        rows.append(cells + ([s.why] if why else []))
    total = ["", "total", str(total_budget_s())]
    if measured is not None:
        total += [f"{sum(m.get('wall_s') or 0 for m in measured.values()):.0f}", ""]
    if why:
        total.append(f"limit {TOTAL_LIMIT_S} s; at worst {worst_case_s()} s (each step killed, {KILL_AFTER_S} s to die)")
    rows.append(total)
    return "".join("| " + " | ".join(r) + " |\n" for r in rows)


# ------------------------------------------------------------------------------------------------------------
# After steps: merge the kernel benchmark runs, write the summary.


def merge_bench(out_prefix: str, folders: List[str]) -> None:
    """pyfastblocks-bench result folders (results.json + results.md each, complete or cut short) -> one JSON with
    every run and one Markdown file with every run's tables, under a heading per run."""
    runs, parts = [], []
    for folder in sorted(folders):
        name = os.path.basename(os.path.normpath(folder))
        entry = {"run": name}
        try:
            with open(os.path.join(folder, "results.json")) as f:
                entry["results"] = json.load(f)
        except (OSError, ValueError) as e:
            entry["error"] = f"no results.json ({type(e).__name__})"
        runs.append(entry)
        try:
            with open(os.path.join(folder, "results.md")) as f:
                parts.append(f"# {name}\n\n{f.read().strip()}\n")
        except OSError:  # cut short: the bench writes results.md at the end, results.json after every case
            parts.append(f"# {name}\n\n" + _rows_table(entry.get("results", {}).get("rows", [])))
    with open(out_prefix + ".json", "w") as f:
        json.dump({"runs": runs}, f, indent=1)
    with open(out_prefix + ".md", "w") as f:
        f.write("\n".join(parts) if parts else "no kernel benchmark ran\n")


ROW_COLUMNS = ["op", "variant", "shape", "dtype", "layout", "mode", "status", "fused_us", "eager_us", "compile_us",
               "speedup_vs_eager", "speedup_vs_compile", "pct_of_copy"]


def _rows_table(rows: List[dict]) -> str:
    """The rows of a pyfastblocks-bench run that was cut short (no results.md), as a plain table."""
    if not rows:
        return "the run was cut short before its first case\n"

    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else ("-" if v is None else str(v))

    lines = ["the run was cut short; the cases it finished:", "", "| " + " | ".join(ROW_COLUMNS) + " |",
             "|" + "---|" * len(ROW_COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in ROW_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def read_steps(tsv_path: str) -> dict:
    """Step results written by gpu_check.sh: id <TAB> exit status <TAB> wall seconds <TAB> outcome."""
    measured = {}
    try:
        with open(tsv_path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 4:
                    measured[parts[0]] = {"status": int(parts[1]), "wall_s": float(parts[2]), "outcome": parts[3]}
    except OSError:
        pass
    return measured


def _range(values: List[float], spec: str) -> str:
    values = sorted(v for v in values if isinstance(v, (int, float)))
    if not values:
        return "-"
    low, high = format(values[0], spec), format(values[-1], spec)
    return low if low == high else f"{low}-{high}"


def _headlines(out_dir: str) -> List[str]:
    """A few figures from kernels.json and models.json for the summary (the tables: kernels.md, models.md)."""
    lines = []
    try:
        with open(os.path.join(out_dir, "kernels.json")) as f:
            runs = json.load(f)["runs"]
    except (OSError, ValueError, KeyError):
        runs = None
        lines.append("kernels.json: missing (the kernel benchmark step did not write it)")
    for run in runs or []:
        rows = run.get("results", {}).get("rows", [])
        ok = [r for r in rows if r.get("status") == "ok"]
        bad = [r for r in rows if r.get("status") not in ("ok", "unavailable")]
        for op in sorted({r.get("op") for r in ok}):
            mine = [r for r in ok if r.get("op") == op]
            text = (f"kernels {run['run']} {op}: {len(mine)} cases, {_range([r.get('speedup_vs_eager') for r in mine], '.2f')}x "
                    f"eager, {_range([r.get('pct_of_copy') for r in mine], '.0f')}% of copy bandwidth")
            if any(r.get("speedup_vs_compile") is not None for r in mine):
                text += f", {_range([r.get('speedup_vs_compile') for r in mine], '.2f')}x torch.compile"
            lines.append(text)
        if bad:
            lines.append(f"kernels {run['run']}: {len(bad)} case(s) WRONG or failed (see kernels.md)")
    try:
        with open(os.path.join(out_dir, "models.json")) as f:
            models = json.load(f)
    except (OSError, ValueError):
        return lines + ["models.json: missing (the model step did not write it)"]
    for r in models.get("eval", []):
        if r.get("speedup_vs_eager") is not None:
            lines.append(f"eval {r['model']}: swapped {r['speedup_vs_eager']:.2f}x eager")
    for r in models.get("train", []):
        if r.get("speedup_vs_eager") is not None:
            lines.append(f"train {r['model']}: swapped {r['speedup_vs_eager']:.2f}x eager")
    prof = models.get("profile", {}).get("swapped")
    if prof and prof.get("outside_conv_gemm_pct") is not None:
        lines.append(f"swapped ResNet-50 forward: {prof['outside_conv_gemm_pct']:.1f}% outside convolution/GEMM")
    for r in models.get("compile", []):
        if r.get("speedup_vs_compile") is not None:
            lines.append(f"compile {r['model']}: swapped {r['speedup_vs_compile']:.2f}x torch.compile "
                         f"(compile {r.get('compile_s', float('nan')):.0f} s)")
    return lines


def report(out_dir: str, tsv_path: str) -> str:
    measured = read_steps(tsv_path)
    card = os.environ.get("GPU_CHECK_CARD", "unknown card")
    commit = os.environ.get("GPU_CHECK_COMMIT", "unknown")
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    steps = [dict(asdict(s), **measured.get(s.id, {"outcome": "not run"})) for s in STEPS]
    with open(os.path.join(out_dir, "steps.json"), "w") as f:
        json.dump({"date": date, "card": card, "commit": commit, "total_limit_s": TOTAL_LIMIT_S,
                   "total_budget_s": total_budget_s(), "steps": steps}, f, indent=1)
    table = as_table(measured)
    headlines = _headlines(out_dir)
    text = (f"# GPU check on {card} ({date})\n\n"
            f"- Commit: {commit}; `bash scripts/gpu_check.sh` (plan: scripts/gpu_check_plan.py).\n"
            f"- Files: " + ", ".join(f"`{k}` ({v})" for k, v in OUT_FILES.items()) + ".\n\n"
            "## Steps\n\n" + table + "\n## Headlines\n\n"
            + "".join(f"- {line}\n" for line in headlines))
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)
    return as_table(measured, why=False) + "\n" + "".join(f"- {line}\n" for line in headlines)


def main(argv: List[str]) -> int:
    if argv[:1] == ["bash"]:
        sys.stdout.write(as_bash())
    elif argv[:1] == ["table"]:
        sys.stdout.write(as_table())
    elif argv[:1] == ["merge-bench"] and len(argv) >= 2:
        merge_bench(argv[1], argv[2:])
    elif argv[:1] == ["report"] and len(argv) == 3:
        sys.stdout.write(report(argv[1], argv[2]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
