"""pyfastblocks-bench: fused ops and swapped models against eager PyTorch and torch.compile, measured in one run.

Sections:

- kernels: each op on the shapes of the networks it serves (ResNet-50 block tails for add_relu, InceptionV3
  module tails for branch_concat, MobileNet v1 and Xception depthwise 3x3 layers for depthwise_conv2d, bare and
  with BatchNorm + ReLU, forward and forward+backward), against the eager PyTorch code a torchvision model runs
  and against torch.compile of that same code.
- models: per family, the model after ``pyfastblocks.swap`` against the original in eager mode and under
  torch.compile, in eval and for one training step (SGD), as images/s and peak memory. Runs only where
  ``pyfastblocks.swap`` can be imported; otherwise the section is reported as unavailable.

Every case is checked first: the fused result (outputs, and gradients for backward cases) must equal the eager
one within the dtype's tolerance, or no speed is reported for it (the row says WRONG and the command exits
non-zero). Times are medians of torch.utils.benchmark measurements after warm-up; torch.compile's compile time
(its first call) is reported in its own column, never inside the timings. Bandwidth is bytes moved (inputs read
once + output written once, + weights for convolutions) over the fused time, also shown as % of a
device-to-device copy measured in the same run.
"""
import argparse
import contextlib
import copy
import csv
import datetime as _dt
import importlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import pyfastblocks
from pyfastblocks import ops

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# Whole models, swapped against original: relative error of the outputs (max |difference| over max |original|)
# and, for a training step, of all parameter gradients together (norm of the difference over the norm). BatchNorm
# folding and another summation order change the rounding over ~50 layers, not the result; measured on this
# project's CPU in fp32 at the default sizes: 1e-6..5e-5 (a wrong block gives 1e-2 and more).
MODEL_TOLERANCES = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1e-1}
# A training step's gradients (all parameters as one vector): loose, since training-mode BatchNorm amplifies
# rounding differences (random-init Inception v3 in fp32: 1-3%, others 1e-5; in float64 all match to 1e-12).
GRADIENT_TOLERANCES = {torch.float32: 1e-1, torch.float16: 2e-1, torch.bfloat16: 3e-1}

# ResNet-50's block outputs (where the residual add+ReLU runs): channels, height/width.
RESNET50_TAILS = [(256, 56), (512, 28), (1024, 14), (2048, 7)]
# InceptionV3 module tails (branch channels, height/width); Mixed_7b's inner 3x3 pairs are separate inputs.
INCEPTION_V3_TAILS = [
    ("Mixed_5b", [64, 64, 96, 32], 35),
    ("Mixed_6b", [192, 192, 192, 192], 17),
    ("Mixed_7b", [320, 384, 384, 384, 384, 192], 8),
]
# Depthwise 3x3 layers, padding 1: (network, channels, input height/width, stride).
DEPTHWISE_LAYERS = [
    ("MobileNetV1", 32, 112, 1),
    ("MobileNetV1", 64, 112, 2),
    ("MobileNetV1", 128, 56, 1),
    ("MobileNetV1", 128, 56, 2),
    ("MobileNetV1", 256, 28, 1),
    ("MobileNetV1", 512, 14, 1),
    ("MobileNetV1", 1024, 7, 1),
    ("Xception middle", 728, 19, 1),
]
DEPTHWISE_MODES = ["fwd", "fwd+bwd"]
DEPTHWISE_VARIANTS = ["conv", "conv+bn+relu"]

# Model benchmarks: (family, model, source, image size). --quick takes the small member of each family at small
# images and leaves VGG out (its 100M-parameter classifier alone makes a training step ~1 s here); "tiny" (tests)
# smaller still.
MODEL_SETS = {
    "full": [
        ("resnet", "resnet50", "torchvision", 224),
        ("inception", "inception_v3", "torchvision", 299),
        ("xception", "legacy_xception", "timm", 299),
        ("mobilenet", "mobilenetv1_100", "timm", 224),
        ("mobilenet", "mobilenet_v2", "torchvision", 224),
        ("vgg", "vgg16_bn", "torchvision", 224),
    ],
    "quick": [
        ("resnet", "resnet18", "torchvision", 48),
        ("inception", "inception_v3", "torchvision", 75),  # its smallest input
        ("xception", "legacy_xception", "timm", 48),
        ("mobilenet", "mobilenetv1_100", "timm", 48),
        ("mobilenet", "mobilenet_v2", "torchvision", 48),
    ],
    "tiny": [
        ("resnet", "resnet18", "torchvision", 32),
        ("mobilenet", "mobilenet_v2", "torchvision", 32),
    ],
}
# Forward GFLOPs per 224x224 image (for the up-front time estimate only).
MODEL_GFLOPS_224 = {"resnet18": 1.8, "resnet50": 4.1, "inception_v3": 3.2, "legacy_xception": 4.6,
                    "mobilenetv1_100": 0.58, "mobilenet_v2": 0.31, "vgg11_bn": 7.6, "vgg16_bn": 15.5}

SHAPE_SETS = {
    "full": {"add_relu": RESNET50_TAILS, "branch_concat": INCEPTION_V3_TAILS, "depthwise_conv2d": DEPTHWISE_LAYERS},
    "quick": {
        "add_relu": RESNET50_TAILS[::2],
        "branch_concat": INCEPTION_V3_TAILS[:2],
        "depthwise_conv2d": [DEPTHWISE_LAYERS[0], DEPTHWISE_LAYERS[-1]],
    },
    "tiny": {
        "add_relu": [(8, 4)],
        "branch_concat": [("tiny", [3, 5], 4)],
        "depthwise_conv2d": [("tiny", 8, 6, 1), ("tiny", 8, 7, 2)],
    },
}


