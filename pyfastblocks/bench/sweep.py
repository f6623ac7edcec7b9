"""The zoo sweep: every torchvision classification builder and a list of common timm CNNs, each built at a small
input, swapped, checked (eval outputs equal the original's, NCHW and channels_last) and counted: the eager
BatchNorm / activation / residual-add / concat passes the model runs before and after :func:`pyfastblocks.swap`.

Run it as ``python -m pyfastblocks.bench --sections sweep`` or ``python -m pyfastblocks.bench.sweep`` (``--help``
for the options: ``--models`` picks models by name, ``--quick`` a few small ones). It prints one row per model and
the totals over the models that have BatchNorm (before -> after per kind, and the share removed); ``--json``
writes the rows.

What counts as a pass (:class:`PassCounter`, a ``TorchDispatchMode`` below autograd: it sees each ATen op a
forward runs, and each ``fastblocks`` op as one call, not the ATen ops inside it):

- ``bn``: an eager BatchNorm (``aten._native_batch_norm_legit_no_training`` and its siblings);
- ``act``: an activation (ReLU, ReLU6/hardtanh, SiLU, Hardswish, GELU, LeakyReLU, sigmoid, ...) on a feature map,
  a 4-d tensor with more than one spatial element (squeeze-excitation gates on 1x1 maps are not counted);
- ``add``: an add of two feature maps of one shape (a residual add);
- ``cat``: a concatenation of feature maps along the channels;
- ``gate`` (shown, not a goal): a feature map times a per-(sample, channel) ``[N, C, 1, 1]`` tensor (the
  squeeze-excitation gate).

Models are built with ``num_classes=10`` and random weights (nothing is downloaded); every BatchNorm gets random
running statistics and affine parameters, so a fused tail that ignores one shows in the outputs.
"""
import argparse
import copy
import gc
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .gate import logits, relative_error

__all__ = ["KINDS", "PassCounter", "SweepRow", "count_passes", "main", "run_sweep", "sweep_model", "totals",
           "format_rows", "format_totals", "timm_models", "torchvision_models"]

KINDS = ("bn", "act", "add", "cat")
EXTRA_KINDS = ("gate",)

# timm CNNs in the sweep: the common families with BatchNorm (ResNet variants, DenseNet, RegNet, the EfficientNet /
# MobileNet family, Res2Net, Inception, Xception, DLA, DPN, CSP/DarkNet, VoVNet, HRNet, GhostNet, ReXNet, ...)
TIMM_MODELS = (
    "resnet18", "resnet50", "resnet50d", "resnext50_32x4d", "seresnet50", "ecaresnet50d", "skresnet18",
    "res2net50_26w_4s", "res2next50", "densenet121", "regnetx_002", "regnety_002", "efficientnet_b0",
    "tf_efficientnet_b0", "efficientnetv2_rw_t", "mobilenetv2_100", "mobilenetv3_large_100",
    "mobilenetv3_small_100", "mobilenetv1_100", "mnasnet_100", "tinynet_a", "lcnet_050", "mixnet_s", "fbnetc_100",
    "spnasnet_100", "ghostnet_100", "rexnet_100", "dla34", "dpn68", "darknet53", "cspdarknet53", "cspresnet50",
    "ese_vovnet19b_dw", "hrnet_w18_small", "selecsls42b", "inception_v3", "inception_v4", "inception_resnet_v2",
    "legacy_xception", "xception41",
)
# a few small models of several families (the tests' subset)
QUICK_MODELS = (("torchvision", "densenet121"), ("torchvision", "efficientnet_b0"),
                ("torchvision", "mobilenet_v3_small"), ("torchvision", "regnet_y_400mf"),
                ("torchvision", "googlenet"), ("timm", "efficientnet_b0"), ("timm", "res2net50_26w_4s"),
                ("timm", "inception_v4"))

