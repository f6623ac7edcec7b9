"""Shared test helpers: devices, dtypes, tolerances and layouts. Every CUDA case runs wherever CUDA is available."""
import contextlib

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
