"""Where a run ran: device, torch, the pyfastblocks build (its commit included), command, and the CPU load
that picks the thread count."""
import datetime as _dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

import pyfastblocks


def other_cpu_load(seconds: float = 0.5) -> Optional[float]:
    """How many cores other processes keep busy, from /proc/stat over ``seconds`` while this one sleeps (None
    where /proc/stat is missing)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # total, idle + iowait
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def source_commit() -> Optional[str]:
    """The commit checked out where the imported pyfastblocks Python code lives (an in-place build in a clone),
    with "-dirty" for uncommitted changes; None for an installed package or without git."""
    root = Path(pyfastblocks.__file__).resolve().parent.parent
    if not (root / "setup.py").is_file():
        return None

    def git(*args):
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    try:
        top = git("rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != root:
            return None
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    if not head:
        return None
    return head + ("-dirty" if status else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def environment(device: torch.device, argv: Optional[List[str]] = None) -> dict:
    """The run's environment as recorded in results.json. ``commit`` is the build's (``build_info()``);
    ``source_commit`` is set where the Python code comes from a clone now at another commit. ``argv``: the
    command's arguments (default: sys.argv's)."""
    build = pyfastblocks.build_info()
    env = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model(),
        "device_type": device.type,
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pyfastblocks": build,
        "commit": build.get("commit") or "unknown",
        "command": " ".join(["pyfastblocks-bench"] + list(sys.argv[1:] if argv is None else argv)),
    }
    source = source_commit()
    if source is not None and source != env["commit"]:
        env["source_commit"] = source
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
    return env


def format_environment(env: dict) -> str:
    """The header: one Markdown bullet per line (device, torch, build, date and commit, command)."""
    build = env["pyfastblocks"]
    if env["device_type"] == "cuda":
        device = (f"- device: {env['device']} (cuda, {env.get('gpu_memory_gib')} GiB, sm {env.get('gpu_capability')}); "
                  f"host CPU {env['cpu']}")
    else:
        threads = env["cpu_threads"]
        device = f"- device: {env['device']} (cpu, {threads} torch thread{'s' if threads != 1 else ''})"
        if env.get("threads_note"):
            device += f"; {env['threads_note']}"
    commit = f"commit {env.get('commit') or 'unknown'}"
    if env.get("source_commit"):
        commit += f" (the build's; its Python code is from a checkout now at {env['source_commit']})"
    lines = [
        device,
        f"- torch {env['torch']}, CUDA {env['cuda']} (available: {env['cuda_available']}), Python {env['python']}",
        f"- pyfastblocks {build.get('version')}: built with torch {build.get('torch_version')}, CUDA kernels "
        f"{'compiled for ' + str(build.get('cuda_archs')) if build.get('cuda_compiled') else 'not compiled'}, "
        f"CPU kernels {build.get('cpu_kernels')} (ATen {build.get('cpu_capability')})",
        f"- date {env['date']}, {commit}",
        f"- command: {env.get('command', '')}",
    ]
    return "\n".join(lines)
