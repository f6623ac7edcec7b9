"""Loads pyfastblocks._C, and when it cannot, says why: the uncompiled source folder shadowing the installed
package, or a build for another torch/CUDA (which it was built for and which are here)."""
import importlib.machinery
from pathlib import Path
from typing import List

import torch

# The README's local-iteration command (CPU kernels only; without PYFASTBLOCKS_CUDA=0 it compiles CUDA too).
IN_PLACE_BUILD = "PYFASTBLOCKS_CUDA=0 python setup.py build_ext --inplace"


def _is_uncompiled_source_folder(package: Path) -> bool:
    """``package`` is a checkout's pyfastblocks/ (setup.py one level up) with no compiled _C in it."""
    compiled = any((package / ("_C" + suffix)).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)
    return not compiled and (package.parent / "setup.py").is_file()


def _installed_copies(package: Path) -> List[str]:
    """Folders of installed pyfastblocks distributions other than ``package`` (none where metadata is missing)."""
    try:
        from importlib.metadata import distributions

        found = []
        for dist in distributions():
            if (dist.metadata["Name"] or "").lower() != "pyfastblocks":
                continue
            init = Path(dist.locate_file("pyfastblocks/__init__.py")).resolve()
            if init.is_file() and init.parent != package and str(init.parent) not in found:
                found.append(str(init.parent))
        return found
    except Exception:  # noqa: BLE001 (only makes the message more precise)
        return []


def _source_folder_message(package: Path) -> str:
    installed = _installed_copies(package)
    if installed:
        shadowed = f"shadows the installed package ({', '.join(installed)})"
    else:
        shadowed = "shadows any installed package (none was found: install one as the README says)"
    return (
        f"pyfastblocks: imported from the source folder {package}, which has no compiled kernels "
        f"(pyfastblocks._C).\n"
        f"That folder comes first on sys.path (the current folder, or PYTHONPATH) and {shadowed}.\n"
        f"Run Python from another folder (or with `python -P`, Python 3.11+, which leaves the current folder off "
        f"sys.path), or build in place, from {package.parent}: {IN_PLACE_BUILD}"
    )


try:
    from . import _C  # noqa: F401  (importing it registers the torch.ops.fastblocks kernels)
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    _package = Path(__file__).resolve().parent
    if _is_uncompiled_source_folder(_package):
        raise ImportError(_source_folder_message(_package)) from exc
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
