"""The CUDA programs of the epilogue ops (csrc/common/epilogue_programs.h: add_act and branch_concat forwards, the
elementwise backwards, the fixed-order reducing backwards and their finish), run on the CPU by the emulator
(pyfastblocks._C._emulate_*: the same program choice, blocks, threads and phases as the GPU; shared memory
NaN-filled, bounds-checked and race-tracked; outputs and workspace NaN-filled, so an element no thread writes
shows; vector accesses alignment-checked), against float64 references and the CPU kernels. On a machine with CUDA
the GPU's results are compared with the emulator's."""
import pytest
import torch
from conftest import TOLERANCES, make_layout
from epilogue_samples import ACTIVATION_CASES, act_id, reference_act

from pyfastblocks import _C

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = ["nchw", "channels_last", "noncontiguous"]
# Shapes that reach every program variant: 16-byte packs or scalar ones (sizes that are or are not multiples of
# the pack width), each ChannelMode (whole packs in a channel; channels-last rows of whole packs; a channel per
# element), several blocks, several partial sums per channel (> 256 packs per channel), ranks 2 and 5.
SHAPES = [(2, 16, 5, 5), (2, 8, 4, 4), (3, 24, 1, 1), (2, 6, 3, 7), (2, 16, 24, 24), (4, 10), (1, 8, 2, 3, 4),
          (2, 3, 17, 17)]


def _params(c, dtype, g, which):
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    s = (torch.rand(c, generator=g) + 0.5).to(pdt) if "s" in which else None
    b = torch.randn(c, generator=g).to(pdt) if "b" in which else None
    return s, b


def _ref(x, r, s, b, act, slope):
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = x.double()
    if s is not None:
        y = y * s.double().view(shape)
    if b is not None:
        y = y + b.double().view(shape)
    if r is not None:
        y = y + r.double()
    return reference_act(y, act, slope)


def _leaf(t):
    """A fresh float64 leaf with t's values (t.double() would be t itself for float64 data)."""
    return t.detach().clone().double().requires_grad_()


def _close(got, ref, dtype, factor=1.0):
    assert not torch.isnan(got).any(), "an element no thread wrote (NaN-filled)"
    tol = TOLERANCES[dtype]
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    torch.testing.assert_close(got.double(), ref, rtol=tol["rtol"] * factor, atol=tol["atol"] * factor * scale)


def _layouts_for(shape):
    return [lay for lay in LAYOUTS if lay != "channels_last" or len(shape) >= 3]


CASES = [(shape, layout) for shape in SHAPES for layout in _layouts_for(shape)]


def _case_id(case):
    shape, layout = case
    return "x".join(map(str, shape)) + "-" + layout


@pytest.mark.parametrize("which", ["sb", "s", "b", ""])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_act_programs(dtype, case, which):
    shape, layout = case
    g = torch.Generator().manual_seed(hash((shape, layout, which)) % 1000)
    x = make_layout(torch.randn(shape, generator=g).to(dtype), layout)
    r = make_layout(torch.randn(shape, generator=g).to(dtype), layout)
    s, b = _params(shape[1], dtype, g, which)
    gy = make_layout(torch.randn(shape, generator=g).to(dtype), layout)
    for act, slope in ACTIVATION_CASES:
        y, names = _C._emulate_add_act(x, r, s, b, act, slope)
        assert names and all(n.startswith("add_act_forward<") for n in names)
        _close(y, _ref(x, r, s, b, act, slope), dtype)
        # the backward: with and without per-channel sums
        xd, rd = _leaf(x), _leaf(r)
        sd = _leaf(s) if s is not None else None
        bd = _leaf(b) if b is not None else None
        _ref(xd, rd, sd, bd, act, slope).backward(gy.double())
        for reduce in (False, True):
            gx, gr, gs, gb, names = _C._emulate_add_act_backward(gy, x, r, s, b, act, slope, reduce)
            expected = ["add_act_backward"] if not reduce else ["rows_reduce", "reduce_finish"] if (
                _is_rows(x, layout)) else ["planes_reduce", "reduce_finish"]
            assert [n.split("<")[0] for n in names] == expected, names
            _close(gr, rd.grad, dtype)
            if s is not None:
                _close(gx, xd.grad, dtype)
            else:
                assert gx.numel() == 0
            if reduce:
                _close(gb, bd.grad if bd is not None else rd.grad.sum([0, *range(2, x.dim())]), dtype, 30)
                if s is not None:
                    _close(gs, sd.grad, dtype, 30)


