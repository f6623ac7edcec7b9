"""fastblocks::depthwise_conv2d (generic path) against F.conv2d(groups=C) in float64: forward, gradients,
gradcheck, opcheck, bad input."""
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, DTYPES, TOLERANCES, assert_close, cpu_depthwise_backend, make_layout
from torch.library import opcheck

from pyfastblocks import ops

ACTIVATIONS = {"none": lambda t: t, "relu": torch.relu, "relu6": F.relu6}


@pytest.fixture(autouse=True, params=["fastblocks", "auto"])
def cpu_backend(request):
    """Every CPU test runs with this project's CPU kernels forced, and with the default choice ("auto": oneDNN for
    float32 channels_last and small NCHW planes). The choice does not exist on CUDA: those cases run once."""
    params = getattr(request.node, "callspec", None)
    if params is not None and params.params.get("device") == "cuda" and request.param == "auto":
        pytest.skip("the CPU backend choice does not apply to CUDA (the case runs under 'fastblocks')")
    with cpu_depthwise_backend(request.param):
        yield request.param


def _random_configs(count, seed=0):
    """Kernel sizes 1..7 (also non-square), strides 1..3, paddings, dilations, multipliers 1..3, odd sizes."""
    rng = random.Random(seed)
    configs = []
    while len(configs) < count:
        kh, kw = rng.randint(1, 7), rng.choice([None, rng.randint(1, 7)])
        kw = kh if kw is None else kw
        cfg = dict(channels=rng.randint(1, 6), multiplier=rng.randint(1, 3), h=rng.randint(1, 13), w=rng.randint(1, 13),
                   kernel=(kh, kw), stride=(rng.randint(1, 3), rng.randint(1, 3)),
                   padding=(rng.randint(0, 3), rng.randint(0, 3)), dilation=(rng.randint(1, 3), rng.randint(1, 2)))
        span_h = cfg["h"] + 2 * cfg["padding"][0] - cfg["dilation"][0] * (kh - 1) - 1
        span_w = cfg["w"] + 2 * cfg["padding"][1] - cfg["dilation"][1] * (kw - 1) - 1
        if span_h >= 0 and span_w >= 0:
            configs.append(cfg)
    return configs


CONFIGS = _random_configs(40) + [
    dict(channels=32, multiplier=1, h=14, w=14, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
    dict(channels=16, multiplier=1, h=15, w=15, kernel=(5, 5), stride=(2, 2), padding=(2, 2), dilation=(1, 1)),
]


def reference(x, weight, bias, cfg, activation, input_relu):
    x = x.double()
    x = torch.relu(x) if input_relu else x
    y = F.conv2d(x, weight.double(), None if bias is None else bias.double(), cfg["stride"], cfg["padding"],
                 cfg["dilation"], groups=cfg["channels"])
    return ACTIVATIONS[activation](y)


def make_inputs(cfg, dtype, device, layout, batch=2, with_bias=True, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, m = cfg["channels"], cfg["multiplier"]
    x = make_layout(torch.randn(batch, c, cfg["h"], cfg["w"], generator=g).to(device, dtype), layout)
    weight = (torch.randn(c * m, 1, *cfg["kernel"], generator=g) * 0.5).to(device, dtype)
    pdt = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    bias = torch.randn(c * m, generator=g).to(device, pdt) if with_bias else None
    if requires_grad:
        for t in (x, weight, bias):
            if t is not None:
                t.requires_grad_(True)
    return x, weight, bias


def run(x, weight, bias, cfg, activation="none", input_relu=False):
    return ops.depthwise_conv2d(x, weight, bias, cfg["stride"], cfg["padding"], cfg["dilation"], activation, input_relu)


@pytest.mark.parametrize("input_relu", [False, True])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}m{multiplier}".format(**c))
def test_forward_matches_conv2d_float64(device, cfg, layout, activation, input_relu):
    x, weight, bias = make_inputs(cfg, torch.float64, device, layout)
    y = run(x, weight, bias, cfg, activation, input_relu)
    torch.testing.assert_close(y, reference(x, weight, bias, cfg, activation, input_relu))
    if layout == "channels_last" and x.size(1) > 1 and y.size(2) * y.size(3) > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)


