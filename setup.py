"""Build of pyfastblocks._C: a CUDAExtension when a CUDA toolkit is found, else a CppExtension.

Environment switches:
  PYFASTBLOCKS_CUDA=0     build the CPU kernels only (fast local iteration)
  FORCE_CUDA=1            fail unless the CUDA kernels are built
  TORCH_CUDA_ARCH_LIST    GPU architectures; when unset and no GPU is visible: DEFAULT_CUDA_ARCHS below
  CUDA_HOME / CUDA_PATH   the toolkit to use (otherwise found from nvcc on PATH)

Build against the torch you will import: `pip install --no-build-isolation .`
"""
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
VERSION = "0.1.0"
# Ampere (A100) and Hopper (H100/H200) machine code, and Hopper PTX that the driver JIT-compiles on newer cards.
# sm_80 machine code also runs on every 8.x card (A10, RTX 30/40, L4: binary compatible within a major version), so
# a separate 8.6 build would only cost compile time (each architecture is one more device compilation of every .cu).
# CUDA 13 dropped everything older than 7.5.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def _git_commit() -> str:
    """The commit this source tree is checked out at: "<sha>", "<sha>-dirty" where files differ from it (or
    their state cannot be read), "unknown" without git or outside a checkout of this project (an unpacked
    sdist, or a copy inside another repository)."""
    def git(*args):
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        top = git("rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != ROOT:
            return "unknown"
        head = git("rev-parse", "--verify", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + ("" if status == "" else "-dirty")


def _has_cudart(home: Path) -> bool:
    patterns = ("lib64/libcudart.so*", "lib/libcudart.so*", "targets/*/lib/libcudart.so*")
    return any(any(home.glob(p)) for p in patterns)


def _real_cuda_home():
    """The toolkit folder behind nvcc, following symlinks and small `exec .../bin/nvcc` wrapper scripts."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and (Path(value) / "bin" / "nvcc").exists() and _has_cudart(Path(value)):
            return Path(value)
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(os.path.realpath(nvcc))
        try:
            head = real.read_bytes()[:4096]
        except OSError:
            head = b"\x7fELF"
        if not head.startswith(b"\x7fELF"):  # a script: look for the nvcc it runs
            for match in re.finditer(rb"(/[^\s\"';]+/bin/nvcc)\b", head):
                candidates.append(Path(os.path.realpath(match.group(1).decode())).parent.parent)
        candidates.append(real.parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").exists() and _has_cudart(home):
            return home
    return None


cuda_switch = os.environ.get("PYFASTBLOCKS_CUDA", "auto").strip().lower()
force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
if force_cuda and cuda_switch in ("0", "off", "false", "no"):
    sys.exit("setup.py: FORCE_CUDA=1 and PYFASTBLOCKS_CUDA=0 contradict each other; unset one.")
cuda_home = None if cuda_switch in ("0", "off", "false", "no") else _real_cuda_home()
if cuda_home is not None:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import: set it to the real toolkit first.
    os.environ["CUDA_HOME"] = str(cuda_home)

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - build-environment guard
    sys.exit(
        "setup.py: torch is not importable in the build environment ({}).\n"
        "Install torch first, then build against it: pip install --no-build-isolation .".format(exc)
    )

if "pip-build-env-" in (torch.__file__ or "") and os.environ.get("PYFASTBLOCKS_ALLOW_ISOLATED_BUILD") != "1":
    sys.exit(
        "setup.py: this build sees torch from pip's isolated build environment ({}), which is not the torch "
        "you will import (that gives 'undefined symbol' errors at import).\n"
        "Build with: pip install --no-build-isolation .".format(torch.__file__)
    )

use_cuda = cuda_home is not None and torch.version.cuda is not None
if force_cuda and not use_cuda:
    sys.exit(
        "setup.py: FORCE_CUDA=1 but the CUDA kernels cannot be built: "
        + ("no CUDA toolkit (nvcc with libcudart) was found" if cuda_home is None else
           "this torch ({}) is a CPU-only build".format(torch.__version__))
    )
if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
cuda_archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if use_cuda else ""

# Build facts, baked into the extension (build_info) and into Python (so a failed load can say them).
build_config = {
    "version": VERSION,
    "torch_version": torch.__version__,
    "torch_cuda_version": torch.version.cuda if use_cuda else None,
    "cuda_home": str(cuda_home) if use_cuda else None,
    "cuda_archs": cuda_archs or ("(visible GPU)" if use_cuda else None),
    "cuda_compiled": bool(use_cuda),
    "commit": _git_commit(),  # build_info()["commit"]; the bench header shows it
}
def _write_if_changed(path: Path, text: str) -> None:
    """Rewrite a generated file only when its text changes: ninja rebuilds whatever includes it otherwise."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


(ROOT / "csrc" / "generated").mkdir(exist_ok=True)
_write_if_changed(ROOT / "csrc" / "generated" / "build_config.h",
    "// Written by setup.py; do not edit.\n#pragma once\n"
    + "".join(
        '#define PYFASTBLOCKS_BUILD_{} "{}"\n'.format(k.upper(), "" if v is None else v)
        for k, v in build_config.items() if k != "cuda_compiled"
    )
)
_write_if_changed(ROOT / "pyfastblocks" / "_build_config.py",
                  "# Written by setup.py; do not edit.\nBUILD_CONFIG = {!r}\n".format(build_config))

# Parallel compile jobs: what the machine has (torch's default, cores + 2, oversubscribes small machines).
if "MAX_JOBS" not in os.environ:
    os.environ["MAX_JOBS"] = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())

sources = []
for folder in ("", "common", "cpu"):
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / folder).glob("*.cpp"))
if use_cuda:
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))

