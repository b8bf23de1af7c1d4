"""The harness of the share-group tests and benchmark (tests/test_share_groups.py,
bench/share_groups.py): instances of tests/services/share_service.py run as `freedom run`
subprocesses in one share group, the JSON lines their handlers append, and publishing.

Records are published in record batches of at most `batch` records: Apache Kafka 4.4 hands a share
consumer whole record batches (its default "batch_optimized" acquire mode; librdkafka 2.16 cannot
ask for "record_limit"), whatever its max.poll.records, so a batch of 3000 records goes to one
member in one fetch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import confluent_kafka

from freedom.kafka.consumer.sources import ShareTerms
from freedom.kafka.consumer.sources.share import fetchers_for
from freedom.kafka.share_wire import ShareWire
from freedom.testing import free_port, kafka_config, wait_until, write_config

SERVICES = Path(__file__).resolve().parent


class Instance:
    """`freedom run share_service:app` as instance `name`, in its own process group and config."""

    def __init__(
        self,
        name: str,
        tmp: Path,
        bootstrap: str | None,
        topic: str,
        record_file: Path,
        client: dict[str, Any],
        app: dict[str, Any] | None = None,
        **env: str,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.log = tmp / f"instance-{name}.log"
        self.err = tmp / f"instance-{name}.err"
        config = write_config(
            tmp / f"conf-{name}",
            app={"listen_addr": f"127.0.0.1:{self.port}", **(app or {})},
            kafka=kafka_config(bootstrap, self.port, share_group=True, **client),
        )
        environ = {
            **os.environ,
            "RECORD_FILE": str(record_file),
            "EVENT_TOPIC": topic,
            "INSTANCE": name,
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freedom", "run", "share_service:app", "--config", str(config)],
            cwd=SERVICES,
            env=environ,
            stdout=self.log.open("ab"),
            stderr=self.err.open("ab"),
            start_new_session=True,
        )

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.log, self.err) if p.exists())

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"instance {self.name} exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise AssertionError(f"instance {self.name} ignored {sig} for {timeout} s") from None

    def assert_clean(self) -> None:
        out = self.output()
        assert self.proc.returncode == 0, (
            f"instance {self.name} rc {self.proc.returncode}:\n{out[-3000:]}"
        )
        assert "Traceback" not in out, out[-3000:]


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ended(path: Path) -> dict[str, list[dict[str, Any]]]:
    """key -> its "end" lines (handled successfully), in order."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines(path):
        if line["ev"] == "end":
            out[line["key"]].append(line)
    return out


def members_of(client: dict[str, Any]) -> int:
    """How many members of its share group one instance with `client`'s settings runs (its
    source's fetchers: sources/share.py)."""
    max_in_flight = int(client.get("max_in_flight", 500))
    return fetchers_for(ShareTerms(lock_sec=0.0, max_records=min(500, 2 * max_in_flight)))


def wait_members(bootstrap: str, group: str, topic: str, n: int, timeout: float = 60) -> None:
    """Until `group` has `n` members, each assigned `topic`'s partition 0."""

    wire = ShareWire({"bootstrap.servers": bootstrap})

    def check() -> bool:
        g = wire.describe(group)
        return (
            g.error_code == 0
            and len(g.members) == n
            and all((topic, 0) in m.partitions for m in g.members)
        )

    wait_until(check, timeout, interval=0.2, what=f"{n} members of share group {group} on {topic}")


def start(
    fleet: list[Instance],
    n: int,
    bootstrap: str,
    topic: str,
    group: str,
    tmp: Path,
    client: dict[str, Any],
    app: dict[str, Any] | None = None,
    **env: str,
) -> tuple[list[Instance], Path]:
    """Start `n` instances in share group `group` (appended to `fleet`), wait until each is ready
    and a member reading `topic`; returns them and the file their handlers write."""
    record_file = tmp / "records.jsonl"
    client = {"group_id": group, "retry_group_id": f"r-{group}", **client}
    instances = [
        Instance(str(i), tmp, bootstrap, topic, record_file, client, app, **env) for i in range(n)
    ]
    fleet.extend(instances)
    for instance in instances:
        wait_until(instance.ready, 90, interval=0.2, what=f"instance {instance.name} /readyz 200")
    wait_members(bootstrap, group, topic, n * members_of(client))
    return instances, record_file


def keys(n: int, prefix: str = "k") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def publish(bootstrap: str, topic: str, names: list[str], batch: int = 20) -> None:
    """Produce a record per key, at most `batch` in a record batch (see the module's notes)."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": batch}
    )
    for k in names:
        while True:
            try:
                producer.produce(topic, key=k.encode(), value=f"body {k}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def lock_of(instance: Instance) -> float:
    """The acquisition lock the instance says its group has (its start-up line)."""
    found = re.search(r"share group .*\block (\d+(?:\.\d+)?) s", instance.output())
    assert found, f"no lock in the start-up line of instance {instance.name}"
    return float(found.group(1))
