"""pyfastblocks-bench: fused ops against eager PyTorch and torch.compile, measured in one run.

Each case is first checked: the fused result must equal the eager one within the dtype's tolerance, or no
speed is reported for it (the row says WRONG and the command exits non-zero). Times are medians of
torch.utils.benchmark's blocked_autorange after warm-up; torch.compile's compile time is reported in its own
column, not hidden in the timings. Bandwidth is bytes moved (inputs read once + output written once) over the
fused time, also shown as % of a device-to-device copy measured in the same run.
"""
import argparse
import csv
import datetime as _dt
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import pyfastblocks
from pyfastblocks import ops

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# ResNet-50's block outputs (where the residual add+ReLU runs): channels, height/width.
RESNET50_TAILS = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
# InceptionV3 module tails (branch channels, height/width); Mixed_7b's inner 3x3 pairs are separate inputs.
INCEPTION_V3_TAILS = [
    ("Mixed_5b", [64, 64, 96, 32], 35),
    ("Mixed_6b", [192, 192, 192, 192], 17),
    ("Mixed_7b", [320, 384, 384, 384, 384, 192], 8),
]


@dataclass
class Case:
    op: str
    variant: str
    shape: tuple
    dtype: str
    layout: str
    fused: Callable[[], torch.Tensor]
    eager: Callable[[], torch.Tensor]
    bytes_moved: int


@dataclass
class Row:
    op: str
    variant: str
    shape: str
    dtype: str
    layout: str
    status: str = "ok"
    fused_us: Optional[float] = None
    eager_us: Optional[float] = None
    compile_us: Optional[float] = None
    speedup_vs_eager: Optional[float] = None
    speedup_vs_compile: Optional[float] = None
    gb_per_s: Optional[float] = None
    pct_of_copy: Optional[float] = None
    compile_s: Optional[float] = None
    max_abs_err: Optional[float] = None
    note: str = field(default="")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_us(fn: Callable, min_run_time: float) -> float:
    """Median time of fn() in microseconds (torch.utils.benchmark, which synchronizes CUDA)."""
    for _ in range(3):  # warm-up
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def copy_bandwidth_gbs(device: torch.device, min_run_time: float) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written) on a buffer far larger than caches."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB / 128 MiB of float32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), min_run_time)
    return 2 * src.numel() * src.element_size() / (us * 1e-6) / 1e9


def _in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def add_relu_cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int], tails) -> List[Case]:
    cases = []
    for batch in batches:
        for channels, hw in tails:
            shape = (batch, channels, hw, hw)
            x = _in_layout(torch.randn(shape, device=device, dtype=dtype), layout)
            r = _in_layout(torch.randn(shape, device=device, dtype=dtype), layout)
            w = torch.rand(channels, device=device) + 0.5
            b = torch.randn(channels, device=device)
            rm = torch.randn(channels, device=device) * 0.1
            rv = torch.rand(channels, device=device) + 0.5
            eps = 1e-5
            scale = w * torch.rsqrt(rv + eps)
            bias = b - rm * scale
            nbytes = 3 * x.numel() * x.element_size()
            dname = DTYPE_NAMES[dtype]

            def eager_bn_add_relu(x=x, r=r, w=w, b=b, rm=rm, rv=rv):
                # What a torchvision ResNet block runs in eval: out = bn(x); out += identity; relu_(out).
                out = F.batch_norm(x, rm, rv, w, b, False, 0.0, eps)
                out += r
                return torch.relu_(out)

            def eager_add_relu(x=x, r=r):
                out = x + r
                return torch.relu_(out)

            cases.append(Case("add_relu", "bn+add+relu", shape, dname, layout,
                              lambda x=x, r=r, s=scale, b=bias: ops.add_relu(x, r, s, b), eager_bn_add_relu, nbytes))
            cases.append(Case("add_relu", "add+relu", shape, dname, layout,
                              lambda x=x, r=r: ops.add_relu(x, r), eager_add_relu, nbytes))
    return cases


def branch_concat_cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int], tails) -> List[Case]:
    cases = []
    dname = DTYPE_NAMES[dtype]
    eps = 1e-3
    for batch in batches:
        for name, channels, hw in tails:
            xs = [_in_layout(torch.randn(batch, c, hw, hw, device=device, dtype=dtype), layout) for c in channels]
            bns = [(torch.rand(c, device=device) + 0.5, torch.randn(c, device=device), torch.randn(c, device=device) * 0.1,
                    torch.rand(c, device=device) + 0.5) for c in channels]
            scale = torch.cat([w * torch.rsqrt(rv + eps) for w, _, _, rv in bns])
            bias = torch.cat([b - rm * w * torch.rsqrt(rv + eps) for w, b, rm, rv in bns])
            nbytes = 2 * sum(x.numel() for x in xs) * xs[0].element_size()

            def eager(xs=xs, bns=bns):
                # What torchvision's Inception runs: BasicConv2d's bn + relu(inplace) per branch, then cat.
                return torch.cat([torch.relu_(F.batch_norm(x, rm, rv, w, b, False, 0.0, eps))
                                  for x, (w, b, rm, rv) in zip(xs, bns)], 1)

            shape = (batch, sum(channels), hw, hw)
            cases.append(Case("branch_concat", f"{name} bn+relu+cat", shape, dname, layout,
                              lambda xs=xs, s=scale, b=bias: ops.branch_concat(xs, s, b), eager, nbytes))
    return cases


