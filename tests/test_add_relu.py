"""fastblocks::add_act with ReLU (ops.add_relu) against a float64 PyTorch reference, its gradients, opcheck, and bad
input (every other activation: tests/test_activations.py)."""
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from conftest import DEVICES, DTYPES, LAYOUTS, TOLERANCES, assert_close, make_layout
from torch.library import opcheck

import pyfastblocks
from pyfastblocks import ops

SHAPES = [(2, 3, 5, 7), (3, 16, 9, 9), (1, 64, 4, 4), (2, 8, 1, 1), (4, 6), (2, 5, 11), (1, 4, 3, 5, 2)]
AFFINE = ["none", "scale_bias", "scale", "bias"]


def reference(x, r, scale, bias, relu):
    """act(x * scale + bias + r) in float64."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = x.double()
    if scale is not None:
        y = y * scale.double().view(shape)
    if bias is not None:
        y = y + bias.double().view(shape)
    y = y + r.double()
    return torch.relu(y) if relu else y


def make_inputs(shape, dtype, device, layout, affine, param_dtype=None, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    r = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    x, r = make_layout(x, layout), make_layout(r, layout)
    param_dtype = param_dtype or (dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    c = shape[1]
    scale = (torch.rand(c, generator=g) + 0.5).to(device=device, dtype=param_dtype) if "scale" in affine else None
    bias = torch.randn(c, generator=g).to(device=device, dtype=param_dtype) if "bias" in affine else None
    if requires_grad:
        for t in (x, r, scale, bias):
            if t is not None:
                t.requires_grad_(True)
    return x, r, scale, bias


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_float64_reference(device, shape, dtype, layout, affine, relu):
    x, r, scale, bias = make_inputs(shape, dtype, device, layout, affine)
    y = ops.add_relu(x, r, scale, bias, relu=relu)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert_close(y, reference(x, r, scale, bias, relu))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_data_with_half_params(device, dtype):
    x, r, scale, bias = make_inputs((2, 8, 3, 3), dtype, device, "nchw", "scale_bias", param_dtype=dtype)
    assert_close(ops.add_relu(x, r, scale, bias), reference(x, r, scale, bias, True))


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_memory_format_is_kept(device, layout):
    x, r, scale, bias = make_inputs((2, 8, 5, 5), torch.float32, device, layout, "scale_bias")
    y = ops.add_relu(x, r, scale, bias)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


def test_residual_in_other_layout(device):
    x, r, scale, bias = make_inputs((2, 8, 5, 5), torch.float32, device, "channels_last", "scale_bias")
    r = r.contiguous()
    y = ops.add_relu(x, r, scale, bias)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, reference(x, r, scale, bias, True))


def test_expanded_and_transposed_inputs(device):
    x = torch.randn(1, 6, 1, 5, device=device).expand(3, 6, 4, 5)  # stride-0 dims
    r = torch.randn(3, 5, 4, 6, device=device).transpose(1, 3)  # [3, 6, 4, 5], permuted
    s, b = torch.rand(6, device=device) + 0.5, torch.randn(6, device=device)
    assert_close(ops.add_relu(x, r, s, b), reference(x, r, s, b, True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3)])
def test_zero_size(device, shape, dtype):
    x, r, scale, bias = make_inputs(shape, dtype, device, "nchw", "scale_bias", requires_grad=True)
    y = ops.add_relu(x, r, scale, bias)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape and r.grad.shape == shape
    assert torch.equal(scale.grad, torch.zeros_like(scale)) and torch.equal(bias.grad, torch.zeros_like(bias))


def test_nan_propagates_like_torch_relu(device):
    x = torch.tensor([[float("nan"), -1.0, 2.0]], device=device).view(1, 3, 1, 1)
    y = ops.add_relu(x, torch.zeros_like(x))
    assert torch.isnan(y[0, 0]).all() and y[0, 1].item() == 0.0 and y[0, 2].item() == 2.0


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_matches_float64_autograd(device, dtype, layout, affine, relu):
    shape = (3, 10, 7, 5)
    x, r, scale, bias = make_inputs(shape, dtype, device, layout, affine, requires_grad=True, seed=1)
    y = ops.add_relu(x, r, scale, bias, relu=relu)
    grad = make_layout(torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(device, dtype), layout)
    y.backward(grad)

    refs = [t.detach().double().requires_grad_() if t is not None else None for t in (x, r, scale, bias)]
    reference(*refs, relu).backward(grad.double())
    for got, ref in zip((x, r, scale, bias), refs):
        if got is None:
            continue
        tol = TOLERANCES[dtype]
        if got.dim() == 1:  # per-channel sums over 105 elements, accumulated in float32
            tol = dict(rtol=max(tol["rtol"], 1e-4), atol=max(tol["atol"], 1e-4) * 30)
        torch.testing.assert_close(got.grad.double(), ref.grad, **tol)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64(device, layout, affine, relu):
    # Values kept away from the ReLU kink so finite differences are valid.
    x, r, scale, bias = make_inputs((2, 3, 4, 5), torch.float64, device, layout, affine, requires_grad=True, seed=3)
    with torch.no_grad():
        pre = reference(x, r, scale, bias, False)
        r.add_(torch.where(pre.abs() < 0.05, torch.full_like(pre, 0.2), torch.zeros_like(pre)))
    args = tuple(t for t in (x, r, scale, bias))
    assert torch.autograd.gradcheck(lambda *a: ops.add_relu(*a, relu=relu), args)


def _opcheck_samples(device):
    samples = []
    for layout in LAYOUTS:
        for affine in AFFINE:
            for dtype in (torch.float32, torch.float16):
                x, r, s, b = make_inputs((2, 4, 3, 5), dtype, device, layout, affine, requires_grad=dtype == torch.float32)
                samples.append((x, r, s, b, "relu" if affine != "bias" else "none", 0.01))
    x, r, s, b = make_inputs((3, 7), torch.float32, device, "nchw", "scale_bias", requires_grad=True)
    samples.append((x, r, s, b, "relu", 0.01))
    return samples


def test_opcheck(device):
    for args in _opcheck_samples(device):
        opcheck(torch.ops.fastblocks.add_act.default, args)


def test_opcheck_backward(device):
    x, r, s, b = make_inputs((2, 4, 3, 5), torch.float32, device, "channels_last", "scale_bias")
    grad = torch.randn_like(x)
    for args in [(grad, x, r, s, b, "relu", 0.01, True), (grad, None, None, s, b, "none", 0.01, True),
                 (grad, x, r, None, None, "relu", 0.01, False), (grad, x, r, s, b, "silu", 0.01, True)]:
        opcheck(torch.ops.fastblocks.add_act_backward.default, args)


def test_backward_is_deterministic(device):
    x, r, s, b = make_inputs((4, 32, 17, 17), torch.float32, device, "channels_last", "scale_bias", requires_grad=True)
    grads = []
    for _ in range(2):
        for t in (x, r, s, b):
            t.grad = None
        ops.add_relu(x, r, s, b).sum().backward()
        grads.append([t.grad.clone() for t in (x, r, s, b)])
    for a, b_ in zip(*grads):
        assert torch.equal(a, b_)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs CUDA")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype, layout):
    for shape in [(8, 64, 14, 14), (3, 5, 7, 9), (2, 2048, 7, 7)]:
        x, r, s, b = make_inputs(shape, dtype, "cpu", layout, "scale_bias", requires_grad=True)
        xc, rc, sc, bc = (t.detach().cuda().requires_grad_() for t in (x, r, s, b))
        xc, rc = make_layout(xc.detach(), layout).requires_grad_(), make_layout(rc.detach(), layout).requires_grad_()
        y, yc = ops.add_relu(x, r, s, b), ops.add_relu(xc, rc, sc, bc)
        assert_close(yc.cpu(), y.double(), dtype)
        g = torch.randn(shape).to(dtype)
        y.backward(g)
        yc.backward(g.cuda())
        for t, tc in zip((x, r, s, b), (xc, rc, sc, bc)):
            tol = dict(rtol=1e-3, atol=1e-3 * shape[0] * shape[2] * shape[3] ** 0.5) if t.dim() == 1 else TOLERANCES[dtype]
            torch.testing.assert_close(tc.grad.cpu().double(), t.grad.double(), **tol)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs CUDA")
def test_cuda_misaligned_storage_offset():
    # Views that start 1 element into their storage take the scalar path; tails of odd sizes too.
    base = torch.randn(1 + 2 * 5 * 7 * 3, device="cuda", dtype=torch.float16)
    x = base[1:].view(2, 5, 7, 3)
    r = torch.randn_like(x)
    s, b = torch.rand(5, device="cuda") + 0.5, torch.randn(5, device="cuda")
    assert_close(ops.add_relu(x, r, s, b), reference(x, r, s, b, True))


@pytest.mark.skipif(
    "cuda" not in DEVICES or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a CUDA device with 40 GB",
)
def test_cuda_past_int32_elements():
    # 2^31 + 2^20 float16 elements: flat offsets and channel indices must be 64-bit, in both memory orders.
    shape = (1, 4, 2**15, 2**14 + 32)
    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    r = torch.randn_like(x)
    s, b = torch.rand(4, device="cuda") + 0.5, torch.randn(4, device="cuda")
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = ops.add_relu(x.contiguous(memory_format=fmt), r.contiguous(memory_format=fmt), s, b)
        for c in range(4):
            ref = torch.relu(x[:, c].float() * s[c] + b[c] + r[:, c].float())
            assert (y[:, c].float() - ref).abs().max().item() <= 1e-2 * (1 + ref.abs().max().item())
        del y


# --------------------------------------------------------------------------------------------------------
# Bad input: a clear error that names the argument.


def _bad_inputs():
    x = torch.randn(2, 4, 3, 3)
    ok = dict(x=x, residual=torch.randn(2, 4, 3, 3))
    cases = [
        ("residual", dict(ok, residual=torch.randn(2, 4, 3, 2)), "shape"),
        ("residual", dict(ok, residual=torch.randn(1, 4, 3, 3)), "no broadcasting"),
        ("residual", dict(ok, residual=torch.randn(2, 4, 3, 3, dtype=torch.float64)), "dtype"),
        ("x", dict(ok, x=torch.randint(0, 5, (2, 4, 3, 3)), residual=torch.randint(0, 5, (2, 4, 3, 3))), "float32"),
        ("x", dict(ok, x=torch.ones(2, 4, 3, 3, dtype=torch.bool), residual=torch.ones(2, 4, 3, 3, dtype=torch.bool)), "float32"),
        ("x", dict(ok, x=torch.randn(5), residual=torch.randn(5)), "rank >= 2"),
        ("scale", dict(ok, scale=torch.randn(3)), r"shape \[4\]"),
        ("scale", dict(ok, scale=torch.randn(4, 1)), "1-D"),
        ("bias", dict(ok, bias=torch.randn(5)), r"shape \[4\]"),
        ("bias", dict(ok, bias=torch.randn(4, dtype=torch.float64)), "dtype"),
        ("scale", dict(ok, scale=torch.randint(0, 3, (4,))), "dtype"),
    ]
    if torch.cuda.is_available():
        cases.append(("residual", dict(ok, residual=ok["residual"].cuda()), "device"))
        cases.append(("scale", dict(ok, scale=torch.randn(4, device="cuda")), "device"))
    return cases


@pytest.mark.parametrize("arg,kwargs,expected", _bad_inputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_the_argument(arg, kwargs, expected):
    with pytest.raises(RuntimeError, match=f"'{arg}'") as info:
        ops.add_relu(**kwargs)
    assert any(w in str(info.value) for w in expected.replace("\\", "").split("|")) or pytest.fail(str(info.value))


def test_bad_input_in_backward_names_the_argument():
    out = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="'x'.*shape"):
        torch.ops.fastblocks.add_act_backward(torch.randn(2, 4, 3), out, out, None, None, "relu", 0.01, False)
    with pytest.raises(RuntimeError, match="'x'.*required"):
        torch.ops.fastblocks.add_act_backward(torch.randn_like(out), None, out, None, None, "relu", 0.01, True)


# --------------------------------------------------------------------------------------------------------
# The portable CPU kernels (what a CPU without AVX2 runs), forced through ATen's own switch.


def test_portable_cpu_kernels_match_reference():
    script = (
        "import torch, pyfastblocks\n"
        "from pyfastblocks import ops\n"
        "assert pyfastblocks.build_info()['cpu_kernels'] == 'default', pyfastblocks.build_info()\n"
        "for dt in (torch.float32, torch.float16, torch.bfloat16):\n"
        "  for fmt in (torch.contiguous_format, torch.channels_last):\n"
        "    x = torch.randn(3, 13, 5, 7).to(dt).contiguous(memory_format=fmt).requires_grad_()\n"
        "    r = torch.randn(3, 13, 5, 7).to(dt)\n"
        "    s = (torch.rand(13) + 0.5).requires_grad_(); b = torch.randn(13).requires_grad_()\n"
        "    y = ops.add_relu(x, r, s, b)\n"
        "    ref = torch.relu(x.double() * s.double().view(1,-1,1,1) + b.double().view(1,-1,1,1) + r.double())\n"
        "    assert (y.double() - ref).abs().max() <= 0.02 * (1 + ref.abs().max()), dt\n"
        "    y.float().sum().backward()\n"
        "    assert (b.grad.double() - (ref > 0).double().sum((0, 2, 3))).abs().max() < 1e-3\n"
        "    xs = [torch.randn(3, c, 5, 7).to(dt).contiguous(memory_format=fmt).requires_grad_() for c in (5, 8)]\n"
        "    cat = ops.branch_concat(xs, s, b)\n"
        "    ref = torch.relu(torch.cat(xs, 1).double() * s.double().view(1,-1,1,1) + b.double().view(1,-1,1,1))\n"
        "    assert (cat.double() - ref).abs().max() <= 0.02 * (1 + ref.abs().max()), dt\n"
        "    cat.float().sum().backward()\n"
        "    assert (xs[1].grad.double() - (ref[:, 5:] > 0).double() * s[5:].double().view(1,-1,1,1)).abs().max() < 1e-2\n"
        "print('ok')\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    if env.get("PYTHONPATH"):  # the child runs elsewhere: keep a relative PYTHONPATH (local dev) pointing here
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir()
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_build_info():
    info = pyfastblocks.build_info()
    for key in ("version", "torch_version", "cuda_compiled", "cuda_archs", "cpu_kernels", "torch_runtime_version"):
        assert key in info
    assert info["torch_version"] == torch.__version__, "built against another torch than the one imported"
    if info["cuda_compiled"]:
        assert info["cuda_archs"] not in (None, "unknown")
    if torch.cuda.is_available():
        assert info["cuda_compiled"], "CUDA is here but the CUDA kernels were not built"