def _assert_close_scaled(got, ref, rtol):
    """float32 against a float64 reference: an error bound relative to the reference's largest magnitude (sums
    of many products: per-element relative error is meaningless where terms cancel)."""
    scale = max(ref.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=rtol * scale)


# float32 runs the fast paths (padded scratch + vector taps, cpu/depthwise_fast_kernel.h) that float64 does not.
@pytest.mark.parametrize("input_relu", [False, True])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontiguous"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}m{multiplier}".format(**c))
def test_forward_float32_fast_path(device, cfg, layout, activation, input_relu):
    x, weight, bias = make_inputs(cfg, torch.float32, device, layout, batch=3)
    y = run(x, weight, bias, cfg, activation, input_relu)
    _assert_close_scaled(y, reference(x, weight, bias, cfg, activation, input_relu), 1e-5)


@pytest.mark.parametrize("input_relu", [False, True])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}m{multiplier}".format(**c))
def test_backward_float32_fast_path(device, cfg, activation, input_relu):
    for layout in ("nchw", "channels_last"):
        x, weight, bias = make_inputs(cfg, torch.float32, device, layout, batch=3, requires_grad=True, seed=3)
        y = run(x, weight, bias, cfg, activation, input_relu)
        grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(device)
        y.backward(grad)
        refs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
        reference(*refs, cfg, activation, input_relu).backward(grad.double())
        for got, ref in zip((x, weight, bias), refs):
            _assert_close_scaled(got.grad, ref.grad, 1e-5)
        assert x.grad.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


@pytest.mark.parametrize("shape", [(2, 24, 23, 21), (1, 13, 40, 37)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fast_path_wide_rows_and_partial_channel_blocks(device, shape, stride, layout):
    """Rows longer than one unrolled block (4 vectors) and channel counts that are not multiples of 8."""
    n, c, h, w = shape
    cfg = dict(channels=c, multiplier=1, h=h, w=w, kernel=(3, 3), stride=(stride, stride), padding=(1, 1),
               dilation=(1, 1))
    x, weight, bias = make_inputs(cfg, torch.float32, device, layout, batch=n, requires_grad=True, seed=5)
    y = run(x, weight, bias, cfg, "relu6", True)
    ref_in = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    ref = reference(*ref_in, cfg, "relu6", True)
    _assert_close_scaled(y, ref, 1e-5)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(6)).to(device)
    y.backward(grad)
    ref.backward(grad.double())
    for got, r in zip((x, weight, bias), ref_in):
        _assert_close_scaled(got.grad, r.grad, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_dtypes(device, dtype, layout):
    cfg = CONFIGS[-2]
    x, weight, bias = make_inputs(cfg, dtype, device, layout)
    y = run(x, weight, bias, cfg, "relu")
    assert y.dtype == dtype
    tol = dict(TOLERANCES[dtype])
    if dtype in (torch.float16, torch.bfloat16):  # the output rounds once; inputs were rounded too
        tol = {k: v * 4 for k, v in tol.items()}
    torch.testing.assert_close(y.double(), reference(x, weight, bias, cfg, "relu", False), **tol)


@pytest.mark.parametrize("input_relu", [False, True])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("cfg", CONFIGS[:12] + CONFIGS[-2:], ids=lambda c: "k{kernel}s{stride}p{padding}d{dilation}m{multiplier}".format(**c))
def test_backward_matches_conv2d_float64(device, cfg, activation, input_relu):
    for layout in ("nchw", "channels_last"):
        x, weight, bias = make_inputs(cfg, torch.float64, device, layout, requires_grad=True, seed=1)
        y = run(x, weight, bias, cfg, activation, input_relu)
        grad = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
        y.backward(grad)
        refs = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        reference(*refs, cfg, activation, input_relu).backward(grad)
        for got, ref in zip((x, weight, bias), refs):
            torch.testing.assert_close(got.grad, ref.grad)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_gradcheck_float64(device, activation):
    cfg = dict(channels=3, multiplier=2, h=6, w=5, kernel=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2))
    x, weight, bias = make_inputs(cfg, torch.float64, device, "channels_last", requires_grad=True, seed=4)
    assert torch.autograd.gradcheck(lambda *a: run(*a, cfg, activation, True), (x, weight, bias))


def test_zero_batch(device):
    cfg = CONFIGS[-2]
    x, weight, bias = make_inputs(cfg, torch.float32, device, "nchw", batch=0, requires_grad=True)
    y = run(x, weight, bias, cfg, "relu")
    assert y.shape == (0, 32, 14, 14)
    y.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight)) and torch.equal(bias.grad, torch.zeros_like(bias))


