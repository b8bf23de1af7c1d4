"""The documentation site builds in strict mode: every link and anchor resolves, every page is in
the nav, every docstring of the public API parses (mkdocs.yml, the `docs` extra).

A second build, of a copy with one of each mistake, shows that the strict build does fail on them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import freedom
import freedom.infra.kafka
import freedom.testing
from tests.services.tools import require_module

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {
    "freedom": freedom.__all__,
    "freedom.testing": freedom.testing.__all__,
    "freedom.infra.kafka": freedom.infra.kafka.__all__,
}
# What the site needs from the repository (mkdocs.yml's hooks add the files outside docs/).
SOURCES = [
    "mkdocs.yml",
    "docs",
    "scripts/mkdocs_hooks.py",
    "README.md",
    "BENCHMARKS.md",
    "bench/perf-log.md",
    "src/freedom",
]

require_module("mkdocs", "mkdocs is in the `docs` extra: bash scripts/setup.sh installs it")
require_module("mkdocstrings_handlers.python", "mkdocstrings-python is in the `docs` extra")


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def reference_members() -> dict[str, list[str]]:
    """docs/reference.md's `::: module` blocks and the members each lists."""
    text = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    blocks = re.findall(
        r"^::: ([\w.]+)\n    options:\n      members:\n((?:        - \w+\n)+)", text, re.M
    )
    return {module: re.findall(r"- (\w+)", members) for module, members in blocks}


def test_the_reference_lists_exactly_the_public_names():
    assert reference_members() == {module: list(names) for module, names in PUBLIC.items()}


def test_the_docs_build_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    done = build(ROOT, site)
    assert done.returncode == 0, f"mkdocs build --strict:\n{done.stdout}{done.stderr}"
    assert "WARNING" not in done.stderr, done.stderr
    for page in (
        "index.html",
        "quickstart/index.html",
        "project/index.html",
        "project/bench/perf-log/index.html",
    ):
        assert (site / page).is_file(), page
    # The README's links into docs/ point at the site's pages, and the docs' links at the README's.
    readme = (site / "project" / "index.html").read_text(encoding="utf-8")
    assert 'href="../quickstart/"' in readme
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="project/"' in index and 'href="quickstart/"' in index
    # Every public name has its entry in the reference.
    reference = (site / "reference" / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="([\w.]+)"', reference))
    missing = [f"{m}.{n}" for m, names in PUBLIC.items() for n in names if f"{m}.{n}" not in ids]
    assert not missing, f"not in the rendered reference: {missing}"
    assert "freedom.infra.kafka.EventRoute" not in ids  # importable there, but internal


def test_the_strict_build_fails_on_a_broken_link_anchor_docstring_or_nav(tmp_path):
    copy = tmp_path / "repo"
    for name in SOURCES:
        source, target = ROOT / name, copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    with (copy / "docs" / "quickstart.md").open("a", encoding="utf-8") as f:
        f.write("\n[a](no-such-page.md), [b](../README.md#no-such-section), [c](testing.md#nope)\n")
    testing = copy / "src" / "freedom" / "testing" / "__init__.py"
    text = testing.read_text(encoding="utf-8")
    doc = '"""A TCP port free on 127.0.0.1 right now."""'
    assert doc in text
    testing.write_text(
        text.replace(
            doc, '"""A TCP port.\n\n    Args:\n        nothing: no such parameter.\n    """'
        ),
        encoding="utf-8",
    )
    config = (copy / "mkdocs.yml").read_text(encoding="utf-8")
    assert "  - Configuration: configuration.md\n" in config
    (copy / "mkdocs.yml").write_text(
        config.replace("  - Configuration: configuration.md\n", ""), encoding="utf-8"
    )

    done = build(copy, tmp_path / "site")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    for warning in (
        "contains a link 'no-such-page.md', but the target is not found",
        "does not contain an anchor '#no-such-section'",
        "does not contain an anchor '#nope'",
        "Parameter 'nothing' does not appear in the function signature",
        'not included in the "nav" configuration:\n  - configuration.md',
    ):
        assert warning in out, f"{warning!r} not reported:\n{out}"
