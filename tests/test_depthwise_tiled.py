"""The CUDA backend's tiled depthwise programs (csrc/common/depthwise_tiled.h), run by the CPU emulator
(pyfastblocks._C._emulate_tiled_depthwise_*): the same program choice, blocks, threads, phases, shared-memory
indexing and arithmetic as the CUDA kernels, thread by thread, with NaN-filled and bounds-checked shared memory.
So these tests check the GPU code on a machine without a GPU; where CUDA is available, the GPU's results are also
compared with the emulator's.

Every case asserts which program ran, so a change in the program choice cannot turn these into tests of the
generic path."""
import pytest
import torch
import torch.nn.functional as F

from pyfastblocks import _C

from conftest import TOLERANCES

DTYPE_NAMES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16"}
VEC = {torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}

# (channels, multiplier, height, width, kernel (kh, kw), stride, padding (ph, pw), dilation)
GEOMETRIES = [
    (8, 1, 13, 11, (3, 3), 1, (1, 1), 1),  # several planes per block, partial column strips
    (8, 1, 13, 11, (3, 3), 2, (1, 1), 1),
    (8, 1, 12, 9, (5, 5), 1, (2, 2), 1),
    (8, 1, 17, 15, (5, 5), 2, (2, 2), 1),
    (3, 1, 70, 45, (3, 3), 1, (1, 1), 1),  # several tiles along both axes; odd channel count
    (16, 1, 40, 40, (3, 3), 1, (0, 1), 1),  # > 2048 positions: several weight-gradient chunks
    (6, 2, 9, 10, (3, 3), 1, (1, 1), 1),  # channel multiplier 2
    (4, 3, 11, 8, (5, 5), 2, (3, 1), 1),  # multiplier 3, padding wider than the kernel's half
    (8, 1, 14, 13, (3, 3), 1, (2, 2), 2),  # dilation: the dynamic shape
    (8, 1, 15, 16, (7, 7), 3, (3, 3), 1),  # 7x7 stride 3: dynamic forward/input grad, generic weight grad
    (8, 1, 9, 12, (2, 3), 1, (1, 0), 1),  # non-square kernel
    (8, 1, 7, 7, (1, 1), 1, (0, 0), 1),  # 1x1
    (16, 1, 3, 2, (3, 3), 2, (1, 1), 1),  # output smaller than a tile
    (8, 1, 6, 7, (3, 3), 1, (3, 2), 1),  # padding past the kernel: output larger than the input
]
GEOMETRY_IDS = [f"c{c}m{m}_{h}x{w}_k{k[0]}x{k[1]}s{s}p{p[0]}{p[1]}d{d}" for c, m, h, w, k, s, p, d in GEOMETRIES]
EPILOGUES = [("none", False), ("relu", True), ("relu6", False)]


def shape_name(kernel, stride, dilation):
    kh, kw = kernel
    if dilation == 1 and kh == kw and kh in (3, 5) and stride in (1, 2):
        return f"{kh}x{kw}s{stride}"
    return "dynamic"


def expected_programs(geometry, dtype, channels_last):
    """The programs the launcher must pick: (forward, input grad, weight/bias grad)."""
    c, m, h, w, kernel, stride, padding, dilation = geometry
    t = DTYPE_NAMES[dtype]
    shape = shape_name(kernel, stride, dilation)
    if channels_last:
        if m != 1:
            forward = input_grad = "generic"
        elif c % VEC[dtype] == 0:
            forward = f"nhwc_forward<{t},vec{VEC[dtype]},{shape}>"
            input_grad = f"nhwc_input_grad<{t},vec{VEC[dtype]},{shape}>"
        else:
            forward = f"nhwc_forward<{t},vec1,dynamic>"
            input_grad = f"nhwc_input_grad<{t},vec1,dynamic>"
    else:
        forward = f"nchw_forward<{t},{shape}>"
        input_grad = f"nchw_input_grad<{t},{shape}>"
    if kernel in ((3, 3), (5, 5)):
        params = [f"{'nhwc' if channels_last else 'nchw'}_param_grad<{t},{kernel[0]}x{kernel[1]}>", "param_grad_finish"]
    else:
        params = ["generic"]
    return [forward], [input_grad] + params


