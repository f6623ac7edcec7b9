"""The model-level GPU goals in one run (the model-bench step of scripts/gpu_check.sh; DESIGN.md, "Performance
targets"): swapped models (``pyfastblocks.swap``) against the same models in eager PyTorch and, for ResNet-50,
torch.compile.

Parts, in this order (each written to models.json / models.md as soon as it is done, so a run cut short keeps
what it finished):

1. eval: ResNet-50, Inception-v3 (torchvision), Xception (timm legacy_xception), MobileNet v1 (timm
   mobilenetv1_100), MobileNetV2 and EfficientNet-B0 (torchvision) at batch 64, fp16, channels_last, under
   no_grad: eager vs swapped.
2. profile (right after ResNet-50's eval, on its models): torch.profiler over the swapped (and the eager) ResNet-50
   forward: the GPU time of convolution/GEMM kernels against everything else (other kernels, and the GPU idle
   between kernels), as % of the forward's wall time (the eval median). The largest kernels and their class are
   listed, so the classification can be checked.
3. train: one training step (forward, cross-entropy, backward, SGD step) of ResNet-50 and MobileNetV2 in
   automatic mixed precision (torch.autocast fp16 over float32 weights, channels_last; no GradScaler: loss
   scaling is one multiply and does not change the timing), eager vs swapped.
4. compile: ResNet-50 eval under torch.compile (default mode, cold cache; the compile time is the first call),
   timed against eager and swapped. Last, because it is the slowest part.

Models get random weights (nothing is downloaded); before casting, each model's BatchNorm running statistics are
set from one training-mode batch, so activations have the scale of a trained network (fp16 without overflow) and
eager and swapped models compute the same function. Each swapped model is checked against the original first (max
|difference| over max |original| within a dtype tolerance, and for the training step the gradients too); a model
that differs is reported WRONG and not timed. Times are medians of torch.utils.benchmark measurements, in rounds
that alternate the variants (A B, B A, ...), so ratios come from one interleaved run. cudnn.benchmark is on for
every variant (they share the cuDNN algorithm choices).

    python benchmarks/gpu_models.py --out DIR                    # GPU: ~100 s on an H200 (~50 s of it the compile)
    python benchmarks/gpu_models.py --device cpu --batch 2 --size 64 --quick --out DIR   # CPU smoke test (~30 s)
"""
import time

_STARTED = time.perf_counter()  # --time-budget counts the imports too

import argparse  # noqa: E402
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import sys
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import pyfastblocks
from pyfastblocks.bench.models import build_model

# (name, source, image size). Inception-v3 needs at least 75x75.
MODELS = [
    ("resnet50", "torchvision", 224),
    ("inception_v3", "torchvision", 299),
    ("legacy_xception", "timm", 299),
    ("mobilenetv1_100", "timm", 224),
    ("mobilenet_v2", "torchvision", 224),
    ("efficientnet_b0", "torchvision", 224),
]
MIN_IMAGE = {"inception_v3": 75}
TRAIN_MODELS = ["resnet50", "mobilenet_v2"]
COMPILE_MODELS = ["resnet50"]
PROFILE_MODEL = "resnet50"

# DESIGN.md's GPU targets (swapped / eager; swapped / torch.compile; % of the forward outside conv/GEMM kernels).
EVAL_TARGETS = {"resnet50": 1.5, "inception_v3": 1.5, "legacy_xception": 2.0, "mobilenetv1_100": 2.0,
                "mobilenet_v2": 2.0}
COMPILE_TARGET = 1.1
OUTSIDE_TARGET_PCT = 10.0
TRAIN_TARGET = 1.2

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Swapped against original, relative error (max |difference| / max |original|): folded BatchNorm and another
# summation order change the rounding over ~50 layers, not the result (as pyfastblocks-bench's model section).
OUTPUT_TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}
GRADIENT_TOLERANCE = {torch.float32: 1e-1, torch.float16: 2e-1, torch.bfloat16: 3e-1}

