"""Concurrency (issue 8): ops and modules called from several Python threads at once give the results of a
sequential run, bitwise; on CUDA, ops on a non-default stream, from threads with streams of their own, and on a
second device (when there is one) are correct.

The kernels release the GIL and split their work with at::parallel_for, so calls from several threads overlap
in the kernels themselves (and share the intra-op thread pool).
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import DEVICES

from pyfastblocks import nn as fnn
from pyfastblocks import ops

THREADS = 6
ROUNDS = 4  # calls per thread and job


def _leaf(t):
    return t.detach().clone().requires_grad_()


def _jobs(device):
    """name -> fn(seed) returning every tensor the call produces (output, input and parameter gradients); each
    seed gives other inputs and other shapes."""

    def gen(seed):
        return torch.Generator().manual_seed(seed)

    def randn(g, *shape, dtype=torch.float32, channels_last=False):
        t = torch.randn(*shape, generator=g).to(device, dtype)
        return _leaf(t.contiguous(memory_format=torch.channels_last) if channels_last else t)

    def grads(y, wrt, g):
        return [y.detach()] + list(torch.autograd.grad(y, wrt, torch.randn(y.shape, generator=g).to(y.device, y.dtype)))

    def add_relu(seed):
        g = gen(seed)
        n, c = 2 + seed % 3, 8 + 8 * (seed % 4)
        x, r = randn(g, n, c, 19, 21, channels_last=seed % 2 == 1), randn(g, n, c, 19, 21)
        s, b = randn(g, c), randn(g, c)
        return grads(ops.add_relu(x, r, s, b), [x, r, s, b], g)

    def branch_concat(seed):
        g = gen(seed)
        xs = [randn(g, 3, c, 13, 11, dtype=torch.float16 if seed % 2 else torch.float32) for c in (5, 3 + seed % 4, 7)]
        total = sum(t.shape[1] for t in xs)
        s, b = randn(g, total), randn(g, total)
        return grads(ops.branch_concat(xs, s, b), xs + [s, b], g)

    def affine_relu(seed):
        g = gen(seed)
        x = randn(g, 4, 16 + seed % 5, 15, 15, channels_last=True)
        s, b = randn(g, x.shape[1]), randn(g, x.shape[1])
        return grads(ops.affine_relu(x, s, b), [x, s, b], g)

    def depthwise(seed):
        g = gen(seed)
        c = 6 + seed % 3
        x, w, b = randn(g, 2, c, 17, 17, channels_last=seed % 2 == 0), randn(g, 2 * c, 1, 3, 3), randn(g, 2 * c)
        return grads(ops.depthwise_conv2d(x, w, b, 1 + seed % 2, 1, 1, "relu6", seed % 3 == 0), [x, w, b], g)

    def separable(seed):
        g = gen(seed)
        x, w, pw, pb = randn(g, 2, 8, 14, 14), randn(g, 8, 1, 5, 5), randn(g, 12, 8, 1, 1), randn(g, 12)
        return grads(ops.separable_conv2d(x, w, None, pw, pb, 1, 2, 1, "relu", "relu6"), [x, w, pw, pb], g)

    return dict(add_relu=add_relu, branch_concat=branch_concat, affine_relu=affine_relu, depthwise_conv2d=depthwise,
                separable_conv2d=separable)


# Calls that run a BLAS/cuBLAS GEMM (separable_conv2d's pointwise step): the library does not promise bitwise
# equal results across threads and streams, so they are compared to 1e-6; everything else bitwise.
LIBRARY_GEMM = ("separable_conv2d", "SeparableConv2d")


def _assert_equal_lists(got, expected, what):
    assert len(got) == len(expected), what
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: result {i}"
        if what.split()[0] in LIBRARY_GEMM:
            torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-6, atol=1e-6, msg=lambda m: f"{what}: result {i}: {m}")
        else:
            assert torch.equal(a.cpu(), b.cpu()), f"{what}: result {i} differs from the sequential run"


def _run_concurrently(tasks, threads=THREADS):
    """Run every task (a callable) on a pool of threads that all start at once; returns the results in order."""
    barrier = threading.Barrier(threads)

    def start_together(task):
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            pass  # fewer tasks than threads in the last wave
        return task()

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(start_together, tasks))


@pytest.mark.parametrize("device", DEVICES)
def test_ops_from_many_threads_match_a_sequential_run(device):
    jobs = _jobs(device)
    calls = [(name, seed) for seed in range(THREADS) for name in jobs]
    expected = {(name, seed): jobs[name](seed) for name, seed in calls}
    if device == "cuda":
        torch.cuda.synchronize()
    # every thread runs every job ROUNDS times, each thread in its own order and with its own seeds
    tasks = [lambda name=name, seed=seed: (name, seed, jobs[name](seed)) for _ in range(ROUNDS) for name, seed in calls]
    for name, seed, got in _run_concurrently(tasks):
        _assert_equal_lists(got, expected[(name, seed)], f"{name} (seed {seed})")


def _modules(device):
    torch.manual_seed(0)
    mods = dict(
        BNAddReLU=fnn.BNAddReLU(16),
        BNReLU=fnn.BNReLU(16),
        BranchConcatBNReLU=fnn.BranchConcatBNReLU([6, 10]),
        DepthwiseConv2d=fnn.DepthwiseConv2d(16, 3, padding=1, multiplier=2, activation="relu"),
        SeparableConv2d=fnn.SeparableConv2d(16, 24, activation="relu"),
    )
    with torch.no_grad():  # non-trivial running statistics, so eval folds something
        for m in mods.values():
            for bn in m.modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    bn.running_mean.uniform_(-1, 1)
                    bn.running_var.uniform_(0.5, 2)
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-1, 1)
    return {k: m.to(device).eval() for k, m in mods.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_shared_eval_modules_from_many_threads(device):
    """One module object used by every thread at once (eval: each call folds its BatchNorms from the shared
    buffers; nothing is cached on the modules)."""
    mods = _modules(device)

    def call(name, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 16, 12, 12, generator=g).to(device)
        with torch.inference_mode():
            if name == "BNAddReLU":
                return [mods[name](x, torch.randn(x.shape, generator=g).to(device))]
            if name == "BranchConcatBNReLU":
                return [mods[name](x[:, :6], x[:, 6:])]
            return [mods[name](x)]

    calls = [(name, seed) for seed in range(THREADS) for name in mods]
    expected = {(name, seed): call(name, seed) for name, seed in calls}
    tasks = [lambda name=name, seed=seed: (name, seed, call(name, seed)) for _ in range(ROUNDS) for name, seed in calls]
    for name, seed, got in _run_concurrently(tasks):
        _assert_equal_lists(got, expected[(name, seed)], f"{name} (seed {seed})")


# --------------------------------------------------------------------------------------------------------
# CUDA streams and devices

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("op", list(_jobs("cpu")))
def test_cuda_op_runs_on_the_current_stream(op):
    """The input is written on a side stream behind a long sleep, and the op is called on that stream: an op
    that launched on the default stream instead would read the NaN the buffer held before."""
    torch.cuda.synchronize()
    g = torch.Generator().manual_seed(1)
    src = torch.randn(4, 16, 20, 20, generator=g).cuda()
    w = torch.randn(16, 1, 3, 3, generator=g).cuda()
    pw = torch.randn(8, 16, 1, 1, generator=g).cuda()
    s, b = torch.rand(16, generator=g).cuda() + 0.5, torch.randn(16, generator=g).cuda()
    fns = dict(
        add_relu=lambda x: ops.add_relu(x, src, s, b),
        branch_concat=lambda x: ops.branch_concat([x[:, :5], x[:, 5:]], s, b),
        affine_relu=lambda x: ops.affine_relu(x, s, b),
        depthwise_conv2d=lambda x: ops.depthwise_conv2d(x, w, None, 1, 1, 1, "relu"),
        separable_conv2d=lambda x: ops.separable_conv2d(x, w, None, pw, None, 1, 1, 1, "relu", "none"),
    )
    x = src.detach().requires_grad_()
    expected = fns[op](x)
    expected = [expected.detach(), *torch.autograd.grad(expected, x, torch.full_like(expected, 0.5))]
    buffer = torch.full_like(src, float("nan"))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        buffer.copy_(src)
        x = buffer.detach().requires_grad_()
        y = fns[op](x)
        torch.cuda._sleep(200_000_000)  # the backward ops, too, must wait on this stream
        got = [y.detach(), *torch.autograd.grad(y, x, torch.full_like(y, 0.5))]
    side.synchronize()
    _assert_equal_lists(got, expected, f"{op} on a side stream")


@needs_cuda
def test_cuda_threads_with_their_own_streams():
    jobs = _jobs("cuda")
    calls = [(name, seed) for seed in range(THREADS) for name in jobs]
    expected = {(name, seed): jobs[name](seed) for name, seed in calls}
    torch.cuda.synchronize()

    def on_own_stream(name, seed):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            got = jobs[name](seed)
        stream.synchronize()
        return name, seed, got

    tasks = [lambda name=name, seed=seed: on_own_stream(name, seed) for _ in range(ROUNDS) for name, seed in calls]
    for name, seed, got in _run_concurrently(tasks):
        _assert_equal_lists(got, expected[(name, seed)], f"{name} (seed {seed}) on a thread's own stream")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("op", list(_jobs("cpu")))
def test_cuda_op_on_a_second_device(op):
    """Tensors on cuda:1 while cuda:0 is the current device: the op must run on cuda:1 (device guard) and agree
    with the same call on cuda:0."""
    torch.cuda.set_device(0)
    expected = _jobs("cuda:0")[op](3)
    got = _jobs("cuda:1")[op](3)
    for t in got:
        assert t.device == torch.device("cuda:1")
    for i, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-5, msg=lambda m: f"{op} result {i}: {m}")
