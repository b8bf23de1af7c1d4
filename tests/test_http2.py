"""`proxy_http2 = true`: the seed's example end to end over HTTP/2 cleartext (h2c), served by granian."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import produce

SERVICES = Path(__file__).parent / "services"


def _lines(path: Path) -> list[dict]:
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code in (200, 404)
    except httpx.HTTPError:
        return False


def test_the_seed_example_over_h2c(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    port = free_port()
    kafka = kafka_config(
        bootstrap,
        port,
        group_id=f"g-h2-{uuid.uuid4().hex[:8]}",
        mode="concurrent",
        max_in_flight=20,
        settings={"session.timeout.ms": 6000},
    )
    kafka["consumer"]["proxy_http2"] = True
    config = write_config(tmp_path / "conf", app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)
    record_file, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    env = {**os.environ, "RECORD_FILE": str(record_file), "EVENT_TOPIC": topic}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "h2_shop_service:app",
            "--config",
            str(config),
        ],
        cwd=SERVICES,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _up(f"{base}/shop/0/missing"), 60, what=f"the service to listen (log: {log})"
        )
        # The server itself speaks h2c with prior knowledge, the way the proxy calls it.
        with httpx.Client(http1=False, http2=True, timeout=30) as h2:
            r = h2.get(f"{base}/shop/1")
            assert r.status_code == 200 and r.text == "ok" and r.http_version == "HTTP/2"
        wait_until(
            lambda: _lines(record_file), 30, what=f"the store handler to be called (log: {log})"
        )
        # Many at once over the one multiplexed connection.
        produce(
            bootstrap,
            topic,
            [
                {"key": f"K{i}".encode(), "value": json.dumps({"ID": i, "Amount": 1}).encode()}
                for i in range(2, 42)
            ],
        )
        got = wait_until(
            lambda: len(_lines(record_file)) >= 41 and _lines(record_file),
            60,
            what=f"41 deliveries (log: {log})",
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    first = got[0]
    assert first["body"] == {"ID": 1, "Amount": 10}
    assert (
        first["action"] == "购买" and first["retry"] == "0" and first["bus"] == {"tenant": "acme"}
    )
    assert len(first["event_id"]) == 32
    assert {g["http_version"] for g in got} == {"2"}
    assert sorted(g["body"]["ID"] for g in got) == list(range(1, 42))
