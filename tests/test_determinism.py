"""Determinism (issue 8): under torch.use_deterministic_algorithms(True) every op and module either runs
deterministically (a rerun gives bitwise-equal outputs, input gradients, parameter gradients and running
statistics) or raises PyTorch's standard "does not have a deterministic implementation" error.

The CPU kernels document fixed-order reductions whose results do not depend on the thread count; that is
tested too (`test_ops_do_not_depend_on_the_thread_count`). Shapes are big enough that the reductions split into
several blocks (more than 32768 elements per channel group).
"""
import pytest
import torch
from conftest import DEVICES

from pyfastblocks import nn as fnn
from pyfastblocks import ops

# PyTorch's errors for an op without a deterministic implementation, and for cuBLAS without a fixed workspace
STANDARD_ERRORS = ("does not have a deterministic implementation", "CUBLAS_WORKSPACE_CONFIG")


@pytest.fixture
def deterministic(monkeypatch):
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # cuBLAS (separable_conv2d's pointwise GEMM on CUDA) is deterministic with a fixed workspace
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _op_workloads():
    """name -> fn(device, dtype, channels_last) returning every tensor the op produces (outputs and gradients)."""

    def inputs(device, dtype, shape, channels_last, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g).to(device, dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return _leaf(x)

    def params(device, n, seed, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        return _leaf((torch.rand(n, generator=g) + 0.5).to(device, dtype)), _leaf(torch.randn(n, generator=g).to(device, dtype))

    def grad_of(y, seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(y.shape, generator=g).to(y.device, y.dtype)

    def run(y, wrt, seed=99):
        return [y.detach()] + list(torch.autograd.grad(y, wrt, grad_of(y, seed)))

    def add_relu(device, dtype, cl):
        x, r = inputs(device, dtype, (8, 48, 24, 24), cl, 1), inputs(device, dtype, (8, 48, 24, 24), cl, 2)
        s, b = params(device, 48, 3)
        return run(ops.add_relu(x, r, s, b), [x, r, s, b])

    def branch_concat(device, dtype, cl):
        xs = [inputs(device, dtype, (8, c, 17, 17), cl, 10 + c) for c in (16, 24, 8)]
        s, b = params(device, 48, 4)
        return run(ops.branch_concat(xs, s, b), xs + [s, b])

    def affine_relu(device, dtype, cl):
        x = inputs(device, dtype, (8, 48, 24, 24), cl, 5)
        s, b = params(device, 48, 6)
        return run(ops.affine_relu(x, s, b, relu=False), [x, s, b])

    def depthwise(device, dtype, cl):
        x = inputs(device, dtype, (8, 16, 30, 30), cl, 7)
        g = torch.Generator().manual_seed(8)
        w = _leaf(torch.randn(32, 1, 3, 3, generator=g).to(device, dtype))
        b = _leaf(torch.randn(32, generator=g).to(device))
        return run(ops.depthwise_conv2d(x, w, b, 2, 1, 1, "relu6", True), [x, w, b])

    def separable(device, dtype, cl):
        x = inputs(device, dtype, (8, 16, 30, 30), cl, 9)
        g = torch.Generator().manual_seed(10)
        w = _leaf(torch.randn(16, 1, 5, 5, generator=g).to(device, dtype))
        pw = _leaf(torch.randn(24, 16, 1, 1, generator=g).to(device, dtype))
        pb = _leaf(torch.randn(24, generator=g).to(device, dtype))
        return run(ops.separable_conv2d(x, w, None, pw, pb, 1, 2, 1, "relu", "relu"), [x, w, pw, pb])

    return dict(add_relu=add_relu, branch_concat=branch_concat, affine_relu=affine_relu,
                depthwise_conv2d=depthwise, separable_conv2d=separable)


OPS = _op_workloads()


def _module_workloads():
    """name -> fn(device, training): outputs, input and parameter gradients, and the buffers after the call."""

    def x_of(device, shape, seed):
        g = torch.Generator().manual_seed(seed)
        return _leaf(torch.randn(shape, generator=g).to(device).contiguous(memory_format=torch.channels_last))

    def finish(m, y, xs):
        params = [p for p in m.parameters() if p.requires_grad]
        g = torch.Generator().manual_seed(123)
        grads = torch.autograd.grad(y, xs + params, torch.randn(y.shape, generator=g).to(y.device))
        return [y.detach(), *grads, *[b.clone() for b in m.buffers()]]

    def make(cls, *args, **kw):
        torch.manual_seed(0)
        return cls(*args, **kw)

    def bn_add_relu(device, training):
        m = make(fnn.BNAddReLU, 32).to(device).train(training)
        x, r = x_of(device, (8, 32, 20, 20), 1), x_of(device, (8, 32, 20, 20), 2)
        return finish(m, m(x, r), [x, r])

    def bn_relu(device, training):
        m = make(fnn.BNReLU, 32).to(device).train(training)
        x = x_of(device, (8, 32, 20, 20), 3)
        return finish(m, m(x), [x])

    def branch_concat_bn_relu(device, training):
        m = make(fnn.BranchConcatBNReLU, [8, 16, 8]).to(device).train(training)
        xs = [x_of(device, (8, c, 17, 17), 4 + c) for c in (8, 16, 8)]
        return finish(m, m(*xs), xs)

    def depthwise_conv(device, training):
        m = make(fnn.DepthwiseConv2d, 16, 3, stride=2, padding=1, multiplier=2, activation="relu").to(device).train(training)
        x = x_of(device, (8, 16, 30, 30), 5)
        return finish(m, m(x), [x])

    def separable_conv(device, training):
        m = make(fnn.SeparableConv2d, 16, 24, 3, activation="relu", input_relu=True).to(device).train(training)
        x = x_of(device, (8, 16, 30, 30), 6)
        return finish(m, m(x), [x])

    return dict(BNAddReLU=bn_add_relu, BNReLU=bn_relu, BranchConcatBNReLU=branch_concat_bn_relu,
                DepthwiseConv2d=depthwise_conv, SeparableConv2d=separable_conv)


MODULES = _module_workloads()


def _assert_bitwise_equal(first, second, what):
    assert len(first) == len(second)
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: result {i}"
        assert torch.equal(a, b), f"{what}: result {i} differs between two runs (max diff {(a.double() - b.double()).abs().max().item()})"


def _deterministic_or_standard_error(fn, what, runs=3):
    """Reruns are bitwise equal, or the first run raises PyTorch's standard error."""
    try:
        first = fn()
    except RuntimeError as e:
        assert any(m in str(e) for m in STANDARD_ERRORS), f"{what}: not the standard determinism error: {e}"
        return
    for _ in range(runs - 1):
        _assert_bitwise_equal(first, fn(), what)
    return first


def _op_params():
    params = []
    for device in DEVICES:
        for op in OPS:
            for dtype in (torch.float32, torch.float16):
                for channels_last in (False, True):
                    marks = []  # known bugs go here as strict xfails
                    layout = "channels_last" if channels_last else "nchw"
                    params.append(pytest.param(device, op, dtype, channels_last, marks=marks,
                                               id=f"{device}-{op}-{str(dtype)[6:]}-{layout}"))
    return params


def _module_params():
    params = []
    for device in DEVICES:
        for module in MODULES:
            for training in (True, False):
                marks = []  # known bugs go here as strict xfails
                params.append(pytest.param(device, module, training, marks=marks,
                                           id=f"{device}-{module}-{'train' if training else 'eval'}"))
    return params


@pytest.mark.parametrize("device,op,dtype,channels_last", _op_params())
def test_ops_are_deterministic(deterministic, device, op, dtype, channels_last):
    results = _deterministic_or_standard_error(lambda: OPS[op](device, dtype, channels_last), op)
    if results is not None:  # and every result was written (deterministic mode fills fresh tensors with NaN)
        for i, t in enumerate(results):
            assert not t.isnan().any(), f"{op}: result {i} has NaN"


@pytest.mark.parametrize("device,module,training", _module_params())
def test_modules_are_deterministic(deterministic, device, module, training):
    _deterministic_or_standard_error(lambda: MODULES[module](device, training), module)


@pytest.mark.parametrize("op", [op for op in OPS if op != "separable_conv2d"])
def test_ops_do_not_depend_on_the_thread_count(op):
    """The CPU kernels' reductions run in a fixed order whatever the number of threads (README: deterministic,
    fixed-order reductions). separable_conv2d is left out: its pointwise step is the BLAS library's GEMM, whose
    blocking may depend on the thread count. depthwise_conv2d runs this project's kernels here
    (set_cpu_depthwise_backend("fastblocks")): the float32 shapes "auto" routes to oneDNN are not promised to be
    thread-count independent outside deterministic mode (test_routed_depthwise_gradients_and_the_thread_count)."""
    from conftest import cpu_depthwise_backend

    before = torch.get_num_threads()
    try:
        results = []
        with cpu_depthwise_backend("fastblocks"):
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                results.append(OPS[op]("cpu", torch.float32, False) + OPS[op]("cpu", torch.float32, True))
    finally:
        torch.set_num_threads(before)
    _assert_bitwise_equal(results[0], results[1], f"{op}: 1 vs 2 threads")
    _assert_bitwise_equal(results[0], results[2], f"{op}: 1 vs 3 threads")



@pytest.mark.parametrize("mode", ["deterministic", "fastblocks backend"])
@pytest.mark.parametrize("shape,channels_last", [((4, 64, 14, 14), True), ((32, 16, 16, 16), False),
                                                 ((2, 8, 5, 5), False)])
def test_routed_depthwise_gradients_and_the_thread_count(shape, channels_last, mode, monkeypatch):
    """Issue 14, failing input 8: float32 depthwise_conv2d forward + backward on shapes the default CPU backend
    ("auto") routes to oneDNN (channels_last, small planes): there oneDNN's weight/bias gradients of 1 and 2 threads
    differ (~3e-5), so thread-count independence is promised in deterministic mode and with
    set_cpu_depthwise_backend("fastblocks") (README), where this project's fixed-order kernels run. Both checked
    here, on the shapes that differed."""
    from conftest import cpu_depthwise_backend

    def run():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g)
        x = _leaf(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        w = _leaf(torch.randn(shape[1], 1, 3, 3, generator=g))
        b = _leaf(torch.randn(shape[1], generator=g))
        y = ops.depthwise_conv2d(x, w, b, 1, 1, 1, "relu")
        return [y.detach()] + list(torch.autograd.grad(y, [x, w, b], torch.randn(y.shape, generator=g)))

    before = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if mode == "deterministic":
            torch.use_deterministic_algorithms(True)
        results = []
        with cpu_depthwise_backend("fastblocks" if mode == "fastblocks backend" else "auto"):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(run())
    finally:
        torch.set_num_threads(before)
        torch.use_deterministic_algorithms(deterministic)
    _assert_bitwise_equal(results[0], results[1], f"depthwise_conv2d ({mode}): 1 vs 2 threads")