@dataclass
class Case:
    """One kernel measurement: ``fused`` and ``eager`` are the timed calls (each returns a tensor or a tuple).

    ``compiled`` builds the timed call of the torch.compile baseline from a compile function (default: compile
    ``eager`` itself); ``to_eager`` maps the fused outputs onto the eager ones before the check (for example the
    gradient of a BatchNorm-folded weight onto the gradient of the raw one); ``scaled_tolerance`` makes the
    absolute tolerance relative to each output's largest magnitude (convolutions: a k x k sum, or a gradient
    summed over the batch, rounds in proportion to its terms).
    """
    op: str
    variant: str
    shape: tuple
    dtype: str
    layout: str
    fused: Callable[[], Any]
    eager: Callable[[], Any]
    bytes_moved: int
    mode: str = "fwd"
    compiled: Optional[Callable[[Callable], Callable[[], Any]]] = None
    to_eager: Optional[Callable[[Tuple[torch.Tensor, ...]], Tuple[torch.Tensor, ...]]] = None
    scaled_tolerance: bool = False


@dataclass
class Row:
    op: str
    variant: str
    shape: str
    dtype: str
    layout: str
    section: str = "kernels"
    mode: str = "fwd"
    status: str = "ok"
    fused_us: Optional[float] = None
    eager_us: Optional[float] = None
    compile_us: Optional[float] = None
    speedup_vs_eager: Optional[float] = None
    speedup_vs_compile: Optional[float] = None
    gb_per_s: Optional[float] = None
    pct_of_copy: Optional[float] = None
    compile_s: Optional[float] = None
    max_abs_err: Optional[float] = None  # kernels: fused against eager
    max_rel_err: Optional[float] = None  # models: swapped against original (see MODEL_TOLERANCES)
    # models section: images per second and peak memory (MB allocated during one call, weights not counted)
    batch: Optional[int] = None
    fused_images_per_s: Optional[float] = None
    eager_images_per_s: Optional[float] = None
    compile_images_per_s: Optional[float] = None
    fused_peak_mb: Optional[float] = None
    eager_peak_mb: Optional[float] = None
    compile_peak_mb: Optional[float] = None
    note: str = field(default="")


FAILED = ("WRONG", "error")  # statuses that make the command exit non-zero ("unavailable" does not)


# --------------------------------------------------------------------------------------------------------
# timing and memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_us(fn: Callable, min_run_time: float, warmup: int = 3, min_measurements: int = 3) -> float:
    """Median time of fn() in microseconds: warm-up calls, then torch.utils.benchmark's blocked_autorange
    (which synchronizes CUDA), topped up with single-call measurements to at least ``min_measurements``."""
    return measure_us({"fn": fn}, min_run_time, warmup=warmup, rounds=1, min_measurements=min_measurements)["fn"]


def measure_us(fns: Dict[str, Callable], min_run_time: float, warmup: int = 3, rounds: int = 3,
               min_measurements: int = 3) -> Dict[str, float]:
    """Median time in microseconds of each callable, measured in interleaved rounds (A B C A B C ...) so that a
    change of machine load hits every variant alike.

    After ``warmup`` calls, each round is a torch.utils.benchmark ``blocked_autorange`` of ``min_run_time /
    rounds`` seconds per callable (which synchronizes CUDA); a callable slower than half a round (a model's
    training step) is measured one call per round instead. Callables with fewer than ``min_measurements``
    measurements are topped up with single calls. Timers use every CPU thread torch uses (Timer's default is
    one thread).
    """
    timers, slow = {}, {}
    threads = torch.get_num_threads()
    for key, fn in fns.items():
        timers[key] = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
        for _ in range(max(warmup - 1, 0)):
            fn()
        last = timers[key].timeit(1).median if warmup > 0 else 0.0  # the last warm-up call, timed
        slow[key] = last > min_run_time / rounds / 2
    times: Dict[str, List[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, timer in timers.items():
            if slow[key]:
                times[key].append(timer.timeit(1).median)
            else:
                times[key] += list(timer.blocked_autorange(min_run_time=min_run_time / rounds).times)
    for _ in range(min_measurements):
        for key, timer in timers.items():
            if len(times[key]) < min_measurements:
                times[key].append(timer.timeit(1).median)
    return {key: statistics.median(t) * 1e6 for key, t in times.items()}


def copy_bandwidth_gbs(device: torch.device, min_run_time: float, numel: Optional[int] = None) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written) on a buffer far larger than caches."""
    n = numel or ((1 << 28) if device.type == "cuda" else (1 << 25))  # 1 GiB / 128 MiB of float32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), min_run_time)
    return 2 * src.numel() * src.element_size() / (us * 1e-6) / 1e9


@contextlib.contextmanager
def _quiet_stderr_fd():
    """Silence file descriptor 2 (the profiler's C++ logging) for the duration."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn: Callable, device: torch.device) -> Optional[float]:
    """Peak of the memory allocated during one call of fn, above what was allocated before it, in MB.

    CUDA: the caching allocator's peak statistic. CPU: torch.profiler's allocation events, summed in time order.
    None where it cannot be measured.
    """
    try:
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            _sync(device)
            return (torch.cuda.max_memory_allocated(device) - base) / 1e6
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr_fd():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
        current = peak = 0
        for _, nbytes in events:
            current += nbytes
            peak = max(peak, current)
        return peak / 1e6
    except Exception:  # noqa: BLE001 (a missing statistic never fails the run)
        return None


def _compile_time_s(call: Callable, device: torch.device) -> Tuple[float, Any]:
    start = time.perf_counter()
    out = call()
    _sync(device)
    return time.perf_counter() - start, out


# --------------------------------------------------------------------------------------------------------
# correctness gate


def _describe(e: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _as_tuple(out) -> Tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(out)


def check_close(fused_out, eager_out, dtype: torch.dtype, scaled: bool = False) -> Tuple[bool, float]:
    """(every output within the dtype's tolerance, largest absolute error). NaN/inf never pass."""
    rtol, atol = TOLERANCES[dtype]
    fused_out, eager_out = _as_tuple(fused_out), _as_tuple(eager_out)
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


# --------------------------------------------------------------------------------------------------------
# kernel cases


def _in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else t.contiguous()


def add_relu_cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int],
                   tails) -> Iterator[Case]:
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

            yield Case("add_relu", "bn+add+relu", shape, dname, layout,
                       lambda x=x, r=r, s=scale, b=bias: ops.add_relu(x, r, s, b), eager_bn_add_relu, nbytes)
            yield Case("add_relu", "add+relu", shape, dname, layout,
                       lambda x=x, r=r: ops.add_relu(x, r), eager_add_relu, nbytes)


def branch_concat_cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int],
                        tails) -> Iterator[Case]:
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
            yield Case("branch_concat", f"{name} bn+relu+cat", shape, dname, layout,
                       lambda xs=xs, s=scale, b=bias: ops.branch_concat(xs, s, b), eager, nbytes)


