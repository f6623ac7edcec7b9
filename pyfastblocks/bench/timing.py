"""Measuring: torch.utils.benchmark medians (interleaved across variants), copy bandwidth, peak memory,
torch.compile's first-call time."""
import contextlib
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils import benchmark


def sync(device: torch.device) -> None:
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


# What a copy moved in this project's committed runs (benchmarks/results: a 2-core AMD EPYC ~40 GB/s, an H200
# ~4250 GB/s). Only --dry-run's estimate uses them, as it measures nothing.
ASSUMED_COPY_GBS = {"cpu": 40.0, "cuda": 4000.0}


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
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            sync(device)
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


def compile_time_s(call: Callable, device: torch.device) -> Tuple[float, Any]:
    """(seconds of the first call, its result): torch.compile's compile time when ``call`` is compiled."""
    start = time.perf_counter()
    out = call()
    sync(device)
    return time.perf_counter() - start, out
