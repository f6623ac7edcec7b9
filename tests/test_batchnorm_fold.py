"""fastblocks::batchnorm_fold and fastblocks::batchnorm_fold_conv (a BatchNorm folded at every call, issue 14)
against a float64 reference, their gradients (gradcheck in float64), opcheck, zero channels and bad input."""
import pytest
import torch
from conftest import DEVICES
from torch.library import opcheck

from pyfastblocks import ops

STAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
WEIGHT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def stats(c, device, dtype=torch.float32, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(c, generator=g).to(device, dtype)
    var = (torch.rand(c, generator=g) + 0.1).to(device, dtype)
    weight = (torch.rand(c, generator=g) + 0.5).to(device, dtype) if affine else None
    bias = torch.randn(c, generator=g).to(device, dtype) if affine else None
    return mean, var, weight, bias


def reference(mean, var, weight, bias, eps):
    scale = 1 / torch.sqrt(var.double() + eps)
    if weight is not None:
        scale = scale * weight.double()
    shift = -mean.double() * scale
    if bias is not None:
        shift = shift + bias.double()
    return scale, shift


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
@pytest.mark.parametrize("stat_dtype", STAT_DTYPES)
@pytest.mark.parametrize("affine", [True, False])
def test_fold_matches_float64_reference(device, acc, stat_dtype, affine):
    mean, var, weight, bias = stats(37, device, stat_dtype, affine)
    scale, shift = ops.batchnorm_fold(mean, var, weight, bias, 1e-3, acc)
    assert scale.dtype == shift.dtype == acc and scale.shape == shift.shape == (37,)
    want_scale, want_shift = reference(mean, var, weight, bias, 1e-3)
    torch.testing.assert_close(scale.double(), want_scale, **tol(acc))
    torch.testing.assert_close(shift.double(), want_shift, **tol(acc))


def test_fold_equals_batch_norm_eval(device):
    mean, var, weight, bias = stats(16, device)
    x = torch.randn(4, 16, 5, 5, device=device)
    scale, shift = ops.batchnorm_fold(mean, var, weight, bias, 1e-5)
    want = torch.nn.functional.batch_norm(x, mean, var, weight, bias, False, 0.0, 1e-5)
    torch.testing.assert_close(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), want, rtol=1e-6, atol=1e-6)


def conv_weight(shape, device, dtype, layout, seed=1):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, dtype)
    if layout == "channels_last":
        return w.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return torch.cat([w, w], dim=-1)[..., ::2]
    return w


@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES)
@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("shape,layout", [(s, lay) for s in [(8, 3, 3, 3), (32, 1, 3, 3), (6, 4, 1, 1), (5, 7)]
                                          for lay in ["contiguous", "channels_last", "strided"]
                                          if lay != "channels_last" or len(s) == 4])
def test_fold_conv_matches_float64_reference(device, layout, weight_dtype, conv_bias, shape):
    c = shape[0]
    w = conv_weight(shape, device, weight_dtype, layout)
    cb = torch.randn(c, generator=torch.Generator().manual_seed(2)).to(device) if conv_bias else None
    mean, var, weight, bias = stats(c, device)
    acc = torch.float64 if weight_dtype == torch.float64 else torch.float32
    folded_w, folded_b = ops.batchnorm_fold_conv(w, cb, mean, var, weight, bias, 1e-5, acc)
    assert folded_w.dtype == weight_dtype and folded_w.shape == w.shape and folded_b.dtype == acc
    if layout != "strided":  # dense weights keep their strides (the conv's memory format)
        assert folded_w.stride() == w.stride()
    scale, shift = reference(mean, var, weight, bias, 1e-5)
    view = [-1] + [1] * (w.dim() - 1)
    want_w = (w.double() * scale.view(view)).to(weight_dtype)
    want_b = shift + (cb.double() * scale if cb is not None else 0)
    # one rounding to the weight dtype (float32 math for half weights: at most one ulp apart)
    ulp = {torch.float16: 1e-3, torch.bfloat16: 8e-3}.get(weight_dtype, 0)
    torch.testing.assert_close(folded_w.double(), want_w.double(), rtol=max(ulp, tol(acc)["rtol"]),
                               atol=max(ulp, tol(acc)["atol"]))
    torch.testing.assert_close(folded_b.double(), want_b, **tol(acc))


def test_zero_channels(device):
    empty = torch.empty(0, device=device)
    scale, shift = ops.batchnorm_fold(empty, empty, empty, empty, 1e-5)
    assert scale.shape == shift.shape == (0,)
    w, b = ops.batchnorm_fold_conv(torch.empty(0, 3, 3, 3, device=device), None, empty, empty, None, None, 1e-5)
    assert w.shape == (0, 3, 3, 3) and b.shape == (0,)


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(device, affine):
    mean, var, weight, bias = stats(5, device, torch.float64, affine)
    tensors = [t.requires_grad_() for t in (mean, var, weight, bias) if t is not None]

    def fold(*ts):
        m, v, *wb = ts
        return ops.batchnorm_fold(m, v, *(wb or [None, None]), 1e-3, torch.float64)

    assert torch.autograd.gradcheck(fold, tensors)
    assert torch.autograd.gradgradcheck(fold, tensors)
    w = torch.randn(5, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    cb = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)

    def fold_conv(w, cb, *ts):
        m, v, *wb = ts
        return ops.batchnorm_fold_conv(w, cb, m, v, *(wb or [None, None]), 1e-3, torch.float64)

    assert torch.autograd.gradcheck(fold_conv, [w, cb] + tensors)
    assert torch.autograd.gradcheck(lambda w, *ts: fold_conv(w, None, *ts), [w] + tensors)


