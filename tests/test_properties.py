"""Property-based tests (hypothesis) of every op against a float64 reference (issue 8).

Each example draws a shape (zero-size dims included), a dtype, and for every tensor argument a memory layout:
contiguous, channels-last, a random permutation of the dims (transposed views), a strided slice with a storage
offset, stride-0 dims from `expand`, or all of those at once. Sliced views live in a buffer filled with NaN, so a
kernel that reads an element outside the view returns NaN; and about half the examples run with
`torch.use_deterministic_algorithms(True)`, whose `fill_uninitialized_memory` fills every fresh output (the
ops' own `at::empty` included) with NaN, so an output element the kernel never writes fails the comparison
("output poisoning", on CPU and CUDA alike).

Values are small multiples of 1/4, 1/8 or 1/16: every product and sum the ops form is then exact in float32,
so a result differs from the float64 reference only by its final rounding to the output dtype, and ReLU/ReLU6
masks agree exactly. The tolerances are conftest.TOLERANCES.

Examples per op test: PYFASTBLOCKS_HYPOTHESIS_EXAMPLES (default 200, each with forward and backward; the
whole file takes about 30-60 s on two cores), derandomized with no example database, so every run draws the same
examples; set it higher (e.g. 5000) for a deeper search.
"""
import contextlib
import dataclasses
import os
import warnings
from typing import List, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, TOLERANCES, cpu_depthwise_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfastblocks import ops

