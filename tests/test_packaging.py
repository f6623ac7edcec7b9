"""The README's commands are the ones CI runs, and the package reports how it was built."""
import re
from pathlib import Path

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
