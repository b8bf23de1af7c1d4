"""SIGKILL after the database commit and before the publish: the outbox publishes the event after the restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.outbox.db import outbox_rows, unique_event
from tests.services.kafka_tools import create_topic, topic_size

SERVICE_DIR = Path(__file__).parent / "outbox"


def start_service(
    config_dir: Path, db: str, record_file: Path, event: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "DATABASE_URL": db,
        "RECORD_FILE": str(record_file),
        "EVENT_NAME": event,
        **env,
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "service:app",
            "--config",
            str(config_dir),
        ],
        cwd=SERVICE_DIR,
        env=environ,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/docs", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_sigkill_between_commit_and_publish_is_published_once_after_restart(
    apache_kafka, db_url, tmp_path
):
    name, topic = unique_event()
    create_topic(apache_kafka.bootstrap, topic)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            apache_kafka.bootstrap,
            port,
            group_id=f"crash-{uuid.uuid4().hex[:8]}",
            initial_offset="earliest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    record_file, log = tmp_path / "records.jsonl", tmp_path / "service.log"

    proc = start_service(config, db_url, record_file, name, log, KILL_AFTER_COMMIT="1")
    try:
        wait_until(
            lambda: proc.poll() is not None or serving(base),
            90,
            what=f"the service to serve (log: {log})",
        )
        assert proc.poll() is None, log.read_text()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/shop/shopping/1", timeout=30)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    rows = outbox_rows(db_url)
    assert len(rows) == 1 and rows[0].published_at is None, (
        "the commit must have reached the outbox"
    )
    assert topic_size(apache_kafka.bootstrap, topic) == 0, (
        "nothing may be published before the kill"
    )

    proc = start_service(config, db_url, record_file, name, log)
    try:
        got = wait_until(
            lambda: lines(record_file), 90, what=f"the event after the restart (log: {log})"
        )
        wait_until(
            lambda: outbox_rows(db_url)[0].published_at is not None,
            30,
            what="the row to be marked published",
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    got = lines(
        record_file
    )  # after a graceful stop: any duplicate would have been delivered by now
    assert got == [{"key": "1", "event_id": rows[0].event_id, "body": {"ID": 1, "Amount": 9}}]
    assert topic_size(apache_kafka.bootstrap, topic) == 1
