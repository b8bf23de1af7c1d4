"""`mypy --strict` passes on the package and on the README's code as a user writes it (issue 12, point 2).

The README's code is read from README.md at test time (every ```python block, in order, as one
module: the later snippets use `app` and `kafka` from the first), so the test follows the README.
mypy's cache lives in .cache/mypy (gitignored), so a rerun takes about a second.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.services.tools import require_module

ROOT = Path(__file__).parent.parent
CACHE = ROOT / ".cache" / "mypy"
MYPY = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(CACHE)]

require_module("mypy", "mypy is in the `typing` extra: bash scripts/setup.sh installs it")


def readme_python() -> str:
    """The README's ```python blocks, in order, joined into one module."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert blocks, "README.md has no ```python block"
    return "\n\n".join(blocks)


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MYPY, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_package_passes_mypy_strict():
    proc = mypy("src/freedom", cwd=ROOT)  # with pyproject.toml's [tool.mypy]
    assert proc.returncode == 0, f"mypy --strict src/freedom:\n{proc.stdout}{proc.stderr}"


def test_the_readme_example_as_user_code_passes_mypy_strict(tmp_path):
    """In a directory of its own, without the project's mypy config: freedom is found as the
    installed package it is for a user (through its py.typed)."""
    example = tmp_path / "readme_example.py"
    example.write_text(readme_python(), encoding="utf-8")
    proc = mypy(example.name, cwd=tmp_path)
    assert proc.returncode == 0, (
        f"mypy --strict on the README's code ({example}):\n{proc.stdout}{proc.stderr}"
    )
    assert "Success: no issues found in 1 source file" in proc.stdout


def test_a_type_error_in_user_code_is_reported(tmp_path):
    """The check above can fail: freedom's types reach user code (an Any-typed package would pass anything)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import freedom\n\napp: int = freedom.Application()\n", encoding="utf-8")
    proc = mypy(bad.name, cwd=tmp_path)
    assert (
        proc.returncode == 1
        and 'Incompatible types in assignment (expression has type "Application"' in proc.stdout
    ), proc.stdout + proc.stderr
