"""pyfastblocks in the PyTorch ecosystem: autocast (AMP), channels_last without hidden copies, torch.compile without
graph breaks, torch.export, TorchScript (trace / script).

Module-level cases build a small network from every fused module (TinyNet) and compile it with the aot_eager backend
(Dynamo + AOTAutograd over the fake impls and autograd formulas: everything of ours a compiler sees); one Inductor run.
Model-level cases (every pyfastblocks model and every swapped torchvision/timm model, marked slow: ~2 minutes once
their eval graph breaks are fixed) use Dynamo's eager backend. Cases that fail today because of code outside this
file are strict xfails whose reason names the file and the fix: they turn into failures (XPASS) once fixed, so the
mark can go.
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

import pyfastblocks
from pyfastblocks import nn as fnn
from pyfastblocks import ops

from conftest import DEVICES

CL = torch.channels_last
HALF = (torch.float16, torch.bfloat16)


def _randomize_bn(bn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.3)


def _amp_cases():
    cases = [("cpu", torch.bfloat16)]
    if torch.cuda.is_available():
        cases += [("cuda", torch.float16), ("cuda", torch.bfloat16)]
    return cases


AMP_CASES = _amp_cases()
AMP_IDS = [f"{d}-{str(t).split('.')[-1]}" for d, t in AMP_CASES]
# A few low-precision ulps of the magnitude: fused and eager round at different points (one rounding at the end of
# the fused tail, one per eager op), and conv outputs already differ in their last bits.
AMP_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _close(got, ref, tol):
    scale = max(ref.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), ref.double(), rtol=0, atol=tol * scale)


class FastblocksCalls(TorchDispatchMode):
    """Records every fastblocks op as it runs below autocast and autograd: the dtypes its kernels receive."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "fastblocks":
            self.calls.append((func.__name__.split(".")[0], args))
        return func(*args, **(kwargs or {}))


def _dtypes(value):
    if isinstance(value, torch.Tensor):
        return value.dtype
    if isinstance(value, (list, tuple)):
        return [_dtypes(v) for v in value]
    return None


# ============================================================================================================
# Autocast: the fused ops take the autocast dtype for their data, keep float32 scale/bias


def _op_cases(device):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)

    x, res = r(2, 8, 6, 5), r(2, 8, 6, 5)
    scale, bias = (torch.rand(8, generator=g) + 0.5).to(device), r(8)
    scale2, bias2 = (torch.rand(16, generator=g) + 0.5).to(device), r(16)
    dw, db = r(8, 1, 3, 3), r(8)
    pw, pb = r(12, 8, 1, 1), r(12)
    # (name, function, data args, parameter args)
    return [
        ("add_relu", lambda x, res, s, b: ops.add_relu(x, res, s, b), (x, res), (scale, bias)),
        ("branch_concat", lambda x, res, s, b: ops.branch_concat([x, res], s, b), (x, res), (scale2, bias2)),
        ("affine_relu", lambda x, s, b: ops.affine_relu(x, s, b), (x,), (scale, bias)),
        ("depthwise_conv2d", lambda x, w, b: ops.depthwise_conv2d(x, w, b, 1, 1, activation="relu6"), (x, dw), (db,)),
        ("separable_conv2d",
         lambda x, w, p, b1, b2: ops.separable_conv2d(x, w, b1, p, b2, 1, 1, depthwise_activation="relu",
                                                      activation="relu"),
         (x, dw, pw), (db, pb)),
    ]


@pytest.mark.parametrize("device,dtype", AMP_CASES, ids=AMP_IDS)
def test_autocast_ops_run_in_autocast_dtype_with_float32_params(device, dtype):
    for name, fn, data, params in _op_cases(device):
        with torch.autocast(device, dtype=dtype), FastblocksCalls() as rec:
            out = fn(*data, *params)
        assert out.dtype == dtype, name
        # Below autocast, the kernels got the data in the autocast dtype and the per-channel params in float32
        # (separable_conv2d is composite: its first kernel is depthwise_conv2d, with the depthwise bias; the
        # pointwise bias goes to the GEMM in the data's dtype).
        top = rec.calls[0]
        flat = [d for d in _flatten(_dtypes(top[1])) if d is not None]
        assert dtype in flat, (name, flat)
        assert set(flat) == {dtype, torch.float32}, (name, flat)
        assert flat.count(torch.float32) == (1 if name == "separable_conv2d" else len(params)), (name, flat)
        # Same kernel, same inputs: calling it outside autocast on low-precision data and float32 params agrees
        # bit for bit.
        ref = fn(*(t.to(dtype) for t in data), *params)
        assert torch.equal(out, ref), name


