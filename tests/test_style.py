"""The code's habits, checked on every run of the test command: ruff (lint and format) and the
architecture contracts of import-linter (pyproject.toml's [tool.importlinter]: each part imports
only the parts below it, and no import cycle anywhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHECKED = ["src", "tests", "bench", "examples", "scripts"]


def _run(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing() -> None:
    done = _run(str(BIN / "ruff"), "check", *CHECKED)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_code_is_formatted() -> None:
    done = _run(str(BIN / "ruff"), "format", "--check", *CHECKED)
    assert done.returncode == 0, "run `ruff format` on:\n" + done.stdout + done.stderr


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return _run(
        str(BIN / "lint-imports"),
        "--no-cache",
        "--config",
        str(ROOT / "pyproject.toml"),
        cwd=src,
        env=env,
    )


def test_the_architecture_contracts_are_kept() -> None:
    done = _lint_imports(ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout, done.stdout


def test_a_new_import_cycle_breaks_the_contracts(tmp_path: Path) -> None:
    """The contracts are not vacuous: a lower layer importing a higher one (here the wire
    contract importing the web layer, lazily inside a function) fails the check."""
    shutil.copytree(ROOT / "src" / "freedom", tmp_path / "freedom")
    headers = tmp_path / "freedom" / "wire" / "headers.py"
    headers.write_text(
        headers.read_text()
        + "\n\ndef _reach_up() -> object:\n    from freedom.web.application import Application\n\n"
        "    return Application\n"
    )
    done = _lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "freedom.wire is not allowed to import freedom.web" in done.stdout, done.stdout
    assert "freedom.wire.headers -> freedom.web.application" in done.stdout, done.stdout
