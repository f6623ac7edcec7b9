"""The models section: per family, the model after ``pyfastblocks.swap`` against the original, in eval and for
one training step (SGD), as images/s and peak memory.

The columns are ``MODEL_VARIANTS``: the swapped model (``fused``), the original in eager mode, under torch.compile,
under torch.compile with Inductor's freezing (eval), and ``pyfastblocks.freeze`` of the original (eval). Another
column is one more :class:`ModelVariant` there plus its ``Row`` fields (``<key>_us``, ``<key>_images_per_s``,
``<key>_peak_mb``; ``speedup_vs_<key>`` for a baseline; its ``wait`` field).
"""
import contextlib
import copy
import importlib
import io
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import pyfastblocks

from . import gate, timing
from .cases import DTYPE_NAMES
from .cases.base import in_layout
from .rows import Row

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
        ("efficientnet", "efficientnet_b0", "torchvision", 224),
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
                    "mobilenetv1_100": 0.58, "mobilenet_v2": 0.31, "efficientnet_b0": 0.39, "vgg11_bn": 7.6,
                    "vgg16_bn": 15.5}



def default_model_batches(cuda: bool, short: bool) -> List[int]:
    """The models' batch where --batch does not choose (``short``: --quick or the tests' tiny set).
    Training-mode BatchNorm over fewer than ~4 samples of 1x1-2x2 maps is too ill-conditioned to compare."""
    return [(8 if cuda else 4) if short else (64 if cuda else 8)]

@dataclass(frozen=True)
class ModelVariant:
    """One column of the models section.

    ``key``: the Row fields it fills (``<key>_us``, ``<key>_images_per_s``, ``<key>_peak_mb``); "fused" is the
    one every speedup is of. ``label``: its name in the table. ``make(original, swapped, x)``: the model to time
    (``x``: the row's input). ``owner``: whose parameters its training step updates ("original" or "swapped").
    ``baseline``: the fused model's speedup over it is reported (``speedup_vs_<key>``). ``compiled``: a
    torch.compile variant (runs only where the models are compiled; a failure is a note, not an error).
    ``modes``: the rows ("eval", "train") it runs in. ``wait``: the Row field that gets the seconds before its first
    result (a compiled variant: its first call; otherwise ``make``). ``checked``: its eval output is checked
    against the original before anything is timed (a difference makes the row WRONG). ``speedups``: its own speedup
    over every baseline is reported too (``<key>_speedup_vs_<baseline>``).
    """
    key: str
    label: str
    make: Callable[[torch.nn.Module, torch.nn.Module, torch.Tensor], torch.nn.Module]
    owner: str
    baseline: bool = False
    compiled: bool = False
    modes: Tuple[str, ...] = ("eval", "train")
    wait: Optional[str] = None
    checked: bool = False
    speedups: bool = False