def _flatten(value):
    if isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    else:
        yield value


def test_autocast_mixed_and_float64_inputs():
    x, res = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    scale, bias = torch.rand(4) + 0.5, torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # disagreeing data dtypes: both to the autocast dtype, as autocast does for its binary ops
        mixed = ops.add_relu(x.bfloat16(), res, scale, bias)
        # float64 is never cast (autocast's own rule)
        double = ops.add_relu(x.double(), res.double(), scale.double(), bias.double())
        # a half parameter of another dtype than the data: float32 (which every kernel takes)
        half_param = ops.add_relu(x, res, scale.half(), bias)
        with torch.autocast("cpu", enabled=False):
            off = ops.add_relu(x, res, scale, bias)
    assert mixed.dtype == torch.bfloat16
    assert torch.equal(mixed, ops.add_relu(x.bfloat16(), res.bfloat16(), scale, bias))
    assert double.dtype == torch.float64
    assert half_param.dtype == torch.bfloat16
    assert torch.equal(half_param, ops.add_relu(x.bfloat16(), res.bfloat16(), scale.half().float(), bias))
    assert off.dtype == torch.float32


@pytest.mark.parametrize("device,dtype", AMP_CASES, ids=AMP_IDS)
def test_autocast_gradients_keep_input_dtypes(device, dtype):
    x = torch.randn(2, 8, 5, 5, device=device, requires_grad=True)
    res = torch.randn(2, 8, 5, 5, device=device, requires_grad=True)
    scale = (torch.rand(8, device=device) + 0.5).requires_grad_()
    bias = torch.randn(8, device=device, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        y = ops.depthwise_conv2d(ops.add_relu(x, res, scale, bias), w, bias, 1, 1)
        loss = y.float().square().mean()
    loss.backward()
    for t in (x, res, scale, bias, w):
        assert t.grad is not None and t.grad.dtype == torch.float32
    # against autograd of the same computation in low precision (inputs cast by hand, params float32)
    leaves = [t.detach().clone().requires_grad_() for t in (x, res, scale, bias, w)]
    xl, rl, sl, bl, wl = leaves
    y2 = ops.depthwise_conv2d(ops.add_relu(xl.to(dtype), rl.to(dtype), sl, bl), wl.to(dtype), bl, 1, 1)
    y2.float().square().mean().backward()
    for a, b in zip((x, res, scale, bias, w), leaves):
        torch.testing.assert_close(a.grad, b.grad)


class EagerBasicBlock(nn.Module):
    """A stem conv, then conv -> bn -> relu -> conv -> bn, + identity, relu (torchvision's BasicBlock without
    downsample). The stem makes the identity a conv output, as inside a network: under autocast it is then in the
    low dtype on both sides (for a float32 identity, eager's `bn(x) + identity` promotes to float32 while the fused
    add_relu runs both in the autocast dtype)."""

    def __init__(self, c):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class FusedBasicBlock(nn.Module):
    """The same block on the fused paths: conv_bn_act, then conv -> BNAddReLU (same state_dict keys)."""

    def __init__(self, c):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = fnn.BNAddReLU(c)

    def forward(self, x):
        x = self.stem(x)
        return self.bn2(self.conv2(fnn.conv_bn_act(x, self.conv1, self.bn1, "relu")), x)


def _block_pair(c, device, seed=0):
    torch.manual_seed(seed)
    eager = EagerBasicBlock(c)
    _randomize_bn(eager.bn1, 1), _randomize_bn(eager.bn2, 2)
    fused = FusedBasicBlock(c)
    fused.load_state_dict(eager.state_dict())
    return eager.to(device), fused.to(device)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("device,dtype", AMP_CASES, ids=AMP_IDS)
def test_autocast_block_matches_eager_autocast(device, dtype, train):
    eager, fused = _block_pair(8, device)
    eager.train(train), fused.train(train)
    x = torch.randn(4, 3, 7, 7, device=device)
    with torch.autocast(device, dtype=dtype), FastblocksCalls() as rec:
        want = eager(x)
        got = fused(x)
    assert got.dtype == want.dtype == dtype
    _close(got, want, AMP_TOL[dtype])
    # every fused op ran on low-precision data with float32 folded / batch-statistic BN parameters
    assert rec.calls
    for name, args in rec.calls:  # (trailing default arguments are not in args)
        if name in ("add_relu", "branch_concat"):
            first_param = 2 if name == "add_relu" else 1
            assert _dtypes(args[0]) in (dtype, [dtype]), name
            assert args[first_param].dtype == args[first_param + 1].dtype == torch.float32, name
    if train:
        # running statistics in float32, updated alike; gradients alike
        for a, b in zip(eager.buffers(), fused.buffers()):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
        want.float().square().mean().backward()
        got.float().square().mean().backward()
        for (n, a), b in zip(eager.named_parameters(), fused.parameters()):
            assert b.grad.dtype == torch.float32, n
            _close(b.grad, a.grad, 10 * AMP_TOL[dtype])


def test_autocast_conv_bn_act_inference_no_grad_float32_input_cpu():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1, bias=False).eval(), nn.BatchNorm2d(8).eval()
    _randomize_bn(bn, 1)
    x = torch.randn(4, 3, 7, 7)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.relu(bn(conv(x)))
        got = fnn.conv_bn_act(x, conv, bn, "relu")
    assert got.dtype == want.dtype == torch.bfloat16
    _close(got, want, AMP_TOL[torch.bfloat16])


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("device,dtype", AMP_CASES, ids=AMP_IDS)
def test_autocast_depthwise_separable_concat_modules(device, dtype, train):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6, device=device)
    sep = fnn.SeparableConv2d(8, 12, depthwise_activation="relu", activation="relu").to(device).train(train)
    dw = fnn.DepthwiseConv2d(8, 3, padding=1, activation="relu6").to(device).train(train)
    cat = fnn.BranchConcatBNReLU([8, 8]).to(device).train(train)
    for bn in (sep.bn_depthwise, sep.bn_pointwise, *cat.bns):
        _randomize_bn(bn, 3)
    with torch.autocast(device, dtype=dtype):
        outs = [sep(x), dw(x), cat(x, F.relu(x))]
    with torch.autocast(device, dtype=dtype):  # eager twins
        y = F.relu(sep.bn_depthwise(F.conv2d(x, sep.depthwise.weight, None, 1, 1, 1, 8)))
        refs = [
            F.relu(sep.bn_pointwise(sep.pointwise(y))),
            F.relu6(F.conv2d(x, dw.weight, dw.bias, 1, 1, 1, 8)),
            torch.cat([F.relu(cat.bns[0](x)), F.relu(cat.bns[1](F.relu(x)))], 1),
        ]
    for got, want in zip(outs, refs):
        assert got.dtype == dtype
        _close(got, want.to(dtype), 2 * AMP_TOL[dtype])


