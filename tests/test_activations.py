"""Every activation of the table (pyfastblocks.activations, csrc/common/activation.h) on every epilogue op
(tests/epilogue_samples.py): forward and backward against float64 references in every dtype and layout, gradcheck,
opcheck, the relu spellings, what the backward keeps, and bad input."""
import pytest
import torch
from conftest import DEVICES, LAYOUTS, TOLERANCES, cpu_depthwise_backend
from epilogue_samples import ACTIVATION_CASES, OPS, OPS_BY_NAME, act_id
from torch.library import opcheck

from pyfastblocks import activations, ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Composite ops round their intermediate (the depthwise output) to the data's dtype before the next step: their
# error bound is a few more output ulps.
COMPOSITE_SLACK = {"separable_conv2d": 4.0}


# The depthwise ops run under both CPU depthwise backends ("auto" routes float32 channels_last and small planes to
# oneDNN, with this project's epilogue kernel applying the activation); the others under the default.
OP_BACKENDS = [pytest.param((op, backend), id=f"{op.name}-{backend}")
               for op in OPS for backend in (("fastblocks", "auto") if "conv2d" in op.name else ("auto",))]


@pytest.fixture
def backend(request, device, op_backend):
    op, choice = op_backend
    if device == "cuda" and choice == "fastblocks" and "conv2d" in op.name:
        pytest.skip("the CPU depthwise backend choice does not apply to CUDA (the case runs under 'auto')")
    with cpu_depthwise_backend(choice):
        yield choice


def _close(got, ref, dtype, factor=1.0):
    """got (any dtype) against the float64 ref: the dtype's tolerance, relative to the reference's magnitude (sums
    of products: a per-element relative error is meaningless where terms cancel)."""
    tol = TOLERANCES[dtype]
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    torch.testing.assert_close(got.double(), ref, rtol=tol["rtol"] * factor, atol=tol["atol"] * factor * scale)


# Activations whose derivative jumps (at 0, 6, -3, 3). The depthwise ops' backward recomputes the pre-activation
# into a tensor of the data's dtype (as eager's convolution output is), so for float16/bfloat16 an element within
# rounding of a kink may take the other side's derivative than the float64 reference does: those few elements are
# allowed to differ (at most KINK_ALLOWANCE of them); everything else is held to the dtype's bound.
KINKED = {"relu", "relu6", "leaky_relu", "hardswish"}
KINK_ALLOWANCE = 0.02


def _close_but_kinks(got, ref, dtype, factor):
    tol = TOLERANCES[dtype]
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    bad = (got.double() - ref).abs() > tol["atol"] * factor * scale + tol["rtol"] * factor * ref.abs()
    assert bad.sum().item() <= max(1, KINK_ALLOWANCE * ref.numel()), f"{bad.sum().item()} of {ref.numel()} differ"


def _detached64(tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
@pytest.mark.parametrize("op_backend", OP_BACKENDS)
def test_forward_matches_float64(device, backend, op_backend, case, dtype, layout):
    op = op_backend[0]
    activation, slope = case
    t = op.make(dtype, device, layout)
    y = op.fused(t, activation, slope)
    assert y.dtype == dtype and y.device.type == device
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    _close(y, op.reference(t, activation, slope), dtype, COMPOSITE_SLACK.get(op.name, 1.0))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
@pytest.mark.parametrize("op_backend", OP_BACKENDS)
def test_backward_matches_float64(device, backend, op_backend, case, dtype, layout):
    op = op_backend[0]
    activation, slope = case
    t = [x.requires_grad_() for x in op.make(dtype, device, layout, seed=1)]
    y = op.fused(t, activation, slope)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    y.backward(grad)
    refs = _detached64(t)
    op.reference(refs, activation, slope).backward(grad.double())
    factor = COMPOSITE_SLACK.get(op.name, 1.0)
    kinks = activation in KINKED and dtype in (torch.float16, torch.bfloat16) and "conv2d" in op.name
    for i, (got, ref) in enumerate(zip(t, refs)):
        # per-channel parameters and weights: sums over the batch's positions, accumulated in float32
        f = factor * (30.0 if i in op.param_positions else 1.0)
        if kinks and i not in op.param_positions:
            _close_but_kinks(got.grad, ref.grad, dtype, f)
        else:
            _close(got.grad, ref.grad, dtype, f)


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_gradcheck_float64(device, op, case):
    activation, slope = case
    t = [x.requires_grad_() for x in op.make(torch.float64, device, "channels_last", seed=3)]
    assert torch.autograd.gradcheck(lambda *a: op.fused(list(a), activation, slope), tuple(t))


OPCHECK_CASES = [("silu", 0.01), ("hardswish", 0.01), ("gelu", 0.01), ("gelu_tanh", 0.01), ("leaky_relu", -0.3),
                 ("relu6", 0.01)]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=act_id)
