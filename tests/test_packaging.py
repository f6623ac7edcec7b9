"""The README's commands are the ones CI runs, the package reports how it was built (its commit included),
importing the uncompiled source folder says so, and the license is there."""
import ast
import importlib.machinery
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("pip install")]


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    test_command = [c for c in commands if c.rstrip().endswith("pytest tests")]
    assert len(test_command) == 1, commands
    assert test_command[0].strip() in (ROOT / ".ci" / "run").read_text()


def test_readme_main_command_runs_the_benchmark():
    assert any("pyfastblocks-bench" in c for c in _readme_commands())


# --- how it was built: the commit -----------------------------------------------------------------------------

COMMIT = re.compile(r"[0-9a-f]{40}(-dirty)?")


def test_build_info_reports_the_commit():
    import pyfastblocks

    commit = pyfastblocks.build_info()["commit"]
    assert commit == "unknown" or COMMIT.fullmatch(commit), commit
    try:
        from pyfastblocks._build_config import BUILD_CONFIG
    except ImportError:
        return
    assert commit == (BUILD_CONFIG.get("commit") or "unknown")
    if commit != "unknown" and (ROOT / ".git").exists() and shutil.which("git"):
        # built from this repository: its commit is one of ours
        sha = commit.split("-")[0]
        assert subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", sha + "^{commit}"]).returncode == 0


def _setup_git_commit(root: Path):
    """setup.py's _git_commit, run for the source tree ``root`` (setup.py itself would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    (fn,) = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "_git_commit"]
    namespace = {"ROOT": root, "Path": Path, "subprocess": subprocess}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "setup.py", "exec"), namespace)
    return namespace["_git_commit"]()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_setup_records_the_commit_it_builds(tmp_path):
    def git(*args, cwd):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd, check=True,
                       capture_output=True)

    plain = tmp_path / "plain"
    plain.mkdir()
    assert _setup_git_commit(plain) == "unknown"  # an unpacked sdist: no git checkout

    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    (repo / "setup.py").write_text("# placeholder\n")
    assert _setup_git_commit(repo) == "unknown"  # no commit yet
    git("add", "setup.py", cwd=repo)
    git("commit", "-q", "-m", "one", cwd=repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert _setup_git_commit(repo) == head
    (repo / "setup.py").write_text("# changed\n")
    assert _setup_git_commit(repo) == head + "-dirty"

    inner = repo / "vendored"
    inner.mkdir()
    assert _setup_git_commit(inner) == "unknown"  # a copy inside another project's checkout


# --- importing from the source folder ---------------------------------------------------------------------------

IN_PLACE_BUILD = "PYFASTBLOCKS_CUDA=0 python setup.py build_ext --inplace"


def test_the_readme_gives_the_in_place_build_the_import_error_names():
    from pyfastblocks._extension import IN_PLACE_BUILD as named

    assert named == IN_PLACE_BUILD and IN_PLACE_BUILD in (ROOT / "README.md").read_text()


def _source_checkout(where: Path, compiled: bytes = None) -> Path:
    """A copy of the source tree's Python package (no compiled _C unless ``compiled`` gives its bytes)."""
    import pyfastblocks

    where.mkdir(parents=True)
    shutil.copy(ROOT / "setup.py", where / "setup.py")
    shutil.copytree(Path(pyfastblocks.__file__).parent, where / "pyfastblocks",
                    ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    if compiled is not None:
        (where / "pyfastblocks" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(compiled)
    return where


def _import_in(cwd: Path, pythonpath: str = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", "import pyfastblocks"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("installed", [False, True], ids=["none-installed-elsewhere", "installed-elsewhere"])
def test_importing_the_source_folder_says_it_shadows_the_package(tmp_path, installed):
    source = _source_checkout(tmp_path / "clone")
    pythonpath = None
    if installed:  # an installed copy further down sys.path (a stand-in: metadata and an __init__.py)
        site = tmp_path / "site"
        (site / "pyfastblocks").mkdir(parents=True)
        (site / "pyfastblocks" / "__init__.py").write_text("")
        (site / "pyfastblocks-0.1.0.dist-info").mkdir()
        (site / "pyfastblocks-0.1.0.dist-info" / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: pyfastblocks\nVersion: 0.1.0\n")
        pythonpath = str(site)
    proc = _import_in(source, pythonpath)
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()
    text = "\n".join(message[message.index(next(m for m in message if m.startswith("ImportError: pyfastblocks"))):])
    assert f"source folder {source.resolve() / 'pyfastblocks'}" in text, text
    assert "shadows" in text and "another folder" in text and "python -P" in text and IN_PLACE_BUILD in text
    assert "Rebuild against" not in text  # not the version-mismatch advice
    if installed:
        assert str((tmp_path / "site" / "pyfastblocks").resolve()) in text


def test_a_broken_build_still_gets_the_version_advice(tmp_path):
    source = _source_checkout(tmp_path / "clone", compiled=b"not a shared object")
    proc = _import_in(source)
    assert proc.returncode != 0
    assert "cannot load its compiled kernels" in proc.stderr and "Rebuild against the torch you import" in proc.stderr
    assert "source folder" not in proc.stderr


def test_the_package_has_a_bsd3_license():
    license_text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause License" in license_text and "pyfastblocks developers" in license_text
    assert 'license = { text = "BSD-3-Clause" }' in (ROOT / "pyproject.toml").read_text()