@pytest.mark.parametrize("device,dtype", AMP_CASES[:1], ids=AMP_IDS[:1])
def test_autocast_under_compile(device, dtype):
    """The autocast rules also hold in a compiled graph (Dynamo traces the autocast region, AOTAutograd runs the
    rules through the Python dispatcher): same outputs and gradients as eager autocast, one graph."""
    from torch._dynamo.testing import CompileCounterWithBackend

    model = _tiny(False, device)
    x = torch.randn(4, 3, 8, 8, device=device)
    for train in (False, True):
        torch._dynamo.reset()
        eager, comp = copy.deepcopy(model).train(train), copy.deepcopy(model).train(train)
        counter = CompileCounterWithBackend("aot_eager")
        compiled = torch.compile(comp, backend=counter, fullgraph=True)
        with torch.autocast(device, dtype=dtype):
            want, got = eager(x), compiled(x)
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert counter.frame_count == 1
        if train:
            want.float().square().mean().backward()
            got.float().square().mean().backward()
            for (n, a), b in zip(eager.named_parameters(), comp.parameters()):
                assert b.grad.dtype == torch.float32, n
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GradScaler training needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gradscaler_training_cuda(dtype):
    eager, fused = _block_pair(16, "cuda")
    head_e, head_f = nn.Linear(16, 10).cuda(), None
    head_f = copy.deepcopy(head_e)
    models = [(eager, head_e), (fused, head_f)]
    opts = [torch.optim.SGD(list(m.parameters()) + list(h.parameters()), lr=0.05, momentum=0.9) for m, h in models]
    scalers = [torch.amp.GradScaler("cuda") for _ in models]
    g = torch.Generator(device="cuda").manual_seed(0)
    losses = [[], []]
    for _ in range(5):
        x = torch.randn(8, 3, 8, 8, device="cuda", generator=g).to(memory_format=CL)
        t = torch.randint(0, 10, (8,), device="cuda", generator=g)
        for i, ((m, h), opt, scaler) in enumerate(zip(models, opts, scalers)):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype):
                loss = F.cross_entropy(h(m(x).mean((2, 3))), t)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses[i].append(loss.item())
    assert all(torch.isfinite(torch.tensor(l)).all() for l in losses)
    assert scalers[0].get_scale() == scalers[1].get_scale()  # no step skipped by one of them only
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=5e-2, atol=5e-2)
    for a, b in zip(eager.parameters(), fused.parameters()):
        _close(b, a, 5e-2)


