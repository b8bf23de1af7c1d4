"""The on-call commands on Apache Kafka: `freedom status`, `freedom dlq list|show|replay`,
`freedom offsets reset` (docs/operations.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from freedom.ops.dlq import Filter, list_dead_letters, show_dead_letters
from freedom.ops.replay import replay
from freedom.ops.reset import reset_offsets
from freedom.ops.status import status
from freedom.ops.target import OpsError, config_target
from freedom.testing import kafka_config, wait_until, write_config
from freedom.wire.headers import (
    ERROR_HEADER,
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_TOPIC_HEADER,
    REPLAY_COUNT_HEADER,
    REPLAY_OF_HEADER,
    STATUS_HEADER,
    VALUE_OMITTED_HEADER,
)
from tests.services.event_app import Journal, event_service
from tests.services.kafka_tools import (
    committed,
    create_topic,
    headers_of,
    partitions_of,
    produce,
    read_all,
    topic_size,
)

ROOT = Path(__file__).resolve().parents[1]


def freedom(*args: str, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the `freedom` command; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "freedom", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def replays(journal: Journal) -> list[Any]:
    return [c for c in journal.of() if REPLAY_COUNT_HEADER in c.headers]


def settled(bootstrap: str, group: str, topic: str, partitions: int) -> bool:
    """The group has committed every record of the topic: nothing more is coming to the handler.
    (Compared with the last record's offset, not the end offset: a replay's transaction marker
    takes an offset after it.)"""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ends-{uuid.uuid4().hex[:6]}",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    needed = [0] * partitions
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        at_end: set[int] = set()
        deadline = time.monotonic() + 20
        while len(at_end) < partitions and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                continue
            needed[msg.partition()] = msg.offset() + 1
    finally:
        c.close()
    return all(c >= n for c, n in zip(committed(bootstrap, group, topic, partitions), needed))


def ends_of(bootstrap: str, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4().hex[:6]}"})
    try:
        return [
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        c.close()


def failing_service(
    tmp_path: Path, bootstrap: str, topic: str, keys: list[str]
) -> tuple[Any, Journal, dict[str, bool]]:
    """A running service whose handler fails until `state["fail"]` is False, with every key of
    `keys` in the dead-letter topic (one retry, then dead-lettered)."""
    journal = Journal()
    state = {"fail": True}
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500 if state["fail"] else 200,
        retry_count=1,
        retry_interval_sec=0.2,
        initial_offset="earliest",
    )
    svc.__enter__()
    produce(
        bootstrap,
        topic,
        [
            {
                "key": k.encode(),
                "value": f'{{"k": "{k}"}}'.encode(),
                "headers": [
                    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                ],
            }
            for k in keys
        ],
    )
    wait_until(
        lambda: topic_size(bootstrap, f"fail-{topic}", 2) == len(keys),
        60,
        what="every record dead-lettered",
    )
    retry_group = svc.app.kafka_config.consumer_clients[0].retry_group_id
    wait_until(
        lambda: settled(
            bootstrap, retry_group, f"retry-{topic}", partitions_of(bootstrap, f"retry-{topic}")
        ),
        30,
        what="the retry group to commit",
    )
    return svc, journal, state


def test_status_list_dry_run_and_replay_deliver_each_dead_letter_exactly_once(
    apache_kafka, tmp_path
):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"ops-{uuid.uuid4().hex[:8]}", partitions=2)
    create_topic(bootstrap, f"fail-{topic}", partitions=2)
    keys = [f"K{i}" for i in range(6)]
    svc, journal, state = failing_service(tmp_path, bootstrap, topic, keys)
    cc = svc.app.kafka_config.consumer_clients[0]
    try:
        wait_until(
            lambda: settled(bootstrap, cc.group_id, topic, 2), 30, what="the main group to commit"
        )

        # freedom status (the command, from the config directory alone): groups, lag, dead letters.
        run = freedom("status", "--config", str(tmp_path), "--json", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        [client] = json.loads(run.stdout)["clients"]
        assert client["topics"] == [topic]
        main, retry = client["groups"]
        assert (main["group"], main["kind"], len(main["members"])) == (cc.group_id, "main", 1)
        assert [(p["topic"], p["lag"]) for p in main["partitions"]] == [(topic, 0), (topic, 0)]
        assert sum(p["end"] for p in main["partitions"]) == 6
        assert (retry["group"], retry["kind"]) == (cc.retry_group_id, "retry")
        assert client["retry_waiting"] == [
            {"topic": f"retry-{topic}", "original_topic": topic, "records": 0, "not_replayed": None}
        ]
        assert client["dead_letters"] == [
            {"topic": f"fail-{topic}", "original_topic": topic, "records": 6, "not_replayed": 6}
        ]
        human = freedom("status", "--config", str(tmp_path), cwd=tmp_path)
        assert (
            human.returncode == 0
            and f"dead letters: fail-{topic} 6 (6 not replayed)" in human.stdout
        ), human.stdout

        target = config_target(str(tmp_path))
        [listed] = list_dead_letters(target, f"fail-{topic}")
        assert listed.records == 6
        [cls] = listed.classes
        assert (cls.error_class, cls.status, cls.original_topic, cls.count) == (
            "HTTP 500",
            500,
            topic,
            6,
        )
        assert cls.first is not None and cls.last is not None and cls.first <= cls.last
        shown = show_dead_letters(
            target, topic, Filter(key="K3")
        )  # the main topic names its dead letters
        assert [(d.key, d.original_topic, d.error, d.trace_id) for d in shown] == [
            ("K3", topic, "HTTP 500", "0af7651916cd43dd8448eb211c80319c")
        ]
        assert shown[0].value_preview == '{"k": "K3"}'

        # --dry-run says what would move and moves nothing.
        calls = len(journal.of())
        dry = replay(target, f"fail-{topic}", dry_run=True)
        assert dry.moved == 6 and {m.key for m in dry.topics[0].moves} == set(keys)
        assert {m.to_topic for m in dry.topics[0].moves} == {topic}
        assert topic_size(bootstrap, topic, 2) == 6
        assert committed(bootstrap, "freedom-replay.fail-" + topic, f"fail-{topic}", 2) == [
            -1001,
            -1001,
        ]

        # The handler is fixed: replay delivers every dead letter once, then a second run moves nothing.
        state["fail"] = False
        done = replay(target, f"fail-{topic}")
        assert (done.moved, done.parked, done.skipped) == (6, 0, 0)
        wait_until(lambda: len(replays(journal)) >= 6, 60, what="the six replays delivered")
        assert replay(target, f"fail-{topic}").moved == 0
        wait_until(
            lambda: settled(bootstrap, cc.group_id, topic, 2),
            30,
            what="the main group to commit the replays",
        )
        after = status(target).clients[0]
        assert (after.dead_letters[0].records, after.dead_letters[0].not_replayed) == (
            6,
            0,
        )  # kept, replayed
        assert [p.lag for p in after.groups[0].partitions] == [
            0,
            0,
        ]  # the replays' commit markers are no lag
        assert len(journal.of()) - calls == 6
        got = replays(journal)
        assert Counter(c.key for c in got) == Counter(keys)
        assert all(
            c.headers[REPLAY_COUNT_HEADER] == "1" and c.headers["x-retry-count"] == "0" for c in got
        )
        assert all(c.headers[REPLAY_OF_HEADER].startswith(f"fail-{topic}/") for c in got)
        assert all(
            c.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-") for c in got
        )

        # Offsets of a group in use are not changed: the command says why (exit 2).
        refused = freedom(
            "offsets",
            "reset",
            "--group",
            cc.retry_group_id,
            "--to",
            "earliest",
            "--config",
            str(tmp_path),
            cwd=tmp_path,
        )
        assert refused.returncode == 2, refused
        assert "live member" in refused.stderr and "stop every instance" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    finally:
        svc.__exit__(None, None, None)

    # Stopped: a dry run shows the new offsets, the reset sets them.
    before = committed(bootstrap, cc.group_id, topic, 2)
    preview = reset_offsets(target, cc.group_id, "earliest", topic, dry_run=True)
    assert [(c.old, c.new) for c in preview.changes] == [(before[0], 0), (before[1], 0)]
    assert committed(bootstrap, cc.group_id, topic, 2) == before
    reset = reset_offsets(target, cc.group_id, "earliest")
    assert reset.applied and committed(bootstrap, cc.group_id, topic, 2) == [0, 0]
    later = reset_offsets(
        target, cc.group_id, "2999-01-01T00:00:00Z"
    )  # no record that late: the end
    assert [c.new for c in later.changes] == ends_of(bootstrap, topic, 2)


def test_a_replay_killed_midway_and_run_again_delivers_each_exactly_once(apache_kafka, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"ops-{uuid.uuid4().hex[:8]}", partitions=2)
    create_topic(bootstrap, f"fail-{topic}", partitions=2)
    keys = [f"KILL{i}" for i in range(12)]
    svc, journal, state = failing_service(tmp_path, bootstrap, topic, keys)
    cc = svc.app.kafka_config.consumer_clients[0]
    try:
        state["fail"] = False
        calls = len(journal.of())
        log = tmp_path / "replay.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freedom",
                "dlq",
                "replay",
                f"fail-{topic}",
                "--config",
                str(tmp_path),
                "--rate",
                "3/s",
            ],
            cwd=tmp_path,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(lambda: len(replays(journal)) >= 2, 60, what="the first replays delivered")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        # What the killed run committed (records and offsets, one transaction) is all it replayed.
        partway = sum(
            max(0, o)
            for o in committed(bootstrap, f"freedom-replay.fail-{topic}", f"fail-{topic}", 2)
        )
        assert 2 <= partway < len(keys), log.read_text()

        again = freedom("dlq", "replay", topic, "--config", str(tmp_path), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert (
            "audit: dlq replay by " in again.stdout
            and f"moved {len(keys) - partway}," in again.stdout
        ), again.stdout
        wait_until(lambda: len(replays(journal)) >= len(keys), 60, what="every replay delivered")
        wait_until(
            lambda: settled(bootstrap, cc.group_id, topic, 2), 30, what="the main group to commit"
        )
    finally:
        svc.__exit__(None, None, None)
    assert Counter(c.key for c in replays(journal)) == Counter(keys)
    assert len(journal.of()) - calls == len(keys)


def test_a_record_failing_again_after_a_replay_comes_back_counted_and_is_then_parked(
    apache_kafka, tmp_path
):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"ops-{uuid.uuid4().hex[:8]}", partitions=2)
    create_topic(bootstrap, f"fail-{topic}", partitions=2)
    svc, journal, _ = failing_service(tmp_path, bootstrap, topic, ["P1", "P2"])  # never fixed
    try:
        target = config_target(str(tmp_path))
        assert replay(target, topic, max_replays=1).moved == 2
        wait_until(
            lambda: topic_size(bootstrap, f"fail-{topic}", 2) == 4,
            60,
            what="the replays dead-lettered again",
        )
        back = show_dead_letters(target, topic, Filter(grep="500"), limit=None)
        assert sorted((d.key, d.replay_count) for d in back) == [
            ("P1", 0),
            ("P1", 1),
            ("P2", 0),
            ("P2", 1),
        ]
        calls = len(journal.of())
        capped = replay(target, topic, max_replays=1)
        assert (capped.moved, capped.parked) == (0, 2)
        assert sorted(p.key for p in capped.topics[0].parked) == ["P1", "P2"]
        assert "replayed 1 times already (limit 1" in capped.topics[0].parked[0].reason
        # replay() returns once its transaction committed: what it moved is on the topic.
        assert len(read_all(bootstrap, topic)) == 4  # two records, two replays, no more
        assert len(journal.of()) == calls
    finally:
        svc.__exit__(None, None, None)

    human = freedom("dlq", "list", topic, "--config", str(tmp_path), cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines()[0] == f"fail-{topic}: 4 dead letters"
    assert human.stdout.splitlines()[2].split() == [
        "4",
        "500",
        topic,
        *human.stdout.splitlines()[2].split()[3:5],
        "HTTP",
        "500",
    ]


def test_replay_routes_by_the_reason_headers_and_parks_what_it_must_not_replay(
    apache_kafka, tmp_path
):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"ops-{uuid.uuid4().hex[:8]}")
    fail = create_topic(bootstrap, f"fail-{topic}")
    write_config(
        tmp_path,
        kafka=kafka_config(bootstrap, 1, group_id=f"g-{uuid.uuid4().hex[:6]}", retry_count=1),
    )

    def dead(key: bytes, *extra: tuple[str, bytes], original: str = topic) -> dict[str, Any]:
        return {
            "key": key,
            "value": b"v-" + key,
            "headers": [
                ("x-user", b"u1"),
                (ORIGINAL_TOPIC_HEADER, original.encode()),
                (ORIGINAL_PARTITION_HEADER, b"0"),
                (ORIGINAL_OFFSET_HEADER, b"7"),
                (ERROR_HEADER, b"HTTP 503"),
                (STATUS_HEADER, b"503"),
                ("x-retry-count", b"1"),
                *extra,
            ],
        }

    produce(
        bootstrap,
        fail,
        [
            dead(b"OK"),
            dead(b"TIRED", (REPLAY_COUNT_HEADER, b"3")),
            dead(b"CUT", (VALUE_OMITTED_HEADER, b"5000000")),
            dead(b"GONE", original="no-such-topic-here"),
            dead(b"SECOND", (REPLAY_COUNT_HEADER, b"1")),
        ],
    )
    target = config_target(str(tmp_path))
    # Not named, the dead-letter topics are the service's (its groups' topics), not every fail-* topic
    # of the cluster (the other tests' are there): this service has read nothing yet.
    assert replay(target, dry_run=True).topics == ()
    report = replay(
        target, fail, rate=1.5
    )  # the second record waits 2/3 s (its batch committed first)
    [t] = report.topics
    assert (report.moved, report.parked) == (2, 3)
    assert report.seconds >= 0.6
    assert {(p.key, p.offset) for p in t.parked} == {("TIRED", 1), ("CUT", 2), ("GONE", 3)}
    assert "limit 3" in t.parked[0].reason and "does not exist" in t.parked[2].reason
    moved = read_all(bootstrap, topic)  # replay() returns once its transaction committed
    assert [(m.key(), m.value()) for m in moved] == [(b"OK", b"v-OK"), (b"SECOND", b"v-SECOND")]
    h = headers_of(moved[1])
    assert (
        h["x-user"] == "u1"
        and h[REPLAY_COUNT_HEADER] == "2"
        and h[REPLAY_OF_HEADER] == f"{fail}/0/4"
    )
    assert not {ORIGINAL_TOPIC_HEADER, ERROR_HEADER, STATUS_HEADER, "x-retry-count"} & set(h)

    # A filter is its own job: the parked record replays with a higher limit, once.
    again = replay(target, fail, Filter(key="TIRED"), max_replays=5)
    assert (again.moved, again.topics[0].job.startswith(f"freedom-replay.{fail}.")) == (1, True)
    assert replay(target, fail, Filter(key="TIRED"), max_replays=5).moved == 0
    assert len(read_all(bootstrap, topic)) == 3


def test_user_mistakes_are_one_line_and_exit_2(apache_kafka, tmp_path):
    write_config(tmp_path, kafka=kafka_config(apache_kafka.bootstrap, 1, retry_count=1))
    unknown = freedom("dlq", "replay", "nope-nothing", "--config", str(tmp_path), cwd=tmp_path)
    assert (
        unknown.returncode == 2 and "unknown dead-letter topic 'nope-nothing'" in unknown.stderr
    ), unknown
    bad = freedom(
        "dlq", "show", "--since", "yesterday-ish", "--config", str(tmp_path), cwd=tmp_path
    )
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "freedom: error: --since: not an ISO 8601 time: 'yesterday-ish' (e.g. 2026-12-01T10:00:00Z)"
    ), bad
    # With module:app the listened topics come from the application (none committed yet here).
    topic = f"ops-app-{uuid.uuid4().hex[:6]}"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "freedom",
            "status",
            "recording_service:app",
            "--config",
            str(tmp_path),
            "--json",
        ],
        cwd=ROOT / "tests" / "services",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EVENT_TOPIC": topic, "RECORD_FILE": str(tmp_path / "r")},
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["clients"][0]["topics"] == [topic]

    target = config_target(str(tmp_path))
    embedded = write_config(tmp_path / "embedded", kafka=kafka_config(None, 1))
    for call, message in [
        (
            lambda: config_target(str(embedded)),
            "has no servers, and no embedded broker is running for",
        ),
        (lambda: config_target(str(tmp_path / "nowhere")), "no such directory"),
        (lambda: replay(target, None, rate=0), "--rate must be more than 0"),
        (
            lambda: reset_offsets(target, "g", "tomorrow"),
            "--to: expected earliest, latest or an ISO 8601 time",
        ),
        (lambda: Filter(since=10, until=5), "--until must be later than --since"),
    ]:
        try:
            call()
        except OpsError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"no error: {message}")
