"""`freedom status`: every consumer group of the service, its members and lag; records waiting in
the retry topics (and whether the retry group is waiting for one's due time); dead letters.

The retry group delivers a record no earlier than its timestamp + `retry_interval_sec`
(docs/contract.md, "Retries and dead letters"), so a retry partition whose next record is not
due yet is paused: `due_at` says until when.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from freedom.ops.cluster import TP, Cluster, Member
from freedom.ops.common import JOB_PREFIX as JOB_PREFIX
from freedom.ops.common import iso as iso
from freedom.ops.common import main_topics as main_topics
from freedom.ops.purged import waiting as still_waiting
from freedom.ops.target import ClientTarget, Target

MARKER_CHECK = 3  # a lag up to this many offsets is counted in records (see _group)


@dataclass(frozen=True)
class PartitionStatus:
    """One partition a group reads."""

    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing here yet
    end: int  # the end offset (last stable offset)
    lag: int  # records after the committed offset (after where the group would start, when none)
    due_at: str | None = None  # retry group: the next record is not due before this time (paused)


@dataclass(frozen=True)
class GroupStatus:
    """One consumer group: the main group or the retry group of a consumer client."""

    group: str
    kind: str  # "main" or "retry"
    state: str
    members: tuple[Member, ...]
    partitions: tuple[PartitionStatus, ...]
    #: What the broker did not tell about the members (the embedded broker: hosts, partitions).
    note: str | None = None

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


@dataclass(frozen=True)
class TopicCount:
    """Records in a retry topic still to be delivered, or records in a dead-letter topic."""

    topic: str
    original_topic: str
    records: int
    #: dead-letter topics: records after the offsets of the unfiltered replay job
    #: (`freedom-replay.<topic>`) that no purge purged: not replayed yet (None for retry topics)
    not_replayed: int | None = None


@dataclass(frozen=True)
class ClientStatus:
    """One `[[consumer_clients]]` entry."""

    index: int
    servers: str
    topics: tuple[str, ...]  # the listened (main) topics
    groups: tuple[GroupStatus, ...]
    retry_waiting: tuple[
        TopicCount, ...
    ]  # per retry topic: records the retry group has not settled
    dead_letters: tuple[TopicCount, ...]  # per dead-letter topic: records in it


@dataclass(frozen=True)
class StatusReport:
    """What `freedom status` shows."""

    at: str
    clients: tuple[ClientStatus, ...] = field(default=())


def _group(
    cluster: Cluster,
    group: str,
    kind: str,
    topics: list[str],
    earliest_when_new: bool,
    retry_intervals: dict[str, float] | None,
) -> GroupStatus:
    """The members and partitions of `group` on `topics`; a retry group's `retry_intervals` (retry
    topic -> seconds) say when a partition's next record is due."""
    existing = cluster.topics()
    tps: list[TP] = [tp for t in topics if t in existing for tp in cluster.partitions(t)]
    committed = cluster.committed(group)
    ends = cluster.latest(tps)
    lows = cluster.earliest(tps)
    info = cluster.describe(group)
    now = time.time()
    reader = cluster.reader()
    parts = []
    try:
        for tp in tps:
            c = committed.get(tp)
            start = c if c is not None else (lows[tp] if earliest_when_new else ends[tp])
            start = max(start, lows[tp])
            lag = max(0, ends[tp] - start)
            due_at = None
            if 0 < lag <= MARKER_CHECK:
                # A transaction's commit marker (a replay's) takes an offset after the last record:
                # a small lag is counted in records, not offsets.
                lag = sum(1 for _ in reader.read(tp[0], tp[1], start, ends[tp]))
            if retry_intervals is not None and lag:
                interval = retry_intervals[tp[0]]
                for msg in reader.read(tp[0], tp[1], start, ends[tp]):
                    kind_, ms = msg.timestamp()
                    if kind_ and ms / 1000.0 + interval > now:
                        due_at = iso(ms / 1000.0 + interval)
                    break
            parts.append(PartitionStatus(tp[0], tp[1], c, ends[tp], lag, due_at))
    finally:
        reader.close()
    return GroupStatus(group, kind, info.state, info.members, tuple(parts), info.note)


def client_status(client: ClientTarget, cluster: Cluster) -> ClientStatus:
    """The groups, retry backlog and dead letters of one consumer client."""
    cc = client.config
    topics = main_topics(client, cluster)
    groups = [_group(cluster, cc.group_id, "main", topics, cc.initial_offset == "earliest", None)]
    waiting: list[TopicCount] = []
    retried = [t for t in topics if client.retry_count_of(t) > 0]  # a subscription may set its own
    if retried:
        intervals = {client.retry_topic(t): client.retry_interval_of(t) for t in retried}
        retry = _group(cluster, cc.retry_group_id, "retry", list(intervals), True, intervals)
        groups.append(retry)
        for t in retried:
            rt = client.retry_topic(t)
            waiting.append(TopicCount(rt, t, sum(p.lag for p in retry.partitions if p.topic == rt)))
    dead: list[TopicCount] = []
    existing = cluster.topics()
    for t in topics:
        ft = client.fail_topic(t)
        if ft and ft in existing:
            tps = cluster.partitions(ft)
            ends, lows = cluster.latest(tps), cluster.earliest(tps)
            done = cluster.committed(f"{JOB_PREFIX}{ft}")
            dead.append(
                TopicCount(
                    ft,
                    t,
                    sum(max(0, ends[tp] - lows[tp]) for tp in tps),
                    still_waiting(cluster, ft, {tp: (lows[tp], ends[tp]) for tp in tps}, done),
                )
            )
    return ClientStatus(
        client.index, client.servers, tuple(topics), tuple(groups), tuple(waiting), tuple(dead)
    )


def status(target: Target) -> StatusReport:
    """The status of every consumer client of the service."""
    out = []
    for client in target.clients:
        out.append(client_status(client, Cluster(client.settings, client.where)))
    return StatusReport(iso(time.time()), tuple(out))
