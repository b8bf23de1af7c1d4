"""Start-up errors of `freedom run` are one line and quick (issue 20, point 7): a module that raises
while it is imported, and a cluster where nothing listens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from freedom.kafka.admin import all_refused
from freedom.testing import free_port, kafka_config, write_config

SERVICES = Path(__file__).parent / "services"

BAD = """\
import freedom

LIMIT = 10


def limit() -> int:
    raise ValueError(f"limit must be positive, got {-LIMIT}")


LIMITS = {"orders": limit()}
app = freedom.Application()
"""


def _freedom_run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freedom", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )


def test_a_module_raising_at_import_is_one_line_naming_the_file_and_line(tmp_path):
    (tmp_path / "bad.py").write_text(BAD)
    proc = _freedom_run(tmp_path, "bad:app")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "freedom: error: cannot import 'bad': ValueError: limit must be positive, got -10 "
        "(bad.py, line 7); `freedom run --log-level debug` shows the traceback"
    ], proc.stderr


def test_the_traceback_of_an_import_error_is_shown_with_log_level_debug(tmp_path):
    (tmp_path / "bad.py").write_text(BAD)
    proc = _freedom_run(tmp_path, "bad:app", "--log-level", "debug")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert "Traceback (most recent call last):" in err
    assert 'bad.py", line 10, in <module>' in err and 'bad.py", line 7, in limit' in err
    assert err.splitlines()[-1] == (
        "freedom: error: cannot import 'bad': ValueError: limit must be positive, got -10 (bad.py, line 7)"
    )


def test_an_error_in_a_module_the_app_imports_names_that_module(tmp_path):
    (tmp_path / "settings_of_app.py").write_text("import json\n\nLIMITS = json.loads('{')\n")
    (tmp_path / "main.py").write_text(
        "import settings_of_app\nimport freedom\napp = freedom.Application()\n"
    )
    proc = _freedom_run(tmp_path, "main:app")
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(
        "freedom: error: cannot import 'main': JSONDecodeError: Expecting property name"
    )
    assert "(settings_of_app.py, line 3)" in line  # the user's line, not json's


@pytest.mark.serial  # timed
def test_a_cluster_where_nothing_listens_stops_start_up_within_3_seconds(tmp_path):
    port, closed = free_port(), free_port()  # nothing listens on `closed`
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(f"127.0.0.1:{closed}", port),
    )
    started = time.monotonic()
    proc = _freedom_run(
        SERVICES,
        "recording_service:app",
        "--config",
        str(config),
        env={**os.environ, "RECORD_FILE": os.devnull},
    )
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("freedom: error:")]
    assert errors == [
        f"freedom: error: cannot reach Kafka at 127.0.0.1:{closed} (producer_clients[0] in "
        f"{config}/infra/kafka.toml): connection refused, nothing listens there; check `servers`, "
        "and that the broker is running"
    ], proc.stderr
    assert took < 3.0, (
        f"took {took:.1f} s (the start-up check waits 15 s for a broker that does not answer)"
    )


def test_only_refused_connections_are_refused():
    closed = free_port()
    assert all_refused(f"127.0.0.1:{closed}")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        assert not all_refused(f"127.0.0.1:{open_port}")
        # One address listening is enough to wait for the broker, as before.
        assert not all_refused(f"127.0.0.1:{closed},PLAINTEXT://127.0.0.1:{open_port}")
    assert not all_refused("")