def test_opcheck(device):
    for cfg in CONFIGS[:4] + CONFIGS[-1:]:
        for layout in ("nchw", "channels_last"):
            for activation, input_relu in (("none", False), ("relu6", True), ("silu", False)):
                x, w, b = make_inputs(cfg, torch.float32, device, layout, requires_grad=True)
                opcheck(torch.ops.fastblocks.depthwise_conv2d.default,
                        (x, w, b, list(cfg["stride"]), list(cfg["padding"]), list(cfg["dilation"]), activation, input_relu,
                         0.01))
    cfg = CONFIGS[-2]
    x, w, b = make_inputs(cfg, torch.float32, device, "channels_last")
    out = run(x, w, b, cfg, "relu")
    for mask in ([True, True, True], [False, True, False], [True, False, False]):
        opcheck(torch.ops.fastblocks.depthwise_conv2d_backward.default,
                (torch.randn_like(out), out, x, w, None, [1, 1], [1, 1], [1, 1], "relu", 0.01, False, mask))
        opcheck(torch.ops.fastblocks.depthwise_conv2d_backward.default,
                (torch.randn_like(out), None, x, w, b, [1, 1], [1, 1], [1, 1], "hardswish", 0.01, False, mask))


def test_backward_is_deterministic(device):
    cfg = CONFIGS[-2]
    x, w, b = make_inputs(cfg, torch.float32, device, "channels_last", batch=4, requires_grad=True)
    grads = []
    for _ in range(2):
        for t in (x, w, b):
            t.grad = None
        run(x, w, b, cfg, "relu").sum().backward()
        grads.append([t.grad.clone() for t in (x, w, b)])
    for a, b_ in zip(*grads):
        assert torch.equal(a, b_)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    for cfg in CONFIGS[:8] + CONFIGS[-2:]:
        for layout in ("nchw", "channels_last"):
            x, w, b = make_inputs(cfg, dtype, "cpu", layout, requires_grad=True)
            xc, wc, bc = (t.detach().cuda().requires_grad_() for t in (x, w, b))
            xc = make_layout(xc.detach(), layout).requires_grad_()
            y, yc = run(x, w, b, cfg, "relu6", True), run(xc, wc, bc, cfg, "relu6", True)
            assert_close(yc.cpu(), y.double(), dtype)
            g = torch.randn(y.shape).to(dtype)
            y.backward(g)
            yc.backward(g.cuda())
            for t, tc in zip((x, w, b), (xc, wc, bc)):
                tol = dict(rtol=1e-3, atol=1e-2) if dtype in (torch.float32, torch.float64) else dict(rtol=5e-2, atol=5e-2)
                torch.testing.assert_close(tc.grad.cpu().double(), t.grad.double(), **tol)