# ============================================================================================================
# channels_last end to end, without hidden copies

COPY_OPS = ("aten::clone", "aten::copy_", "aten::contiguous", "aten::_to_copy")
# A GEMM with a bias (separable_conv2d's pointwise step: addmm / _addmm_activation) initializes its output with the
# broadcast bias; that copy_ writes the output, it does not copy an input. Every other copy is reported.
GEMM_BIAS_INIT = ("aten::addmm", "aten::_addmm_activation")


def _aten_conv_weight_copy(shapes, chain):
    """ATen's own convolution (the CPU route of float32 channels_last depthwise calls to oneDNN) converts the depthwise
    weight or its gradient, [C * m, 1, kh, kw], between layouts inside itself, as in eager PyTorch: a parameter-sized
    copy, not a copy of an activation."""
    in_aten_conv = any(n in ("aten::convolution", "aten::convolution_backward") for n in chain)
    return in_aten_conv and bool(shapes) and len(shapes[0]) == 4 and shapes[0][1] == 1


def _copies_in_fused_ops(fn):
    """Copies made inside any fastblocks op (kernels included: the profiler sees ATen calls made from C++)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    found = []
    for e in prof.events():
        if e.name not in COPY_OPS:
            continue
        chain, p = [], e.cpu_parent
        while p is not None:
            chain.append(p.name)
            p = p.cpu_parent
        fused = [n for n in chain if n.startswith("fastblocks::") or "fastblocks_" in n]
        if not fused:
            continue
        if e.name == "aten::copy_" and chain and chain[0] in GEMM_BIAS_INIT:
            continue
        if _aten_conv_weight_copy(e.input_shapes, chain):
            continue
        found.append((e.name, e.input_shapes, chain[:4]))
    return found


def _is_cl(t):
    return t.is_contiguous(memory_format=CL) and not t.is_contiguous()


def _cl_op_cases(device):
    torch.manual_seed(0)

    def cl(*shape):
        return torch.randn(*shape, device=device).to(memory_format=CL).requires_grad_()

    def p(*shape):
        return (torch.rand(*shape, device=device) + 0.5).requires_grad_()

    return [
        ("add_relu", lambda a: ops.add_relu(*a), [cl(2, 8, 6, 5), cl(2, 8, 6, 5), p(8), p(8)]),
        ("branch_concat", lambda a: ops.branch_concat(a[:3], a[3], a[4]),
         [cl(2, 8, 6, 5), cl(2, 4, 6, 5), cl(2, 8, 6, 5), p(20), p(20)]),
        ("affine_relu", lambda a: ops.affine_relu(*a), [cl(2, 8, 6, 5), p(8), p(8)]),
        ("depthwise_conv2d", lambda a: ops.depthwise_conv2d(a[0], a[1], a[2], 2, 1, activation="relu"),
         [cl(2, 8, 7, 5), p(8, 1, 3, 3), p(8)]),
        ("depthwise_conv2d_m2", lambda a: ops.depthwise_conv2d(a[0], a[1], a[2], 1, 1, input_relu=True),
         [cl(2, 8, 7, 5), p(16, 1, 3, 3), p(16)]),
        ("separable_conv2d", lambda a: ops.separable_conv2d(a[0], a[1], a[2], a[3], a[4], 1, 1, activation="relu"),
         [cl(2, 8, 6, 5), p(8, 1, 3, 3), p(8), p(12, 8, 1, 1), p(12)]),
    ]


@pytest.mark.parametrize("case", range(6), ids=[c[0] for c in _cl_op_cases("cpu")])
def test_channels_last_ops_no_hidden_copies(device, case):
    name, fn, args = _cl_op_cases(device)[case]
    copies = _copies_in_fused_ops(lambda: fn(args))
    assert copies == [], f"{name} forward copied: {copies}"
    out = fn(args)
    assert _is_cl(out), name
    grad = torch.randn_like(out)  # dense channels_last, like the gradient a channels_last network passes back
    assert _is_cl(grad)
    copies = _copies_in_fused_ops(lambda: out.backward(grad))
    assert copies == [], f"{name} backward copied: {copies}"
    for t in args:
        if t.dim() == 4 and t.shape[1] > 1 and t.shape[2] > 1:
            assert t.grad is not None and (_is_cl(t.grad) or t.shape[2:] == (1, 1) or t.shape[1] == 1), name


def test_copy_detector_sees_kernel_copies(device):
    """The check above is not vacuous: a non-dense input is copied inside the kernel (documented), and it shows."""
    x = torch.randn(2, 8, 6, 10, device=device)[..., ::2]
    res = torch.randn(2, 8, 6, 5, device=device).to(memory_format=CL)
    found = _copies_in_fused_ops(lambda: ops.add_relu(x, res))
    assert any(name == "aten::copy_" for name, _, _ in found), found
    w = torch.randn(8, 1, 3, 3, device=device)
    found = _copies_in_fused_ops(lambda: ops.depthwise_conv2d(x, w, None, 1, 1))
    assert any(name == "aten::copy_" for name, _, _ in found), found


def _cl_modules(device):
    torch.manual_seed(0)
    mods = [  # (name, module, number of inputs, input channels)
        ("BNAddReLU", fnn.BNAddReLU(8), 2, 8),
        ("BNReLU", fnn.BNReLU(8), 1, 8),
        ("BranchConcatBNReLU", fnn.BranchConcatBNReLU([8, 8]), 2, 8),
        ("DepthwiseConv2d", fnn.DepthwiseConv2d(8, 3, padding=1, activation="relu", input_relu=True), 1, 8),
        ("SeparableConv2d", fnn.SeparableConv2d(8, 12, depthwise_activation="relu", activation="relu"), 1, 8),
        ("FusedBasicBlock", FusedBasicBlock(8), 1, 3),  # conv_bn_act and BNAddReLU between PyTorch convs
    ]
    for _, m, _, _ in mods:
        for bn in m.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                _randomize_bn(bn, 5)
    return [(n, m.to(device), k, c) for n, m, k, c in mods]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_channels_last_modules_end_to_end(device, train):
    for name, m, n_in, c_in in _cl_modules(device):
        m.train(train)
        ref = copy.deepcopy(m)
        xs = [torch.randn(4, c_in, 6, 6, device=device) for _ in range(n_in)]
        xs_cl = [x.to(memory_format=CL).requires_grad_() for x in xs]
        xs_ref = [x.clone().requires_grad_() for x in xs]  # NCHW run of the same module: the values to match
        copies = _copies_in_fused_ops(lambda: m(*xs_cl))
        assert copies == [], f"{name} ({'train' if train else 'eval'}) forward copied: {copies}"
        out = m(*xs_cl)
        want = ref(*xs_ref)
        assert _is_cl(out), name
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
        grad = torch.randn_like(want)
        grad_cl = grad.to(memory_format=CL)
        copies = _copies_in_fused_ops(lambda: out.backward(grad_cl))
        assert copies == [], f"{name} backward copied: {copies}"
        want.backward(grad)
        for x, xr in zip(xs_cl, xs_ref):
            assert _is_cl(x.grad), name
            torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-4)
        for (pn, a), b in zip(ref.named_parameters(), m.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4, msg=lambda s, pn=pn: f"{name}.{pn}: {s}")


# ============================================================================================================
# torch.compile: no graph breaks, same results as eager


class TinyNet(nn.Module):
    """Every fused module in one small network: conv_bn_act (dense conv), BNAddReLU, DepthwiseConv2d,
    SeparableConv2d, BranchConcatBNReLU, BNReLU."""

    def __init__(self, with_conv_bn_act=True, num_classes=10):
        super().__init__()
        self.with_conv_bn_act = with_conv_bn_act
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8) if with_conv_bn_act else fnn.BNReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.tail = fnn.BNAddReLU(8)
        self.dw = fnn.DepthwiseConv2d(8, 3, stride=2, padding=1, activation="relu6")
        self.sep = fnn.SeparableConv2d(8, 8, depthwise_activation="relu", activation="relu", input_relu=True)
        self.b1 = nn.Conv2d(8, 4, 1, bias=False)
        self.b2 = nn.Conv2d(8, 4, 1, bias=False)
        self.cat = fnn.BranchConcatBNReLU([4, 4])
        self.conv3 = nn.Conv2d(8, 8, 1, bias=False)
        self.bnrelu = fnn.BNReLU(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        if self.with_conv_bn_act:
            x = fnn.conv_bn_act(x, self.conv1, self.bn1, "relu")
        else:
            x = self.bn1(self.conv1(x))
        x = self.tail(self.conv2(x), x)
        x = self.sep(self.dw(x))
        x = self.cat(self.b1(x), self.b2(x))
        x = self.bnrelu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def _tiny(with_conv_bn_act, device, seed=0):
    torch.manual_seed(seed)
    m = TinyNet(with_conv_bn_act)
    for bn in m.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            _randomize_bn(bn, 7)
    return m.to(device)


def _graph_breaks(model, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(*args)


def _compile_matches_eager(model, x, train, backend="aot_eager"):
    """model compiled with fullgraph=True: one graph, outputs (and for a training step: gradients, running stats
    and the parameters after an SGD step) equal to eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    eager, comp = copy.deepcopy(model).train(train), copy.deepcopy(model).train(train)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(comp, backend=counter, fullgraph=True)
    tol = dict(rtol=1e-5, atol=1e-5)
    if not train:
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), eager(x), **tol)
            torch.testing.assert_close(compiled(x), eager(x), **tol)  # second call: no recompile
        assert counter.frame_count == 1
        return
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, comp)]
    for step in range(2):
        outs = []
        for m, fn, opt in ((eager, eager, opts[0]), (comp, compiled, opts[1])):
            opt.zero_grad(set_to_none=True)
            out = fn(x)
            out.square().mean().backward()
            outs.append(out)
        torch.testing.assert_close(outs[1], outs[0], **tol)
        for (n, a), b in zip(eager.named_parameters(), comp.parameters()):
            torch.testing.assert_close(b.grad, a.grad, **tol, msg=lambda m, n=n: f"grad of {n}: {m}")
        for opt in opts:
            opt.step()
    for (n, a), b in zip(eager.named_buffers(), comp.buffers()):
        torch.testing.assert_close(b, a, **tol, msg=lambda m, n=n: f"buffer {n}: {m}")
    assert counter.frame_count == 1


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_compile_modules_no_graph_breaks(device, train):
    model = _tiny(False, device).train(train)
    x = torch.randn(4, 3, 8, 8, device=device)
    explained = _graph_breaks(model, x)
    assert explained.graph_break_count == 0, explained.break_reasons
    _compile_matches_eager(model, x, train)