DEFAULT_IMAGE = 64
# models that need a larger input (their smallest), or fixed-size ones built for the sweep's size
MIN_IMAGE = {"inception_v3": 75, "inception_v4": 75, "inception_resnet_v2": 75, "maxvit_t": 224,
             "legacy_xception": 71, "xception41": 64}
# builders with an image_size argument: built for the sweep's input instead of 224
SIZED_BUILDERS = {"vit_b_16": 64, "vit_b_32": 64, "vit_l_16": 64, "vit_l_32": 64, "vit_h_14": 56}

TOLERANCE = 1e-3  # max |swapped - original| / max |original|, float32 (the bench's model tolerance)

_ACTIVATIONS = {
    "relu", "relu_", "hardtanh", "hardtanh_", "silu", "silu_", "hardswish", "hardswish_", "gelu", "gelu_",
    "leaky_relu", "leaky_relu_", "elu", "elu_", "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "tanh",
    "tanh_", "mish", "mish_", "softplus", "clamp_min", "clamp_min_", "clamp", "clamp_", "_prelu_kernel", "celu",
    "celu_", "selu", "selu_", "threshold", "threshold_",
}


def _feature_map(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[2] * t.shape[3] > 1


class PassCounter(TorchDispatchMode):
    """Counts the eager passes of :data:`KINDS` (and ``gate``) a forward runs, and the ``fastblocks`` ops it calls
    (``counts["fastblocks"]``). Use as a context manager around the forward."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = self.kind(func, args, kwargs)
        if kind is not None:
            self.counts[kind] += 1
        return func(*args, **kwargs)

    @staticmethod
    def kind(func, args, kwargs) -> Optional[str]:
        namespace = func.namespace
        if namespace == "fastblocks":
            return "fastblocks"
        if namespace != "aten":
            return None
        name = func.__name__.split(".")[0]
        if "batch_norm" in name and not name.startswith("batch_norm_") and "backward" not in name:
            return "bn"
        if name in _ACTIVATIONS:
            return "act" if args and _feature_map(args[0]) else None
        if name in ("add", "add_"):
            a, b = args[0], args[1] if len(args) > 1 else None
            if _feature_map(a) and isinstance(b, torch.Tensor) and b.shape == a.shape:
                return "add"
            return None
        if name == "cat":
            tensors = args[0]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if len(tensors) > 1 and all(_feature_map(t) for t in tensors) and dim in (1, -3):
                return "cat"
            return None
        if name in ("mul", "mul_") and len(args) > 1:
            a, b = args[0], args[1]
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == 4 and b.dim() == 4:
                big, small = (a, b) if a.numel() >= b.numel() else (b, a)
                if _feature_map(big) and small.shape[2:] == (1, 1) and small.shape[1] == big.shape[1] > 1:
                    return "gate"
        return None


def count_passes(model: nn.Module, x: torch.Tensor) -> Tuple[Counter, object]:
    """(counts, output) of one no-grad forward of ``model`` on ``x``."""
    with torch.no_grad(), PassCounter() as counter:
        out = model(x)
    return counter.counts, out


# --------------------------------------------------------------------------------------------------------------
# Models


def torchvision_models() -> List[str]:
    import torchvision
    return list(torchvision.models.list_models(module=torchvision.models))


def timm_models() -> List[str]:
    return list(TIMM_MODELS)


def image_size(name: str, image: int) -> int:
    """The input size ``name`` runs at: the sized builders' own (a multiple of their patch), else ``image`` raised
    to the model's minimum."""
    if name in SIZED_BUILDERS and image < 224:
        return min(SIZED_BUILDERS[name], image)
    return max(image, MIN_IMAGE.get(name, 0))


def build(source: str, name: str, image: int) -> nn.Module:
    """The model, random weights, ``num_classes=10``."""
    if source == "torchvision":
        import torchvision
        kwargs = {"num_classes": 10}
        if name in SIZED_BUILDERS:
            kwargs["image_size"] = min(SIZED_BUILDERS[name], image) if image < 224 else image
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        return torchvision.models.get_model(name, weights=None, **kwargs)
    if source == "timm":
        import timm
        return timm.create_model(name, pretrained=False, num_classes=10)
    raise ValueError(f"sweep: unknown source {source!r} (torchvision or timm)")


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> int:
    """Random running statistics and affine parameters for every BatchNorm (their defaults are the identity);
    returns how many there are."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n += 1
                c = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return n


# float64 check (only where float32 is over TOLERANCE): equal within this, or within 10x the original's own
# float64 NCHW-vs-channels_last difference (rounding the model amplifies)
TOLERANCE_F64 = 1e-9


def float64_error(swapped: nn.Module, x: torch.Tensor) -> Tuple[float, float]:
    """(max |swapped - original| / max |original|, the same between the original's own NCHW and channels_last
    runs), in float64 (the original: a copy of ``swapped`` with the classes swap() changed set back)."""
    fused = copy.deepcopy(swapped).double()
    original = copy.deepcopy(swapped).double()
    for m in original.modules():
        base = getattr(type(m), "_fastblocks_base", None)
        if base is not None:
            m.__class__ = base
    x = x.double()
    with torch.no_grad():
        ref = logits(original(x))
        err = relative_error(logits(fused(x)), ref)
        original.to(memory_format=torch.channels_last)
        noise = relative_error(logits(original(x.contiguous(memory_format=torch.channels_last))), ref)
    return err, noise


@dataclass
class SweepRow:
    """One model of the sweep. ``before`` / ``after``: passes per kind (:data:`KINDS`, ``gate``, ``fastblocks``)
    in one eval forward of the original / the swapped model (NCHW); ``error_nchw`` / ``error_cl``: max |swapped -
    original| / max |original| (channels_last: model and input); where one is over :data:`TOLERANCE`, ``error_f64``
    (the same in float64) decides and ``eager_noise`` is the original's own NCHW-vs-channels_last difference
    (``note`` says so); ``swapped``: blocks swapped;
    ``left``: the report's "left alone" lines; ``problem``: what went wrong (an exception, outputs not equal)."""
    source: str
    name: str
    image: int
    batchnorms: int = 0
    before: Dict[str, int] = field(default_factory=dict)
    after: Dict[str, int] = field(default_factory=dict)
    error_nchw: float = math.nan
    error_cl: float = math.nan
    swapped: int = 0
    left: List[str] = field(default_factory=list)
    seconds: float = 0.0
    problem: str = ""
    error_f64: float = math.nan
    eager_noise: float = math.nan
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def has_bn(self) -> bool:
        return self.batchnorms > 0


def sweep_model(source: str, name: str, image: int = DEFAULT_IMAGE, batch: int = 2, seed: int = 0) -> SweepRow:
    """Build, count, swap (in place, after the references are taken), count and check one model."""
    import pyfastblocks

    t0 = time.perf_counter()
    size = image_size(name, image)
    row = SweepRow(source, name, size)
    try:
        torch.manual_seed(seed)
        model = build(source, name, size).eval()
        row.batchnorms = randomize_batchnorms(model, seed)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
        cl = torch.channels_last
        before, ref = count_passes(model, x)
        ref = logits(ref)
        model.to(memory_format=cl)
        with torch.no_grad():
            ref_cl = logits(model(x.contiguous(memory_format=cl)))
        model.to(memory_format=torch.contiguous_format)
        model, report = pyfastblocks.swap(model, inplace=True, report=True)
        after, out = count_passes(model, x)
        model.to(memory_format=cl)
        with torch.no_grad():
            out_cl = logits(model(x.contiguous(memory_format=cl)))
        row.before = {k: before.get(k, 0) for k in KINDS + EXTRA_KINDS + ("fastblocks",)}
        row.after = {k: after.get(k, 0) for k in KINDS + EXTRA_KINDS + ("fastblocks",)}
        row.error_nchw = relative_error(logits(out), ref)
        row.error_cl = relative_error(out_cl, ref_cl)
        row.swapped = report.total_swapped
        row.left = [f"{path.split('.')[-1]} x{n}: {reason}" for path, reasons in sorted(report.left.items())
                    for reason, n in reasons.items()]
        bad = [f"{what} {err:.2g}" for what, err in (("NCHW", row.error_nchw), ("channels_last", row.error_cl))
               if not err <= TOLERANCE]
        if bad:
            # float32 rounding that the model itself amplifies (random BatchNorms can make a deep residual network
            # ill-conditioned: its own NCHW and channels_last runs then differ as much) is not a wrong result:
            # float64 decides
            model.to(memory_format=torch.contiguous_format)
            row.error_f64, noise64 = float64_error(model, x)
            row.eager_noise = relative_error(ref_cl, ref)
            if row.error_f64 <= max(TOLERANCE_F64, 10 * noise64):
                row.note = (f"float32 differs ({', '.join(bad)}) as the original's own NCHW / channels_last runs do "
                            f"({row.eager_noise:.2g}); float64 {row.error_f64:.1e} (the original's own NCHW vs "
                            f"channels_last: {noise64:.1e})")
            else:
                row.problem = (f"outputs differ ({', '.join(bad)}; tolerance {TOLERANCE:g}; float64 "
                               f"{row.error_f64:.2g}, the original's own NCHW vs channels_last {noise64:.1e})")
    except Exception as e:  # noqa: BLE001 (one model's failure is a row, the sweep goes on)
        text = str(e).strip().splitlines()
        row.problem = f"{type(e).__name__}: {text[0] if text else ''}"[:300]
    row.seconds = time.perf_counter() - t0
    return row


def run_sweep(models: Sequence[Tuple[str, str]], image: int = DEFAULT_IMAGE, batch: int = 2,
              progress=None) -> List[SweepRow]:
    rows = []
    for source, name in models:
        if progress is not None:
            progress(source, name)
        rows.append(sweep_model(source, name, image, batch))
        gc.collect()
    return rows


# --------------------------------------------------------------------------------------------------------------
# Report


def totals(rows: Sequence[SweepRow]) -> Dict[str, Tuple[int, int]]:
    """(before, after) per kind, over the models with BatchNorm that ran."""
    out = {}
    for k in KINDS + EXTRA_KINDS:
        b = sum(r.before.get(k, 0) for r in rows if r.has_bn and r.before)
        a = sum(r.after.get(k, 0) for r in rows if r.has_bn and r.after)
        out[k] = (b, a)
    return out


def _cell(row: SweepRow, kind: str) -> str:
    if not row.before:
        return "-"
    return f"{row.before.get(kind, 0)}->{row.after.get(kind, 0)}"


def format_rows(rows: Sequence[SweepRow]) -> str:
    head = f"{'source':<11} {'model':<24} {'px':>3} {'BNs':>4} " + " ".join(f"{k:>9}" for k in KINDS + EXTRA_KINDS) \
        + f" {'swapped':>7} {'err':>8}  problem"
    lines = [head, "-" * len(head)]
    for r in rows:
        err = max(r.error_nchw, r.error_cl) if r.before else math.nan
        lines.append(f"{r.source:<11} {r.name:<24} {r.image:>3} {r.batchnorms:>4} "
                     + " ".join(f"{_cell(r, k):>9}" for k in KINDS + EXTRA_KINDS)
                     + f" {r.swapped:>7} {err:>8.1e}  {r.problem or r.note}")
    return "\n".join(lines)


def format_totals(rows: Sequence[SweepRow]) -> str:
    t = totals(rows)
    with_bn = [r for r in rows if r.has_bn]
    lines = [f"totals over the {len(with_bn)} models with BatchNorm (eval, float32, NCHW):"]
    for k in KINDS + EXTRA_KINDS:
        b, a = t[k]
        share = f"{100.0 * (b - a) / b:.1f}% removed" if b else "none before"
        lines.append(f"  {k:<5} {b:>6} -> {a:<6} {share}")
    failed = [r for r in rows if not r.ok]
    lines.append(f"{len(rows) - len(failed)} of {len(rows)} models ran with equal outputs"
                 + (f"; failed: {', '.join(f'{r.source}/{r.name}' for r in failed)}" if failed else ""))
    unfused = [f"{r.source}/{r.name}" for r in with_bn if r.ok and r.after.get("fastblocks", 0) == 0]
    if unfused:
        lines.append(f"models with BatchNorm and no fused op: {', '.join(unfused)}")
    left = [f"{r.source}/{r.name} (" + ", ".join(f"{k} {r.after[k]}" for k in KINDS if r.after.get(k)) + ")"
            for r in with_bn if r.ok and any(r.after.get(k) for k in KINDS)]
    if left:
        lines.append("models with passes left: " + "; ".join(left))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m pyfastblocks.bench.sweep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m pyfastblocks.bench.sweep                    # ALL models: every torchvision "
               "classification\n"
               "                                                        # builder + the timm list (long on a small "
               "CPU)\n"
               "  python -m pyfastblocks.bench.sweep --source timm      # only the timm list\n"
               "  python -m pyfastblocks.bench.sweep --quick            # a few small models of several families\n"
               "  python -m pyfastblocks.bench.sweep --models densenet121 timm:efficientnet_b0\n"
               "  python -m pyfastblocks.bench --sections sweep         # the same, from the bench command\n\n"
               "It prints one row per model (before->after passes per kind), then the totals over the models with "
               "BatchNorm\n(before -> after per kind, share removed), the models that failed, the models with "
               "BatchNorm and no fused op,\nand the models with passes left (--verbose: what swap() left alone in "
               "each, and why). Exit status 1 when\na model failed or gave different outputs.")
    p.add_argument("--models", nargs="+", default=None,
                   help="model names (torchvision or timm; 'timm:<name>' / 'torchvision:<name>' to pick a source); "
                        "default: every torchvision classification builder and the timm list")
    p.add_argument("--source", choices=["torchvision", "timm", "both"], default="both")
    p.add_argument("--quick", action="store_true", help="a few small models of several families")
    p.add_argument("--image", type=int, default=DEFAULT_IMAGE, help="input size (models with a minimum get it)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--json", default=None, help="write the rows and totals to this file")
    p.add_argument("--verbose", action="store_true", help="print what each swap left alone")
    return p.parse_args(argv)