class _FreezingRoot(torch.nn.Module):
    """A forward of its own: torch.compile caches compiled code per code object (and, with nn modules inlined, serves
    every instance of a class from one entry), so this compile never shares an entry with a plain one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class CompiledWithFreezing(torch.nn.Module):
    """torch.compile of a copy of ``model``, its first call (the compile) under ``torch._inductor.config.freezing =
    True``: weights as constants, BatchNorm folded, oneDNN weights prepacked, conv + bias + activation (+ add) fused,
    as Inductor does under no_grad. (``torch.compile(..., options={"freezing": True})`` does not turn freezing on.)"""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = torch.compile(_FreezingRoot(copy.deepcopy(model)))
        self.compiled_once = False

    def forward(self, *args, **kwargs):
        if self.compiled_once:
            return self.compiled(*args, **kwargs)
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            out = self.compiled(*args, **kwargs)
        self.compiled_once = True
        return out


MODEL_VARIANTS: List[ModelVariant] = [
    ModelVariant("fused", "swapped", lambda original, swapped, x: swapped, "swapped"),
    ModelVariant("eager", "eager", lambda original, swapped, x: original, "original", baseline=True),
    ModelVariant("compile", "compile", lambda original, swapped, x: torch.compile(original), "original",
                 baseline=True, compiled=True, wait="compile_s"),
    ModelVariant("compile_freezing", "compile+freezing", lambda original, swapped, x: CompiledWithFreezing(original),
                 "original", baseline=True, compiled=True, modes=("eval",), wait="compile_freezing_s"),
    ModelVariant("frozen", "frozen", lambda original, swapped, x: pyfastblocks.freeze(original, x), "original",
                 modes=("eval",), wait="freeze_s", checked=True, speedups=True),
]


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


def build_model(name: str, source: str, device: Optional[torch.device] = None) -> torch.nn.Module:
    """A randomly initialized torchvision or timm model (no download), created on ``device`` (default: torch's)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if source == "timm":
            import timm

            return timm.create_model(name, pretrained=False)
        import torchvision

        kwargs = {"weights": None}
        if name == "inception_v3":
            kwargs.update(aux_logits=False, init_weights=False)
        return getattr(torchvision.models, name)(**kwargs)


def eval_call(model, x):
    def call():
        with torch.no_grad():
            return gate.logits(model(x))
    return call


def train_step(model, params, x, labels):
    """One SGD step: forward, cross-entropy, backward, update; gradients freed at the end (set_to_none)."""
    opt = torch.optim.SGD(params, lr=1e-4)

    def step():
        out = gate.logits(model(x))
        loss = F.cross_entropy(out.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out
    return step


def run_model(family: str, name: str, source: str, image: int, batch: int, device: torch.device, dtype: torch.dtype,
              layout: str, swap: Callable, min_run_time: float, use_compile: bool, report: Dict[str, str],
              progress=None, warmup: int = 2, variants: Sequence[ModelVariant] = MODEL_VARIANTS) -> List[Row]:
    """The eval and train rows of one model: the swapped model against the original, one column per variant.

    The original is a randomly initialized torchvision/timm model in ``dtype`` and ``layout``; the swapped one is
    ``swap(deepcopy(original))``. eval: one forward under no_grad. train: one SGD step (forward, cross-entropy,
    backward, update). Each mode is checked first (outputs, and for train the gradients of the parameters
    both models name alike; the variants marked ``checked`` too), then timed; peak memory is what one call
    allocates above what was allocated before. ``progress`` (optional) has ``label(text)`` and ``step()``.
    """
    dname = DTYPE_NAMES[dtype]
    shape = f"{batch}x3x{image}x{image}"
    rows = [Row(family, name, shape, dname, layout, section="models", mode=m, batch=batch) for m in ("eval", "train")]
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    variants = [v for v in variants if use_compile or not v.compiled]

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
            r.status, r.note = "error", f"build/swap failed: {gate.describe(e)}"
            done(r)
        return rows
    x = in_layout(torch.randn(batch, 3, image, image, device=device, dtype=dtype), layout)
    labels = torch.randint(0, 1000, (batch,), device=device)
    models = {"original": original, "swapped": swapped}

    for row in rows:
        train = row.mode == "train"
        if progress is not None:
            progress.label(f"{name} {row.mode} {shape}")
        try:
            original.train(train)
            swapped.train(train)
            if train:
                ok, err, problems = gate.check_train(original, swapped, x, labels, dtype)
            else:
                ok, err, problems = gate.check_eval(eval_call(original, x), eval_call(swapped, x), dtype)
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
                    return train_step(model, [p for p in owner.parameters() if p.requires_grad], x, labels)
                return eval_call(model, x)

            calls = {}
            reset = False
            wrong = None
            for v in (v for v in variants if row.mode in v.modes):
                if not v.compiled:
                    start = time.perf_counter()
                    model = v.make(original, swapped, x)
                    if v.wait:
                        setattr(row, v.wait, time.perf_counter() - start)
                    if v.checked and not train:
                        ok, err, problems = gate.check_eval(eval_call(original, x), eval_call(model, x), dtype)
                        if not ok:
                            wrong = f"{v.label} differs from the original ({problems}): not timed"
                            break
                    calls[v.key] = make(model, models[v.owner])
                    continue
                try:
                    if not reset:  # once per row: the compiled variants of a row keep each other's caches
                        torch._dynamo.reset()
                        reset = True
                    calls[v.key] = make(v.make(original, swapped, x), models[v.owner])
                    seconds, _ = timing.compile_time_s(calls[v.key], device)
                    setattr(row, v.wait or "compile_s", seconds)
                except Exception as e:  # noqa: BLE001 (a failing baseline is reported, not fatal)
                    calls.pop(v.key, None)
                    row.note = f"torch.compile ({v.label}) failed: {gate.describe(e)}"
            if wrong is not None:
                row.status, row.note = "WRONG", wrong
                done(row)
                continue
            us = timing.measure_us(calls, min_run_time, warmup=warmup)
            for key, t in us.items():
                setattr(row, f"{key}_us", t)
                setattr(row, f"{key}_images_per_s", batch / (t * 1e-6))
                setattr(row, f"{key}_peak_mb", timing.peak_memory_mb(calls[key], device))
            for v in variants:
                if v.baseline and v.key in us:
                    setattr(row, f"speedup_vs_{v.key}", us[v.key] / us["fused"])
                    for w in variants:
                        if w.speedups and w.key in us:
                            setattr(row, f"{w.key}_speedup_vs_{v.key}", us[v.key] / us[w.key])
        except gate.NotFinite:
            row.status = "error"
            row.note = f"the original model's output is not finite in {dname} (random weights): nothing to compare"
        except Exception as e:  # noqa: BLE001
            row.status, row.note = "error", gate.describe(e)
        done(row)
    torch._dynamo.reset()
    return rows


def select_models(model_set, wanted: Optional[List[str]]):
    """The (family, name, source, image) entries of ``model_set`` whose family or name is in ``wanted`` (all
    where ``wanted`` is empty, none for ["none"])."""
    if not wanted:
        return list(model_set)
    if wanted == ["none"]:
        return []
    return [m for m in model_set if m[0] in wanted or m[1] in wanted]