def test_opcheck(device, case):
    """torch.library.opcheck (schema, autograd registration, fake tensors, AOT dispatch) on every op and its backward
    with activations other than ReLU."""
    activation, slope = case
    fb = torch.ops.fastblocks
    x, r, s, b = (t.requires_grad_() for t in OPS_BY_NAME["add_act"].make(torch.float32, device, "channels_last"))
    opcheck(fb.add_act.default, (x, r, s, b, activation, slope))
    g = torch.randn_like(x)
    opcheck(fb.add_act_backward.default, (g, x.detach(), r.detach(), s.detach(), b.detach(), activation, slope, True))
    *xs, s2, b2 = (t.requires_grad_() for t in OPS_BY_NAME["branch_concat"].make(torch.float32, device, "nchw"))
    opcheck(fb.branch_concat.default, (xs, s2, b2, activation, slope))
    go = torch.randn(2, sum(t.shape[1] for t in xs), 4, 6, device=device)
    opcheck(fb.branch_concat_backward.default, (go, [t.shape[1] for t in xs], [t.detach() for t in xs], s2.detach(),
                                                b2.detach(), activation, slope, True))
    xd, w, bd = (t.requires_grad_() for t in OPS_BY_NAME["depthwise_conv2d"].make(torch.float32, device, "nchw"))
    opcheck(fb.depthwise_conv2d.default, (xd, w, bd, [1, 1], [1, 1], [1, 1], activation, False, slope))
    out = ops.depthwise_conv2d(xd.detach(), w.detach(), bd.detach(), 1, 1, 1, activation, negative_slope=slope)
    opcheck(fb.depthwise_conv2d_backward.default,
            (torch.randn_like(out), out, xd.detach(), w.detach(), bd.detach(), [1, 1], [1, 1], [1, 1], activation,
             slope, False, [True, True, True]))
    sep = [t.requires_grad_() for t in OPS_BY_NAME["separable_conv2d"].make(torch.float32, device, "channels_last")]
    opcheck(fb.separable_conv2d.default, (*sep, [2, 2], [1, 1], [1, 1], activation, activation, False, slope, slope))


@pytest.mark.parametrize("case", [c for c in ACTIVATION_CASES if c[0] != "leaky_relu"], ids=act_id)
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_negative_slope_is_ignored_by_other_activations(device, op, case):
    """Every op accepts negative_slope with every activation and only leaky_relu reads it (one rule for all ops)."""
    activation, _ = case
    t = op.make(torch.float32, device, "nchw")
    assert torch.equal(op.fused(t, activation, 0.01), op.fused(t, activation, -7.5))


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
@pytest.mark.parametrize("bad", ["swish2", "ReLU", "", "gelu_erf"])
def test_unknown_activation_names_the_argument(device, op, bad):
    t = op.make(torch.float32, device, "nchw")
    with pytest.raises(ValueError, match=r"argument '(depthwise_)?activation' must be one of .*'silu'.*got"):
        op.fused(t, bad, 0.01)


