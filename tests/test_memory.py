"""With a backlog of 100,000 records and a handler slower than the input, the proxy's memory stays bounded.

The bound: the service process (HTTP server, consumer proxy, Python, librdkafka) stays under
MEMORY_BOUND_MB of resident memory while it works through a 100 MB backlog (100,000 records of
1 KB) in concurrent mode with the default bound of 500 in flight. What keeps it there: a
partition is paused when its fetched-but-not-started records reach the bound, and librdkafka's
prefetch is capped (`queued.max.messages.kbytes`, 16 MB by default in freedom).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import produce

SERVICES = Path(__file__).parent / "services"
MEMORY_BOUND_MB = 250
BACKLOG = 100_000


def _handled(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if b'"end"' in line)


def test_memory_stays_bounded_with_a_large_backlog(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=4)
    value = os.urandom(1024)
    for start in range(0, BACKLOG, 20_000):
        produce(
            bootstrap,
            topic,
            [{"key": f"R{i}".encode(), "value": value} for i in range(start, start + 20_000)],
        )
    port = free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=f"g-mem-{uuid.uuid4().hex[:8]}",
            initial_offset="earliest",
            mode="concurrent",
            max_in_flight=500,
            settings={"session.timeout.ms": 6000},
        ),
    )
    record_file, log = tmp_path / "records.jsonl", tmp_path / "service.log"
    env = {
        **os.environ,
        "RECORD_FILE": str(record_file),
        "EVENT_TOPIC": topic,
        "MAX_LATENCY_MS": "50",
    }
    proc = subprocess.Popen(
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
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    peak = 0
    try:
        process = psutil.Process(proc.pid)
        wait_until(
            lambda: _handled(record_file) >= 1000,
            90,
            what=f"the service to work on the backlog (log: {log})",
        )
        # Sampled for 12 s, or until half of the backlog is handled: the backlog must still be
        # there while the memory is measured (a fast delivery path gets through it sooner).
        deadline, samples = time.monotonic() + 12, 0
        while time.monotonic() < deadline:
            peak = max(peak, process.memory_info().rss)
            samples += 1
            if samples % 10 == 0 and _handled(record_file) >= BACKLOG // 2:
                break
            time.sleep(0.1)
        handled = _handled(record_file)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    print(f"peak resident memory {peak / 2**20:.0f} MB, {handled} of {BACKLOG} records handled")
    assert samples >= 20, f"only {samples} samples before half the backlog was handled"
    assert peak < MEMORY_BOUND_MB * 2**20, f"peak resident memory {peak / 2**20:.0f} MB"
