"""`proxy_addr` follows the listen address when kafka.toml does not set it (app.toml's listen_addr,
`freedom run --listen`, Application.run's host and port); an explicit one that points at another
port of this machine is one start-up warning."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import freedom
from freedom.testing import TestBroker, free_port, wait_until, write_config
from tests.services.kafka_tools import produce

SERVICES = Path(__file__).parent / "services"


def _app(
    config_dir: Path,
    listen_addr: str,
    consumer: dict[str, object],
    *,
    listen: str | None = None,
    servers: str = "127.0.0.1:9",
    setup: bool = True,
) -> freedom.Application:
    write_config(
        config_dir,
        app={"listen_addr": listen_addr},
        kafka={
            "consumer": {"open": True, **consumer},
            "producer": {"open": True},
            "producer_clients": [{"servers": [servers]}],
            "consumer_clients": [
                {
                    "servers": [servers],
                    "group_id": f"g-pa-{uuid.uuid4().hex[:8]}",
                    "settings": {"session.timeout.ms": 6000},
                }
            ],
        },
    )

    class Store:
        async def post_event_by(self, event_id: str) -> str:
            return "ok"

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event("event-pa", "Store.post_event_by")

    app = freedom.Application(config_dir=config_dir, prepare=[prepare])
    app.listen_addr = listen  # what `freedom run --listen` sets
    return app.setup() if setup else app


@pytest.mark.parametrize(
    "listen_addr, listen, expected",
    [
        ("127.0.0.1:8200", None, "http://127.0.0.1:8200"),
        (
            "127.0.0.1:8000",
            "127.0.0.1:8200",
            "http://127.0.0.1:8200",
        ),  # --listen wins, proxy_addr follows it
        ("0.0.0.0:8200", None, "http://127.0.0.1:8200"),  # every interface: reached on loopback
        (":8200", None, "http://127.0.0.1:8200"),
        ("[::]:8200", None, "http://[::1]:8200"),
        ("[::1]:8200", None, "http://[::1]:8200"),
        ("localhost:8200", None, "http://localhost:8200"),
    ],
)
def test_proxy_addr_follows_the_listen_address(tmp_path, listen_addr, listen, expected):
    app = _app(tmp_path, listen_addr, {}, listen=listen)
    assert app.kafka_config is not None and app.kafka_config.consumer.proxy_addr == expected
    assert (
        app.kafka is not None and app.kafka.config.consumer.proxy_addr == expected
    )  # what the proxy is made from


def test_an_explicit_proxy_addr_is_kept(tmp_path):
    app = _app(
        tmp_path,
        "127.0.0.1:8000",
        {"proxy_addr": "http://gateway.internal:9000"},
        listen="127.0.0.1:8200",
    )
    assert (
        app.kafka_config is not None
        and app.kafka_config.consumer.proxy_addr == "http://gateway.internal:9000"
    )


def test_application_run_host_and_port_move_proxy_addr(tmp_path):
    app = _app(tmp_path, "127.0.0.1:8000", {})
    app.serve_on("127.0.0.1:8300")  # what serve() does for Application.run(host=..., port=...)
    assert app.kafka is not None and app.kafka.config.consumer.proxy_addr == "http://127.0.0.1:8300"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "proxy_addr" in r.getMessage()
    ]


def test_an_explicit_proxy_addr_on_another_local_port_is_one_startup_warning(
    apache_kafka, tmp_path, caplog
):
    port, other = free_port(), free_port()
    app = _app(
        tmp_path,
        "127.0.0.1:8000",
        {"proxy_addr": f"http://127.0.0.1:{other}"},
        listen=f"127.0.0.1:{port}",
        servers=apache_kafka.bootstrap,
    )

    async def start_stop() -> None:
        await app.start()
        await app.stop()

    with caplog.at_level(logging.WARNING, logger="freedom"):
        asyncio.run(start_stop())
    [warning] = _warnings(caplog)
    assert f"proxy_addr = http://127.0.0.1:{other}" in warning and "kafka.toml" in warning
    assert f"listens on 127.0.0.1:{port} (freedom run: --listen)" in warning


@pytest.mark.parametrize(
    "proxy_addr",
    [
        "http://127.0.0.1:{port}",
        "http://localhost:{port}/",
        "inprocess",
        "http://10.20.30.40:9000",
        "https://events.example.com",
    ],
)
async def test_no_warning_when_proxy_addr_is_the_service_or_elsewhere(tmp_path, caplog, proxy_addr):
    port = free_port()
    app = _app(
        tmp_path, f"127.0.0.1:{port}", {"proxy_addr": proxy_addr.format(port=port)}, setup=False
    )
    with caplog.at_level(logging.WARNING, logger="freedom"):
        async with TestBroker(app):  # app.start() and stop(), on the in-memory broker
            pass
    assert _warnings(caplog) == []


async def test_the_startup_warning_also_comes_on_the_test_broker(tmp_path, caplog):
    """The check the test above relies on runs on the in-memory broker too."""
    port, other = free_port(), free_port()
    app = _app(
        tmp_path,
        "127.0.0.1:8000",
        {"proxy_addr": f"http://127.0.0.1:{other}"},
        listen=f"127.0.0.1:{port}",
        setup=False,
    )
    with caplog.at_level(logging.WARNING, logger="freedom"):
        async with TestBroker(app):
            pass
    [warning] = _warnings(caplog)
    assert f"proxy_addr = http://127.0.0.1:{other}" in warning


def test_freedom_run_listen_without_proxy_addr_receives_its_deliveries(
    apache_kafka, new_topic, tmp_path
):
    """End to end: `freedom run --listen` on a port app.toml does not name, no proxy_addr in kafka.toml."""
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    port, other = free_port(), free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{other}"},
        kafka={
            "consumer": {"open": True},
            "producer": {"open": True},
            "producer_clients": [{"servers": [bootstrap]}],
            "consumer_clients": [
                {
                    "servers": [bootstrap],
                    "group_id": f"g-listen-{uuid.uuid4().hex[:8]}",
                    "settings": {"session.timeout.ms": 6000},
                }
            ],
        },
    )
    record_file, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FREEDOM_")},
        "RECORD_FILE": str(record_file),
        "EVENT_TOPIC": topic,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "recording_service:app",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=SERVICES,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: (
                f"serving HTTP on 127.0.0.1:{port}" in log.read_text() if log.exists() else False
            ),
            90,
            what=f"the service to start (log: {log})",
        )
        produce(bootstrap, topic, [{"key": b"K-LISTEN", "value": b'{"ID": 1}'}])
        wait_until(
            lambda: record_file.exists() and record_file.read_text().strip(),
            60,
            what=f"the delivery on port {port} (log: {log})",
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    [line] = [json.loads(x) for x in record_file.read_text().splitlines()]
    assert line["event_id"] == "K-LISTEN" and line["retry"] == "0"
    assert "proxy_addr" not in log.read_text()  # no warning: it followed --listen
    assert proc.returncode == 0


def test_freedom_config_shows_the_proxy_addr_the_service_uses_and_where_it_comes_from(tmp_path):
    """`freedom config` shows the derived proxy_addr (not kafka.toml's default) and names its source:
    app.toml's listen_addr, `--listen`; an explicit one (here a variable) is shown as given."""
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": "0.0.0.0:8211"},
        kafka={
            "consumer": {"open": True},
            "producer": {"open": True},
            "producer_clients": [{"servers": ["127.0.0.1:9"]}],
            "consumer_clients": [{"servers": ["127.0.0.1:9"]}],
        },
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FREEDOM_")},
        "RECORD_FILE": os.devnull,
    }

    def shown(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "freedom",
                "config",
                "recording_service:app",
                "--config",
                str(config),
                *args,
            ],
            cwd=SERVICES,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    row = next(x for x in shown().stdout.splitlines() if "consumer.proxy_addr" in x)
    value, _, source = row.partition("#")
    assert value.split() == [
        "consumer.proxy_addr",
        "=",
        '"http://127.0.0.1:8211"',
    ]  # 0.0.0.0: reached on loopback
    assert source.strip() == f"derived from app.listen_addr ({config / 'app.toml'})"

    entry = json.loads(shown("--listen", "127.0.0.1:8212", "--json").stdout)["kafka"][
        "consumer.proxy_addr"
    ]
    assert entry == {
        "value": "http://127.0.0.1:8212",
        "source": "derived from --listen",
        "env": "FREEDOM_KAFKA__CONSUMER__PROXY_ADDR",
    }

    entry = json.loads(
        shown(
            "--listen",
            "127.0.0.1:8212",
            "--json",
            FREEDOM_KAFKA__CONSUMER__PROXY_ADDR="http://gw.internal:9000",
        ).stdout
    )["kafka"]["consumer.proxy_addr"]
    assert (
        entry["value"] == "http://gw.internal:9000"
        and entry["source"] == "FREEDOM_KAFKA__CONSUMER__PROXY_ADDR"
    )


@pytest.mark.parametrize(
    ("proxy_addr", "is_self"),
    [
        ("http://127.0.0.1:8100", True),
        ("http://localhost:8100/", True),
        ("http://10.1.2.3:8100", True),
        ("http://127.0.0.1:8200", False),  # another port of this machine
        ("http://127.0.0.1:8100/base", False),  # a path: someone else's routing
        ("https://127.0.0.1:8100", False),
        ("http://orders.internal:8100", False),
        ("inprocess", False),
    ],
)
def test_which_proxy_addr_is_the_service_itself(proxy_addr, is_self):
    """`freedom run --workers` gives each worker its own delivery port only for these (docs/scaling.md)."""
    from freedom.runner.addresses import proxy_addr_is_self

    assert proxy_addr_is_self(proxy_addr, "10.1.2.3:8100") is is_self
