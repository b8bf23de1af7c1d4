"""What a test does when a tool it needs is missing: skip on a developer's machine, fail in CI.

CI (`CI=true`, scripts/test.sh) installs every tool the suite uses (Chromium, Node and the npm
packages, PostgreSQL, the Python versions, the dev extras), so a tool missing there is a broken
setup, not a reason to pass: the test fails, saying what is missing and how to install it.
Elsewhere the test is skipped with the same words.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def missing_tool(name: str, how_to_install: str) -> NoReturn:
    """Fail (CI) or skip (elsewhere) the running test, module or fixture: `name` is not available."""
    message = f"{name} is not available: {how_to_install}"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require_tool(name: str, available: bool, how_to_install: str) -> None:
    """Go on when `available`; else fail under CI=true, skip otherwise (see the module doc)."""
    if not available:
        missing_tool(name, how_to_install)


def require_command(command: str, how_to_install: str) -> str:
    """The path of `command` on PATH, else `missing_tool`."""
    path = shutil.which(command)
    require_tool(command, path is not None, how_to_install)
    assert path is not None
    return path


def require_module(module: str, how_to_install: str) -> ModuleType:
    """`import module` (as pytest.importorskip does), else `missing_tool`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing_tool(f"the Python module {module} ({exc})", how_to_install)
