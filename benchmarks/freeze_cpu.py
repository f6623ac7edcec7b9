"""pyfastblocks.freeze on the CPU against eager PyTorch and torch.compile: the table of issue 15.

Per model and batch, in one interleaved run (torch.utils.benchmark rounds A B C ... A B C, see
``pyfastblocks.bench.timing.measure_us``), fp32, eval, no_grad, images/s of:

- eager NCHW (the model and input as built), eager channels_last, swapped (``pyfastblocks.swap``, channels_last),
- frozen (``pyfastblocks.freeze``, channels_last), compile (``torch.compile``, channels_last) and compile+freezing
  (``torch.compile`` compiling under ``torch._inductor.config.freezing = True``, channels_last),

plus the waits before a first result (torch.compile's first call, ``freeze``), and the frozen model's error against
the original. Writes ``freeze_cpu.json`` and ``freeze_cpu.md`` into ``--out`` (default: the current folder).

    python benchmarks/freeze_cpu.py                      # the six models at batch 8 and 1 (about half an hour)
    python benchmarks/freeze_cpu.py --models resnet50 --batches 1 --no-compile
"""
import argparse
import copy
import json
import os
import sys
import time

import torch

import pyfastblocks
from pyfastblocks.bench import timing
from pyfastblocks.bench.models import CompiledWithFreezing, build_model

MODELS = {  # name: (source, image size)
    "resnet50": ("torchvision", 224),
    "inception_v3": ("torchvision", 299),
    "legacy_xception": ("timm", 299),
    "mobilenetv1_100": ("timm", 224),
    "mobilenet_v2": ("torchvision", 224),
    "efficientnet_b0": ("torchvision", 224),
}
COLUMNS = ["eager_nchw", "eager_cl", "swapped", "frozen", "compile", "compile_freezing"]
LABELS = {"eager_nchw": "eager NCHW", "eager_cl": "eager CL", "swapped": "swapped", "frozen": "frozen",
          "compile": "compile", "compile_freezing": "compile+freezing"}


def measure(name: str, batch: int, min_run_time: float, use_compile: bool) -> dict:
    source, size = MODELS[name]
    torch.manual_seed(0)
    original = build_model(name, source).eval()
    x = torch.randn(batch, 3, size, size)
    cl = torch.channels_last
    x_cl = x.contiguous(memory_format=cl)
    model_cl = copy.deepcopy(original).to(memory_format=cl)
    result = {"model": name, "batch": batch, "image": size, "threads": torch.get_num_threads()}

    start = time.perf_counter()
    frozen = pyfastblocks.freeze(original, x_cl)
    result["freeze_s"] = time.perf_counter() - start
    swapped = pyfastblocks.swap(copy.deepcopy(model_cl))
    models = {"eager_nchw": (original, x), "eager_cl": (model_cl, x_cl), "swapped": (swapped, x_cl),
              "frozen": (frozen, x_cl)}
    if use_compile:
        torch._dynamo.reset()
        models["compile"] = (torch.compile(copy.deepcopy(model_cl)), x_cl)
        models["compile_freezing"] = (CompiledWithFreezing(model_cl), x_cl)

    def call(model, inp):
        def run():
            with torch.no_grad():
                return model(inp)
        return run

    calls = {k: call(*v) for k, v in models.items()}
    with torch.no_grad():
        reference = original(x)
    for key in ("compile", "compile_freezing"):
        if key in calls:
            seconds, _ = timing.compile_time_s(calls[key], torch.device("cpu"))
            result[f"{key}_wait_s"] = seconds
    errors = {}
    for key, fn in calls.items():
        out = fn()
        errors[key] = ((out - reference).abs().max() / reference.abs().max()).item()
    result["max_rel_err"] = errors
    us = timing.measure_us(calls, min_run_time, warmup=2)
    result["images_per_s"] = {k: batch / (t * 1e-6) for k, t in us.items()}
    result["ms"] = {k: t / 1e3 for k, t in us.items()}
    return result


def markdown(results) -> str:
    header = (["model", "batch"] + [f"{LABELS[c]} img/s" for c in COLUMNS]
              + ["frozen / eager CL", "frozen / compile+freezing", "compile wait s", "compile+freezing wait s",
                 "freeze s", "frozen max rel err"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        ips = r["images_per_s"]

        def f(v, spec=".1f"):
            return "-" if v is None else format(v, spec)
        lines.append("| " + " | ".join(
            [f"{r['model']} ({r['image']} px)", str(r["batch"])] + [f(ips.get(c)) for c in COLUMNS]
            + [f(ips["frozen"] / ips["eager_cl"], ".2f"),
               f(ips["frozen"] / ips["compile_freezing"], ".2f") if "compile_freezing" in ips else "-",
               f(r.get("compile_wait_s")), f(r.get("compile_freezing_wait_s")), f(r["freeze_s"], ".2f"),
               f(r["max_rel_err"]["frozen"], ".1e")]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[8, 1])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--min-run-time", type=float, default=3.0, help="seconds of timing per variant")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=".")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    results = []
    for name in args.models:
        for batch in args.batches:
            r = measure(name, batch, args.min_run_time, not args.no_compile)
            results.append(r)
            print(json.dumps(r), flush=True)
            with open(os.path.join(args.out, "freeze_cpu.json"), "w") as f:
                json.dump({"torch": torch.__version__, "build": pyfastblocks.build_info(), "results": results}, f,
                          indent=1, default=str)
            with open(os.path.join(args.out, "freeze_cpu.md"), "w") as f:
                f.write(markdown(results) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