def select(args) -> List[Tuple[str, str]]:
    if args.quick:
        return list(QUICK_MODELS)
    if args.models:
        out = []
        tv = set(torchvision_models())
        for m in args.models:
            if ":" in m:
                src, name = m.split(":", 1)
                out.append((src, name))
            else:
                out.append(("torchvision" if m in tv else "timm", m))
        return out
    out = []
    if args.source in ("torchvision", "both"):
        out += [("torchvision", n) for n in torchvision_models()]
    if args.source in ("timm", "both"):
        out += [("timm", n) for n in timm_models()]
    return out


def main(argv=None) -> int:
    """Runs the sweep; 0 when every model gave equal outputs, 1 otherwise."""
    args = parse_args(argv)
    models = select(args)
    print(f"pyfastblocks zoo sweep: {len(models)} models, batch {args.batch}, {args.image} px (or the model's "
          f"minimum), float32 eval, {torch.get_num_threads()} threads", flush=True)

    def progress(source, name):
        print(f"  {source}/{name} ...", file=sys.stderr, flush=True)

    rows = run_sweep(models, args.image, args.batch, progress)
    print(format_rows(rows))
    if args.verbose:
        for r in rows:
            if r.left:
                print(f"{r.source}/{r.name} left alone:")
                for line in r.left:
                    print(f"    {line}")
    print()
    print(format_totals(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [asdict(r) for r in rows],
                       "totals": {k: list(v) for k, v in totals(rows).items()}}, f, indent=1)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
