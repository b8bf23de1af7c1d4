"""Operations for share groups (KIP-932, docs/operations.md "Share groups"): `freedom status` on
Apache Kafka shows a share group of the config (kind "share", its state, members, configs, and per
partition the topic's start and end, the share-partition start offset and the lag) and the other
share groups found on the cluster, escaping what the broker reports; `freedom config` shows the
group configs the service sets at start-up.

The share group's member here is a plain confluent-kafka ShareConsumer: status reads the cluster,
whoever the members are.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)

from freedom.kafka.share_wire import ShareOffset, ShareWire, Unavailable
from freedom.ops.share_status import partition_lag
from freedom.ops.status import status
from freedom.ops.target import config_target
from freedom.testing import wait_until
from tests.services.kafka_tools import create_topic, produce

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "tests" / "services"
#: A client id and a group id as a hostile broker (or member) may report them.
HOSTILE_CLIENT = "member\x1b[2J\u202eevil"
HOSTILE_CLIENT_SHOWN = "member\\x1b[2J\\u202eevil"


def freedom(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freedom", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})},
    )


def share_config(directory: Path, bootstrap: str, group: str, **client: Any) -> Path:
    (directory / "infra").mkdir(parents=True, exist_ok=True)
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in client.items())
    (directory / "infra" / "kafka.toml").write_text(
        "[consumer]\nopen = true\n[[consumer_clients]]\n"
        f'servers = ["{bootstrap}"]\ngroup_id = {json.dumps(group)}\nshare_group = true\n{extra}'
    )
    (directory / "app.toml").write_text("")
    return directory


def set_reset(bootstrap: str, group: str, value: str = "earliest") -> None:
    entry = ConfigEntry(
        "share.auto.offset.reset", value, incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ConfigResource.Type.GROUP, group, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


@contextmanager
def share_member(bootstrap: str, group: str, topic: str, client_id: str) -> Iterator[Any]:
    consumer = confluent_kafka.ShareConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": client_id,
            "share.acknowledgement.mode": "explicit",
            "log_level": 3,
        }
    )
    consumer.subscribe([topic])
    try:
        yield consumer
    finally:
        consumer.close()


def accept_some(consumer: Any, n: int) -> None:
    """Fetch until `n` records are accepted (every other record fetched is released), then send
    the acknowledgements."""
    accepted = 0

    def fetch() -> bool:
        nonlocal accepted
        for record in consumer.poll(0.5):
            if record.error() is not None:
                continue
            kind = confluent_kafka.AcknowledgeType.ACCEPT
            if accepted >= n:
                kind = confluent_kafka.AcknowledgeType.RELEASE
            else:
                accepted += 1
            consumer.acknowledge(record, kind)
        return accepted >= n

    wait_until(fetch, 30, what=f"{n} records accepted by the share group")
    consumer.commit_sync()


def test_status_shows_the_share_group_and_the_others_found_escaped(apache_kafka, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"share-ops-{uuid.uuid4().hex[:8]}", partitions=2)
    group = f"share-{uuid.uuid4().hex[:8]}"
    other = f"other\x1b[31m-{uuid.uuid4().hex[:6]}\u202e"
    produce(
        bootstrap,
        topic,
        [{"key": f"k{i}".encode(), "value": b"{}", "partition": i % 2} for i in range(6)],
    )
    set_reset(bootstrap, group)
    share_config(tmp_path, bootstrap, group)

    with (
        share_member(bootstrap, group, topic, HOSTILE_CLIENT) as member,
        share_member(bootstrap, other, topic, "other-member") as other_member,
    ):
        accept_some(member, 3)
        other_member.poll(0.5)  # joins: the group exists (its records are left to its lock)

        def settled() -> Any:
            report = status(config_target(str(tmp_path)))
            [client] = report.clients
            [g] = client.groups
            done = (
                g.state == "STABLE"
                and g.members
                and sum(p.lag for p in g.partitions) == 3
                and any(o == other for o, _ in client.other_share_groups)
            )
            return done and client

        client = wait_until(settled, 30, what="the acknowledgements seen by the share coordinator")
        [g] = client.groups
        assert (g.group, g.kind, g.state) == (group, "share", "STABLE")
        [m] = g.members
        assert m.client_id == HOSTILE_CLIENT
        assert m.partitions == ((topic, 0), (topic, 1))
        assert g.configs["share.auto.offset.reset"] == "earliest"
        assert int(g.configs["share.record.lock.duration.ms"]) > 0
        assert client.topics == (topic,)  # no app given: the topics the group has state on
        assert [(p.topic, p.partition, p.start, p.end, p.committed) for p in g.partitions] == [
            (topic, 0, 0, 3, None),
            (topic, 1, 0, 3, None),
        ]
        assert {p.lag_source for p in g.partitions} <= {"broker", "estimate"}
        assert group not in {o for o, _ in client.other_share_groups}

        # The command: JSON reads back the same; the human form escapes what the broker reported.
        run = freedom("status", "--config", str(tmp_path), "--json", cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        [shown] = json.loads(run.stdout)["clients"]
        [sg] = shown["groups"]
        assert (sg["kind"], sg["state"], sg["members"][0]["client_id"]) == (
            "share",
            "STABLE",
            HOSTILE_CLIENT,
        )
        assert [other, "STABLE"] in shown["other_share_groups"] or [
            other,
            "EMPTY",
        ] in shown["other_share_groups"]
        assert "\x1b" not in run.stdout and "\u202e" not in run.stdout
        human = freedom("status", "--config", str(tmp_path), cwd=tmp_path)
        assert human.returncode == 0, human.stderr
        out = human.stdout
        assert "\x1b" not in out and "\u202e" not in out, out
        assert (
            f"group {group} (share, STABLE, 1 member: {HOSTILE_CLIENT_SHOWN} on 127.0.0.1)" in out
        )
        assert "configs: share.auto.offset.reset=earliest, share.record.lock.duration.ms=" in out
        assert "TOPIC" in out and "SHARE START" in out
        escaped_other = other.replace("\x1b", "\\x1b").replace("\u202e", "\\u202e")
        assert "other share groups on this cluster: " in out and escaped_other in out, out


def test_status_of_a_share_group_the_cluster_does_not_have(apache_kafka, tmp_path):
    """Configured but never started: DEAD, no member, the lag of where it would start."""
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"share-new-{uuid.uuid4().hex[:8]}")
    produce(bootstrap, topic, [{"value": b"{}"}, {"value": b"{}"}])
    group = f"share-none-{uuid.uuid4().hex[:8]}"
    target = config_target(str(share_config(tmp_path, bootstrap, group)))
    # As `freedom status module:app` knows them: the application's topics.
    clients = tuple(dataclasses.replace(c, topics=(topic,)) for c in target.clients)
    [client] = status(dataclasses.replace(target, clients=clients)).clients
    [g] = client.groups
    assert (g.kind, g.state, g.members) == ("share", "DEAD", ())
    assert g.note is not None and "no share group of this id" in g.note
    # It will start where initial_offset says (a share group's default: earliest).
    [p] = g.partitions
    assert (p.start, p.end, p.share_start, p.lag, p.lag_source) == (0, 2, None, 2, "estimate")


def test_where_the_brokers_cannot_be_asked_the_note_says_so():
    try:
        ShareWire({"bootstrap.servers": "127.0.0.1:1", "security.protocol": "SASL_SSL"})
    except Unavailable as exc:
        assert "plaintext listeners only (security.protocol is sasl_ssl)" in str(exc)
    else:
        raise AssertionError("a SASL_SSL cluster must be refused")


def test_partition_lag_broker_count_estimate_or_unknown():
    tp = ("t", 0)
    assert partition_lag(tp, None, 0, 10, True).lag_source == "unknown"
    broker = partition_lag(tp, {tp: ShareOffset(4, 3, 0)}, 0, 10, True)
    assert (broker.share_start, broker.lag, broker.lag_source) == (4, 3, "broker")
    estimate = partition_lag(tp, {tp: ShareOffset(4, None, 0)}, 0, 10, True)
    assert (estimate.share_start, estimate.lag, estimate.lag_source) == (4, 6, "estimate")
    # No share state yet: from where the group starts (earliest: the topic's start; else none).
    assert partition_lag(tp, {tp: ShareOffset(-1, -1, 0)}, 2, 10, True).lag == 8
    assert partition_lag(tp, {}, 2, 10, False).lag == 0
    # A share start before the retention's start counts from the topic's start.
    assert partition_lag(tp, {tp: ShareOffset(1, None, 0)}, 5, 10, True).lag == 5


def test_freedom_config_shows_the_share_group_configs_set_at_start_up(tmp_path):
    directory = tmp_path / "conf"
    (directory / "infra").mkdir(parents=True)
    (directory / "app.toml").write_text("")
    (directory / "infra" / "kafka.toml").write_text(
        """