def test_gradients_in_float32_follow_the_input_dtypes(device):
    mean, var, weight, bias = stats(6, device, torch.float16)
    for t in (weight, bias):
        t.requires_grad_()
    scale, shift = ops.batchnorm_fold(mean, var, weight, bias, 1e-5)
    (scale.sum() + shift.sum()).backward()
    assert weight.grad.dtype == bias.grad.dtype == torch.float16


def test_opcheck(device):
    mean, var, weight, bias = stats(7, device)
    opcheck(torch.ops.fastblocks.batchnorm_fold.default, (mean, var, weight, bias, 1e-5, torch.float32))
    opcheck(torch.ops.fastblocks.batchnorm_fold.default, (mean, var, None, None, 1e-5, torch.float64))
    grads = [t.clone().requires_grad_() for t in (mean, var, weight, bias)]
    opcheck(torch.ops.fastblocks.batchnorm_fold.default, (*grads, 1e-5, torch.float32))
    for layout in ("contiguous", "channels_last", "strided"):
        w = conv_weight((7, 3, 3, 3), device, torch.float32, layout).requires_grad_()
        cb = torch.randn(7, device=device, requires_grad=True)
        opcheck(torch.ops.fastblocks.batchnorm_fold_conv.default, (w, cb, *grads, 1e-5, torch.float32))
        opcheck(torch.ops.fastblocks.batchnorm_fold_conv.default, (w.detach(), None, mean, var, None, None, 1e-5,
                                                                   torch.float32))


@pytest.mark.parametrize("case,arg", [
    ("short var", "var"), ("2-d mean", "mean"), ("int dtype", "dtype"), ("half dtype", "dtype"),
    ("int weight", "weight"), ("conv weight channels", "mean"), ("0-d conv weight", "conv_weight"),
    ("conv bias", "conv_bias"),
])
def test_bad_input_names_the_argument(case, arg):
    mean, var, weight, bias = stats(4, "cpu")
    w = torch.randn(4, 2, 3, 3)
    calls = {
        "short var": lambda: ops.batchnorm_fold(mean, var[:3], weight, bias),
        "2-d mean": lambda: ops.batchnorm_fold(mean.view(2, 2), var, weight, bias),
        "int dtype": lambda: ops.batchnorm_fold(mean, var, weight, bias, 1e-5, torch.int32),
        "half dtype": lambda: ops.batchnorm_fold(mean, var, weight, bias, 1e-5, torch.float16),
        "int weight": lambda: ops.batchnorm_fold(mean, var, weight.int(), bias),
        "conv weight channels": lambda: ops.batchnorm_fold_conv(torch.randn(5, 2, 3, 3), None, mean, var, weight,
                                                                bias),
        "0-d conv weight": lambda: ops.batchnorm_fold_conv(torch.tensor(1.0), None, mean, var, weight, bias),
        "conv bias": lambda: ops.batchnorm_fold_conv(w, torch.randn(3), mean, var, weight, bias),
    }
    with pytest.raises(RuntimeError, match=f"argument '{arg}'"):
        calls[case]()


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs CUDA")
def test_mixed_devices_name_the_argument():
    mean, var, weight, bias = stats(4, "cuda")
    with pytest.raises(RuntimeError, match="argument 'bias'"):
        ops.batchnorm_fold(mean, var, weight, bias.cpu())


@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_dtype,layout,conv_bias", [
    (torch.float32, "contiguous", True), (torch.float16, "channels_last", False), (torch.bfloat16, "strided", True),
    (torch.float64, "contiguous", False)])
def test_fold_program_emulated_on_the_cpu(acc, weight_dtype, layout, conv_bias):
    """The fold program the CUDA kernel runs (its grid, each thread's grid-stride loop over fold_element), run by
    the emulator on the CPU, equals the CPU impl exactly (the same per-channel math; outputs NaN-filled first, so a skipped element shows): several blocks, and
    a weight of more than 65535 blocks x 256 threads so that the grid-stride loop wraps."""
    from pyfastblocks import _C

    for shape in [(600, 70, 3, 3), (3, 5)] + ([(4100, 4100, 1, 1)] if acc == torch.float32 else []):
        c = shape[0]
        mean, var, weight, bias = stats(c, "cpu")
        w = conv_weight(shape, "cpu", weight_dtype, layout if len(shape) == 4 else "contiguous")
        cb = torch.randn(c) if conv_bias else None
        got = _C._emulate_batchnorm_fold(w, cb, mean, var, weight, bias, 1e-5, acc)
        want = ops.batchnorm_fold_conv(w, cb, mean, var, weight, bias, 1e-5, acc)
        for g, e in zip(got, want):
            assert torch.equal(g, e) and g.stride() == e.stride()
        got = _C._emulate_batchnorm_fold(None, None, mean, var, weight, bias, 1e-5, acc)
        want = ops.batchnorm_fold(mean, var, weight, bias, 1e-5, acc)
        for g, e in zip(got, want):
            assert torch.equal(g, e)
