"""`freedom run --reload` keeps the embedded broker (and its data) across code changes; `--log-level`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from confluent_kafka.admin import AdminClient

from freedom.testing import free_port, kafka_config, wait_until, write_config

from .services.kafka_tools import topic_size

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only"
)

APP = """
import freedom
from freedom.infra import kafka

TOPIC = "{topic}"


class ShopController:
    runtime: freedom.Runtime
    producer: kafka.Producer

    async def get_by(self, id: int) -> str:
        await self.producer.new_msg(TOPIC, f"record {{id}}".encode()).set_runtime(self.runtime).publish()
        return "ok"


class StoreController:
    runtime: freedom.Runtime

    async def post_event_by(self, event_id: str) -> None:
        body = (await self.runtime.request.body()).decode()
        self.runtime.logger.info("handled v1: %s", body)


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/shop", ShopController)
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(TOPIC, "StoreController.post_event_by")


app = freedom.Application()
"""


def gone(pid: int) -> bool:
    """True once the process has ended (a zombie waiting for its new parent to reap it has ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Reloading:
    """`freedom run app:app --reload` on a copy of a small app (embedded broker) in a tmp dir."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "svc"
        self.dir.mkdir()
        self.topic = f"reload-{uuid.uuid4().hex[:8]}"
        self.source = self.dir / "app.py"
        self.source.write_text(APP.format(topic=self.topic))
        self.port = free_port()
        write_config(
            self.dir / "conf",
            app={"listen_addr": f"127.0.0.1:{self.port}"},
            kafka=kafka_config(None, self.port),
        )
        self.log = tmp_path / "reload.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freedom",
                "run",
                "app:app",
                "--reload",
                "--config",
                "conf",
                "--log-level",
                "info",
            ],
            cwd=self.dir,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, needle: str) -> int:
        return self.text().count(needle)

    def wait_for(self, needle: str, times: int = 1, timeout: float = 90.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"freedom run --reload exited with {self.proc.returncode}:\n{self.text()[-3000:]}"
                )
            return self.count(needle) >= times

        wait_until(
            seen,
            timeout,
            what=f"{needle!r} x{times} in the output ({self.log}):\n{self.text()[-3000:]}",
        )

    def broker(self) -> psutil.Process:
        brokers = [c for c in psutil.Process(self.proc.pid).children() if "tansu" in c.name()]
        assert len(brokers) == 1, brokers
        return brokers[0]

    def bootstrap(self) -> str:
        url = self.broker().cmdline()[self.broker().cmdline().index("--listener-url") + 1]
        return url.removeprefix("tcp://")

    def service(self) -> psutil.Process:
        services = [c for c in psutil.Process(self.proc.pid).children() if "freedom" in c.cmdline()]
        assert len(services) == 1, services
        return services[0]

    def get(self, path: str) -> None:
        assert httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=30).status_code == 200

    def edit(self, old: str, new: str) -> None:
        text = self.source.read_text()
        assert old in text
        self.source.write_text(text.replace(old, new))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def reloading(tmp_path):
    svc = Reloading(tmp_path)
    yield svc
    svc.close()


def test_a_code_change_restarts_the_service_and_the_broker_keeps_its_data(reloading):
    svc = reloading
    svc.wait_for("serving HTTP on")
    broker, first = svc.broker(), svc.service()
    svc.get("/shop/1")
    svc.wait_for("handled v1: record 1")
    assert re.search(
        r"\[trace [0-9a-f]+\] handled v1: record 1", svc.text()
    )  # the child's logging, as freedom run's

    svc.edit("handled v1", "handled v2")
    svc.wait_for("changes in app.py: restarting the service")
    svc.wait_for("serving HTTP on", times=2)
    assert svc.service().pid != first.pid and gone(first.pid)
    assert svc.broker().pid == broker.pid  # the same broker process, not a new one
    metadata = AdminClient({"bootstrap.servers": svc.bootstrap()}).list_topics(
        svc.topic, timeout=10
    )
    partitions = len(metadata.topics[svc.topic].partitions)
    assert (
        topic_size(svc.bootstrap(), svc.topic, partitions) == 1
    )  # the earlier record is still there

    svc.get("/shop/2")
    svc.wait_for("handled v2: record 2")  # the new code handles new records
    # The group's committed offset survived too: record 1 was not delivered again.
    assert svc.count("record 1") == 1 and "handled v2: record 1" not in svc.text()

    service = svc.service()
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(60) == 0, svc.text()[-3000:]
    assert gone(service.pid) and gone(broker.pid)
    assert "Traceback" not in svc.text(), svc.text()[-3000:]


def test_an_edit_that_does_not_parse_is_one_line_and_the_next_edit_brings_the_service_back(
    reloading,
):
    svc = reloading
    svc.wait_for("serving HTTP on")
    broker = svc.broker()
    svc.edit("app = freedom.Application()", "app = freedom.Application(")
    svc.wait_for("waiting for a change to restart it")
    errors = [line for line in svc.text().splitlines() if "cannot import 'app'" in line]
    assert len(errors) == 1 and re.search(r"app\.py, line \d+\)$", errors[0]), errors
    assert "Traceback" not in svc.text(), svc.text()[-3000:]
    assert svc.proc.poll() is None  # the supervisor waits for the fix

    svc.edit("app = freedom.Application(", "app = freedom.Application()")
    svc.wait_for("serving HTTP on", times=2)
    svc.get("/shop/7")
    svc.wait_for("handled v1: record 7")
    assert svc.broker().pid == broker.pid

    # However the supervisor dies, the service and the broker go with it (the kernel's PDEATHSIG).
    service = svc.service()
    svc.proc.kill()
    svc.proc.wait(30)
    wait_until(
        lambda: gone(service.pid) and gone(broker.pid),
        15,
        what="the service and the broker to die with the supervisor",
    )


# ----------------------------------------------------------------------------- --log-level

PING_APP = """
import logging
import freedom

log = logging.getLogger("ping")


class PingController:
    async def get(self) -> str:
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        return "pong"


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/ping", PingController)


app = freedom.Application()
"""


@pytest.mark.parametrize(
    "file_level, flag, shown, hidden",
    [
        ("ERROR", "debug", ["debug line", "info line", "warning line"], []),
        ("DEBUG", "Warning", ["warning line"], ["debug line", "info line"]),
    ],
)
def test_log_level_overrides_app_toml(tmp_path, file_level, flag, shown, hidden):
    port = free_port()
    (tmp_path / "ping_app.py").write_text(PING_APP)
    write_config(
        tmp_path / "conf", app={"listen_addr": f"127.0.0.1:{port}", "log_level": file_level}
    )
    log = tmp_path / "out.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "freedom", "run", "ping_app:app", "--log-level", flag],
        cwd=tmp_path,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )

    def pinged() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(pinged, 60, what="the service to answer /ping")
        wait_until(lambda: "warning line" in log.read_text(), 10, what="the handler's warning line")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    out = log.read_text()
    assert all(s in out for s in shown) and not any(h in out for h in hidden), out


@pytest.mark.parametrize(
    "args", [["--log-level", "LOUD"], ["--log-level", "LOUD", "--reload"], ["--log-level", ""]]
)
def test_a_bad_log_level_is_one_line_and_exit_2(tmp_path, args):
    proc = subprocess.run(
        [sys.executable, "-m", "freedom", "run", "nowhere:app", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().splitlines() == [
        f'freedom: error: --log-level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got "{args[1]}"'
    ]


def test_a_reload_dir_that_is_not_a_directory_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "app:app",
            "--reload",
            "--reload-dir",
            "missing",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().splitlines() == [
        "freedom: error: --reload-dir missing: not a directory"
    ]


def test_a_bad_embedded_bootstrap_variable_is_one_line_and_exit_2(tmp_path):
    # $FREEDOM_EMBEDDED_BOOTSTRAP is set by the supervisor; from anyone else it is checked, not trusted.
    port = free_port()
    (tmp_path / "app.py").write_text(APP.format(topic="reload-bad-env"))
    write_config(
        tmp_path / "conf", app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka_config(None, port)
    )
    env = {**os.environ, "FREEDOM_EMBEDDED_BOOTSTRAP": "10.0.0.1:9092"}
    proc = subprocess.run(
        [sys.executable, "-m", "freedom", "run", "app:app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc
    errors = [line for line in proc.stderr.splitlines() if line.startswith("freedom: error:")]
    assert errors == [
        "freedom: error: $FREEDOM_EMBEDDED_BOOTSTRAP: must be 127.0.0.1:PORT (the address "
        "freedom broker prints, or set by freedom run --reload or --workers), got '10.0.0.1:9092'"
    ], proc.stderr
    assert "Traceback" not in proc.stderr