OP_CASES = {"add_relu": add_relu_cases, "branch_concat": branch_concat_cases}


def run_case(case: Case, device: torch.device, copy_gbs: float, min_run_time: float, use_compile: bool) -> Row:
    row = Row(case.op, case.variant, "x".join(map(str, case.shape)), case.dtype, case.layout)
    dtype = DTYPES[case.dtype]
    fused_out, eager_out = case.fused(), case.eager()
    err = (fused_out.double() - eager_out.double()).abs()
    row.max_abs_err = err.max().item() if err.numel() else 0.0
    rtol, atol = TOLERANCES[dtype]
    if not torch.allclose(fused_out.double(), eager_out.double(), rtol=rtol, atol=atol):
        row.status = "WRONG"
        row.note = f"fused result differs from eager (max abs err {row.max_abs_err:.3g}): not timed"
        return row
    row.fused_us = median_us(case.fused, min_run_time)
    row.eager_us = median_us(case.eager, min_run_time)
    row.speedup_vs_eager = row.eager_us / row.fused_us
    row.gb_per_s = case.bytes_moved / (row.fused_us * 1e-6) / 1e9
    row.pct_of_copy = 100.0 * row.gb_per_s / copy_gbs
    if use_compile:
        torch._dynamo.reset()
        compiled = torch.compile(case.eager, dynamic=False)
        start = time.perf_counter()
        compiled_out = compiled()
        _sync(device)
        row.compile_s = time.perf_counter() - start
        if not torch.allclose(compiled_out.double(), eager_out.double(), rtol=rtol, atol=atol):
            row.note = "torch.compile result differs from eager"
        row.compile_us = median_us(compiled, min_run_time)
        row.speedup_vs_compile = row.compile_us / row.fused_us
    return row


def environment(device: torch.device) -> dict:
    env = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "pyfastblocks": pyfastblocks.build_info(),
    }
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                env["device"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return env


def _fmt(v, spec, bold_if_ge1=False):
    if v is None:
        return "-"
    text = format(v, spec)
    return f"**{text}**" if bold_if_ge1 and v >= 1.0 else text


def format_table(rows: List[Row], copy_gbs: float) -> str:
    header = ["op", "variant", "shape", "dtype", "layout", "fused us", "eager us", "compile us",
              "x eager", "x compile", "GB/s", "% copy"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r.status != "ok":
            lines.append(f"| {r.op} | {r.variant} | {r.shape} | {r.dtype} | {r.layout} | {r.status}: {r.note} |")
            continue
        lines.append("| " + " | ".join([
            r.op, r.variant, r.shape, r.dtype, r.layout, _fmt(r.fused_us, ".1f"), _fmt(r.eager_us, ".1f"),
            _fmt(r.compile_us, ".1f"), _fmt(r.speedup_vs_eager, ".2f", True), _fmt(r.speedup_vs_compile, ".2f", True),
            _fmt(r.gb_per_s, ".1f"), _fmt(r.pct_of_copy, ".0f"),
        ]) + " |")
    lines.append(f"\ncopy bandwidth measured in this run: {copy_gbs:.1f} GB/s (read + write)")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="pyfastblocks-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--layout", default=None, choices=["nchw", "channels_last"],
                   help="default: channels_last on CUDA, nchw on CPU")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 32 64; --quick: 8)")
    p.add_argument("--quick", action="store_true", help="a short run (fewer shapes, batch 8, shorter timings)")
    p.add_argument("--ops", nargs="+", default=list(OP_CASES), choices=list(OP_CASES), help="ops to benchmark")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per measurement")
    p.add_argument("--out", default=None, help="write results.csv and results.json into this folder")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    layout = args.layout or ("channels_last" if device.type == "cuda" else "nchw")
    batches = args.batch or ([8] if args.quick else [32, 64])
    tails = {
        "add_relu": RESNET50_TAILS[::2] if args.quick else RESNET50_TAILS,
        "branch_concat": INCEPTION_V3_TAILS[:2] if args.quick else INCEPTION_V3_TAILS,
    }
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.3)

    env = environment(device)
    print(f"pyfastblocks-bench on {env['device']} ({device}), torch {env['torch']}, CUDA {env['cuda']}, {env['date']}")
    print(f"build: {env['pyfastblocks']}")
    copy_gbs = copy_bandwidth_gbs(device, min_run_time)
    cases = [c for op in args.ops for c in OP_CASES[op](device, dtype, layout, batches, tails[op])]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(it, **_):
            return it
    rows = [run_case(c, device, copy_gbs, min_run_time, not args.no_compile)
            for c in tqdm(cases, desc="benchmarking", file=sys.stderr)]
    print(format_table(rows, copy_gbs))

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"environment": env, "copy_gbs": copy_gbs, "rows": [asdict(r) for r in rows]}, f, indent=2)
        with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(f"{env['device']} ({device}), torch {env['torch']}, CUDA {env['cuda']}, {env['date']}\n\n")
            f.write(format_table(rows, copy_gbs) + "\n")
        print(f"wrote {args.out}/results.csv, results.json, results.md")
    wrong = [r for r in rows if r.status != "ok"]
    if wrong:
        print(f"{len(wrong)} case(s) gave a wrong result: no speed reported for them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
