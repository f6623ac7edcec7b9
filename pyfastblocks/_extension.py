"""Loads pyfastblocks._C, and when it cannot, says which torch/CUDA it was built for and which are here."""
import torch

try:
    from . import _C  # noqa: F401  (importing it registers the torch.ops.fastblocks kernels)
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    try:
        from ._build_config import BUILD_CONFIG
    except ImportError:
        BUILD_CONFIG = None
    if BUILD_CONFIG is None:
        built = "an unknown torch (no build record: was the package built?)"
    else:
        built = "torch {} (CUDA {})".format(BUILD_CONFIG["torch_version"], BUILD_CONFIG["torch_cuda_version"] or "none")
    raise ImportError(
        "pyfastblocks: cannot load its compiled kernels pyfastblocks._C ({}).\n"
        "  built for: {}\n  present:   torch {} (CUDA {})\n"
        "Rebuild against the torch you import: pip install --no-build-isolation --no-deps --force-reinstall <pyfastblocks source>".format(
            exc, built, torch.__version__, torch.version.cuda or "none"
        )
    ) from exc

__all__ = ["_C"]