def _is_rows(x, layout):
    """The channels-last rows program runs for data whose channels are innermost (run == 1)."""
    return x.dim() == 2 or (layout == "channels_last" and x.size(1) > 1) or all(d == 1 for d in x.shape[2:])


BRANCH_SETS = [[3, 8, 5], [8, 8], [16], [1, 4, 2, 8], [8] * 16, [1, 0, 3, 2] * 16]


@pytest.mark.parametrize("branches", BRANCH_SETS, ids=lambda b: "-".join(map(str, b)))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("spatial", [(4, 6), (5, 5), (1, 1), (19, 19)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_branch_concat_programs(dtype, spatial, layout, branches):
    g = torch.Generator().manual_seed(len(branches) * 7 + spatial[0])
    xs = [make_layout(torch.randn(2, c, *spatial, generator=g).to(dtype), layout) for c in branches]
    total = sum(branches)
    s, b = _params(total, dtype, g, "sb")
    out_layout = layout if any(c > 1 for c in branches) else "nchw"
    gy = make_layout(torch.randn(2, total, *spatial, generator=g).to(dtype), out_layout)
    cases = ACTIVATION_CASES if spatial != (19, 19) else [("silu", 0.01), ("relu", 0.01)]
    for act, slope in cases:
        y, names = _C._emulate_branch_concat(xs, s, b, act, slope)
        assert all(n.startswith("branch_concat_forward<") for n in names)
        cat = torch.cat(xs, 1)
        _close(y, _ref(cat, None, s, b, act, slope), dtype)
        xd = [_leaf(x) for x in xs]
        sd, bd = _leaf(s), _leaf(b)
        _ref(torch.cat(xd, 1), None, sd, bd, act, slope).backward(gy.double())
        for reduce in (False, True):
            gi, gs, gb, names = _C._emulate_branch_concat_backward(gy, branches, xs, s, b, act, slope, reduce)
            assert names
            for got, ref in zip(gi, xd):
                _close(got, ref.grad, dtype)
            if reduce:
                _close(gs, sd.grad, dtype, 30)
                _close(gb, bd.grad, dtype, 30)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_without_inputs_for_activation_none(dtype):
    """Activation "none" needs no inputs: the programs run on grad_out alone."""
    gy = torch.randn(2, 7, 3, 3).to(dtype)
    s = torch.rand(7) + 0.5
    gi, gs, gb, names = _C._emulate_branch_concat_backward(gy, [3, 4], [], s, None, "none", 0.01, True)
    _close(torch.cat(gi, 1), gy.double() * s.double().view(1, -1, 1, 1), dtype)
    _close(gb, gy.double().sum([0, 2, 3]), dtype, 30)
    assert gs.numel() == 0
    gx, gr, gs, gb, names = _C._emulate_add_act_backward(gy, None, None, s, None, "none", 0.01, False)
    _close(gr, gy.double(), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_misaligned_tensors_take_the_scalar_programs(dtype):
    base = torch.randn(2 * 8 * 4 * 4 + 1).to(dtype)
    x = base[1:].view(2, 8, 4, 4)  # one element off a 16-byte boundary
    r = torch.randn(2, 8, 4, 4).to(dtype)
    y, names = _C._emulate_add_act(x, r, None, None, "gelu", 0.01)
    assert names == [f"add_act_forward<{'float' if dtype == torch.float32 else 'half'},vec1,none>"]
    _close(y, _ref(x, r, None, None, "gelu", 0.01), dtype)


def test_reduce_over_several_partials_is_exact_and_repeatable():
    """A channel with more packs than a block covers (4 x 40 x 40 = 400 float4 packs: 2 blocks' partials) is summed
    as block partials, then in order; two runs give the same bits (the emulator runs odd blocks' threads in reverse
    order, so a sum that depended on thread order would show)."""
    g = torch.Generator().manual_seed(11)
    x, r, gy = (torch.randn(4, 2, 40, 40, generator=g) for _ in range(3))
    s, b = _params(2, torch.float32, g, "sb")
    first = _C._emulate_add_act_backward(gy, x, r, s, b, "silu", 0.01, True)
    assert first[4] == ["planes_reduce<float,vec4>", "reduce_finish<float>"]
    second = _C._emulate_add_act_backward(gy, x, r, s, b, "silu", 0.01, True)
    for a, c in zip(first[:4], second[:4]):
        assert torch.equal(a, c)
    xd, rd, sd, bd = (_leaf(t) for t in (x, r, s, b))
    _ref(xd, rd, sd, bd, "silu", 0.01).backward(gy.double())
    _close(first[2], sd.grad, torch.float32, 30)
    _close(first[3], bd.grad, torch.float32, 30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_matches_emulator(dtype, layout, case):
    """The GPU runs the programs the emulator ran: same results (the reductions are partitioned by shape alone and
    summed in a fixed order, so the per-channel sums agree to rounding of the last few operations)."""
    act, slope = case
    g = torch.Generator().manual_seed(5)
    shape = (3, 24, 20, 20)
    x = make_layout(torch.randn(shape, generator=g).to(dtype), layout)
    r = make_layout(torch.randn(shape, generator=g).to(dtype), layout)
    s, b = _params(24, dtype, g, "sb")
    gy = make_layout(torch.randn(shape, generator=g).to(dtype), layout)
    emu, _ = _C._emulate_add_act(x, r, s, b, act, slope)
    gpu = torch.ops.fastblocks.add_act(x.cuda(), r.cuda(), s.cuda(), b.cuda(), act, slope)
    _close(gpu.cpu(), emu.double(), dtype)
    emu_b = _C._emulate_add_act_backward(gy, x, r, s, b, act, slope, True)
    gpu_b = torch.ops.fastblocks.add_act_backward(gy.cuda(), x.cuda(), r.cuda(), s.cuda(), b.cuda(), act, slope, True)
    for e, gg in zip(emu_b[:4], gpu_b):
        _close(gg.cpu(), e.double(), dtype, 4)
    xs = [make_layout(torch.randn(3, c, 9, 9, generator=g).to(dtype), layout) for c in (8, 16, 24)]
    s2, b2 = _params(48, dtype, g, "sb")
    emu_c, _ = _C._emulate_branch_concat(xs, s2, b2, act, slope)
    gpu_c = torch.ops.fastblocks.branch_concat([t.cuda() for t in xs], s2.cuda(), b2.cuda(), act, slope)
    _close(gpu_c.cpu(), emu_c.double(), dtype)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("reduce", [False, True])
def test_branch_concat_backward_at_the_preactivation(layout, reduce):
    """grad_at_preactivation: each branch gets g = act'(z) * grad_out itself, not g * scale (the BatchNorm tails'
    backward), with the same per-channel sums."""
    g = torch.Generator().manual_seed(3)
    xs = [make_layout(torch.randn(2, c, 5, 6, generator=g), layout) for c in (8, 4)]
    s, b = _params(12, torch.float32, g, "sb")
    gy = make_layout(torch.randn(2, 12, 5, 6, generator=g), layout)
    scaled = _C._emulate_branch_concat_backward(gy, [8, 4], xs, s, b, "silu", 0.01, reduce)
    plain = _C._emulate_branch_concat_backward(gy, [8, 4], xs, s, b, "silu", 0.01, reduce, True)
    for a, p, sc in zip(scaled[0], plain[0], s.split([8, 4])):
        torch.testing.assert_close(a, p * sc.view(1, -1, 1, 1))
    ops_result = torch.ops.fastblocks.branch_concat_backward(gy, [8, 4], xs, s, b, "silu", 0.01, reduce, True)
    for p, o in zip(plain[0], ops_result[0]):
        torch.testing.assert_close(o, p)
    if reduce:
        torch.testing.assert_close(plain[2], scaled[2])