def _fwd_bwd(fwd: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor):
    """Forward, then the gradients of ``inputs`` for the output gradient ``grad``: (out, *grads)."""
    out = fwd(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


def _call(fn: Callable, *args) -> Callable[[], Any]:
    return lambda: fn(*args)


def _call_fwd_bwd(fwd: Callable, inputs: Sequence[torch.Tensor], grad: torch.Tensor) -> Callable[[], Any]:
    return lambda: _fwd_bwd(fwd, inputs, grad)


def depthwise_bytes(batch, channels, hw, stride, elem, mode, variant) -> int:
    """Bytes a depthwise 3x3 (padding 1) must move at least.

    fwd: input read + output written + weights (+ bias). fwd+bwd adds the backward's: output gradient read,
    input read again (weight gradient), input gradient written, weights read, weight gradient written, and for
    the ReLU variant the saved output read for its mask.
    """
    out_hw = (hw + 2 - 3) // stride + 1
    x, out, w = batch * channels * hw * hw * elem, batch * channels * out_hw * out_hw * elem, channels * 9 * elem
    bias = channels * 4 if variant != "conv" else 0
    fwd = x + out + w + bias
    if mode == "fwd":
        return fwd
    return fwd + out + 2 * x + 2 * w + (out if variant != "conv" else 0)


def depthwise_conv2d_cases(device: torch.device, dtype: torch.dtype, layout: str, batches: List[int], layers,
                           modes: Sequence[str] = DEPTHWISE_MODES) -> Iterator[Case]:
    """MobileNet/Xception depthwise 3x3 layers: PyTorch's conv2d(groups=C) (+ eval BatchNorm2d + ReLU, what
    torchvision runs) against fastblocks::depthwise_conv2d (with the BatchNorm folded into weight and bias and
    activation="relu"), forward and forward+backward (gradients of the input and of the depthwise weight)."""
    dname = DTYPE_NAMES[dtype]
    eps = 1e-5
    for batch in batches:
        for net, channels, hw, stride in layers:
            g = torch.Generator(device="cpu").manual_seed(channels * 1000 + hw * 10 + stride)

            def rnd(*size, gen=g):
                return torch.randn(*size, generator=gen)

            x = _in_layout(rnd(batch, channels, hw, hw).to(device=device, dtype=dtype), layout)
            w = (rnd(channels, 1, 3, 3) / 3).to(device=device, dtype=dtype)
            gamma = (torch.rand(channels, generator=g) + 0.5).to(device)
            beta = rnd(channels).to(device)
            rm = (rnd(channels) * 0.1).to(device)
            rv = (torch.rand(channels, generator=g) + 0.5).to(device)
            scale = gamma * torch.rsqrt(rv + eps)
            w_folded = (w.float() * scale.view(-1, 1, 1, 1)).to(dtype)
            b_folded = beta - rm * scale
            shape = (batch, channels, hw, hw)

            def eager_conv(x, w, stride=stride, channels=channels):
                return F.conv2d(x, w, None, stride, 1, 1, channels)

            def eager_conv_bn_relu(x, w, stride=stride, channels=channels, rm=rm, rv=rv, gamma=gamma, beta=beta):
                # torchvision's MobileNet block: Conv2d(groups=C, bias=False), BatchNorm2d (eval), ReLU(inplace).
                out = F.conv2d(x, w, None, stride, 1, 1, channels)
                return torch.relu_(F.batch_norm(out, rm, rv, gamma, beta, False, 0.0, eps))

            def fused_conv(x, w, stride=stride):
                return ops.depthwise_conv2d(x, w, None, stride, 1)

            def fused_conv_bn_relu(x, w, stride=stride, b=b_folded):
                return ops.depthwise_conv2d(x, w, b, stride, 1, activation="relu")

            with torch.no_grad():
                grad = torch.randn_like(eager_conv(x, w))  # the output's shape and memory format
                # A pre-activation within rounding of the ReLU's kink can land on either side in the fused and the
                # eager code (BN folded into the weights rounds differently), flipping that output's gradient
                # mask: its incoming gradient is zeroed so the gate compares only what the math determines (the
                # timing does not depend on the values).
                pre = F.batch_norm(eager_conv(x, w).float(), rm, rv, gamma, beta, False, 0.0, eps)
                kink = (1e-4 if dtype == torch.float32 else 2e-2) * pre.abs().max()
                grad = grad.masked_fill(pre.abs() < kink, 0)
            for mode in modes:
                for variant in DEPTHWISE_VARIANTS:
                    bn = variant != "conv"
                    eager_fwd = eager_conv_bn_relu if bn else eager_conv
                    fused_fwd = fused_conv_bn_relu if bn else fused_conv
                    fused_w = w_folded if bn else w
                    nbytes = depthwise_bytes(batch, channels, hw, stride, x.element_size(), mode, variant)
                    label = f"{net} 3x3/s{stride} {variant}"
                    if mode == "fwd":
                        yield Case("depthwise_conv2d", label, shape, dname, layout, _call(fused_fwd, x, fused_w),
                                   _call(eager_fwd, x, w), nbytes, mode,
                                   compiled=lambda compile, f=eager_fwd, x=x, w=w: _call(compile(f), x, w),
                                   scaled_tolerance=True)
                        continue
                    xg = x.detach().clone().requires_grad_()
                    wg = w.detach().clone().requires_grad_()
                    fused_wg = fused_w.detach().clone().requires_grad_()
                    # The gradient of the folded weight w * scale, mapped back onto the raw weight's.
                    to_eager = ((lambda outs, s=scale: (outs[0], outs[1], outs[2].float() * s.view(-1, 1, 1, 1)))
                                if bn else None)
                    yield Case("depthwise_conv2d", label, shape, dname, layout,
                               _call_fwd_bwd(fused_fwd, (xg, fused_wg), grad),
                               _call_fwd_bwd(eager_fwd, (xg, wg), grad), nbytes, mode,
                               compiled=lambda compile, f=eager_fwd, inputs=(xg, wg), g=grad:
                                   _call_fwd_bwd(compile(f), inputs, g),
                               to_eager=to_eager, scaled_tolerance=True)


OP_CASES = {"add_relu": add_relu_cases, "branch_concat": branch_concat_cases,
            "depthwise_conv2d": depthwise_conv2d_cases}


def plan_op(op: str, batches: List[int], shapes, elem: int) -> List[Tuple[str, int]]:
    """(mode, bytes moved) of every case ``OP_CASES[op]`` yields, without allocating anything."""
    plan = []
    for batch in batches:
        for shape in shapes:
            if op == "add_relu":
                channels, hw = shape
                plan += [("fwd", 3 * batch * channels * hw * hw * elem)] * 2
            elif op == "branch_concat":
                _, channels, hw = shape
                plan.append(("fwd", 2 * batch * sum(channels) * hw * hw * elem))
            else:
                _, channels, hw, stride = shape
                plan += [(m, depthwise_bytes(batch, channels, hw, stride, elem, m, v))
                         for m in DEPTHWISE_MODES for v in DEPTHWISE_VARIANTS]
    return plan


def run_case(case: Case, device: torch.device, copy_gbs: float, min_run_time: float, use_compile: bool) -> Row:
    row = Row(case.op, case.variant, "x".join(map(str, case.shape)), case.dtype, case.layout, mode=case.mode)
    dtype = DTYPES[case.dtype]
    try:
        fused_out, eager_out = _as_tuple(case.fused()), _as_tuple(case.eager())
    except Exception as e:  # noqa: BLE001
        row.status = "error"
        row.note = _describe(e)
        return row
    if case.to_eager is not None:
        fused_out = case.to_eager(fused_out)
    ok, row.max_abs_err = check_close(fused_out, eager_out, dtype, case.scaled_tolerance)
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
            row.compile_s, compiled_out = _compile_time_s(compiled, device)
            if not check_close(compiled_out, eager_out, dtype, case.scaled_tolerance)[0]:
                row.note = "torch.compile result differs from eager"
            calls["compile"] = compiled
        except Exception as e:  # noqa: BLE001 (a failing baseline is reported, not fatal)
            row.note = f"torch.compile failed: {_describe(e)}"
    us = measure_us(calls, min_run_time)
    row.fused_us, row.eager_us, row.compile_us = us["fused"], us["eager"], us.get("compile")
    row.speedup_vs_eager = row.eager_us / row.fused_us
    if row.compile_us is not None:
        row.speedup_vs_compile = row.compile_us / row.fused_us
    row.gb_per_s = case.bytes_moved / (row.fused_us * 1e-6) / 1e9
    row.pct_of_copy = 100.0 * row.gb_per_s / copy_gbs
    return row


# --------------------------------------------------------------------------------------------------------
# models


def swap_function() -> Tuple[Optional[Callable], str]:
    """(pyfastblocks.swap's function, "") where it can be imported; (None, why not) otherwise."""
    try:
        module = importlib.import_module("pyfastblocks.swap")
    except Exception as e:  # noqa: BLE001 (ImportError, or an error inside a module being written)
        return None, f"pyfastblocks.swap is not importable ({type(e).__name__}: {e})"
    fn = getattr(module, "swap", None)
    if not callable(fn):
        fn = getattr(pyfastblocks, "swap", None)
    if not callable(fn):
        return None, "pyfastblocks.swap has no swap() function"
    return fn, ""


def apply_swap(swap: Callable, model: torch.nn.Module) -> Tuple[torch.nn.Module, str]:
    """(swapped model, swap's report as text): ``swap(model, inplace=True, report=True)`` where swap takes those
    arguments, else ``swap(model)``; anything swap prints is kept in the report too."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            out = swap(model, inplace=True, report=True)
        except TypeError:
            out = swap(model)
    text = buffer.getvalue()
    if isinstance(out, tuple):
        out, rep = out
        text = (text + str(rep)).strip()
    return out, text


def build_model(name: str, source: str) -> torch.nn.Module:
    """A randomly initialized torchvision or timm model (no download)."""
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    import torchvision

    kwargs = {"weights": None}
    if name == "inception_v3":
        kwargs.update(aux_logits=False, init_weights=False)
    return getattr(torchvision.models, name)(**kwargs)


def _logits(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        return math.inf
    err = (a - b).abs().max().item()
    return err / max(b.abs().max().item(), 1e-12) if not math.isnan(err) else math.inf


def _eval_call(model, x):
    def call():
        with torch.no_grad():
            return _logits(model(x))
    return call


def _train_step(model, params, x, labels):
    """One SGD step: forward, cross-entropy, backward, update; gradients freed at the end (set_to_none)."""
    opt = torch.optim.SGD(params, lr=1e-4)

    def step():
        out = _logits(model(x))
        loss = F.cross_entropy(out.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out
    return step


class _NotFinite(Exception):
    pass


def _require_finite(t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise _NotFinite()


def _train_errors(original, swapped, x, labels) -> Tuple[float, Optional[float]]:
    """One forward+backward of each model (same dropout draws): (relative error of the outputs, relative error of
    the gradients of the parameters both models name alike, taken as one vector; None where no name is shared).

    One vector, not per tensor: per tensor it would be meaningless for gradients that are zero in exact
    arithmetic, such as the bias of a BatchNorm whose output only feeds convolutions and training-mode BatchNorms.
    """
    grads, outs = [], []
    for model in (original, swapped):
        torch.manual_seed(0)
        out = _logits(model(x))
        F.cross_entropy(out.float(), labels).backward()
        if model is original:
            _require_finite(out)
        outs.append(out.detach())
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    out_err = _relative_error(outs[1], outs[0])
    common = [n for n in grads[0] if n in grads[1] and grads[1][n].shape == grads[0][n].shape]
    if not common:
        return out_err, None
    diff = math.sqrt(sum((grads[1][n].double() - grads[0][n].double()).pow(2).sum().item() for n in common))
    norm = math.sqrt(sum(grads[0][n].double().pow(2).sum().item() for n in common))
    grad_err = diff / max(norm, 1e-30)
    return out_err, (math.inf if math.isnan(grad_err) else grad_err)


def _check_train(original, swapped, x, labels, dtype) -> Tuple[bool, float, str]:
    """Is one training step of the swapped model the original's? (ok, worst error, what is off or not compared).

    Outputs within ``MODEL_TOLERANCES``, gradients within ``GRADIENT_TOLERANCES`` (loose: training-mode BatchNorm
    amplifies rounding differences in the gradients of some random-init models to a few % in fp32, while a wrong
    kernel or a dropped gradient path is off by far more. In float64 the swapped models tested here match their
    originals to 1e-12, gradients included: the exactness of the swap is the test suite's job, too slow here).
    """
    out_err, grad_err = _train_errors(original, swapped, x, labels)
    problems = []
    if not out_err <= MODEL_TOLERANCES[dtype]:
        problems.append(f"outputs {out_err:.3g} (tolerance {MODEL_TOLERANCES[dtype]:g})")
    if grad_err is not None and not grad_err <= GRADIENT_TOLERANCES[dtype]:
        problems.append(f"gradients {grad_err:.3g} (tolerance {GRADIENT_TOLERANCES[dtype]:g})")
    note = "; ".join(problems)
    if grad_err is None:
        note = (note + "; " if note else "") + "gradients not compared (no parameter names in common)"
    return not problems, max(out_err, grad_err or 0.0), note


def run_model(family: str, name: str, source: str, image: int, batch: int, device: torch.device, dtype: torch.dtype,
              layout: str, swap: Callable, min_run_time: float, use_compile: bool, report: Dict[str, str],
              progress: Optional["_Progress"] = None, warmup: int = 2) -> List[Row]:
    """The eval and train rows of one model: swapped vs eager vs torch.compile of the original.

    The original is a randomly initialized torchvision/timm model in ``dtype`` and ``layout``; the swapped one is
    ``swap(deepcopy(original))``. eval: one forward under no_grad. train: one SGD step (forward, cross-entropy,
    backward, update). Each mode is checked first (outputs, and for train the gradients of the parameters
    both models name alike), then timed; peak memory is what one call allocates above what was allocated before.
    """
    dname = DTYPE_NAMES[dtype]
    shape = f"{batch}x3x{image}x{image}"
    rows = [Row(family, name, shape, dname, layout, section="models", mode=m, batch=batch) for m in ("eval", "train")]
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    tol = MODEL_TOLERANCES[dtype]

    def done(row):
        if progress is not None:
            progress.step()

    if progress is not None:
        progress.label(f"{name} build + swap")
    try:
        torch.manual_seed(0)
        original = build_model(name, source).to(device=device, dtype=dtype, memory_format=memory_format)
        swapped, report[name] = apply_swap(swap, copy.deepcopy(original))
        swapped = swapped.to(device=device, dtype=dtype, memory_format=memory_format)
    except Exception as e:  # noqa: BLE001
        for r in rows:
            r.status, r.note = "error", f"build/swap failed: {_describe(e)}"
            done(r)
        return rows
    x = _in_layout(torch.randn(batch, 3, image, image, device=device, dtype=dtype), layout)
    labels = torch.randint(0, 1000, (batch,), device=device)

    for row in rows:
        train = row.mode == "train"
        if progress is not None:
            progress.label(f"{name} {row.mode} {shape}")
        try:
            original.train(train)
            swapped.train(train)
            if train:
                ok, err, problems = _check_train(original, swapped, x, labels, dtype)
            else:
                reference = _eval_call(original, x)()
                _require_finite(reference)
                err = _relative_error(_eval_call(swapped, x)(), reference)
                ok = err <= tol
                problems = f"outputs {err:.3g} (tolerance {tol:g})"
            row.max_rel_err = err
            if not ok:
                row.status = "WRONG"
                row.note = f"swapped model differs from the original ({problems}): not timed"
                done(row)
                continue
            row.note = problems if train else ""  # a train note here only says what was not compared

            def make(model, owner):
                # A compiled model is called; the parameters it updates are its original's (owner's).
                if train:
                    return _train_step(model, [p for p in owner.parameters() if p.requires_grad], x, labels)
                return _eval_call(model, x)

            calls = {"fused": make(swapped, swapped), "eager": make(original, original)}
            if use_compile:
                try:
                    torch._dynamo.reset()
                    calls["compile"] = make(torch.compile(original), original)
                    row.compile_s, _ = _compile_time_s(calls["compile"], device)
                except Exception as e:  # noqa: BLE001
                    calls.pop("compile", None)
                    row.note = f"torch.compile failed: {_describe(e)}"
            us = measure_us(calls, min_run_time, warmup=warmup)
            for key, t in us.items():
                setattr(row, f"{key}_us", t)
                setattr(row, f"{key}_images_per_s", batch / (t * 1e-6))
                setattr(row, f"{key}_peak_mb", peak_memory_mb(calls[key], device))
            row.speedup_vs_eager = row.eager_us / row.fused_us
            if row.compile_us is not None:
                row.speedup_vs_compile = row.compile_us / row.fused_us
        except _NotFinite:
            row.status = "error"
            row.note = f"the original model's output is not finite in {dname} (random weights): nothing to compare"
        except Exception as e:  # noqa: BLE001
            row.status, row.note = "error", _describe(e)
        done(row)
    torch._dynamo.reset()
    return rows


def select_models(model_set, wanted: Optional[List[str]]):
    if not wanted:
        return list(model_set)
    if wanted == ["none"]:
        return []
    return [m for m in model_set if m[0] in wanted or m[1] in wanted]


# --------------------------------------------------------------------------------------------------------
# environment, estimate, output


def other_cpu_load(seconds: float = 0.5) -> Optional[float]:
    """How many cores other processes keep busy, from /proc/stat over ``seconds`` while this one sleeps (None
    where /proc/stat is missing)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:  # noqa: BLE001
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    env = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "device_type": device.type,
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyfastblocks": pyfastblocks.build_info(),
        "commit": _git_commit(),
        "command": " ".join(["pyfastblocks-bench"] + sys.argv[1:]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
    return env


def format_environment(env: dict) -> str:
    build = env["pyfastblocks"]
    if env["device_type"] == "cuda":
        device = (f"- device: {env['device']} (cuda, {env.get('gpu_memory_gib')} GiB, sm {env.get('gpu_capability')}); "
                  f"host CPU {env['cpu']}")
    else:
        threads = env["cpu_threads"]
        device = f"- device: {env['device']} (cpu, {threads} torch thread{'s' if threads != 1 else ''})"
        if env.get("threads_note"):
            device += f"; {env['threads_note']}"
    lines = [
        device,
        f"- torch {env['torch']}, CUDA {env['cuda']} (available: {env['cuda_available']}), Python {env['python']}",
        f"- pyfastblocks {build.get('version')}: built with torch {build.get('torch_version')}, CUDA kernels "
        f"{'compiled for ' + str(build.get('cuda_archs')) if build.get('cuda_compiled') else 'not compiled'}, "
        f"CPU kernels {build.get('cpu_kernels')} (ATen {build.get('cpu_capability')})",
        f"- date {env['date']}, commit {env.get('commit') or 'unknown'}",
        f"- command: {env.get('command', '')}",
    ]
    return "\n".join(lines)


def estimate_seconds(kernel_plan: List[Tuple[str, int]], model_runs: List[Tuple[str, int, int]],
                     device: torch.device, copy_gbs: float, min_run_time: float, use_compile: bool,
                     model_compile: bool, model_warmup: int = 2) -> Dict[str, float]:
    """A rough wall-time estimate: timing (from the bytes each case moves at the measured copy bandwidth, and
    each model's FLOPs) and torch.compile (per graph, from compile times seen on a 2-core CPU and an H100/H200
    with a cold inductor cache; a warm cache is much faster)."""
    cuda = device.type == "cuda"
    timing = compile_s = 0.0
    for mode, nbytes in kernel_plan:
        call = nbytes / (copy_gbs * 1e9) * (4 if mode == "fwd+bwd" else 1) + (2e-5 if cuda else 1e-4)
        variants = 3 if use_compile else 2
        # check + warm-up (3) + 3 rounds of blocked_autorange (calibration + timing) per variant
        timing += 2 * call + variants * (3 * call + min_run_time + 3 * (2 * call + 0.01))
        if use_compile:
            compile_s += {("fwd", False): 2.0, ("fwd+bwd", False): 3.0, ("fwd", True): 3.0,
                          ("fwd+bwd", True): 6.0}[(mode, cuda)]
    if kernel_plan and use_compile:
        compile_s += 15.0  # the first compile of a process (inductor's own start-up)
    gflops_device, overhead = (8000.0, 0.01) if cuda else (60.0, 0.01)  # sustained conv-net GFLOP/s, per call s
    for name, image, batch in model_runs:  # (model name, image size, batch)
        fwd = MODEL_GFLOPS_224.get(name, 5.0) * (image / 224) ** 2 * batch / gflops_device + overhead
        timing += 3.0  # build, copy, swap
        for call in (fwd, 3 * fwd):  # eval, train
            variants = 3 if model_compile else 2
            # check (2 calls) + per variant: warm-up, 3 rounds (calibration + timing), peak memory (profiled: ~2x)
            timing += 2 * call + variants * ((model_warmup + 6 + 2) * call + min_run_time)
            if model_compile:
                compile_s += (40.0 if call == fwd else 70.0) * (1.5 if cuda else 1.0)
    return {"timing_s": timing, "compile_s": compile_s, "total_s": timing + compile_s}


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


def format_models_table(rows: List[Row]) -> str:
    """The models table: images/s of the swapped model, eager and compiled original; peak MB per call."""
    model_rows = [r for r in rows if r.section == "models"]
    if not model_rows:
        return ""
    header = ["family", "model", "mode", "input", "dtype", "layout", "swapped img/s", "eager img/s",
              "compile img/s", "x eager", "x compile", "peak MB swapped", "peak MB eager", "peak MB compile",
              "compile s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in model_rows:
        if r.status != "ok":
            lines.append(f"| {r.op} | {r.variant} | {r.mode} | {r.shape} | {r.dtype} | {r.layout} | "
                         f"{r.status}: {r.note} |")
            continue
        lines.append("| " + " | ".join([
            r.op, r.variant, r.mode, r.shape, r.dtype, r.layout, _fmt(r.fused_images_per_s, ".1f"),
            _fmt(r.eager_images_per_s, ".1f"), _fmt(r.compile_images_per_s, ".1f"),
            _fmt(r.speedup_vs_eager, ".2f", True), _fmt(r.speedup_vs_compile, ".2f", True),
            _fmt(r.fused_peak_mb, ".0f"), _fmt(r.eager_peak_mb, ".0f"), _fmt(r.compile_peak_mb, ".0f"),
            _fmt(r.compile_s, ".1f"),
        ]) + (f" {r.note}" if r.note else "") + " |")
    return "\n".join(lines)


def format_report(env: dict, rows: List[Row], copy_gbs: float, summary: Dict[str, Any]) -> str:
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


def _short_label(r: Row) -> str:
    if r.section == "models":
        return f"{r.variant} {r.mode} {r.shape}"
    return f"{r.op} {r.variant} {r.mode} {r.shape}"


def write_charts(rows: List[Row], copy_gbs: float, out_dir: str) -> List[str]:
    """speedup_kernels.png, speedup_models.png (x eager and x compile per row, line at 1) and bandwidth.png
    (GB/s per kernel row against the measured copy bandwidth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def speedup_chart(selected, title, path):
        fig, ax = plt.subplots(figsize=(10, 1.5 + 0.32 * max(1, len(selected))))
        if selected:
            ys = list(range(len(selected)))
            eager = [r.speedup_vs_eager or 0.0 for r in selected]
            comp = [r.speedup_vs_compile or 0.0 for r in selected]
            if any(r.speedup_vs_compile is not None for r in selected):
                ax.barh([y - 0.2 for y in ys], eager, height=0.4, label="x eager")
                ax.barh([y + 0.2 for y in ys], comp, height=0.4, label="x torch.compile")
            else:
                ax.barh(ys, eager, height=0.6, label="x eager (torch.compile not run)")
            ax.set_yticks(ys)
            ax.set_yticklabels([_short_label(r) for r in selected], fontsize=7)
            ax.invert_yaxis()
            ax.axvline(1.0, color="black", linewidth=1)
            ax.set_xlabel("speedup of pyfastblocks (higher is better; 1 = same speed)")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no timed rows", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        ax.set_title(title)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    kernels = [r for r in rows if r.section == "kernels" and r.status == "ok"]
    models = [r for r in rows if r.section == "models" and r.status == "ok"]
    speedup_chart(kernels, "kernels: speedup per op and shape", os.path.join(out_dir, "speedup_kernels.png"))
    speedup_chart(models, "models: swapped model speedup (images/s)", os.path.join(out_dir, "speedup_models.png"))

    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.32 * max(1, len(kernels))))
    if kernels:
        ys = list(range(len(kernels)))
        ax.barh(ys, [r.gb_per_s for r in kernels], height=0.6, label="pyfastblocks GB/s")
        ax.set_yticks(ys)
        ax.set_yticklabels([_short_label(r) for r in kernels], fontsize=7)
        ax.invert_yaxis()
        ax.axvline(copy_gbs, color="red", linestyle="--", label=f"copy bandwidth {copy_gbs:.0f} GB/s")
        ax.set_xlabel("GB/s (bytes moved at least / fused time)")
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no timed rows", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title("kernels: bandwidth against a device-to-device copy")
    path = os.path.join(out_dir, "bandwidth.png")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
    return written


def write_rows(out_dir: str, env: dict, rows: List[Row], copy_gbs: float, summary: Dict[str, Any]) -> List[str]:
    """results.json (environment, settings, every row) and results.csv (every row)."""
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
        writer = csv.DictWriter(f, fieldnames=[fld for fld in Row.__dataclass_fields__])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    os.replace(path + ".tmp", path)
    paths.append(path)
    return paths


def write_outputs(out_dir: str, env: dict, rows: List[Row], copy_gbs: float, summary: Dict[str, Any]) -> List[str]:
    """results.json, results.csv, results.md and the PNG charts."""
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


# --------------------------------------------------------------------------------------------------------
# command line


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
    p = argparse.ArgumentParser(prog="pyfastblocks-bench", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--sections", nargs="+", default=["kernels", "models"], choices=["kernels", "models"],
                   help="what to run (default: both)")
    p.add_argument("--ops", nargs="+", default=list(OP_CASES), choices=list(OP_CASES), help="ops to benchmark")
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
                   help="write results.csv, results.json, results.md and PNG charts into this folder")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    p.add_argument("--shapes", default=None, choices=sorted(SHAPE_SETS), help=argparse.SUPPRESS)  # tests: "tiny"
    return p.parse_args(argv)


def main(argv=None) -> int:
    """The command: returns 0, or 1 where a case gave a wrong result or an error. Leaves torch's thread count
    and random state as it found them."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    rng_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=rng_devices):
            return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args) -> int:
    t_start = time.perf_counter()
    if args.device and torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("pyfastblocks-bench: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
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
    shapes = SHAPE_SETS[shape_set]
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.3)
    use_compile = not args.no_compile
    model_compile = use_compile and (args.model_compile or not (args.quick or shape_set != "full"))

    def dtypes_for(op):
        if args.dtype:
            return [DTYPES[d] for d in args.dtype]
        if not cuda:
            return [torch.float32]
        return [torch.float16, torch.bfloat16] if op == "depthwise_conv2d" else [torch.float16]

    def batches_for(op):
        if args.batch:
            return args.batch
        if op == "depthwise_conv2d":
            return [64 if cuda else 8]
        if op == "models":
            # Training-mode BatchNorm over fewer than ~4 samples of 1x1-2x2 maps is too ill-conditioned to compare.
            return [(8 if cuda else 4) if args.quick or shape_set != "full" else (64 if cuda else 8)]
        return [8] if args.quick or shape_set != "full" else [32, 64]

    env = environment(device)
    if threads_note:
        env["threads_note"] = threads_note
    print(f"pyfastblocks-bench on {env['device']} ({device})")
    print(format_environment(env))
    copy_gbs = copy_bandwidth_gbs(device, min_run_time, numel=(1 << 20) if shape_set == "tiny" else None)
    print(f"copy bandwidth: {copy_gbs:.1f} GB/s (read + write)")

    run_kernels = "kernels" in args.sections
    run_models = "models" in args.sections
    kernel_plan, op_plans = [], []
    if run_kernels:
        for op in args.ops:
            for dtype in dtypes_for(op):
                plan = plan_op(op, batches_for(op), shapes[op], torch.empty((), dtype=dtype).element_size())
                op_plans.append((op, dtype, plan))
                kernel_plan += plan
    swap, why_no_swap = swap_function() if run_models else (None, "")
    model_list = select_models(MODEL_SETS[shape_set], args.models) if run_models else []
    model_dtypes = dtypes_for("models")
    model_batches = batches_for("models")
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
        return 0

    rows: List[Row] = []
    swap_reports: Dict[str, str] = {}
    settings = {"device": str(device), "layout": layout, "shapes": shape_set, "quick": args.quick,
                "min_run_time": min_run_time, "compile": use_compile, "model_compile": model_compile,
                "threads": torch.get_num_threads(), "sections": args.sections, "ops": args.ops}

    def partial():  # rows so far, so that a run cut short (a timeout) still leaves its results
        if args.out:
            write_rows(args.out, env, rows, copy_gbs, {"settings": settings, "estimate": est, "complete": False,
                                                        "elapsed_s": time.perf_counter() - t_start,
                                                        "compile_total_s": sum(r.compile_s or 0.0 for r in rows),
                                                        "swap_reports": swap_reports})

    progress = _Progress(len(kernel_plan) + 2 * len(model_runs))
    try:
        for op, dtype, plan in op_plans:
            for case in OP_CASES[op](device, dtype, layout, batches_for(op), shapes[op]):
                progress.label(f"{case.op} {case.variant} {case.mode} {'x'.join(map(str, case.shape))}")
                rows.append(run_case(case, device, copy_gbs, min_run_time, use_compile))
                progress.step()
                partial()
        for (family, name, source, image), dtype, batch in model_runs:
            rows += run_model(family, name, source, image, batch, device, dtype, layout, swap, min_run_time,
                              model_compile, swap_reports, progress, warmup=model_warmup)
            partial()
    finally:
        progress.close()
    if run_models and not swap:
        rows.append(Row("models", "-", "-", "-", layout, section="models", mode="-", status="unavailable",
                        note=why_no_swap))
    elif run_models and swap and not model_compile and use_compile:
        for r in rows:
            if r.section == "models" and r.status == "ok" and not r.note:
                r.note = "(not compiled in a short run)"

    elapsed = time.perf_counter() - t_start
    summary = {
        "settings": settings,
        "estimate": est,
        "complete": True,
        "elapsed_s": elapsed,
        "compile_total_s": sum(r.compile_s or 0.0 for r in rows),
        "swap_reports": swap_reports,
    }
    print()
    print(format_report(env, rows, copy_gbs, summary))
    if args.out:
        paths = write_outputs(args.out, env, rows, copy_gbs, summary)
        print(f"wrote {', '.join(os.path.basename(p) for p in paths)} to {args.out}")
    failed = [r for r in rows if r.status in FAILED]
    if failed:
        print(f"{len(failed)} case(s) gave a wrong result or an error: no speed reported for them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