def test_raw_ops_reject_unknown_activations_too(device):
    """The C++ ops check the name themselves (torch.ops.fastblocks.* called directly), listing the table."""
    x, r, s, b = OPS_BY_NAME["add_act"].make(torch.float32, device, "nchw")
    with pytest.raises(RuntimeError, match=r"'activation' must be one of \"none\", \"relu\".*\"gelu_tanh\", got \"mish\""):
        torch.ops.fastblocks.add_act(x, r, s, b, "mish", 0.01)
    with pytest.raises(RuntimeError, match=r"'negative_slope' must be a finite number"):
        torch.ops.fastblocks.branch_concat([x], s, b, "leaky_relu", float("inf"))


def test_tables_agree():
    """The Python table and the C++ table hold the same names (the C++ message lists its own)."""
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError) as info:
        torch.ops.fastblocks.branch_concat([x], None, None, "?", 0.01)
    listed = [n.strip().strip('"') for n in str(info.value).split("must be one of ")[1].split(", got")[0].split(",")]
    assert listed == list(activations.NAMES)


def test_relu_spellings_are_the_activation_ops(device):
    x, r, s, b = OPS_BY_NAME["add_act"].make(torch.float32, device, "channels_last")
    assert torch.equal(ops.add_relu(x, r, s, b), ops.add_act(x, r, s, b, "relu"))
    assert torch.equal(ops.add_relu(x, r, s, b, relu=False), ops.add_act(x, r, s, b, "none"))
    assert torch.equal(ops.affine_relu(x, s, b), ops.affine_act(x, s, b, "relu"))
    assert torch.equal(ops.affine_relu(x, s, b, relu=False), ops.affine_act(x, s, b, "none"))
    assert torch.equal(ops.branch_concat([x, r], relu=False), ops.branch_concat([x, r], activation="none"))


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
@pytest.mark.parametrize("name", ["add_act", "affine_act", "branch_concat"])
def test_output_changed_in_place_keeps_gradients_right(device, name, case):
    """The epilogue ops never keep their output for the backward, so the in-place ops a model runs on it afterwards
    (an in-place activation, `out += identity`) cannot spoil their gradients."""
    activation, slope = case
    op = OPS_BY_NAME[name]
    t = [x.requires_grad_() for x in op.make(torch.float64, device, "nchw")]
    y = op.fused(t, activation, slope)
    y.mul_(3.0).relu_()  # what comes next in the model, in place
    y.sum().backward()
    refs = _detached64(t)
    torch.relu(op.reference(refs, activation, slope) * 3.0).sum().backward()
    for got, ref in zip(t, refs):
        torch.testing.assert_close(got.grad, ref.grad)


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
def test_backward_keeps_what_the_activation_needs(device, case):
    """ReLU-like activations (gradient from the output) keep the depthwise output; the others keep the bias and
    recompute the pre-activation; the epilogue ops keep their inputs, never their output (and nothing but x for
    'none' with a trainable scale)."""
    activation, slope = case
    entry = activations.get(activation)
    x, w, b = (t.requires_grad_() for t in OPS_BY_NAME["depthwise_conv2d"].make(torch.float32, device, "nchw"))
    saved = _saved_storage(lambda: ops.depthwise_conv2d(x, w, b, 1, 1, 1, activation, negative_slope=slope))
    y = ops.depthwise_conv2d(x, w, b, 1, 1, 1, activation, negative_slope=slope)
    assert (("output",) in saved) == (activation != "none" and entry.grad_from_output(slope))
    assert (b.data_ptr() in saved) == (not entry.grad_from_output(slope))
    assert y is not None
    xa, r, s, ba = (t.requires_grad_() for t in OPS_BY_NAME["add_act"].make(torch.float32, device, "nchw"))
    saved = _saved_storage(lambda: ops.add_act(xa, r, s, ba, activation, slope))
    assert ("output",) not in saved
    assert (r.data_ptr() in saved) == (activation != "none")