[consumer]
open = true
[[consumer_clients]]
servers = ["127.0.0.1:9092"]
group_id = "orders-share"
share_group = true
delivery_timeout_sec = 12
[consumer_clients.topics."event-sell"]
delivery_timeout_sec = 40
[[consumer_clients]]
servers = ["127.0.0.1:9092"]
group_id = "orders-latest"
share_group = true
initial_offset = "latest"
[[consumer_clients]]
servers = ["127.0.0.1:9092"]
group_id = "orders-classic"
"""
    )
    env = {"RECORD_FILE": str(tmp_path / "record.jsonl")}
    args = ("config", "recording_service:app", "--config", str(directory))
    run = freedom(*args, "--json", cwd=SERVICES, env=env)
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)["share_groups"]
    assert [(g["client"], g["group_id"]) for g in shown] == [
        (0, "orders-share"),
        (1, "orders-latest"),
    ]
    first, second = (g["configs"] for g in shown)
    assert first["share.auto.offset.reset"] == {
        "value": "earliest",
        "source": "default for a share group (initial_offset not given)",
    }
    assert first["share.record.lock.duration.ms"]["value"] == 45_000  # 40 s (event-sell) + 5 s
    assert (
        "delivery_timeout_sec (40 s, topic event-sell)"
        in (first["share.record.lock.duration.ms"]["source"])
    )
    assert second["share.auto.offset.reset"]["value"] == "latest"
    assert second["share.auto.offset.reset"]["source"].startswith("initial_offset (")
    assert second["share.record.lock.duration.ms"]["value"] == 35_000  # the default 30 s + 5 s

    human = freedom(*args, cwd=SERVICES, env=env)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    at = lines.index(
        'share group "orders-share" (consumer_clients[0]): group configs set at start-up'
    )
    assert lines[at + 1].split("#")[0].split() == ["share.auto.offset.reset", "=", '"earliest"']
    assert lines[at + 2].split("#")[0].split() == ["share.record.lock.duration.ms", "=", "45000"]
    assert not [x for x in lines if "orders-classic" in x and x.startswith("share group")]
