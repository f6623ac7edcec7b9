"""The up-front wall-time estimate of a run (printed first, and all that --dry-run does)."""
from typing import Dict, List, Tuple

import torch

from .models import MODEL_GFLOPS_224


def estimate_seconds(kernel_plan: List[Tuple[str, int]], model_runs: List[Tuple[str, int, int]],
                     device: torch.device, copy_gbs: float, min_run_time: float, use_compile: bool,
                     model_compile: bool, model_warmup: int = 2) -> Dict[str, float]:
    """A rough wall-time estimate: timing (from the bytes each case moves at the copy bandwidth, and each model's
    FLOPs) and torch.compile (per graph, from compile times seen on a 2-core CPU and an H100/H200 with a cold
    inductor cache; a warm cache is much faster).

    ``kernel_plan``: (mode, bytes moved) per kernel case; ``model_runs``: (model name, image size, batch).
    Returns seconds: ``timing_s``, ``compile_s``, ``total_s``.
    """
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
    for name, image, batch in model_runs:
        fwd = MODEL_GFLOPS_224.get(name, 5.0) * (image / 224) ** 2 * batch / gflops_device + overhead
        timing += 3.0  # build, copy, swap
        for call in (fwd, 3 * fwd):  # eval, train
            # eval: swapped, eager, frozen (+ compile, compile with freezing); train: swapped, eager (+ compile)
            variants = (5 if model_compile else 3) if call == fwd else (3 if model_compile else 2)
            # check (2 calls) + per variant: warm-up, 3 rounds (calibration + timing), peak memory (profiled: ~2x)
            timing += 2 * call + variants * ((model_warmup + 6 + 2) * call + min_run_time)
            if call == fwd:
                timing += 1.0 + 2 * call  # freeze, and its check
            if model_compile:
                compile_s += (2 * 40.0 if call == fwd else 70.0) * (1.5 if cuda else 1.0)
    return {"timing_s": timing, "compile_s": compile_s, "total_s": timing + compile_s}
