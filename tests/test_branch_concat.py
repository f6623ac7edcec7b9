"""fastblocks::branch_concat against a float64 reference act(cat(inputs, 1) * s + b), its gradients, opcheck,
bad input, and pyfastblocks.nn.BranchConcatBNReLU against per-branch BatchNorm + ReLU + cat."""
import pytest
import torch
from conftest import DEVICES, DTYPES, LAYOUTS, TOLERANCES, assert_close, make_layout
from torch import nn
from torch.library import opcheck

from pyfastblocks import ops
from pyfastblocks.nn import BNReLU, BranchConcatBNReLU

# (channels per branch, spatial): odd counts, 1..8 branches, a zero-channel branch, ranks 2..5, and the limit of 64
# branches (DenseNet layers) with empty ones among them.
CONFIGS = [
    ([3], (5, 7)),
    ([4, 8], (3, 3)),
    ([1, 5, 2], (4, 5)),
    ([64, 64, 96, 32], (5, 5)),
    ([3, 0, 5], (2, 3)),
    ([1, 2, 3, 4, 5, 6, 7, 8], (3, 4)),
    ([16, 8, 8], ()),
    ([2, 3], (7,)),
    ([4, 3], (2, 3, 2)),
    ([3, 0, 5, 1] * 16, (3, 2)),
]
AFFINE = ["none", "scale_bias", "scale", "bias"]


def reference(inputs, scale, bias, relu):
    y = torch.cat([t.double() for t in inputs], 1)
    shape = [1, -1] + [1] * (y.dim() - 2)
    if scale is not None:
        y = y * scale.double().view(shape)
    if bias is not None:
        y = y + bias.double().view(shape)
    return torch.relu(y) if relu else y


