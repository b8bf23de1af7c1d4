"""One cluster as the operations commands see it: topics, watermarks, groups, committed offsets,
and reading the records of a partition. Every failure is an :class:`OpsError` (one line)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]  # there at run time

from freedom.config.librdkafka import scrub
from freedom.kafka.admin import check_reachable
from freedom.ops.target import OpsError

TP = tuple[str, int]
_IN_USE = frozenset(
    {
        confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID,
        confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS,
        confluent_kafka.KafkaError.ILLEGAL_GENERATION,
    }
)


@dataclass(frozen=True)
class Member:
    """A live member of a consumer group."""

    client_id: str
    host: str
    partitions: tuple[TP, ...]


#: Group states without live members (librdkafka's names).
IDLE_STATES = frozenset({"EMPTY", "DEAD", "UNKNOWN"})


@dataclass(frozen=True)
class GroupInfo:
    """A consumer group as the coordinator describes it."""

    group: str
    state: str  # "STABLE", "EMPTY", "DEAD" (unknown group), "PREPARING_REBALANCE", ...
    members: tuple[Member, ...]
    #: What the broker did not tell (the embedded broker names members, not hosts or partitions).
    note: str | None = None

    @property
    def in_use(self) -> bool:
        """Live members, or a state only a group with members has."""
        return bool(self.members) or self.state not in IDLE_STATES


class GroupInUse(OpsError):
    """The broker refused to change the offsets of a group because it has live members."""


class Cluster:
    """The admin client (and, for reading records, a consumer that never commits) of one cluster."""

    def __init__(self, settings: dict[str, Any], where: str, timeout: float = 15.0) -> None:
        self.settings = settings
        self.where = where
        self.timeout = timeout
        check_reachable(settings, where, timeout)  # ClusterUnreachable: one line
        self.admin = AdminClient(dict(settings))
        self._topics: dict[str, int] | None = None
        self._tansu: bool | None = None

    # ------------------------------------------------------------------ errors

    def _fail(self, what: str, exc: BaseException) -> OpsError:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, confluent_kafka.KafkaError) else str(err)
        return OpsError(
            f"{what} on {self.settings.get('bootstrap.servers')}: {scrub(text, self.settings)}"
        )

    # ------------------------------------------------------------------ topics

    def topics(self, refresh: bool = False) -> dict[str, int]:
        """Every topic of the cluster (internal ones left out) with its number of partitions."""
        if self._topics is None or refresh:
            try:
                md = self.admin.list_topics(timeout=self.timeout)
            except confluent_kafka.KafkaException as exc:
                raise self._fail("cannot list the topics", exc) from None
            self._topics = {
                name: len(t.partitions)
                for name, t in md.topics.items()
                if not name.startswith("__") and t.error is None
            }
        return self._topics

    def partitions(self, topic: str) -> list[TP]:
        """The partitions of `topic`; OpsError when it does not exist."""
        count = self.topics().get(topic)
        if count is None:
            raise OpsError(
                f"topic {topic!r} does not exist on {self.settings.get('bootstrap.servers')}"
            )
        return [(topic, p) for p in range(count)]

    # ------------------------------------------------------------------ offsets

    def _list_offsets(self, tps: list[TP], spec: Any, committed: bool) -> dict[TP, int]:
        if not tps:
            return {}
        level = (
            confluent_kafka.IsolationLevel.READ_COMMITTED
            if committed
            else confluent_kafka.IsolationLevel.READ_UNCOMMITTED
        )
        try:
            futures = self.admin.list_offsets(
                {TopicPartition(t, p): spec for t, p in tps},
                isolation_level=level,
                request_timeout=self.timeout,
            )
            return {
                (tp.topic, tp.partition): int(f.result(self.timeout).offset)
                for tp, f in futures.items()
            }
        except confluent_kafka.KafkaException as exc:
            raise self._fail("cannot list offsets", exc) from None

    def earliest(self, tps: list[TP]) -> dict[TP, int]:
        """The first offset still in each partition (the low watermark)."""
        return self._list_offsets(tps, OffsetSpec.earliest(), False)  # type: ignore[no-untyped-call]

    def latest(self, tps: list[TP]) -> dict[TP, int]:
        """The end of each partition as a read_committed consumer sees it (the last stable offset)."""
        found = self._list_offsets(tps, OffsetSpec.latest(), True)  # type: ignore[no-untyped-call]
        return self._tansu_ends(found) if found and self.on_tansu() else found

    def on_tansu(self) -> bool:
        """Whether the cluster is the embedded broker (Tansu, by its cluster id)."""
        if self._tansu is None:
            from freedom.kafka.embedded import TANSU_CLUSTER_ID

            try:
                md = self.admin.list_topics(timeout=self.timeout)
            except confluent_kafka.KafkaException as exc:
                raise self._fail("cannot list the topics", exc) from None
            self._tansu = md.cluster_id == TANSU_CLUSTER_ID
        return self._tansu

    def _tansu_ends(self, found: dict[TP, int]) -> dict[TP, int]:
        """The true ends on Tansu 0.6, whose ListOffsets answers the base offset of a partition's
        last record batch + 1 (a batch of 3 records at 0-2 gives 1): read that last batch, up to
        the end of the partition librdkafka reports once it has fetched it."""
        lows = self.earliest(list(found))
        todo = {tp: max(lows[tp], end - 1) for tp, end in found.items() if end > lows[tp]}
        if not todo:
            return found
        out = dict(found)
        consumer = confluent_kafka.Consumer(
            {
                **self.settings,
                "group.id": f"freedom-ops-ends-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
        try:
            consumer.assign([TopicPartition(t, p, o) for (t, p), o in todo.items()])
            pending = set(todo)
            deadline = time.monotonic() + self.timeout
            while pending and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                tp = (str(msg.topic()), int(msg.partition() or 0))
                err = msg.error()
                if err is None:
                    out[tp] = max(out[tp], int(msg.offset() or 0) + 1)
                elif err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    out[tp] = max(out[tp], int(msg.offset() or 0))
                    pending.discard(tp)
        finally:
            consumer.close()
        return out

    def at_time(self, tps: list[TP], ms: int) -> dict[TP, int]:
        """The first offset of each partition with a timestamp at or after `ms`; the end when none."""
        found = self._list_offsets(tps, OffsetSpec.for_timestamp(ms), False)
        missing = [tp for tp, o in found.items() if o < 0]
        return {**found, **self.latest(missing)}

    def committed(self, group: str) -> dict[TP, int]:
        """The committed offsets of `group` (partitions without one left out)."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        try:
            future = self.admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=self.timeout
            )[group]
            result = future.result(self.timeout)
        except confluent_kafka.KafkaException as exc:
            raise self._fail(f"cannot read the committed offsets of group {group!r}", exc) from None
        return {
            (tp.topic, tp.partition): int(tp.offset)
            for tp in result.topic_partitions or []
            if tp.offset >= 0
        }

    def alter_committed(self, group: str, offsets: dict[TP, int]) -> None:
        """Set the committed offsets of `group` (which must have no live members)."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        )
        try:
            result = self.admin.alter_consumer_group_offsets(
                [request], request_timeout=self.timeout
            )[group]
            done = result.result(self.timeout)
        except confluent_kafka.KafkaException as exc:
            raise self._fail(f"cannot set the offsets of group {group!r}", exc) from None
        for tp in done.topic_partitions or []:
            if tp.error is not None and tp.error.code() in _IN_USE:
                raise GroupInUse(tp.error.str())
            if tp.error is not None:
                raise self._fail(
                    f"cannot set the offset of {tp.topic}[{tp.partition}] for group {group!r}",
                    confluent_kafka.KafkaException(tp.error),
                )

    def describe(self, group: str) -> GroupInfo:
        """The state and live members of `group` ("DEAD" with no members when it does not exist)."""
        try:
            desc = self.admin.describe_consumer_groups([group], request_timeout=self.timeout)[
                group
            ].result(self.timeout)
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if (
                isinstance(err, confluent_kafka.KafkaError)
                and err.code() == confluent_kafka.KafkaError.GROUP_ID_NOT_FOUND
            ):
                return GroupInfo(group, "DEAD", ())
            raise self._fail(f"cannot describe group {group!r}", exc) from None
        members = tuple(
            Member(
                m.client_id,
                m.host,
                tuple(
                    sorted((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions or []))
                ),
            )
            for m in desc.members or []
        )
        state = desc.state.name if hasattr(desc.state, "name") else str(desc.state)
        if members or state in IDLE_STATES:
            return GroupInfo(group, state, members)
        return self._describe_classic(group, state)

    def _describe_classic(self, group: str, state: str) -> GroupInfo:
        """A live group the broker named no member of (the embedded broker answers librdkafka's
        ConsumerGroupDescribe so): its members from the classic DescribeGroups request, asked of
        the one plaintext broker; else the group as it is, saying that its members are unknown."""
        servers = str(self.settings.get("bootstrap.servers", ""))
        security = str(self.settings.get("security.protocol", "plaintext")).lower()
        unknown = GroupInfo(
            group,
            state,
            (),
            f"the broker says the group is {state} but names no member: its members are unknown",
        )
        if "," in servers or security != "plaintext":
            return unknown
        from freedom.kafka.classic_groups import describe_classic_group

        try:
            classic = describe_classic_group(servers.rpartition("://")[2], group, self.timeout)
        except (OSError, ValueError):
            return unknown
        if classic.error_code or not classic.members:
            return unknown
        members = tuple(Member(m.client_id, m.host, m.partitions) for m in classic.members)
        told = [
            what
            for what, known in (
                ("hosts", any(m.host for m in members)),
                ("partitions", any(m.partitions for m in members)),
            )
            if not known
        ]
        note = f"the broker names the members but not their {' or '.join(told)}" if told else None
        return GroupInfo(group, state, members, note)

    # ------------------------------------------------------------------ records

    def reader(self) -> Reader:
        return Reader(self)


class Reader:
    """Reads records of single partitions between two offsets; never joins a group or commits
    (`group`: the group id whose metadata a replay's transaction carries; default: a throwaway)."""

    def __init__(self, cluster: Cluster, group: str | None = None) -> None:
        self.cluster = cluster
        self.consumer = confluent_kafka.Consumer(
            {
                **cluster.settings,
                "group.id": group or f"freedom-ops-reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )

    def read(
        self, topic: str, partition: int, start: int, end: int, timeout: float = 30.0
    ) -> Iterator[Any]:
        """The records of `topic[partition]` with offsets in [start, end), in order."""
        if start >= end:
            return
        self.consumer.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        try:
            while True:
                msg = self.consumer.poll(0.5)
                if msg is None:
                    if time.monotonic() > deadline:
                        raise OpsError(
                            f"reading {topic}[{partition}] stalled at offset {start} "
                            f"(no record within {timeout:.0f} s)"
                        )
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        return
                    if not err.retriable():
                        raise OpsError(f"reading {topic}[{partition}]: {err.str()}")
                    continue
                deadline = time.monotonic() + timeout
                offset = int(msg.offset() or 0)
                if offset >= end:
                    return
                start = offset + 1
                yield msg
                if start >= end:
                    return
        finally:
            self.consumer.unassign()

    def close(self) -> None:
        self.consumer.close()
