"""A consumer killed with SIGKILL between receiving a record and committing it loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import confluent_kafka

from freedom.testing import free_port, kafka_config, wait_until, write_config

SERVICES = Path(__file__).parent / "services"


def start_service(
    config_dir: Path, record_file: Path, topic: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "RECORD_FILE": str(record_file), "EVENT_TOPIC": topic, **env}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "recording_service:app",
            "--config",
            str(config_dir),
        ],
        cwd=SERVICES,
        env=environ,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(30)


def test_sigkill_before_commit_redelivers_after_restart(broker, new_topic, tmp_path):
    topic = new_topic(broker.bootstrap)
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            broker.bootstrap,
            port,
            group_id=f"crash-{uuid.uuid4().hex[:8]}",
            settings={"session.timeout.ms": 6000},
        ),
    )
    record_file, log = tmp_path / "records.jsonl", tmp_path / "service.log"

    proc = start_service(config, record_file, topic, log, HANG_AFTER_RECORD="1")
    try:
        wait_until(
            lambda: "assigned" in log.read_text() if log.exists() else False,
            60,
            what=f"the service to join its group (log: {log})",
        )
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap})
        producer.produce(topic, key=b"K-CRASH-1", value=b'{"ID": 1}')
        assert producer.flush(20) == 0
        wait_until(
            lambda: len(lines(record_file)) == 1, 60, what="the handler to receive the record"
        )
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    proc = start_service(config, record_file, topic, log)
    try:
        got = wait_until(
            lambda: len(lines(record_file)) >= 2 and lines(record_file),
            90,
            what=f"the record to be delivered again after the restart (log: {log})",
        )
    finally:
        stop(proc)
    assert proc.returncode == 0, f"SIGTERM should stop the service cleanly (log: {log})"
    assert [g["event_id"] for g in got] == ["K-CRASH-1", "K-CRASH-1"]
    assert got[1]["body"] == '{"ID": 1}'
