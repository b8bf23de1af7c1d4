"""docs/quickstart.md, run as written.

Each block of the page is preceded by a marker, `<!-- quickstart: NAME -->`; the blocks are written
into a fresh directory under their names and used as the page uses them: `run.sh` (`freedom run
service:app`) starts the service on the embedded broker, the curl blocks call it, the `.log` blocks
are what its log must show (in order, `...` for lines left out; times, ids, ports, partitions and
offsets may differ), `dlq.sh` (run while the service runs) must print what `dlq.log` shows, and
`pytest.sh` runs `test_service.py`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from freedom.testing import free_port, wait_until
from tests.services.tools import require_command

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
BIN = Path(sys.executable).parent  # the venv's: `freedom` and `pytest` as the page runs them

# A marker, then a fenced block (its language tag optional), up to the closing fence.
BLOCK = re.compile(r"<!-- quickstart: (\S+) -->\n```[\w-]*\n(.*?)^```$", re.S | re.M)
FENCE = re.compile(r"^```", re.M)

FILES = {"service.py", "conf/app.toml", "conf/infra/kafka.toml", "test_service.py"}
SCRIPTS = {"install.sh", "run.sh", "order.sh", "failing-order.sh", "dlq.sh", "pytest.sh"}
LOGS = {"run.log", "order.log", "failing-order.log", "dlq.log"}


def blocks() -> dict[str, str]:
    text = QUICKSTART.read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for name, body in BLOCK.findall(text):
        assert name not in found, f"two blocks named {name} in {QUICKSTART.name}"
        found[name] = body
    return found


@pytest.fixture(scope="module")
def page() -> dict[str, str]:
    return blocks()


@pytest.fixture(scope="module")
def project(page: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's files (service.py, conf/, test_service.py) in a directory of their own."""
    root = tmp_path_factory.mktemp("quickstart")
    for name in FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page[name], encoding="utf-8")
    return root


def environment(**extra: str) -> dict[str, str]:
    """This environment without any FREEDOM_ setting of the caller's, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FREEDOM_", "PYTEST_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def normalized(line: str) -> str:
    """A log line with what changes from run to run replaced by placeholders."""
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "<time> ", line.rstrip())
    line = re.sub(r"\b[0-9a-fA-F]{32}\b", "<id>", line)
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", line)
    line = re.sub(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\b", "<iso time>", line)
    return re.sub(r"\[\d+\]@\d+", "[<partition>]@<offset>", line)


def assert_shown(expected: str, log: str, what: str) -> None:
    """Every line of `expected` but `...` is a line of `log`, in the same order."""
    lines = [normalized(line) for line in log.splitlines()]
    at = 0
    for want in expected.splitlines():
        if want.strip() == "...":
            continue
        target = normalized(want)
        try:
            at = lines.index(target, at) + 1
        except ValueError:
            raise AssertionError(
                f"{QUICKSTART.name}'s {what} shows a line the service did not log (after the "
                f"lines before it):\n  {want}\nnormalized:\n  {target}\nthe log:\n{log[-6000:]}"
            ) from None


def test_every_block_of_the_page_is_run_here(page):
    assert set(page) == FILES | SCRIPTS | LOGS, sorted(set(page) ^ (FILES | SCRIPTS | LOGS))
    fences = len(FENCE.findall(QUICKSTART.read_text(encoding="utf-8")))
    assert fences == 2 * len(page), "a fenced block of the page has no quickstart marker"


def test_the_install_line_names_this_distribution_and_its_extras(page):
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    [pip_line] = [line for line in page["install.sh"].splitlines() if "pip install" in line]
    match = re.search(r"pip install '([\w-]+)\[([\w,]+)\]' pytest$", pip_line)
    assert match, pip_line
    assert match[1] == meta["name"]
    assert set(match[2].split(",")) <= set(meta["optional-dependencies"])
    assert "embedded" in match[2] and "testing" in match[2]
    assert re.search(r"Python (\d+\.\d+)", QUICKSTART.read_text(encoding="utf-8"))[1] == (
        meta["requires-python"].removeprefix(">=")
    )


def test_the_service_runs_on_the_embedded_broker_as_the_page_shows(page, project):
    port = free_port()
    base = f"127.0.0.1:{port}"
    log_path = project / "service.log"
    require_command("curl", "install curl (apt-get install curl)")
    assert page["run.sh"].strip() == "freedom run service:app"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", page["run.sh"]],
            cwd=project,
            env=environment(FREEDOM_APP__LISTEN_ADDR=base),  # the page's 8000 may be taken here
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log() -> str:
        return log_path.read_text(encoding="utf-8", errors="replace")

    def logged(text: str) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"freedom run exited with {proc.returncode}:\n{log()[-6000:]}")
        return text in log()

    def curl(script: str) -> str:
        command = page[script].replace("localhost:8000", base)
        assert command != page[script], f"{script} does not call localhost:8000"
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=project,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        wait_until(lambda: logged(f"serving HTTP on {base}"), 120, what="the service to serve")
        assert_shown(page["run.log"], log(), "run.log")

        assert httpx.get(f"http://{base}/docs", timeout=30).status_code == 200  # the page says so
        assert curl("order.sh") == "placed"
        wait_until(lambda: logged("order 1: 3 items"), 60, what="the handler's log line")
        wait_until(lambda: logged("/orders/placed/"), 30, what="the delivery's access line")
        assert_shown(page["order.log"], log(), "order.log")

        assert curl("failing-order.sh") == "placed"
        wait_until(
            lambda: logged("dead-lettered to fail-order-placed"),
            90,
            what="the failing order to be dead-lettered",
        )
        assert_shown(page["failing-order.log"], log(), "failing-order.log")

        dlq = subprocess.run(
            ["bash", "-c", page["dlq.sh"]],
            cwd=project,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert dlq.returncode == 0, f"freedom dlq list: exit {dlq.returncode}\n{dlq.stderr}"
        assert_shown(page["dlq.log"], dlq.stdout, "dlq.log")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the page stops it
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    assert proc.returncode == 0, log()[-6000:]


def test_the_page_test_passes_with_pytest(page, project):
    assert page["pytest.sh"].strip() == "pytest -q test_service.py"
    done = subprocess.run(
        ["bash", "-c", page["pytest.sh"]],
        cwd=project,
        env=environment(PYTEST_ADDOPTS="-p no:cacheprovider"),  # no .pytest_cache left behind
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^2 passed\b", done.stdout, re.M), done.stdout
