"""pyfastblocks: fused CPU/CUDA kernels for the classic CNN blocks.

Ops live in ``torch.ops.fastblocks`` (Python wrappers in :mod:`pyfastblocks.ops`), modules in
:mod:`pyfastblocks.nn`.
"""
import torch

from ._extension import _C  # loads the compiled kernels (and says why, if they don't load)
from . import nn, ops, policy
from .ops import add_relu, affine_relu, branch_concat
from .swap import swap
from .freeze import freeze

__version__ = _C.build_info()["version"]


def _build_commit() -> str:
    """The commit setup.py recorded in _build_config.py ("unknown" where there is no record)."""
    try:
        from ._build_config import BUILD_CONFIG
    except ImportError:
        return "unknown"
    return BUILD_CONFIG.get("commit") or "unknown"


def build_info() -> dict:
    """How the extension was built and what this process runs it with.

    Keys: ``version``; ``torch_version`` / ``cuda_version`` it was built with; ``cuda_archs`` (the
    ``__CUDA_ARCH_LIST__`` compiled in) and ``cuda_archs_requested``; ``cuda_compiled``; ``cpu_kernels``
    (``"avx2"`` or ``"default"``, the CPU kernels this process runs); ``torch_runtime_version``;
    ``cuda_available``; ``cpu_capability`` (ATen's); ``commit``: the git commit it was built from (``"<sha>"``,
    ``"<sha>-dirty"`` where the checkout had uncommitted changes, ``"unknown"`` when not built from a checkout).
    """
    info = dict(_C.build_info())
    if not info.get("commit"):
        info["commit"] = _build_commit()
    info["torch_runtime_version"] = torch.__version__
    info["cuda_available"] = bool(info["cuda_compiled"] and torch.cuda.is_available())
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


__all__ = ["add_relu", "affine_relu", "branch_concat", "build_info", "freeze", "nn", "ops"]
