"""Shared test helpers: devices, dtypes, tolerances and layouts. Every CUDA case runs wherever CUDA is available."""
import contextlib
import inspect
import re

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last", "noncontiguous"]

# Error bound against a float64 reference, per output dtype: the kernels compute in float32 (float64 for
# float64) and round once at the end, so the bound is a few output ulps.
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def make_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as t in the given memory layout (a strided view for 'noncontiguous')."""
    if layout == "nchw":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "noncontiguous":
        # Every other element of a twice-as-wide buffer along the last dim: strided, not dense.
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        view = wide[..., ::2]
        view.copy_(t)
        return view
    raise ValueError(layout)


def assert_close(actual, expected, dtype=None):
    dtype = dtype or actual.dtype
    torch.testing.assert_close(actual.double(), expected.double(), **TOLERANCES[dtype])


# ------------------------------------------------------------------------------------------------------------
# The `cuda` marker: every test item that runs CUDA code, so that the GPU check (scripts/gpu_check.sh) runs
# `pytest -m cuda` (CUDA vs CPU, GPU vs emulator, large tensors, streams, mixed devices) and not the CPU suite CI
# already runs. Applied here at collection, from what the item is:
#   - marked `cuda` explicitly (for what the rules below cannot see, e.g. a case that uses a second device kind);
#   - "cuda" in the test's name (test_cuda_matches_cpu, test_gradscaler_training_cuda);
#   - a parameter (any fixture or argument) that is or holds a CUDA device or tensor, or "cuda" in its id;
#   - a skipif/skip mark whose reason names CUDA ("needs CUDA": a CUDA-only test, also where it is skipped);
#   - no device parameter at all, and a body that asks for CUDA (torch.cuda.is_available(), .cuda(),
#     device="cuda"): a CPU test with extra CUDA cases where a GPU is present.
# A test parametrized with a CPU device (and nothing CUDA) is a CPU test, whatever its body says.
_CUDA_IN_BODY = re.compile(r"torch\.cuda\.is_available\(\)|\.cuda\(|device=[\"']cuda")


def _device_kind(value):
    """'cuda', 'cpu' or None (no device) for a parameter value: a device, a device string or a tensor; tuples,
    lists and dicts: cuda if any element is."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        kinds = {_device_kind(v) for v in value}
        return "cuda" if "cuda" in kinds else ("cpu" if "cpu" in kinds else None)
    if isinstance(value, torch.Tensor):
        value = value.device
    if isinstance(value, torch.device):
        return value.type if value.type in ("cpu", "cuda") else None
    if isinstance(value, str) and re.fullmatch(r"(cuda|cpu)(:\d+)?", value):
        return value.split(":")[0]
    return None


def runs_on_cuda(item) -> bool:
    """Whether a collected test item runs CUDA code (see the rules above)."""
    if item.get_closest_marker("cuda") is not None:
        return True
    if "cuda" in getattr(item, "originalname", item.name).lower():
        return True
    callspec = getattr(item, "callspec", None)
    kinds = {_device_kind(v) for v in callspec.params.values()} if callspec is not None else set()
    if "cuda" in kinds or (callspec is not None and re.search(r"(^|[-_\[])cuda", callspec.id)):
        return True
    for mark in list(item.iter_markers("skipif")) + list(item.iter_markers("skip")):
        texts = [mark.kwargs.get("reason", "")] + [a for a in mark.args if isinstance(a, str)]
        if any("cuda" in str(t).lower() for t in texts):
            return True
    if "cpu" in kinds:
        return False
    try:
        source = inspect.getsource(item.function)
    except (AttributeError, OSError, TypeError):
        return False
    return bool(_CUDA_IN_BODY.search(source))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if runs_on_cuda(item):
            item.add_marker(pytest.mark.cuda)


def pytest_report_header(config):
    import pyfastblocks

    return f"pyfastblocks from {pyfastblocks.__file__}: {pyfastblocks.build_info()}"


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def child_process_env_and_cwd():
    """(env, cwd) for a child Python that must import the pyfastblocks these tests import (the installed one in CI,
    the in-place build locally): PYTHONPATH points at its parent folder and the child runs outside the source
    tree, whose uncompiled pyfastblocks/ would otherwise shadow it."""
    import os
    import tempfile
    from pathlib import Path

    import pyfastblocks

    root = str(Path(pyfastblocks.__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env, tempfile.gettempdir()


@contextlib.contextmanager
def cpu_depthwise_backend(backend: str):
    """pyfastblocks.ops.set_cpu_depthwise_backend(backend) for the duration of the block."""
    from pyfastblocks import ops

    previous = ops.set_cpu_depthwise_backend(backend)
    try:
        yield
    finally:
        ops.set_cpu_depthwise_backend(previous)


@contextlib.contextmanager
def training_backend(backend: str, device_type: str = "cpu"):
    """pyfastblocks.policy.TRAINING_BACKEND[device_type] = backend for the duration of the block."""
    from pyfastblocks import policy

    previous = policy.TRAINING_BACKEND[device_type]
    policy.TRAINING_BACKEND[device_type] = backend
    try:
        yield
    finally:
        policy.TRAINING_BACKEND[device_type] = previous


def randomize_batchnorm(model, seed: int = 0):
    """Random running statistics and affine parameters for every BatchNorm of ``model`` (a fresh model has mean 0,
    var 1, weight 1, bias 0, which would hide a wrong fold): the sweep's; returns ``model``."""
    from pyfastblocks.bench.sweep import randomize_batchnorms

    randomize_batchnorms(model, seed)
    return model