@pytest.mark.parametrize("train", [
    pytest.param(False, id="eval"),
    pytest.param(True, id="train"),
])
def test_compile_conv_bn_act_no_graph_breaks(train):
    model = _tiny(True, "cpu").train(train)
    x = torch.randn(4, 3, 8, 8)
    explained = _graph_breaks(model, x)
    assert explained.graph_break_count == 0, explained.break_reasons
    _compile_matches_eager(model, x, train)


@pytest.mark.slow
def test_compile_inductor_eval_and_train():
    """The default backend (Inductor: its lowering of the custom ops as extern kernels) on the same network."""
    model = _tiny(False, "cpu")
    x = torch.randn(4, 3, 8, 8)
    torch._dynamo.reset()
    eager, comp = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    compiled = torch.compile(comp, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-4)


# ============================================================================================================
# torch.export


def test_export_fused_modules_eval():
    model = _tiny(True, "cpu").eval()
    x = torch.randn(4, 3, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("fastblocks.add_act", "fastblocks.branch_concat", "fastblocks.depthwise_conv2d"):
        assert any(t.startswith(op) for t in targets), (op, targets)
    run = ep.module()
    with torch.no_grad():
        for x in (x, torch.randn(7, 3, 8, 8), torch.randn(2, 3, 8, 8).to(memory_format=CL)):
            torch.testing.assert_close(run(x), model(x), rtol=1e-5, atol=1e-5)


# ============================================================================================================
# TorchScript: trace works; script works on torch.ops.fastblocks.* but not on the Python wrappers or modules


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated (FutureWarning) and tracing warns on shapes
        return fn(*args, **kwargs)


def test_jit_trace_ops_and_modules():
    torch.manual_seed(0)
    x, res = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    s, b, w = torch.rand(8) + 0.5, torch.randn(8), torch.randn(8, 1, 3, 3)

    def f(x, res, s, b, w):
        y = ops.add_relu(x, res, s, b)
        y = ops.depthwise_conv2d(y, w, b, 1, 1, activation="relu")
        return ops.branch_concat([y, x], torch.cat([s, s]), torch.cat([b, b]))

    traced = _quiet(torch.jit.trace, f, (x, res, s, b, w))
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert {"fastblocks::add_act", "fastblocks::depthwise_conv2d", "fastblocks::branch_concat"} <= kinds
    assert torch.equal(traced(x, res, s, b, w), f(x, res, s, b, w))
    # gradients through the traced graph (the ops' autograd formulas run from TorchScript's interpreter)
    leaves = [t.clone().requires_grad_() for t in (x, res, s, b, w)]
    traced(*leaves).sum().backward()
    ref = [t.clone().requires_grad_() for t in (x, res, s, b, w)]
    f(*ref).sum().backward()
    for a, r in zip(leaves, ref):
        torch.testing.assert_close(a.grad, r.grad)


def test_jit_trace_modules_eval_without_trace_check():
    """An eval network of fused modules traces (the folded BatchNorms become constants of the trace, as the cache
    holds them) and the traced module gives the same outputs."""
    model = _tiny(False, "cpu").eval()
    xin = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(xin)
        traced = _quiet(torch.jit.trace, model, (xin,), check_trace=False)
        kinds = {n.kind() for n in traced.inlined_graph.nodes()}
        assert {"fastblocks::add_act", "fastblocks::branch_concat", "fastblocks::separable_conv2d"} <= kinds, kinds
        torch.testing.assert_close(traced(xin), want)
        other = torch.randn(5, 3, 8, 8)  # another batch size: the trace is not specialized to it
        torch.testing.assert_close(traced(other), model(other))


def test_jit_trace_modules_eval_with_trace_check():
    model = _tiny(False, "cpu").eval()
    xin = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        traced = _quiet(torch.jit.trace, model, (xin,))
        torch.testing.assert_close(traced(xin), model(xin))


def test_jit_trace_conv_bn_act_inference_cpu():
    model = _tiny(True, "cpu").eval()
    xin = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        traced = _quiet(torch.jit.trace, model, (xin,), check_trace=False)
        torch.testing.assert_close(traced(xin), model(xin))


def test_jit_script_raw_ops_work():
    def f(x, res, s, b, w):
        y = torch.ops.fastblocks.add_act(x, res, s, b, "relu", 0.01)
        y = torch.ops.fastblocks.depthwise_conv2d(y, w, b, [1, 1], [1, 1], [1, 1], "silu", False, 0.01)
        return torch.ops.fastblocks.branch_concat([y, x], None, None, "gelu", 0.01)

    scripted = _quiet(torch.jit.script, f)
    x, res = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    args = (x, res, torch.rand(8), torch.randn(8), torch.randn(8, 1, 3, 3))
    assert torch.equal(scripted(*args), f(*args))


@pytest.mark.parametrize("target", ["ops.add_relu", "BNAddReLU", "BranchConcatBNReLU", "DepthwiseConv2d",
                                    "SeparableConv2d"])
def test_jit_script_wrappers_and_modules_raise(target):
    """The Python wrappers and modules use Python that TorchScript does not compile (OpOverload attributes,
    Union annotations, *args, _BatchNorm annotations): scripting them raises at script time, never later."""
    if target == "ops.add_relu":
        def obj(x: torch.Tensor, r: torch.Tensor):
            return ops.add_relu(x, r)
    else:
        obj = {"BNAddReLU": lambda: fnn.BNAddReLU(8), "BranchConcatBNReLU": lambda: fnn.BranchConcatBNReLU([4, 4]),
               "DepthwiseConv2d": lambda: fnn.DepthwiseConv2d(8, 3),
               "SeparableConv2d": lambda: fnn.SeparableConv2d(8, 8)}[target]().eval()
    with pytest.raises((RuntimeError, AssertionError, torch.jit.frontend.NotSupportedError)):
        _quiet(torch.jit.script, obj)


# ============================================================================================================
# Models: every pyfastblocks model and every swapped torchvision / timm model under torch.compile(fullgraph=True),
# eval and a training step; torch.export of swapped ResNet-50 and MobileNets.
#
# Compiled with Dynamo's "eager" backend: a graph break fails fullgraph=True at once, and the captured graph runs on
# real tensors (the fake impls and autograd formulas under AOTAutograd are covered by the module-level cases above,
# at a fraction of the time). One thread: far faster than two on a busy 2-core runner.

NUM_CLASSES = 10


def _tv(name, **kw):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(num_classes=NUM_CLASSES, **kw)
    return build


def _timm(name):
    def build():
        import timm

        return timm.create_model(name, num_classes=NUM_CLASSES)
    return build


def _native(name, **kw):
    def build():
        import pyfastblocks.models as M

        return getattr(M, name)(num_classes=NUM_CLASSES, **kw)
    return build


def _swapped(build):
    return lambda: pyfastblocks.swap(build())


# name -> (constructor, input size)
MODEL_CASES = {
    "native_resnet18": (_native("resnet18"), 32),
    "native_resnet50": (_native("resnet50"), 32),
    "native_inception_v3": (_native("inception_v3", aux_logits=False), 75),
    "native_xception": (_native("xception"), 71),
    "native_mobilenet_v1": (_native("mobilenet_v1"), 32),
    "native_mobilenet_v2": (_native("mobilenet_v2"), 32),
    "native_vgg16": (_native("vgg16"), 32),
    "swap_tv_resnet50": (_swapped(_tv("resnet50")), 32),
    "swap_tv_inception_v3": (_swapped(_tv("inception_v3", aux_logits=False, init_weights=True)), 75),
    "swap_tv_mobilenet_v2": (_swapped(_tv("mobilenet_v2")), 32),
    "swap_tv_vgg16_bn": (_swapped(_tv("vgg16_bn")), 32),
    "swap_timm_legacy_xception": (_swapped(_timm("legacy_xception")), 71),
    "swap_timm_mobilenetv1_100": (_swapped(_timm("mobilenetv1_100")), 32),
}


def _prepared(name):
    build, size = MODEL_CASES[name]
    torch.manual_seed(0)
    model = build()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            _randomize_bn(m, 11)
        if isinstance(m, nn.Dropout):  # the same function of the input in eager and compiled training steps
            m.p = 0.0
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


class _OneThread:
    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def _close_scaled(got, want, tol, what):
    # Compiled code may take the library convolution where eager takes oneDNN's fused one: rounding differs, so the
    # bound is relative to the tensor's scale.
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(want.abs().max().item(), 1e-6),
                               msg=lambda m: f"{what}: {m}")