def make_inputs(geometry, dtype, channels_last, batch=2, seed=0):
    c, m, h, w, kernel, stride, padding, dilation = geometry
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c, h, w, generator=gen).to(dtype)
    weight = torch.randn(c * m, 1, *kernel, generator=gen).to(dtype)
    bias = torch.randn(c * m, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, weight, bias


def conv_args(geometry):
    c, m, h, w, kernel, stride, padding, dilation = geometry
    return [stride, stride], list(padding), [dilation, dilation]


def reference_forward(x, weight, bias, geometry, activation, input_relu):
    stride, padding, dilation = conv_args(geometry)
    xx = x.double().relu() if input_relu else x.double()
    y = F.conv2d(xx, weight.double(), bias.double(), stride, padding, dilation, groups=x.shape[1])
    return {"none": y, "relu": y.relu(), "relu6": y.clamp(0, 6)}[activation]


def reference_backward(grad_out, out, x, weight, geometry, activation, input_relu):
    """float64 gradients with the activation's mask taken from the saved output, as the kernels take it."""
    stride, padding, dilation = conv_args(geometry)
    g, y = grad_out.double(), out.double()
    if activation == "relu":
        g = torch.where(y > 0, g, 0.0)
    elif activation == "relu6":
        g = torch.where((y > 0) & (y < 6), g, 0.0)
    xx = x.double().requires_grad_()
    ww = weight.double().requires_grad_()
    conv = F.conv2d(xx.relu() if input_relu else xx, ww, None, stride, padding, dilation, groups=x.shape[1])
    gx, gw = torch.autograd.grad(conv, (xx, ww), g)
    return gx, gw, g.sum((0, 2, 3))


def assert_close_scaled(got, ref, dtype):
    """Error within the dtype's tolerance relative to the reference's largest magnitude (sums of signed terms)."""
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    tol = TOLERANCES[dtype]["rtol"] * scale
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=tol)


def every_case(test):
    """geometry x dtype x layout x epilogue."""
    test = pytest.mark.parametrize("activation,input_relu", EPILOGUES)(test)
    test = pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])(test)
    test = pytest.mark.parametrize("dtype", list(DTYPE_NAMES), ids=list(DTYPE_NAMES.values()))(test)
    return pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)(test)


@every_case
def test_tiled_forward_matches_conv2d(geometry, dtype, channels_last, activation, input_relu):
    x, weight, bias = make_inputs(geometry, dtype, channels_last)
    out, programs = _C._emulate_tiled_depthwise_forward(x, weight, bias, *conv_args(geometry), activation, input_relu)
    assert programs == expected_programs(geometry, dtype, channels_last)[0]
    if programs == ["generic"]:
        assert out is None
        return
    ref = reference_forward(x, weight, bias, geometry, activation, input_relu)
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close_scaled(out, ref, dtype)


@every_case
def test_tiled_backward_matches_conv2d(geometry, dtype, channels_last, activation, input_relu):
    x, weight, bias = make_inputs(geometry, dtype, channels_last)
    out = reference_forward(x, weight, bias, geometry, activation, input_relu).to(dtype)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    gi, gw, gb, programs = _C._emulate_tiled_depthwise_backward(
        grad_out, out, x, weight, *conv_args(geometry), activation, input_relu, [True, True, True]
    )
    assert programs == expected_programs(geometry, dtype, channels_last)[1]
    ref_gi, ref_gw, ref_gb = reference_backward(grad_out, out, x, weight, geometry, activation, input_relu)
    if programs[0] != "generic":
        assert gi.shape == x.shape and gi.dtype == dtype
        assert_close_scaled(gi, ref_gi, dtype)
    if programs[-1] != "generic":
        assert gw.shape == weight.shape and gw.dtype == dtype
        assert_close_scaled(gw, ref_gw, dtype)
        assert gb.dtype == torch.float32
        assert_close_scaled(gb, ref_gb, torch.float32)


@pytest.mark.parametrize("mask", [[True, False, False], [False, True, False], [False, False, True]])
def test_tiled_backward_partial_outputs(mask):
    """Only the wanted gradients are produced; the weight-gradient programs serve grad_weight and grad_bias alone."""
    geometry = GEOMETRIES[0]
    x, weight, bias = make_inputs(geometry, torch.float32, False)
    out = reference_forward(x, weight, bias, geometry, "relu", False).float()
    grad_out = torch.randn_like(out)
    gi, gw, gb, programs = _C._emulate_tiled_depthwise_backward(
        grad_out, out, x, weight, *conv_args(geometry), "relu", False, mask
    )
    ref = reference_backward(grad_out, out, x, weight, geometry, "relu", False)
    for got, want, ref_t in zip((gi, gw, gb), mask, ref):
        if want:
            assert_close_scaled(got, ref_t, torch.float32)
        else:
            assert got.numel() == 0
    assert ("nchw_input_grad<float,3x3s1>" in programs) == mask[0]
    assert ("param_grad_finish" in programs) == (mask[1] or mask[2])


def test_tiled_misaligned_nhwc_takes_the_scalar_program():
    """A channels_last tensor whose data is not 16-byte aligned is read one channel at a time."""
    geometry = GEOMETRIES[0]
    x, weight, bias = make_inputs(geometry, torch.float16, True)
    storage = torch.empty(x.numel() + 1, dtype=x.dtype)
    shifted = storage[1:].as_strided(x.shape, x.stride())
    shifted.copy_(x)
    out, programs = _C._emulate_tiled_depthwise_forward(shifted, weight, bias, *conv_args(geometry), "relu", False)
    assert programs == ["nhwc_forward<half,vec1,dynamic>"]
    assert_close_scaled(out, reference_forward(x, weight, bias, geometry, "relu", False), torch.float16)


