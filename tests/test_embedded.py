"""The embedded broker dies with its service, however the service dies (SIGKILL included)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from confluent_kafka.admin import AdminClient

from freedom.kafka.embedded import EmbeddedBroker
from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import create_topic

SERVICES = Path(__file__).parent / "services"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only"
)


def gone(pid: int) -> bool:
    """True once the process has ended (a zombie waiting for its new parent to reap it has ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Service:
    """`freedom run` of a service with no `servers` in kafka.toml: it runs on the embedded broker."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        config = write_config(
            tmp_path / "conf",
            app={"listen_addr": f"127.0.0.1:{self.port}"},
            kafka=kafka_config(None, self.port),
        )
        self.log = tmp_path / "service.log"
        env = {
            **os.environ,
            "RECORD_FILE": str(tmp_path / "records.jsonl"),
            "EVENT_TOPIC": "embedded-dies",
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freedom",
                "run",
                "kill_service:app",
                "--config",
                str(config),
            ],
            cwd=SERVICES,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the service exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
            return True
        except OSError:
            return False

    def broker(self) -> psutil.Process:
        """The service's embedded broker, once the service is up (serving HTTP) on it."""
        wait_until(self._listening, 90, what=f"the service to start (log: {self.log})")
        children = psutil.Process(self.proc.pid).children(recursive=True)
        brokers = [c for c in children if "tansu" in c.name()]
        assert len(brokers) == 1, [c.cmdline() for c in children]
        return brokers[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
def test_the_broker_dies_when_its_service_is_killed(tmp_path, sig):
    svc = Service(tmp_path)
    try:
        broker = svc.broker()
        os.kill(svc.proc.pid, sig)  # the service only: the broker is in a session of its own
        svc.proc.wait(30)
        wait_until(
            lambda: gone(broker.pid),
            10,
            what=f"the embedded broker (pid {broker.pid}) to die with its service",
        )
    finally:
        svc.close()
    assert svc.proc.returncode == -sig


def test_sigterm_stops_the_service_and_its_broker_cleanly(tmp_path):
    svc = Service(tmp_path)
    try:
        broker = svc.broker()
        os.kill(svc.proc.pid, signal.SIGTERM)
        svc.proc.wait(60)
    finally:
        svc.close()
    assert svc.proc.returncode == 0, svc.log.read_text()[-3000:]
    assert gone(broker.pid)  # stopped by the service before it exited, not left behind


def test_a_broker_started_from_a_short_lived_thread_outlives_that_thread():
    # KafkaInfra starts the broker through asyncio.to_thread, whose worker threads come and go;
    # the kernel's parent-death signal is tied to the forking thread, so that thread must not matter.
    broker = EmbeddedBroker()
    worker = threading.Thread(target=broker.start)
    worker.start()
    worker.join(60)
    try:
        pid = broker.pid
        assert pid is not None
        # The kernel sends the parent-death signal (SIGKILL) as the thread ends, before join()
        # returns: a broker that answers a request made after that has outlived its starter.
        topic = create_topic(broker.bootstrap, "after-the-starter-ended", timeout=30)
        assert (
            topic
            in AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        )
        assert broker.running and broker.pid == pid and not gone(pid)
    finally:
        broker.stop()
    assert gone(pid)