def _model_params():
    params = []
    for name in MODEL_CASES:
        params.append(pytest.param(name, False, id=f"{name}-eval"))
        params.append(pytest.param(name, True, id=f"{name}-train"))
    return params


@pytest.mark.slow
@pytest.mark.parametrize("name,train", _model_params())
def test_compile_models_fullgraph(name, train):
    from torch._dynamo.testing import CompileCounterWithBackend

    with _OneThread():
        model, x = _prepared(name)
        eager, comp = model.train(train), copy.deepcopy(model).train(train)
        counter = CompileCounterWithBackend("eager")
        compiled = torch.compile(comp, backend=counter, fullgraph=True)
        torch._dynamo.reset()
        if not train:
            with torch.no_grad():
                _close_scaled(compiled(x), eager(x), 1e-4, f"{name} eval output")
            assert counter.frame_count == 1
            return
        want, got = eager(x), compiled(x)
        _close_scaled(got, want, 1e-4, f"{name} train output")
        want.square().mean().backward()
        got.square().mean().backward()
        assert counter.frame_count == 1
    for (n, a), b in zip(eager.named_parameters(), comp.parameters()):
        if a.grad is not None or b.grad is not None:
            _close_scaled(b.grad, a.grad, 1e-3, f"{name} grad {n}")
    for (n, a), b in zip(eager.named_buffers(), comp.buffers()):
        _close_scaled(b.float(), a.float(), 1e-4, f"{name} buffer {n}")