# Kernel classes for the profile split. Layout transforms and BatchNorm kernels that libraries launch around a
# convolution are "other": they are the time the fused epilogues are meant to remove. On the CPU the same
# patterns apply to ATen op names (self time).
NOT_CONV_GEMM = re.compile(r"nchwToNhwc|nhwcToNchw|nchw_to_nhwc|nhwc_to_nchw|transpose|bn_fw|bn_bw|batch_?norm",
                           re.I)
CONV_GEMM = re.compile(r"conv|gemm|gemv|xmma|wgmma|hmma|cutlass|fprop|dgrad|wgrad|winograd|implicit|splitk|fft|"
                       r"depthwise|tiled_program_kernel|mkldnn|addmm|\bmm\b|matmul|linear", re.I)


def is_conv_gemm(kernel_name: str) -> bool:
    return not NOT_CONV_GEMM.search(kernel_name) and bool(CONV_GEMM.search(kernel_name))


# ------------------------------------------------------------------------------------------------------------
# Models


@torch.no_grad()
def set_batchnorm_statistics(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Running mean/variance of every BatchNorm = the statistics of one training-mode forward of x."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()
    model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if hasattr(out, "logits") else out[0]


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    if got.shape != ref.shape:
        return math.inf
    err = (got - ref).abs().max().item()
    return math.inf if math.isnan(err) else err / max(ref.abs().max().item(), 1e-12)


def swap(model: torch.nn.Module):
    """(swapped deep copy, its report as text, number of blocks swapped)."""
    swapped, rep = pyfastblocks.swap(model, report=True)
    return swapped, str(rep), rep.total_swapped


# ------------------------------------------------------------------------------------------------------------
# Timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(calls: Dict[str, Callable], rounds: int, min_run_time: float, warmup: int) -> Dict[str, dict]:
    """Median ms per call of each callable, measured in `rounds` rounds that alternate the order of the variants
    (A B, B A, ...); each round is a torch.utils.benchmark blocked_autorange (which synchronizes CUDA) of
    `min_run_time` seconds per variant, or one timed call where min_run_time is 0. Also the spread: (75th - 25th
    percentile) / median, in %."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    threads = torch.get_num_threads()
    timers = {k: benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads) for k, fn in calls.items()}
    times: Dict[str, List[float]] = {k: [] for k in calls}
    keys = list(calls)
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            m = timers[k].blocked_autorange(min_run_time=min_run_time) if min_run_time > 0 else timers[k].timeit(1)
            times[k] += list(m.times)
    out = {}
    for k, t in times.items():
        t = sorted(t)
        median = statistics.median(t)
        q1, q3 = t[len(t) // 4], t[(3 * len(t)) // 4]
        out[k] = {"ms": median * 1e3, "spread_pct": 100.0 * (q3 - q1) / median, "measurements": len(t)}
    return out


# ------------------------------------------------------------------------------------------------------------
# The run


class Run:
    """Settings, results so far, and writing them (JSON + Markdown) after every part."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.cuda = self.device.type == "cuda"
        self.dtype = DTYPES[args.dtype or ("fp16" if self.cuda else "fp32")]
        self.memory_format = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
        self.batch = args.batch or (64 if self.cuda else 8)
        self.rounds = args.rounds or (1 if args.quick else 5)
        self.min_run_time = args.min_run_time if args.min_run_time is not None else (0.0 if args.quick else 0.1)
        self.warmup = 0 if args.quick else 3  # --quick: the correctness check's call is the only warm-up
        self.compile = not (args.quick or args.no_compile)
        self.t0 = _STARTED
        self.models = [m for m in MODELS if not args.models or m[0] in args.models]
        self.results = {"env": self.environment(), "eval": [], "profile": {}, "train": [], "compile": [],
                        "skipped": [], "complete": False}

    def environment(self) -> dict:
        info = pyfastblocks.build_info()
        env = {
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": torch.cuda.get_device_name(self.device) if self.cuda else (platform.processor() or "cpu"),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if self.cuda else None,
            "pyfastblocks": info.get("version"), "commit": os.environ.get("GPU_CHECK_COMMIT") or info.get("commit"),
            "cuda_archs": info.get("cuda_archs"), "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
        }
        env["settings"] = {"batch": self.batch, "dtype": str(self.dtype).replace("torch.", ""),
                           "layout": self.args.layout, "rounds": self.rounds, "min_run_time_s": self.min_run_time,
                           "warmup": self.warmup, "cudnn_benchmark": self.cuda, "compile": self.compile,
                           "image": self.args.size or "each model's own"}
        return env

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():5.1f} s] {text}", flush=True)

    def time_left(self, need_s: float, what: str) -> bool:
        """Whether `what` (about need_s seconds) still fits the --time-budget; records the skip otherwise."""
        if self.args.time_budget is None or self.elapsed() + need_s <= self.args.time_budget:
            return True
        note = f"{what}: skipped, {self.args.time_budget - self.elapsed():.0f} s of the time budget left, needs ~{need_s:.0f} s"
        self.say(note)
        self.results["skipped"].append(note)
        return False

    def image_for(self, name: str, default: int) -> int:
        return max(self.args.size or default, MIN_IMAGE.get(name, 0))

    def model_pair(self, name: str, source: str, image: int, dtype: torch.dtype, eval_mode: bool):
        """(original, swapped, input, swap report text, blocks swapped), built on the device in `dtype`."""
        torch.manual_seed(0)
        model = build_model(name, source, self.device).to(memory_format=self.memory_format)
        x = torch.randn(self.batch, 3, image, image, device=self.device).contiguous(memory_format=self.memory_format)
        set_batchnorm_statistics(model, x)
        model = model.to(dtype=dtype)
        model.train(not eval_mode)
        swapped, report, count = swap(model)
        return model, swapped, x.to(dtype), report, count

    def write(self) -> None:
        self.results["elapsed_s"] = round(self.elapsed(), 1)
        if not self.args.out:
            return
        os.makedirs(self.args.out, exist_ok=True)
        with open(os.path.join(self.args.out, "models.json"), "w") as f:
            json.dump(self.results, f, indent=1)
        with open(os.path.join(self.args.out, "models.md"), "w") as f:
            f.write(format_markdown(self.results))

    # -- 1. eval ---------------------------------------------------------------------------------------------
    def eval_model(self, name: str, source: str, default_image: int) -> dict:
        image = self.image_for(name, default_image)
        row = {"model": name, "source": source, "image": image, "batch": self.batch, "status": "ok", "note": ""}
        try:
            model, swapped, x, row["swap_report"], row["blocks_swapped"] = self.model_pair(
                name, source, image, self.dtype, eval_mode=True)
            with torch.no_grad():
                ref, got = logits(model(x)), logits(swapped(x))
            if not torch.isfinite(ref).all():
                row.update(status="error", note=f"the original's output is not finite in {self.dtype}")
                return row
            row["max_rel_err"] = relative_error(got, ref)
            if not row["max_rel_err"] <= OUTPUT_TOLERANCE[self.dtype]:
                row.update(status="WRONG", note=f"swapped differs from the original (max rel err "
                                                f"{row['max_rel_err']:.3g} > {OUTPUT_TOLERANCE[self.dtype]:g}): not timed")
                return row

            def call(m):
                def fn():
                    with torch.no_grad():
                        return m(x)
                return fn

            t = interleaved_ms({"eager": call(model), "swapped": call(swapped)}, self.rounds, self.min_run_time,
                               self.warmup)
            self._fill_times(row, t)
            if name == PROFILE_MODEL:
                self.profile(name, image, call(swapped), call(model), t)
        except Exception as e:  # noqa: BLE001 (one model's failure is reported, the run goes on)
            row.update(status="error", note=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        return row

    def _fill_times(self, row: dict, t: Dict[str, dict]) -> None:
        for k, v in t.items():
            row[f"{k}_ms"] = v["ms"]
            row[f"{k}_spread_pct"] = v["spread_pct"]
            row[f"{k}_images_per_s"] = self.batch / (v["ms"] * 1e-3)
        row["speedup_vs_eager"] = t["eager"]["ms"] / t["swapped"]["ms"]

    # -- 2. profile ------------------------------------------------------------------------------------------
    def profile_split(self, fn: Callable, forward_ms: float, iterations: int) -> dict:
        """GPU kernel time of one forward by class (torch.profiler), against its wall time `forward_ms` (CPU: op self
        times against the wall time of the profiled calls)."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        fn()
        sync(self.device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(iterations):
                fn()
            sync(self.device)
            profiled_ms = (time.perf_counter() - start) * 1e3 / iterations
        if not self.cuda:
            # CPU op times include the profiler's own cost and this machine's load at that moment: compare them
            # with the wall time of the same profiled calls. (GPU kernel times are not slowed by the profiler,
            # so on CUDA the forward is the unprofiled median.)
            forward_ms = profiled_ms
        kernels = []
        for evt in prof.key_averages():
            if getattr(evt, "is_user_annotation", False):  # record_function ranges: they span kernels counted below
                continue
            if self.cuda:
                if evt.device_type != DeviceType.CUDA:
                    continue
                us = getattr(evt, "self_device_time_total", None)
                us = getattr(evt, "self_cuda_time_total", 0.0) if us is None else us
            else:  # CPU: every op by its self time (ATen, oneDNN's fused convolutions, this project's ops)
                us = evt.self_cpu_time_total
            if us > 0:
                kernels.append({"name": evt.key, "ms": us / 1e3 / iterations, "calls": evt.count / iterations,
                                "conv_gemm": is_conv_gemm(evt.key)})
        kernels.sort(key=lambda k: -k["ms"])
        conv = sum(k["ms"] for k in kernels if k["conv_gemm"])
        other = sum(k["ms"] for k in kernels if not k["conv_gemm"])
        return {
            "forward_ms": forward_ms, "profiled_forward_ms": profiled_ms, "conv_gemm_ms": conv, "other_kernels_ms": other,
            "idle_ms": max(forward_ms - conv - other, 0.0),
            "outside_conv_gemm_pct": 100.0 * max(forward_ms - conv, 0.0) / forward_ms,
            "kernels": [dict(k, name=k["name"][:160]) for k in kernels[:40]],
            "unit": "GPU kernels" if self.cuda else "CPU ops (self time)",
        }

    def profile(self, name: str, image: int, swapped_fn: Callable, eager_fn: Callable, t: Dict[str, dict]) -> None:
        """The split of both forwards (the models and wall times of the eval part)."""
        try:
            iterations = 1 if self.args.quick else 5
            self.results["profile"] = {
                "model": name, "image": image, "batch": self.batch,
                "swapped": self.profile_split(swapped_fn, t["swapped"]["ms"], iterations),
                "eager": self.profile_split(eager_fn, t["eager"]["ms"], iterations),
            }
            p = self.results["profile"]
            self.say(f"profile {name}: swapped {p['swapped']['outside_conv_gemm_pct']:.1f}% outside conv/GEMM, eager "
                  f"{p['eager']['outside_conv_gemm_pct']:.1f}%")
        except Exception as e:  # noqa: BLE001 (the eval row stands; the profile says why it is missing)
            self.results["profile"] = {"model": name, "error": f"{type(e).__name__}: {e}"[:300]}
            self.say(f"profile {name}: {self.results['profile']['error']}")

    # -- 3. train --------------------------------------------------------------------------------------------
    def train_model(self, name: str, source: str, default_image: int) -> dict:
        image = self.image_for(name, default_image)
        amp = self.dtype != torch.float32
        precision = f"autocast {str(self.dtype).replace('torch.', '')}, float32 weights" if amp else "float32"
        row = {"model": name, "image": image, "batch": self.batch, "precision": precision, "status": "ok", "note": ""}
        try:
            model, swapped, x, _, row["blocks_swapped"] = self.model_pair(name, source, image, torch.float32,
                                                                          eval_mode=False)
            labels = torch.randint(0, 1000, (self.batch,), device=self.device)
            autocast = (lambda: torch.autocast(self.device.type, dtype=self.dtype)) if amp else contextlib.nullcontext

            def forward_backward(m):
                torch.manual_seed(0)  # the same dropout draws in both models
                with autocast():
                    out = logits(m(x))
                F.cross_entropy(out.float(), labels).backward()
                return out

            outs, grads = [], []
            for m in (model, swapped):
                outs.append(forward_backward(m).detach())
                grads.append({n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None})
                m.zero_grad(set_to_none=True)
            row["out_rel_err"] = relative_error(outs[1], outs[0])
            common = [n for n in grads[0] if n in grads[1]]
            diff = math.sqrt(sum((grads[1][n].double() - grads[0][n].double()).pow(2).sum().item() for n in common))
            norm = math.sqrt(sum(grads[0][n].double().pow(2).sum().item() for n in common))
            row["grad_rel_err"] = diff / max(norm, 1e-30) if common else None
            problems = []
            if not row["out_rel_err"] <= OUTPUT_TOLERANCE[self.dtype]:
                problems.append(f"outputs {row['out_rel_err']:.3g}")
            if row["grad_rel_err"] is not None and not row["grad_rel_err"] <= GRADIENT_TOLERANCE[self.dtype]:
                problems.append(f"gradients {row['grad_rel_err']:.3g}")
            if problems:
                row.update(status="WRONG", note="swapped differs from the original (" + ", ".join(problems) + "): not timed")
                return row

            def step(m):
                opt = torch.optim.SGD(m.parameters(), lr=1e-4)

                def fn():
                    with autocast():
                        out = logits(m(x))
                    F.cross_entropy(out.float(), labels).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                return fn

            t = interleaved_ms({"eager": step(model), "swapped": step(swapped)}, self.rounds,
                               self.min_run_time * 2, self.warmup)
            self._fill_times(row, t)
        except Exception as e:  # noqa: BLE001
            row.update(status="error", note=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        return row

    # -- 4. compile ------------------------------------------------------------------------------------------
    def compile_model(self, name: str, source: str, default_image: int) -> dict:
        image = self.image_for(name, default_image)
        row = {"model": name, "image": image, "batch": self.batch, "status": "started", "note": ""}
        self.results["compile"].append(row)
        self.write()  # a run killed during the compile says so
        try:
            model, swapped, x, _, _ = self.model_pair(name, source, image, self.dtype, eval_mode=True)
            torch._dynamo.reset()
            compiled = torch.compile(model)
            start = time.perf_counter()
            with torch.no_grad():
                ref, out = logits(model(x)), logits(compiled(x))
            sync(self.device)
            row["compile_s"] = time.perf_counter() - start
            row["compiled_rel_err"] = relative_error(out, ref)

            def call(m):
                def fn():
                    with torch.no_grad():
                        return m(x)
                return fn

            t = interleaved_ms({"eager": call(model), "swapped": call(swapped), "compiled": call(compiled)},
                               self.rounds, self.min_run_time, self.warmup)
            self._fill_times(row, t)
            row["speedup_vs_compile"] = t["compiled"]["ms"] / t["swapped"]["ms"]
            row["status"] = "ok"
        except Exception as e:  # noqa: BLE001
            row.update(status="error", note=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        return row

    def main(self) -> int:
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.say(f"gpu_models on {self.results['env']['device']}: batch {self.batch}, {self.dtype}, {self.args.layout}, "
                 f"{self.rounds} rounds x {self.min_run_time} s")
        for name, source, image in self.models:
            if not self.time_left(4, f"eval {name}"):
                continue
            row = self.eval_model(name, source, image)
            self.results["eval"].append(row)
            self.say(f"eval {name}: {row['status']} {fmt_ratio(row.get('speedup_vs_eager'))} eager "
                  f"({fmt(row.get('eager_ms'))} -> {fmt(row.get('swapped_ms'))} ms) {row['note']}")
            self.write()
        for name, source, image in self.models:
            if name in TRAIN_MODELS and self.time_left(6, f"train {name}"):
                row = self.train_model(name, source, image)
                self.results["train"].append(row)
                self.say(f"train {name}: {row['status']} {fmt_ratio(row.get('speedup_vs_eager'))} eager "
                      f"({fmt(row.get('eager_ms'))} -> {fmt(row.get('swapped_ms'))} ms) {row['note']}")
                self.write()
        if self.compile:
            for name, source, image in self.models:
                if name in COMPILE_MODELS and self.time_left(30, f"torch.compile {name}"):
                    row = self.compile_model(name, source, image)
                    self.say(f"compile {name}: {row['status']} compile {fmt(row.get('compile_s'))} s, swapped "
                          f"{fmt_ratio(row.get('speedup_vs_compile'))} compiled {row['note']}")
                    self.write()
        else:
            self.results["skipped"].append("torch.compile: not run (--quick or --no-compile)")
        self.results["complete"] = True
        self.write()
        print(format_markdown(self.results))
        failed = [r for part in ("eval", "train", "compile") for r in self.results[part] if r["status"] != "ok"]
        return 1 if failed else 0


# ------------------------------------------------------------------------------------------------------------
# Report


def fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def fmt_ratio(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def met(value, target, higher_is_better=True) -> str:
    if value is None or target is None:
        return ""
    return " (met)" if (value >= target if higher_is_better else value <= target) else " (NOT met)"


def format_markdown(res: dict) -> str:
    env, s = res["env"], res["env"]["settings"]
    lines = [f"# Models on {env['device']} ({env['date']})", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}; pyfastblocks {env['pyfastblocks']} "
             f"(commit {env['commit']}, archs {env['cuda_archs']}); batch {s['batch']}, {s['dtype']}, {s['layout']}; "
             f"medians of {s['rounds']} interleaved rounds x {s['min_run_time_s']} s per variant; "
             f"{'complete' if res['complete'] else 'CUT SHORT'} after {res.get('elapsed_s', 0):.0f} s.", ""]
    if res["eval"]:
        lines += ["## Eval (no_grad)", "",
                  "| model | image | eager ms | swapped ms | swapped x eager | target | images/s swapped | blocks swapped "
                  "| max rel err | status |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["eval"]:
            target = EVAL_TARGETS.get(r["model"])
            lines.append(f"| {r['model']} | {r['image']} | {fmt(r.get('eager_ms'))} | {fmt(r.get('swapped_ms'))} | "
                         f"**{fmt_ratio(r.get('speedup_vs_eager'))}** | "
                         f"{f'>= {target}x' if target else '-'}{met(r.get('speedup_vs_eager'), target)} | "
                         f"{fmt(r.get('swapped_images_per_s'), '.0f')} | {r.get('blocks_swapped', '-')} | "
                         f"{fmt(r.get('max_rel_err'), '.2g')} | {r['status']} {r['note']} |")
        lines.append("")
    prof = res.get("profile") or {}
    if "error" in prof:
        lines += ["## Time outside convolution/GEMM", "", f"error: {prof['error']}", ""]
    elif prof:
        unit = prof["swapped"]["unit"]
        lines += [f"## Time outside convolution/GEMM ({prof['model']}, batch {prof['batch']}, one forward; {unit})", "",
                  "| variant | forward ms | conv/GEMM ms | other kernels ms | idle ms | outside conv/GEMM % | target |",
                  "|---|---|---|---|---|---|---|"]
        for variant in ("swapped", "eager"):
            p = prof[variant]
            target = OUTSIDE_TARGET_PCT if variant == "swapped" else None
            lines.append(f"| {variant} | {fmt(p['forward_ms'])} | {fmt(p['conv_gemm_ms'])} | {fmt(p['other_kernels_ms'])} "
                         f"| {fmt(p['idle_ms'])} | **{fmt(p['outside_conv_gemm_pct'], '.1f')}** | "
                         f"{f'<= {target:g}%' if target else '-'}{met(p['outside_conv_gemm_pct'], target, False)} |")
        lines += ["", "Largest kernels of the swapped forward (ms per forward, calls per forward, class):", ""]
        for k in prof["swapped"]["kernels"][:15]:
            lines.append(f"- {k['ms']:.3f} ms x{k['calls']:g} {'conv/GEMM' if k['conv_gemm'] else 'other'}: `{k['name'][:110]}`")
        lines.append("")
    if res["train"]:
        lines += ["## Training step (forward, cross-entropy, backward, SGD)", "",
                  "| model | precision | eager ms | swapped ms | swapped x eager | target | out err | grad err | status |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in res["train"]:
            lines.append(f"| {r['model']} | {r['precision']} | {fmt(r.get('eager_ms'))} | {fmt(r.get('swapped_ms'))} | "
                         f"**{fmt_ratio(r.get('speedup_vs_eager'))}** | >= {TRAIN_TARGET}x"
                         f"{met(r.get('speedup_vs_eager'), TRAIN_TARGET)} | {fmt(r.get('out_rel_err'), '.2g')} | "
                         f"{fmt(r.get('grad_rel_err'), '.2g')} | {r['status']} {r['note']} |")
        lines.append("")
    if res["compile"]:
        lines += ["## torch.compile (eval, default mode, cold cache)", "",
                  "| model | compile s | eager ms | compiled ms | swapped ms | swapped x compiled | target | "
                  "swapped x eager | status |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["compile"]:
            status = r["status"] if r["status"] != "started" else "did not finish (killed at the step's time limit?)"
            lines.append(f"| {r['model']} | {fmt(r.get('compile_s'), '.1f')} | {fmt(r.get('eager_ms'))} | "
                         f"{fmt(r.get('compiled_ms'))} | {fmt(r.get('swapped_ms'))} | "
                         f"**{fmt_ratio(r.get('speedup_vs_compile'))}** | >= {COMPILE_TARGET}x"
                         f"{met(r.get('speedup_vs_compile'), COMPILE_TARGET)} | {fmt_ratio(r.get('speedup_vs_eager'))} "
                         f"| {status} {r['note']} |")
        lines.append("")
    if res["skipped"]:
        lines += ["Skipped: " + "; ".join(res["skipped"]), ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64 on CUDA, 8 on CPU)")
    p.add_argument("--size", type=int, default=None,
                   help="image size for every model (default: each model's own, 224 or 299; Inception-v3 >= 75)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="eval dtype and training autocast dtype (default fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    p.add_argument("--models", nargs="+", default=None, help=f"a subset of {', '.join(m[0] for m in MODELS)}")
    p.add_argument("--quick", action="store_true",
                   help="1 round of one call, no warm-up, a 1-iteration profile, no torch.compile (smoke test)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile part")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --quick 1)")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per variant per round (default 0.1, training 2x; 0: one call; --quick 0)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds the whole run may take: a part that would not fit is skipped and listed")
    p.add_argument("--out", default=None, help="folder for models.json and models.md (written after every part)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.models:
        unknown = sorted(set(args.models) - {m[0] for m in MODELS})
        if unknown:
            print(f"gpu_models: unknown model(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
    if (args.device or "").startswith("cuda") and not torch.cuda.is_available():
        print("gpu_models: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