def _saved_storage(fn):
    """The data pointers autograd keeps for the backward of fn()'s last node (the output marked ("output",))."""
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (packed.append(t.data_ptr()), t)[1], lambda t: t):
        y = fn()
    return {("output",) if p == y.data_ptr() else p for p in packed}


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
@pytest.mark.parametrize("op", OPS, ids=lambda o: o.name)
def test_zero_batch(device, op, case):
    activation, slope = case
    t = [x[:0].detach().requires_grad_() if x.dim() == 4 and i == 0 else x.requires_grad_()
         for i, x in enumerate(op.make(torch.float32, device, "nchw"))]
    if op.name == "branch_concat":
        t = [x[:0].detach().requires_grad_() if x.dim() == 4 else x for x in t]
    if op.name == "add_act":
        t[1] = t[1][:0].detach().requires_grad_()
    y = op.fused(t, activation, slope)
    assert y.shape[0] == 0
    y.sum().backward()
    for x in t:
        if x.dim() == 1 or x.shape[1] == 1 and x.dim() == 4 and x.shape[0] != 0:
            assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
def test_nan_propagates(device, case):
    """NaN in, NaN out, for every activation (as torch's own functions do)."""
    activation, slope = case
    x = torch.tensor([float("nan"), -2.0, 0.5, 4.0, 7.0], device=device).view(1, 5, 1, 1)
    y = ops.affine_act(x, activation=activation, negative_slope=slope)
    assert torch.isnan(y[0, 0]).all()
    torch.testing.assert_close(y[0, 1:], activations.get(activation).function(x[0, 1:], slope))


def test_activation_module_recognition():
    """activations.from_module: torch's modules and timm's, with their arguments; anything else is None."""
    import torch.nn as nn

    assert activations.from_module(nn.SiLU(inplace=True)) == ("silu", 0.01)
    assert activations.from_module(nn.Hardswish()) == ("hardswish", 0.01)
    assert activations.from_module(nn.GELU()) == ("gelu", 0.01)
    assert activations.from_module(nn.GELU(approximate="tanh")) == ("gelu_tanh", 0.01)
    assert activations.from_module(nn.LeakyReLU(0.1)) == ("leaky_relu", 0.1)
    assert activations.from_module(nn.Hardtanh(0.0, 6.0)) == ("relu6", 0.01)
    assert activations.from_module(nn.Hardtanh(-1.0, 1.0)) is None
    assert activations.from_module(nn.Sigmoid()) is None
    assert activations.from_module(None) == ("none", 0.01)

    class MySiLU(nn.SiLU):  # a subclass may compute something else: not recognized
        pass

    assert activations.from_module(MySiLU()) is None
    timm = pytest.importorskip("timm")
    from timm.layers import activations as ta

    assert activations.from_module(ta.GELUTanh()) == ("gelu_tanh", 0.01)
    assert activations.from_module(ta.Swish()) == ("silu", 0.01)
    assert activations.from_module(ta.HardSwish()) == ("hardswish", 0.01)
    assert activations.from_module(ta.Mish()) is None
    del timm


def test_compose():
    c = activations.compose
    assert c(("none", 0.01), ("silu", 0.01)) == ("silu", 0.01)
    assert c(("relu", 0.01), ("relu6", 0.01)) == ("relu6", 0.01)
    assert c(("relu6", 0.01), ("relu", 0.01)) == ("relu6", 0.01)
    assert c(("relu", 0.01), ("relu", 0.01)) == ("relu", 0.01)
    assert c(("silu", 0.01), ("silu", 0.01)) is None
    assert c(("relu", 0.01), ("silu", 0.01)) is None


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=act_id)
def test_kink_points_follow_torch(device, case):
    """At the points where an activation's derivative jumps (0 for the ReLUs, 6 for ReLU6, -3 and 3 for
    Hardswish) the fused gradient takes the value torch's own backward takes."""
    activation, slope = case
    values = torch.tensor([-6.0, -3.0, -0.0, 0.0, 3.0, 6.0, 1e-30, -1e-30], dtype=torch.float64, device=device)
    for dtype in (torch.float64, torch.float32):
        z = values.to(dtype).view(1, -1, 1, 1).requires_grad_()
        ops.affine_act(z, activation=activation, negative_slope=slope).sum().backward()
        ref = values.to(dtype).view(1, -1, 1, 1).requires_grad_()
        activations.get(activation).function(ref, slope).sum().backward()
        torch.testing.assert_close(z.grad, ref.grad, rtol=1e-6, atol=1e-6)