@pytest.mark.parametrize("name", ["swap_tv_resnet50", "swap_tv_mobilenet_v2", "swap_timm_mobilenetv1_100"])
def test_export_swapped_models_eval(name):
    build, _ = MODEL_CASES[name]
    with _OneThread():
        torch.manual_seed(0)
        original = {"swap_tv_resnet50": _tv("resnet50"), "swap_tv_mobilenet_v2": _tv("mobilenet_v2"),
                    "swap_timm_mobilenetv1_100": _timm("mobilenetv1_100")}[name]().eval()
        for m in original.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                _randomize_bn(m, 11)
        swapped = pyfastblocks.swap(original).eval()
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        ep = torch.export.export(swapped, (x,))
        targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        # every BatchNorm folded or fused: none left as an op of its own
        assert not [t for t in targets if "batch_norm" in t], targets
        if name != "swap_timm_mobilenetv1_100":  # residual tails (MobileNetV1 has none: conv + folded BN + act)
            assert any(t.startswith("fastblocks.add_act") for t in targets), targets
        run = ep.module()
        with torch.no_grad():
            for inp in (x, x.to(memory_format=CL)):
                want = original(inp)
                _close_scaled(run(inp), want, 1e-4, f"{name} exported vs original")
                _close_scaled(run(inp), swapped(inp), 1e-5, f"{name} exported vs swapped")