def _bad_inputs():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(4, 1, 3, 3)
    ok = dict(x=x, weight=w)
    cases = [
        ("weight", dict(ok, weight=torch.randn(4, 2, 3, 3)), r"\[C \* m, 1, kh, kw\]"),
        ("weight", dict(ok, weight=torch.randn(6, 1, 3, 3)), r"\[C \* m, 1, kh, kw\]"),
        ("weight", dict(ok, weight=torch.randn(4, 3, 3)), r"\[C \* m, 1, kh, kw\]"),
        ("weight", dict(ok, weight=w.double()), "dtype"),
        ("x", dict(ok, x=torch.randn(4, 8, 8)), "4-D"),
        ("x", dict(x=x.int(), weight=w.int()), "float32"),
        ("x", dict(x=torch.randn(2, 4, 2, 2), weight=torch.randn(4, 1, 5, 5)), "output size would be <= 0"),
        ("stride", dict(ok, stride=0), "positive"),
        ("dilation", dict(ok, dilation=(1, 0)), "positive"),
        ("padding", dict(ok, padding=-1), "non-negative"),
        ("activation", dict(ok, activation="swish2"), "relu6"),
        ("bias", dict(ok, bias=torch.randn(5)), r"shape \[4\]"),
    ]
    if torch.cuda.is_available():
        cases.append(("weight", dict(x=x.cuda(), weight=w), "device"))
    return cases


@pytest.mark.parametrize("arg,kwargs,expected", _bad_inputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_the_argument(arg, kwargs, expected):
    with pytest.raises((RuntimeError, ValueError), match=f"'{arg}'.*{expected}"):
        ops.depthwise_conv2d(**kwargs)


def test_bad_pair_argument():
    with pytest.raises(ValueError, match="'stride'"):
        ops.depthwise_conv2d(torch.randn(1, 2, 4, 4), torch.randn(2, 1, 3, 3), stride=(1, 2, 3))


def test_huge_padding_takes_the_generic_path():
    """A padding far larger than the input would make the fast path's padded scratch huge: the generic path runs
    instead, with the same result."""
    x = torch.randn(1, 2, 3, 3)
    w = torch.randn(2, 1, 3, 3)
    y = ops.depthwise_conv2d(x, w, None, 1, 2100, 1, "relu")
    torch.testing.assert_close(y, F.relu(F.conv2d(x, w, None, 1, 2100, 1, 2)))


# --- CPU backend choice --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,channels_last,routed", [
    ((2, 16, 9, 9), True, True),  # channels_last: oneDNN
    ((2, 16, 12, 12), False, True),  # small NCHW plane: oneDNN
    ((2, 16, 40, 40), False, False),  # large NCHW plane: this project's kernel
])
def test_auto_backend_routes_float32_to_onednn(cpu_backend, shape, channels_last, routed):
    """Under "auto" the routed cases are oneDNN's convolution + activation (bitwise what F.conv2d + relu gives);
    every other case, and every case under "fastblocks", is this project's kernel (close to it, not bitwise)."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(shape[1], 1, 3, 3), torch.randn(shape[1])
    got = ops.depthwise_conv2d(x, w, b, 1, 1, activation="relu")
    onednn = F.conv2d(x, w, b, 1, 1, 1, shape[1]).relu()
    assert got.stride() == onednn.stride()
    torch.testing.assert_close(got, onednn)
    if cpu_backend == "auto" and routed:
        assert torch.equal(got, onednn)


def test_auto_backend_keeps_our_kernels_in_deterministic_mode(cpu_backend):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(16, 1, 3, 3, requires_grad=True)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        y = ops.depthwise_conv2d(x, w, None, 1, 1, activation="relu")
        grads = torch.autograd.grad(y.square().sum(), (x, w))
    finally:
        torch.use_deterministic_algorithms(before)
    with cpu_depthwise_backend("fastblocks"):
        y_ours = ops.depthwise_conv2d(x, w, None, 1, 1, activation="relu")
        grads_ours = torch.autograd.grad(y_ours.square().sum(), (x, w))
    assert torch.equal(y, y_ours)
    for a, b in zip(grads, grads_ours):
        assert torch.equal(a, b)


def test_set_cpu_depthwise_backend():
    assert ops.cpu_depthwise_backend() in ("auto", "fastblocks")
    with pytest.raises(RuntimeError, match="backend.*\"auto\" or \"fastblocks\""):
        ops.set_cpu_depthwise_backend("mkldnn")
