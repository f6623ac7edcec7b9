"""Eval images/s of swapped models, two pyfastblocks trees compared in ONE interleaved run (issue 14: the live
path, which folds every BatchNorm at each call, against the cached one it replaced).

Each tree runs in its own worker process (its own import of pyfastblocks); the parent asks the workers in turn,
never at once, to time a few forwards of each model, for several rounds, and reports the median images/s per tree
and their ratio. Usage:

    python benchmarks/bench_live_overhead.py --before /path/to/old/tree --after /path/to/new/tree \
        [--sizes full|quick] [--rounds 5] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = {  # name -> (source, full image size, quick image size): the bench's CPU models and sizes
    "resnet50": ("torchvision", 224, 48),
    "inception_v3": ("torchvision", 299, 75),
    "mobilenet_v2": ("torchvision", 224, 48),
    "legacy_xception": ("timm", 299, 48),
}

WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
import pyfastblocks
models = {}
def build(name, source, size, batch):
    torch.manual_seed(0)
    if source == "timm":
        import timm
        m = timm.create_model(name, num_classes=1000)
    else:
        import torchvision
        kw = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
        m = getattr(torchvision.models, name)(**kw)
    m = pyfastblocks.swap(m).eval()
    return m, torch.randn(batch, 3, size, size)
print(json.dumps({"ready": pyfastblocks.__file__}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    key = (req["name"], req["size"], req["batch"])
    if key not in models:
        models[key] = build(req["name"], req["source"], req["size"], req["batch"])
        with torch.inference_mode():
            models[key][0](models[key][1])  # warm-up
    m, x = models[key]
    times = []
    with torch.inference_mode():
        for _ in range(req["iters"]):
            t = time.perf_counter(); m(x); times.append(time.perf_counter() - t)
    print(json.dumps({"times": times}), flush=True)
"""


def start(tree, threads):
    env = dict(os.environ, PYTHONPATH=tree)
    p = subprocess.Popen([sys.executable, "-c", WORKER, str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env, cwd="/tmp")
    print(f"worker {tree}: {json.loads(p.stdout.readline())['ready']}", flush=True)
    return p


def ask(p, req):
    p.stdin.write(json.dumps(req) + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())["times"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--sizes", choices=["full", "quick"], default="full")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per tree, model and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    batch = args.batch or (8 if args.sizes == "full" else 4)
    workers = {"before": start(args.before, args.threads), "after": start(args.after, args.threads)}
    per = {(n, w): [] for n in args.models for w in workers}
    iters = {}
    for name in args.models:  # warm-up and iteration count
        source, full, quick = MODELS[name]
        size = full if args.sizes == "full" else quick
        for w, p in workers.items():
            t = ask(p, dict(name=name, source=source, size=size, batch=batch, iters=2))
        iters[name] = max(2, int(args.seconds / min(t)))
    for r in range(args.rounds):
        for name in args.models:
            source, full, quick = MODELS[name]
            size = full if args.sizes == "full" else quick
            order = list(workers) if r % 2 == 0 else list(workers)[::-1]
            for w in order:
                times = ask(workers[w], dict(name=name, source=source, size=size, batch=batch, iters=iters[name]))
                per[(name, w)].append(batch / statistics.median(times))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\n| model | input | before img/s | after img/s | after / before |\n|---|---|---|---|---|")
    for name in args.models:
        source, full, quick = MODELS[name]
        size = full if args.sizes == "full" else quick
        b, a = statistics.median(per[(name, "before")]), statistics.median(per[(name, "after")])
        print(f"| {name} | {batch}x3x{size}x{size} | {b:.1f} | {a:.1f} | {a / b:.3f} |")
    for p in workers.values():
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