def make_inputs(channels, spatial, dtype, device, layout, affine, batch=2, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = [make_layout(torch.randn(batch, c, *spatial, generator=g).to(device, dtype), layout) for c in channels]
    total = sum(channels)
    pdt = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    scale = (torch.rand(total, generator=g) + 0.5).to(device, pdt) if "scale" in affine else None
    bias = torch.randn(total, generator=g).to(device, pdt) if "bias" in affine else None
    if requires_grad:
        for t in [*inputs, scale, bias]:
            if t is not None:
                t.requires_grad_(True)
    return inputs, scale, bias


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels,spatial", CONFIGS)
def test_forward_matches_float64_reference(device, channels, spatial, dtype, layout, affine, relu):
    inputs, scale, bias = make_inputs(channels, spatial, dtype, device, layout, affine)
    y = ops.branch_concat(inputs, scale, bias, relu=relu)
    assert y.shape == (2, sum(channels), *spatial) and y.dtype == dtype
    assert_close(y, reference(inputs, scale, bias, relu))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels", [[3, 5], [8, 16, 8], [1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 0, 3] * 12])
def test_backward_matches_float64_autograd(device, channels, dtype, layout, affine, relu):
    inputs, scale, bias = make_inputs(channels, (5, 3), dtype, device, layout, affine, batch=3, requires_grad=True, seed=1)
    y = ops.branch_concat(inputs, scale, bias, relu=relu)
    grad = make_layout(torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(device, dtype), layout)
    y.backward(grad)
    refs = [t.detach().double().requires_grad_() if t is not None else None for t in [*inputs, scale, bias]]
    reference(refs[: len(inputs)], refs[-2], refs[-1], relu).backward(grad.double())
    for got, ref in zip([*inputs, scale, bias], refs):
        if got is None:
            continue
        tol = TOLERANCES[dtype]
        if got.dim() == 1:  # per-channel sums over 45 elements, accumulated in float32
            tol = dict(rtol=max(tol["rtol"], 1e-4), atol=max(tol["atol"], 1e-4) * 30)
        torch.testing.assert_close(got.grad.double(), ref.grad, **tol)


def test_output_memory_format(device):
    inputs, scale, bias = make_inputs([1, 8, 4], (5, 5), torch.float32, device, "channels_last", "scale_bias")
    y = ops.branch_concat(inputs, scale, bias)
    assert y.is_contiguous(memory_format=torch.channels_last)  # decided by the first multi-channel input
    mixed = [inputs[0], inputs[1].contiguous(), inputs[2]]
    y2 = ops.branch_concat(mixed, scale, bias)
    assert y2.is_contiguous()  # inputs[1] decides: NCHW; the channels_last input is converted
    assert_close(y2, reference(mixed, scale, bias, True))


def test_zero_size(device):
    inputs, scale, bias = make_inputs([3, 4], (0, 5), torch.float32, device, "nchw", "scale_bias", requires_grad=True)
    y = ops.branch_concat(inputs, scale, bias)
    assert y.shape == (2, 7, 0, 5)
    y.sum().backward()
    assert inputs[0].grad.shape == inputs[0].shape and torch.equal(bias.grad, torch.zeros_like(bias))


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradcheck_float64(device, layout, affine):
    inputs, scale, bias = make_inputs([2, 3, 1], (3, 2), torch.float64, device, layout, affine, requires_grad=True, seed=3)
    with torch.no_grad():  # move pre-activations near the ReLU kink away from it
        pre = reference(inputs, scale, bias, False)
        s = scale if scale is not None else torch.ones(6, dtype=torch.float64, device=device)
        shift = torch.where(pre.abs() < 0.05, 0.2 / s.view(1, -1, 1, 1), torch.zeros_like(pre))
        for t, part in zip(inputs, shift.split([2, 3, 1], 1)):
            t.add_(part)
        assert reference(inputs, scale, bias, False).abs().min() > 0.01
    n = len(inputs)
    args = (*inputs, scale, bias)
    assert torch.autograd.gradcheck(lambda *a: ops.branch_concat(list(a[:n]), a[n], a[n + 1]), args)


def test_opcheck(device):
    for layout in LAYOUTS:
        for affine in AFFINE:
            for channels in ([3, 5], [1, 4, 2, 8]):
                inputs, s, b = make_inputs(channels, (3, 4), torch.float32, device, layout, affine, requires_grad=True)
                opcheck(torch.ops.fastblocks.branch_concat.default,
                        (inputs, s, b, "relu" if affine != "bias" else "none", 0.01))
    inputs, s, b = make_inputs([8, 8], (2, 2), torch.float16, device, "channels_last", "scale_bias")
    opcheck(torch.ops.fastblocks.branch_concat.default, (inputs, s, b, "relu", 0.01))


def test_opcheck_backward(device):
    inputs, s, b = make_inputs([3, 5], (3, 4), torch.float32, device, "channels_last", "scale_bias")
    out = ops.branch_concat(inputs, s, b)
    grad = torch.randn_like(out)
    for args in [(grad, [3, 5], inputs, s, b, "relu", 0.01, True), (grad, [3, 5], [], None, None, "none", 0.01, True),
                 (grad, [3, 5], inputs, s, b, "relu", 0.01, False), (grad, [3, 5], inputs, s, b, "gelu", 0.01, True)]:
        opcheck(torch.ops.fastblocks.branch_concat_backward.default, args)


def test_backward_is_deterministic(device):
    inputs, s, b = make_inputs([32, 48, 16], (9, 9), torch.float32, device, "channels_last", "scale_bias",
                               batch=8, requires_grad=True)
    results = []
    for _ in range(2):
        for t in [*inputs, s, b]:
            t.grad = None
        ops.branch_concat(inputs, s, b).sum().backward()
        results.append([t.grad.clone() for t in [*inputs, s, b]])
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs CUDA")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype, layout):
    for channels, spatial in [([64, 64, 96, 32], (35, 35)), ([3, 5, 7], (5, 9)), ([320, 768, 768, 192], (8, 8))]:
        inputs, s, b = make_inputs(channels, spatial, dtype, "cpu", layout, "scale_bias", requires_grad=True)
        cuda_inputs = [make_layout(t.detach().cuda(), layout).requires_grad_() for t in inputs]
        sc, bc = s.detach().cuda().requires_grad_(), b.detach().cuda().requires_grad_()
        y, yc = ops.branch_concat(inputs, s, b), ops.branch_concat(cuda_inputs, sc, bc)
        assert_close(yc.cpu(), y.double(), dtype)
        g = torch.randn(y.shape).to(dtype)
        y.backward(g)
        yc.backward(g.cuda())
        for t, tc in zip([*inputs, s, b], [*cuda_inputs, sc, bc]):
            tol = dict(rtol=1e-3, atol=1e-3 * 2 * spatial[0] * spatial[1] ** 0.5) if t.dim() == 1 else TOLERANCES[dtype]
            torch.testing.assert_close(tc.grad.cpu().double(), t.grad.double(), **tol)


@pytest.mark.skipif(
    "cuda" not in DEVICES or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30,
    reason="needs a CUDA device with 40 GB",
)
def test_cuda_past_int32_elements():
    # An output of 2^31 + 2^21 float16 elements from two branches: 64-bit offsets in both memory orders.
    shape = (1, 2, 2**15, 2**14 + 32)
    xs = [torch.randn(shape, device="cuda", dtype=torch.float16) for _ in range(2)]
    s, b = torch.rand(4, device="cuda") + 0.5, torch.randn(4, device="cuda")
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = ops.branch_concat([x.contiguous(memory_format=fmt) for x in xs], s, b)
        for c in range(4):
            ref = torch.relu(xs[c // 2][:, c % 2].float() * s[c] + b[c])
            assert (y[:, c].float() - ref).abs().max().item() <= 1e-2 * (1 + ref.abs().max().item())
        del y


def _bad_inputs():
    x = torch.randn(2, 3, 4, 4)
    cases = [
        ("inputs", dict(inputs=[]), "at least one"),
        ("inputs\\[1\\]", dict(inputs=[x, torch.randn(2, 3, 4, 5)]), "every dim but 1"),
        ("inputs\\[1\\]", dict(inputs=[x, torch.randn(3, 3, 4, 4)]), "every dim but 1"),
        ("inputs\\[1\\]", dict(inputs=[x, torch.randn(2, 3, 4)]), "every dim but 1"),
        ("inputs\\[1\\]", dict(inputs=[x, x.double()]), "dtype"),
        ("inputs\\[0\\]", dict(inputs=[torch.randn(5)]), "rank >= 2"),
        ("inputs\\[0\\]", dict(inputs=[torch.ones(2, 3, dtype=torch.int32)]), "float32"),
        ("scale", dict(inputs=[x, x], scale=torch.randn(5)), "shape \\[6\\]"),
        ("bias", dict(inputs=[x, x], bias=torch.randn(6, 1)), "1-D"),
        ("inputs", dict(inputs=[x] * 65), "at most 64"),
    ]
    if torch.cuda.is_available():
        cases.append(("inputs\\[1\\]", dict(inputs=[x, x.cuda()]), "device"))
        cases.append(("scale", dict(inputs=[x.cuda(), x.cuda()], scale=torch.randn(6)), "device"))
    return cases


@pytest.mark.parametrize("arg,kwargs,expected", _bad_inputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_the_argument(arg, kwargs, expected):
    with pytest.raises(RuntimeError, match=f"'{arg}'.*{expected}"):
        ops.branch_concat(**kwargs)


def test_bad_input_in_backward_names_the_argument():
    out = torch.randn(2, 6, 3, 3)
    with pytest.raises(RuntimeError, match="'channels'.*add up"):
        torch.ops.fastblocks.branch_concat_backward(torch.randn_like(out), [2, 3], [], None, None, "none", 0.01, False)
    with pytest.raises(RuntimeError, match="'inputs'.*one tensor per branch"):
        torch.ops.fastblocks.branch_concat_backward(torch.randn_like(out), [2, 4], [out], None, None, "relu", 0.01,
                                                    True)


# --------------------------------------------------------------------------------------------------------
# BranchConcatBNReLU


class Reference(nn.Module):
    def __init__(self, bns, relu=True):
        super().__init__()
        self.bns, self.relu = bns, relu

    def forward(self, inputs):
        ys = [bn(x) for bn, x in zip(self.bns, inputs)]
        y = torch.cat(ys, 1)
        return torch.relu(y) if self.relu else y


def _module_pair(channels, device, dtype=torch.float64, relu=True):
    fused = BranchConcatBNReLU(channels, relu=relu).to(device, dtype)
    with torch.no_grad():
        for bn in fused.bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    bns = nn.ModuleList(nn.BatchNorm2d(c, eps=1e-3) for c in channels).to(device, dtype)
    bns.load_state_dict(fused.bns.state_dict())
    return Reference(bns, relu), fused


def test_module_state_dict_keys_are_batchnorms():
    keys = list(BranchConcatBNReLU([3, 5]).state_dict().keys())
    expected = [f"bns.{i}.{k}" for i in range(2) for k in nn.BatchNorm2d(3).state_dict().keys()]
    assert keys == expected


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [True, False])
def test_module_training_matches_batchnorm(device, layout, relu):
    channels = [3, 5, 2]
    ref, fused = _module_pair(channels, device, relu=relu)
    ref.train(), fused.train()
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        xs = [make_layout(torch.randn(4, c, 5, 6, generator=g, dtype=torch.float64).to(device), layout) for c in channels]
        grad = torch.randn(4, sum(channels), 5, 6, generator=g, dtype=torch.float64).to(device)
        a = [x.clone().requires_grad_() for x in xs]
        b = [x.clone().requires_grad_() for x in xs]
        out_ref, out = ref(a), fused(b)
        torch.testing.assert_close(out, out_ref)
        out_ref.backward(grad)
        out.backward(grad)
        for xa, xb in zip(a, b):
            torch.testing.assert_close(xb.grad, xa.grad)
        for bn_ref, bn in zip(ref.bns, fused.bns):
            torch.testing.assert_close(bn.weight.grad, bn_ref.weight.grad)
            torch.testing.assert_close(bn.bias.grad, bn_ref.bias.grad)
    for bn_ref, bn in zip(ref.bns, fused.bns):
        for name, buf in bn_ref.named_buffers():
            torch.testing.assert_close(getattr(bn, name), buf, msg=name)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_module_eval_matches_batchnorm(device, layout):
    channels = [64, 64, 96, 32]
    ref, fused = _module_pair(channels, device, dtype=torch.float32)
    ref.eval(), fused.eval()
    xs = [make_layout(torch.randn(2, c, 7, 7, device=device), layout) for c in channels]
    with torch.no_grad():
        torch.testing.assert_close(fused(xs), ref(xs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused(*xs), ref(xs), rtol=1e-5, atol=1e-5)  # cached fold, varargs call
        fused.bns[2].running_var.mul_(1.5)
        ref.bns[2].running_var.mul_(1.5)
        torch.testing.assert_close(fused(xs), ref(xs), rtol=1e-5, atol=1e-5)  # the cache saw the change


def test_module_bad_input():
    m = BranchConcatBNReLU([3, 4])
    with pytest.raises(ValueError, match="expected 2 inputs"):
        m(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="'inputs\\[1\\]'"):
        m(torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))


# --------------------------------------------------------------------------------------------------------
# The one-input case: affine_relu and BNReLU (conv -> BN -> ReLU tails)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_relu_is_the_one_input_concat(device, dtype, layout):
    (x,), scale, bias = make_inputs([6], (5, 4), dtype, device, layout, "scale_bias")
    y = ops.affine_relu(x, scale, bias)
    assert_close(y, reference([x], scale, bias, True))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [True, False])
def test_bnrelu_matches_batchnorm_relu(device, layout, relu):
    bn = nn.BatchNorm2d(5).to(device, torch.float64)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    fused = BNReLU(5, relu=relu).to(device, torch.float64)
    fused.load_state_dict(bn.state_dict())
    assert list(fused.state_dict()) == list(bn.state_dict())
    act = torch.relu if relu else (lambda t: t)
    for train in (True, False):
        bn.train(train), fused.train(train)
        x = make_layout(torch.randn(3, 5, 4, 6, dtype=torch.float64, device=device), layout)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_ref, out = act(bn(a)), fused(b)
        torch.testing.assert_close(out, out_ref)
        grad = torch.randn_like(out_ref)
        out_ref.backward(grad)
        out.backward(grad)
        torch.testing.assert_close(b.grad, a.grad)
        torch.testing.assert_close(fused.weight.grad, bn.weight.grad)
        bn.zero_grad(), fused.zero_grad()
    for name, buf in bn.named_buffers():
        torch.testing.assert_close(getattr(fused, name), buf, msg=name)