def test_tiled_misaligned_backward_takes_the_scalar_program():
    geometry = GEOMETRIES[0]
    x, weight, bias = make_inputs(geometry, torch.bfloat16, True)
    out = reference_forward(x, weight, bias, geometry, "relu6", False).to(torch.bfloat16)
    out = out.contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    storage = torch.empty(out.numel() + 1, dtype=out.dtype)
    shifted = storage[1:].as_strided(out.shape, out.stride())
    shifted.copy_(grad_out.contiguous(memory_format=torch.channels_last))
    gi, gw, gb, programs = _C._emulate_tiled_depthwise_backward(
        shifted, out, x, weight, *conv_args(geometry), "relu6", False, [True, True, True]
    )
    assert programs[0] == "nhwc_input_grad<bfloat16,vec1,dynamic>"
    ref = reference_backward(grad_out, out, x, weight, geometry, "relu6", False)
    assert_close_scaled(gi, ref[0], torch.bfloat16)
    assert_close_scaled(gw, ref[1], torch.bfloat16)


def test_tiled_half_bias():
    """A half bias is widened to float32 before the kernels (as folded BatchNorm parameters are)."""
    geometry = GEOMETRIES[1]
    x, weight, bias = make_inputs(geometry, torch.float16, False)
    out, programs = _C._emulate_tiled_depthwise_forward(
        x, weight, bias.half(), *conv_args(geometry), "relu", False
    )
    assert programs == ["nchw_forward<half,3x3s2>"]
    assert_close_scaled(out, reference_forward(x, weight, bias.half().float(), geometry, "relu", False), torch.float16)


def test_tiled_tile_shrinks_to_fit_shared_memory():
    """A wide dilated kernel: the 32-row tile needs more than 48 KB of shared memory, so the tile gets fewer rows."""
    geometry = (2, 1, 100, 100, (7, 7), 3, (3, 3), 8)
    x, weight, bias = make_inputs(geometry, torch.float32, False, batch=1)
    out, programs = _C._emulate_tiled_depthwise_forward(x, weight, bias, *conv_args(geometry), "none", True)
    assert programs == ["nchw_forward<float,dynamic>"]
    assert_close_scaled(out, reference_forward(x, weight, bias, geometry, "none", True), torch.float32)


def test_tiled_nothing_fits_takes_the_generic_kernels():
    """One output column already needs more than 48 KB of shared memory: the generic kernels run."""
    geometry = (1, 1, 1, 14010, (1, 3), 1, (0, 0), 7000)
    x, weight, bias = make_inputs(geometry, torch.float32, False, batch=1)
    out, programs = _C._emulate_tiled_depthwise_forward(x, weight, bias, [1, 1], [0, 0], [1, 7000], "none", False)
    assert programs == ["generic"] and out is None


def test_tiled_nan_propagates():
    """NaN in the input reaches the outputs that read it, as in F.conv2d (the shared memory is NaN-filled before
    each block, so only a genuine NaN may survive where the reference has one)."""
    geometry = GEOMETRIES[0]
    x, weight, bias = make_inputs(geometry, torch.float32, False)
    x[0, 0, 5, 5] = float("nan")
    out, _ = _C._emulate_tiled_depthwise_forward(x, weight, bias, *conv_args(geometry), "relu", False)
    ref = reference_forward(x, weight, bias, geometry, "relu", False)
    assert torch.equal(out.isnan(), ref.isnan())
    assert out.isnan().sum() == 9


def test_tiled_float64_uses_the_generic_kernels():
    geometry = GEOMETRIES[0]
    x, weight, bias = make_inputs(geometry, torch.float64, False)
    out, programs = _C._emulate_tiled_depthwise_forward(x, weight, bias.double(), *conv_args(geometry), "none", False)
    assert programs == ["generic"] and out is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", list(DTYPE_NAMES), ids=list(DTYPE_NAMES.values()))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_cuda_matches_the_emulator(geometry, dtype, channels_last):
    """The GPU runs the programs the emulator runs: same results up to float32 rounding order."""
    x, weight, bias = make_inputs(geometry, dtype, channels_last)
    args = conv_args(geometry)
    out, programs = _C._emulate_tiled_depthwise_forward(x, weight, bias, *args, "relu", True)
    if out is None:
        return
    got = torch.ops.fastblocks.depthwise_conv2d(x.cuda(), weight.cuda(), bias.cuda(), *args, "relu", True)
    assert_close_scaled(got.cpu(), out.double(), dtype)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    emulated = _C._emulate_tiled_depthwise_backward(grad_out, out, x, weight, *args, "relu", True, [True] * 3)
    on_gpu = torch.ops.fastblocks.depthwise_conv2d_backward(
        grad_out.cuda(), out.cuda(), x.cuda(), weight.cuda(), None, *args, "relu", 0.01, True, [True] * 3
    )
    for e, g in zip(emulated[:3], on_gpu):
        if e is not None:
            assert_close_scaled(g.cpu(), e.double(), dtype if e.dtype == dtype else torch.float32)