# -g0: Python's own CFLAGS carry -g; debug information for these template-heavy files is a large share of their
# compile time (and of the library's size). -Wno-psabi: GCC's note about passing 32-byte vectors is informational.
extra_compile_args = {"cxx": ["-O3", "-g0", "-fvisibility=hidden", "-Wno-unknown-pragmas", "-Wno-psabi"]}
extra_link_args = []
# at::parallel_for is inline OpenMP (`#pragma omp parallel` in ATen's headers, for torch's OpenMP builds): without
# -fopenmp every CPU kernel here would run on one thread whatever torch.get_num_threads() says. Linux torch wheels
# use GNU OpenMP (libgomp), which -fopenmp links, so the extension shares torch's thread pool.
if platform.system() == "Linux" and torch.__config__.parallel_info().find("OpenMP") >= 0:
    extra_compile_args["cxx"].append("-fopenmp")
    extra_link_args.append("-fopenmp")
AVX2_SUFFIX = "_avx2.cpp"
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


class BuildExtensionWithCpuCapabilities(BuildExtension):
    """Compiles csrc/cpu/*_avx2.cpp with AVX2 flags (as ATen builds its CPU_CAPABILITY kernels) and links
    those objects last; every other source gets the common flags."""

    def build_extension(self, ext):
        compile_all = self.compiler.compile

        def compile_with_capabilities(sources, *args, **kwargs):
            avx2 = [s for s in sources if s.endswith(AVX2_SUFFIX)]
            portable = [s for s in sources if not s.endswith(AVX2_SUFFIX)]
            objects = compile_all(portable, *args, **kwargs) if portable else []
            if avx2:
                post = kwargs.get("extra_postargs") or {}
                post = {k: list(v) for k, v in post.items()} if isinstance(post, dict) else {"cxx": list(post)}
                if IS_X86:
                    post["cxx"] = post.get("cxx", []) + AVX2_FLAGS
                objects += compile_all(avx2, *args, **dict(kwargs, extra_postargs=post))
            return objects

        self.compiler.compile = compile_with_capabilities
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_all

define_macros = []
if use_cuda:
    define_macros.append(("PYFASTBLOCKS_WITH_CUDA", "1"))
    extra_compile_args["nvcc"] = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    extension = CUDAExtension
else:
    extension = CppExtension

setup(
    version=VERSION,
    packages=find_packages(include=["pyfastblocks", "pyfastblocks.*"]),
    ext_modules=[
        extension(
            name="pyfastblocks._C",
            sources=sources,
            include_dirs=[str(ROOT / "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ],
    cmdclass={"build_ext": BuildExtensionWithCpuCapabilities},
)