EXAMPLES = int(os.environ.get("PYFASTBLOCKS_HYPOTHESIS_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NAN = float("nan")


# --------------------------------------------------------------------------------------------------------
# Strided tensors


@dataclasses.dataclass
class Layout:
    kind: str
    perm: List[int]  # storage order of the dims, outermost first
    steps: List[int]  # slice step per dim
    offsets: List[int]  # slice start per dim
    expand: List[int]  # dims given stride 0 (a size-1 dim expanded)

    def __repr__(self):
        return f"Layout({self.kind}, perm={self.perm}, steps={self.steps}, offsets={self.offsets}, expand={self.expand})"


@st.composite
def layouts(draw, rank: int, allow_expand: bool = True):
    kinds = ["contiguous", "channels_last", "permuted", "sliced", "mixed"] + (["expanded"] if allow_expand else [])
    kind = draw(st.sampled_from(kinds))
    perm, steps, offsets, expand = list(range(rank)), [1] * rank, [0] * rank, []
    if kind == "channels_last" and rank >= 3:
        perm = [0, *range(2, rank), 1]
    if kind in ("permuted", "mixed"):
        perm = list(draw(st.permutations(range(rank))))
    if kind in ("sliced", "mixed"):
        steps = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
        offsets = draw(st.lists(st.integers(0, 2), min_size=rank, max_size=rank))
    if kind == "expanded" or (kind == "mixed" and allow_expand):
        expand = sorted(draw(st.sets(st.integers(0, rank - 1), max_size=rank)))
    return Layout(kind, perm, steps, offsets, expand)


def grid(gen: torch.Generator, shape, lo: int, hi: int, denom: int) -> torch.Tensor:
    """float64 values k / denom, k uniform in [lo, hi]."""
    return torch.randint(lo, hi + 1, list(shape), generator=gen, dtype=torch.int64).double() / denom


def strided(values: torch.Tensor, layout: Layout, dtype, device, shape: Sequence[int]) -> torch.Tensor:
    """A tensor of `shape` holding `values` (float64, with size 1 in the expanded dims) in the given layout; the
    rest of its buffer is NaN."""
    rank = len(shape)
    base = list(values.shape)
    big = [base[d] * layout.steps[d] + layout.offsets[d] for d in range(rank)]
    storage = torch.full([big[p] for p in layout.perm], NAN, dtype=dtype, device=device)
    t = storage.permute([layout.perm.index(d) for d in range(rank)])
    t = t[tuple(slice(o, o + n * s, s) for o, n, s in zip(layout.offsets, base, layout.steps))]
    t.copy_(values.to(dtype))
    return t.expand(list(shape)) if layout.expand else t


def make(gen, shape, layout: Layout, dtype, device, lo=-8, hi=8, denom=4, requires_grad=False) -> torch.Tensor:
    base = [1 if d in layout.expand else s for d, s in enumerate(shape)]
    t = strided(grid(gen, base, lo, hi, denom), layout, dtype, device, shape)
    return t.requires_grad_() if requires_grad else t


def param(gen, n, dtype, device, lo, hi, denom, requires_grad=True) -> torch.Tensor:
    return grid(gen, [n], lo, hi, denom).to(device=device, dtype=dtype).requires_grad_(requires_grad)


@contextlib.contextmanager
def poisoned_outputs(enabled: bool):
    """Every fresh tensor (torch.empty, and at::empty inside the ops) filled with NaN while enabled."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    # warn_only: library ops without a deterministic variant (cuBLAS GEMMs on CUDA) warn instead of raising
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and without gaps, in some order of the dims."""
    dims = sorted((d for d in range(t.dim()) if t.size(d) != 1), key=lambda d: t.stride(d))
    expected = 1
    for d in dims:
        if t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True


def check_memory_format(out: torch.Tensor, x: torch.Tensor) -> None:
    """The README's rule: the output keeps x's memory format (NCHW stays NCHW, channels-last stays channels-last)
    and is always dense. An x that is both (1x1 spatial) is left to test_depthwise_memory_format_of_1x1_input."""
    if out.numel() == 0:
        return
    assert is_dense(out), f"output strides {out.stride()} for shape {tuple(out.shape)}"
    nchw = x.is_contiguous()
    channels_last = x.dim() == 4 and x.size(1) > 1 and x.is_contiguous(memory_format=torch.channels_last)
    if nchw and not channels_last:
        assert out.is_contiguous(), f"x contiguous, output strides {out.stride()}"
    elif channels_last and not nchw:
        assert out.is_contiguous(memory_format=torch.channels_last), f"x channels_last, output strides {out.stride()}"


def close(actual: Optional[torch.Tensor], expected: torch.Tensor, dtype, what: str) -> None:
    assert actual is not None, f"{what}: no gradient"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.double(), expected.double(), **TOLERANCES[dtype], msg=lambda m: f"{what}: {m}")


def shapes(min_rank=2, max_rank=5, max_channels=9):
    return st.integers(min_rank, max_rank).flatmap(
        lambda rank: st.tuples(
            st.integers(0, 3), st.integers(0, max_channels), *[st.integers(0, 6) for _ in range(rank - 2)]
        )
    )


def channel_view(p: torch.Tensor, rank: int) -> torch.Tensor:
    return p.double().view([1, -1] + [1] * (rank - 2))


# --------------------------------------------------------------------------------------------------------
# add_relu


def check_add_relu(device, shape, dtype, param_dtype, lx, lr, lg, affine, relu, poison, seed):
    gen = torch.Generator().manual_seed(seed)
    c, rank = shape[1], len(shape)
    x = make(gen, shape, lx, dtype, device, requires_grad=True)
    r = make(gen, shape, lr, dtype, device, requires_grad=True)
    s = param(gen, c, param_dtype, device, 1, 8, 4) if affine in ("scale", "both") else None
    b = param(gen, c, param_dtype, device, -8, 8, 8) if affine in ("bias", "both") else None
    g = make(gen, shape, lg, dtype, device)
    with poisoned_outputs(poison):
        y = ops.add_relu(x, r, s, b, relu=relu)
        wrt = [t for t in (x, r, s, b) if t is not None]
        grads = torch.autograd.grad(y, wrt, g)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    check_memory_format(y, x)

    refs = [t.detach().double().requires_grad_() for t in wrt]
    xd, rd = refs[0], refs[1]
    yd = xd
    if s is not None:
        yd = yd * channel_view(refs[2], rank)
    if b is not None:
        yd = yd + channel_view(refs[-1], rank)
    yd = yd + rd
    yd = torch.relu(yd) if relu else yd
    close(y, yd, dtype, "out")
    ref_grads = torch.autograd.grad(yd, refs, g.double())
    for name, t, got, ref in zip("x r scale bias".split(), wrt, grads, ref_grads):
        close(got, ref, t.dtype, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_add_relu_properties(device, data):
    shape = data.draw(shapes(), label="shape")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    param_dtype = data.draw(st.sampled_from([dtype, torch.float32]), label="param_dtype")
    lx, lr, lg = (data.draw(layouts(len(shape)), label=n) for n in ("layout_x", "layout_residual", "layout_grad"))
    affine = data.draw(st.sampled_from(["none", "scale", "bias", "both"]), label="affine")
    relu = data.draw(st.booleans(), label="relu")
    poison = data.draw(st.booleans(), label="poison")
    check_add_relu(device, shape, dtype, param_dtype, lx, lr, lg, affine, relu, poison, data.draw(st.integers(0, 2**31), label="seed"))


# --------------------------------------------------------------------------------------------------------
# branch_concat and affine_relu


def check_branch_concat(device, shape, channels, dtype, param_dtype, branch_layouts, lg, affine, relu, poison, seed,
                        single=False):
    gen = torch.Generator().manual_seed(seed)
    rank = len(shape)
    xs = []
    for ci, lay in zip(channels, branch_layouts):
        s_ = list(shape)
        s_[1] = ci
        xs.append(make(gen, s_, lay, dtype, device, requires_grad=True))
    total = sum(channels)
    s = param(gen, total, param_dtype, device, 1, 8, 4) if affine in ("scale", "both") else None
    b = param(gen, total, param_dtype, device, -8, 8, 8) if affine in ("bias", "both") else None
    out_shape = list(shape)
    out_shape[1] = total
    g = make(gen, out_shape, lg, dtype, device)
    with poisoned_outputs(poison):
        y = ops.affine_relu(xs[0], s, b, relu=relu) if single else ops.branch_concat(xs, s, b, relu=relu)
        wrt = xs + [t for t in (s, b) if t is not None]
        grads = torch.autograd.grad(y, wrt, g)
    assert list(y.shape) == out_shape and y.dtype == dtype
    first = next((t for t in xs if t.size(1) > 1), None)
    if first is not None:
        check_memory_format(y, first)

    refs = [t.detach().double().requires_grad_() for t in wrt]
    yd = torch.cat(refs[: len(xs)], 1)
    if s is not None:
        yd = yd * channel_view(refs[len(xs)], rank)
    if b is not None:
        yd = yd + channel_view(refs[-1], rank)
    yd = torch.relu(yd) if relu else yd
    close(y, yd, dtype, "out")
    ref_grads = torch.autograd.grad(yd, refs, g.double())
    names = [f"inputs[{i}]" for i in range(len(xs))] + [n for n, t in (("scale", s), ("bias", b)) if t is not None]
    for name, t, got, ref in zip(names, wrt, grads, ref_grads):
        close(got, ref, t.dtype, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_branch_concat_properties(device, data):
    shape = data.draw(shapes(max_channels=0), label="shape")  # dim 1 comes from the branches
    rank = len(shape)
    channels = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=5), label="channels")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    param_dtype = data.draw(st.sampled_from([dtype, torch.float32]), label="param_dtype")
    branch_layouts = [data.draw(layouts(rank), label=f"layout_inputs[{i}]") for i in range(len(channels))]
    lg = data.draw(layouts(rank), label="layout_grad")
    affine = data.draw(st.sampled_from(["none", "scale", "bias", "both"]), label="affine")
    relu = data.draw(st.booleans(), label="relu")
    poison = data.draw(st.booleans(), label="poison")
    check_branch_concat(device, shape, channels, dtype, param_dtype, branch_layouts, lg, affine, relu, poison,
                        data.draw(st.integers(0, 2**31), label="seed"))


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_affine_relu_properties(device, data):
    shape = data.draw(shapes(), label="shape")
    rank = len(shape)
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    param_dtype = data.draw(st.sampled_from([dtype, torch.float32]), label="param_dtype")
    lx, lg = data.draw(layouts(rank), label="layout_x"), data.draw(layouts(rank), label="layout_grad")
    affine = data.draw(st.sampled_from(["none", "scale", "bias", "both"]), label="affine")
    relu = data.draw(st.booleans(), label="relu")
    poison = data.draw(st.booleans(), label="poison")
    check_branch_concat(device, shape, [shape[1]], dtype, param_dtype, [lx], lg, affine, relu, poison,
                        data.draw(st.integers(0, 2**31), label="seed"), single=True)


# --------------------------------------------------------------------------------------------------------
# depthwise_conv2d and separable_conv2d

ACTIVATIONS = {"none": lambda t: t, "relu": torch.relu, "relu6": F.relu6}


def reference_depthwise(x, w, b, stride, padding, dilation):
    """F.conv2d(x, w, b, stride, padding, dilation, groups=C) as a sum over the taps of strided slices (float64
    F.conv2d with groups takes ~0.2 s even on tiny inputs on CPU; this takes ~1 ms)."""
    n, c, h, wd = x.shape
    cm, _, kh, kw = w.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).repeat_interleave(cm // c, dim=1)
    out = x.new_zeros(n, cm, oh, ow) if b is None else b.view(1, -1, 1, 1).expand(n, cm, oh, ow)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            tap = xp[:, :, r0: r0 + (oh - 1) * stride[0] + 1: stride[0], c0: c0 + (ow - 1) * stride[1] + 1: stride[1]]
            out = out + tap * w[:, 0, i, j].view(1, -1, 1, 1)
    return out


def reference_pointwise(x, w, b):
    y = torch.einsum("nchw,oc->nohw", x, w[:, :, 0, 0])
    return y if b is None else y + b.view(1, -1, 1, 1)


@pytest.mark.parametrize("args", [((1, 2), (2, 1), (1, 1)), ((2, 3), (3, 0), (2, 1)), ((1, 1), (0, 0), (1, 1))])
def test_the_references_match_conv2d(args):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 9, 9, generator=g, dtype=torch.float64)
    w, b = torch.randn(15, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(15, generator=g, dtype=torch.float64)
    pw, pb = torch.randn(4, 15, 1, 1, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    mid = reference_depthwise(x, w, b, *args)
    torch.testing.assert_close(mid, F.conv2d(x, w, b, *args, groups=5))
    torch.testing.assert_close(reference_pointwise(mid, pw, pb), F.conv2d(mid, pw, pb))


@dataclasses.dataclass
class Conv:
    batch: int
    channels: int
    multiplier: int
    h: int
    w: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple

    def out_size(self):
        oh = (self.h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        ow = (self.w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return oh, ow


@st.composite
def convs(draw, max_channels=5):
    pair = lambda lo, hi: st.tuples(st.integers(lo, hi), st.integers(lo, hi))  # noqa: E731
    cfg = Conv(draw(st.integers(0, 3)), draw(st.integers(1, max_channels)), draw(st.integers(1, 3)),
               draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(pair(1, 5)), draw(pair(1, 3)),
               draw(pair(0, 3)), draw(pair(1, 3)))
    # keep the output non-empty in H and W (an empty one is a bad input, tested in test_bad_input.py)
    cfg.h = max(cfg.h, cfg.dilation[0] * (cfg.kernel[0] - 1) + 1 - 2 * cfg.padding[0])
    cfg.w = max(cfg.w, cfg.dilation[1] * (cfg.kernel[1] - 1) + 1 - 2 * cfg.padding[1])
    return cfg


def check_depthwise(device, cfg: Conv, dtype, bias_dtype, lx, lw, lg, activation, input_relu, poison, seed):
    gen = torch.Generator().manual_seed(seed)
    cm = cfg.channels * cfg.multiplier
    x = make(gen, [cfg.batch, cfg.channels, cfg.h, cfg.w], lx, dtype, device, requires_grad=True)
    w = make(gen, [cm, 1, *cfg.kernel], lw, dtype, device, lo=-4, hi=4, requires_grad=True)
    b = param(gen, cm, bias_dtype, device, -8, 8, 8) if bias_dtype is not None else None
    oh, ow = cfg.out_size()
    g = make(gen, [cfg.batch, cm, oh, ow], lg, dtype, device)
    with poisoned_outputs(poison):
        y = ops.depthwise_conv2d(x, w, b, cfg.stride, cfg.padding, cfg.dilation, activation, input_relu)
        wrt = [t for t in (x, w, b) if t is not None]
        grads = torch.autograd.grad(y, wrt, g)
    assert tuple(y.shape) == (cfg.batch, cm, oh, ow) and y.dtype == dtype
    check_memory_format(y, x)

    refs = [t.detach().double().requires_grad_() for t in wrt]
    xd = torch.relu(refs[0]) if input_relu else refs[0]
    yd = reference_depthwise(xd, refs[1], refs[2] if b is not None else None, cfg.stride, cfg.padding, cfg.dilation)
    yd = ACTIVATIONS[activation](yd)
    close(y, yd, dtype, "out")
    ref_grads = torch.autograd.grad(yd, refs, g.double(), allow_unused=True)
    for name, t, got, ref in zip(("x", "weight", "bias"), wrt, grads, ref_grads):
        close(got, ref if ref is not None else torch.zeros_like(t, dtype=torch.float64), t.dtype, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_depthwise_conv2d_properties(device, data):
    cfg = data.draw(convs(), label="conv")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    bias_dtype = data.draw(st.sampled_from([None, dtype, torch.float32]), label="bias_dtype")
    lx, lw, lg = (data.draw(layouts(4), label=n) for n in ("layout_x", "layout_weight", "layout_grad"))
    activation = data.draw(st.sampled_from(list(ACTIVATIONS)), label="activation")
    input_relu = data.draw(st.booleans(), label="input_relu")
    poison = data.draw(st.booleans(), label="poison")
    backend = data.draw(st.sampled_from(["auto", "fastblocks"]), label="cpu_backend")
    with cpu_depthwise_backend(backend):
        check_depthwise(device, cfg, dtype, bias_dtype, lx, lw, lg, activation, input_relu, poison,
                        data.draw(st.integers(0, 2**31), label="seed"))


def check_separable(device, cfg: Conv, c_out, dtype, dw_bias, pw_bias, lx, activation, dw_activation, input_relu,
                    poison, seed):
    """Forward in every dtype; gradients where the values stay exact (float32/float64): the pointwise step is a
    GEMM in x's dtype, so its half-precision gradients carry roundings of intermediate products."""
    gen = torch.Generator().manual_seed(seed)
    cm = cfg.channels * cfg.multiplier
    exact = dtype in (torch.float32, torch.float64)
    x = make(gen, [cfg.batch, cfg.channels, cfg.h, cfg.w], lx, dtype, device, requires_grad=exact)
    dw = grid(gen, [cm, 1, *cfg.kernel], -4, 4, 4).to(device, dtype).requires_grad_(exact)
    db = param(gen, cm, torch.float32 if dtype != torch.float64 else dtype, device, -8, 8, 8, exact) if dw_bias else None
    pw = grid(gen, [c_out, cm, 1, 1], -4, 4, 4).to(device, dtype).requires_grad_(exact)
    pb = param(gen, c_out, dtype, device, -8, 8, 8, exact) if pw_bias else None
    with poisoned_outputs(poison):
        y = ops.separable_conv2d(x, dw, db, pw, pb, cfg.stride, cfg.padding, cfg.dilation, dw_activation, activation,
                                 input_relu)
        wrt = [t for t in (x, dw, db, pw, pb) if t is not None]
        if exact:
            g = grid(gen, y.shape, -8, 8, 4).to(device, dtype)
            grads = torch.autograd.grad(y, wrt, g)
    oh, ow = cfg.out_size()
    assert tuple(y.shape) == (cfg.batch, c_out, oh, ow) and y.dtype == dtype

    refs = [t.detach().double().requires_grad_() for t in wrt]
    named = dict(zip([n for n, t in zip(("x", "dw", "db", "pw", "pb"), (x, dw, db, pw, pb)) if t is not None], refs))
    xd = torch.relu(named["x"]) if input_relu else named["x"]
    mid = ACTIVATIONS[dw_activation](reference_depthwise(xd, named["dw"], named.get("db"), cfg.stride, cfg.padding,
                                                         cfg.dilation))
    # the depthwise output is rounded to x's dtype before the pointwise GEMM, as the op does
    mid_rounded = mid + (mid.detach().to(dtype).double() - mid.detach())
    yd = ACTIVATIONS[activation](reference_pointwise(mid_rounded, named["pw"], named.get("pb")))
    if exact:
        close(y, yd, dtype, "out")
        ref_grads = torch.autograd.grad(yd, refs, g.double())
        for name, t, got, ref in zip(named, wrt, grads, ref_grads):
            close(got, ref, t.dtype, f"grad {name}")
    else:
        # a half-precision GEMM: bound the error by the sum of |terms| (any accumulation order)
        bound = reference_pointwise(mid_rounded.detach().abs(), named["pw"].detach().abs(),
                                    None if pb is None else named["pb"].detach().abs())
        tol = TOLERANCES[dtype]["rtol"]
        err = (y.double() - yd.detach()).abs()
        assert torch.all(err <= tol * (1 + bound)), f"max error {err.max().item()} (bound {tol} * (1 + sum |terms|))"


@pytest.mark.parametrize("device", DEVICES)
@SETTINGS
@given(data=st.data())
def test_separable_conv2d_properties(device, data):
    cfg = data.draw(convs(), label="conv")
    c_out = data.draw(st.integers(1, 6), label="c_out")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    dw_bias, pw_bias = data.draw(st.booleans(), label="dw_bias"), data.draw(st.booleans(), label="pw_bias")
    # channels-last input (the op's GEMM path) drawn more often than the other layouts
    lx = data.draw(st.one_of(st.just(_layout("channels_last", 4)), layouts(4)), label="layout_x")
    activation = data.draw(st.sampled_from(list(ACTIVATIONS)), label="activation")
    dw_activation = data.draw(st.sampled_from(list(ACTIVATIONS)), label="depthwise_activation")
    input_relu = data.draw(st.booleans(), label="input_relu")
    poison = data.draw(st.booleans(), label="poison")
    check_separable(device, cfg, c_out, dtype, dw_bias, pw_bias, lx, activation, dw_activation, input_relu, poison,
                    data.draw(st.integers(0, 2**31), label="seed"))


# --------------------------------------------------------------------------------------------------------
# Odd shapes, chosen rather than drawn: sizes past the CUDA grid limits (65535 in y and z), one channel, one
# element, channels only, rank 2 and rank 6, zero-size dims. Same checks as above, in contiguous and
# channels-last layouts, with poisoned outputs.

def _layout(kind, rank):
    perm = [0, *range(2, rank), 1] if kind == "channels_last" and rank >= 3 else list(range(rank))
    return Layout(kind, perm, [1] * rank, [0] * rank, [])


ODD_SHAPES = [
    (1, 70000), (70000, 1), (2, 70000, 1, 1), (70000, 2, 1, 1), (1, 3, 70000), (1, 1, 1, 1), (1, 1), (3, 1, 1, 1, 1, 2),
    (1, 2, 3, 1, 2, 1), (0, 5, 3, 3), (2, 0, 3, 3), (2, 3, 0, 0), (1, 17, 1, 65537),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_epilogue_ops_on_odd_shapes(device, shape, layout):
    lay = _layout(layout, len(shape))
    for dtype in (torch.float32, torch.float16):
        check_add_relu(device, shape, dtype, torch.float32, lay, lay, lay, "both", True, True, seed=1)
        check_branch_concat(device, shape, [shape[1]], dtype, torch.float32, [lay], lay, "both", True, True, seed=2,
                            single=True)
        if shape[1] > 1:
            c0 = shape[1] // 3
            check_branch_concat(device, shape, [c0, shape[1] - c0], dtype, torch.float32, [lay, lay], lay, "both",
                                False, True, seed=3)


ODD_CONVS = [
    Conv(1, 70000, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),  # channels past 65535
    Conv(1, 1, 70000, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),  # multiplier past 65535
    Conv(70000, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1)),  # batch past 65535
    Conv(1, 1, 1, 1, 70000, (1, 3), (1, 1), (0, 1), (1, 1)),  # one long row
    Conv(1, 2, 1, 70000, 1, (3, 1), (2, 1), (1, 0), (1, 1)),  # one long column
    Conv(2, 3, 2, 1, 1, (7, 7), (1, 1), (3, 3), (1, 1)),  # every tap in the padding but the centre
    Conv(1, 2, 1, 5, 5, (5, 5), (9, 9), (0, 0), (1, 1)),  # stride past the input: one output
    Conv(1, 2, 1, 9, 9, (3, 3), (1, 1), (0, 0), (4, 4)),  # dilation that spans the input
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("cfg", ODD_CONVS, ids=lambda c: f"n{c.batch}c{c.channels}m{c.multiplier}h{c.h}w{c.w}k{c.kernel}")
@pytest.mark.parametrize("device", DEVICES)
def test_depthwise_on_odd_shapes(device, cfg, layout):
    lay = _layout(layout, 4)
    for dtype in (torch.float32, torch.float16):
        check_depthwise(device, cfg, dtype, torch.float32, lay, _layout("contiguous", 4), lay, "relu6", True, True, seed=4)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("device", DEVICES)
def test_separable_conv2d_channels_last_relu(device, grad):
    """The channels-last GEMM path with a pointwise bias and ReLU (at::_addmm_activation, which has no
    derivative: it must not be taken when a gradient is needed)."""
    cfg = Conv(2, 4, 1, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1))
    with torch.set_grad_enabled(grad):
        check_separable(device, cfg, 6, torch.float32 if grad else torch.float16, True, True,
                        _layout("channels_last", 4), "relu", "none", False, False, seed=5)


@pytest.mark.parametrize("device", DEVICES)
def test_depthwise_memory_format_of_1x1_input(device):
    """An input that is both NCHW- and channels-last-contiguous (1x1 spatial): the strides of its size-1 dims
    decide, as torch's suggest_memory_format does (csrc/common/layout.cpp, pyfastblocks/_layout.py), so a padded
    depthwise conv has F.conv2d's output strides, for a plain contiguous input and for one made channels_last."""
    w = torch.randn(2, 1, 1, 1, device=device)
    for x in (torch.randn(1, 2, 1, 1, device=device),
              torch.randn(1, 2, 1, 1, device=device).to(memory_format=torch.channels_last),
              torch.randn(3, 2, 1, 1, device=device).to(memory_format=torch.channels_last)):
        eager = F.conv2d(x, w, padding=(0, 1), groups=2)
        out = ops.depthwise_conv2d(x, w, padding=(0, 1))
        assert out.stride() == eager.stride(), f"x strides {x.stride()}: {out.stride()}, F.conv2d gives {eager.stride()}"
        torch.testing.assert_close(out, eager)
