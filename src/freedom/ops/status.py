"""`freedom status`: every consumer group of the service, its members and lag; records waiting in
the retry topics (and whether the retry group is waiting for one's due time); dead letters.
A share group (`share_group = true`) is shown as kind "share" (share_status.py), with the other
share groups found on its cluster.

The retry group delivers a record no earlier than its timestamp + `retry_interval_sec`
(docs/contract.md, "Retries and dead letters"), so a retry partition whose next record is not
due yet is paused: `due_at` says until when.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from freedom.ops.cluster import TP, Cluster, Member
from freedom.ops.common import JOB_PREFIX as JOB_PREFIX
from freedom.ops.common import iso as iso
from freedom.ops.common import main_topics as main_topics
from freedom.ops.purged import waiting as still_waiting
from freedom.ops.share_status import other_share_groups, partition_lag, share_facts
from freedom.ops.target import ClientTarget, Target

MARKER_CHECK = 3  # a lag up to this many offsets is counted in records (see _group)


@dataclass(frozen=True)
class PartitionStatus:
    """One partition a group reads."""

    topic: str
    partition: int
    committed: int | None  # None: the group has committed nothing here yet (a share group: never)
    end: int  # the end offset (last stable offset)
    lag: int  # records after the committed offset (after where the group would start, when none)
    due_at: str | None = None  # retry group: the next record is not due before this time (paused)
    #: Share groups: the topic's start offset (low watermark) and the share-partition start offset
    #: (every record before it acknowledged; None: no share state yet, or not known).
    start: int | None = None
    share_start: int | None = None
    #: Where `lag` comes from: "committed" (a classic group), or a share group's "broker" (its own
    #: count), "estimate" (end - share_start) or "unknown" (0: the brokers could not be asked).
    lag_source: str = "committed"


@dataclass(frozen=True)
class GroupStatus:
    """One consumer group: the main group or the retry group of a consumer client."""

    group: str
    kind: str  # "main", "retry", or "share" (a share group: the main group of its client)
    state: str
    members: tuple[Member, ...]
    partitions: tuple[PartitionStatus, ...]
    #: What the broker did not tell about the members (the embedded broker: hosts, partitions).
    note: str | None = None
    #: A share group's configs as the broker applies them (share.auto.offset.reset, ...).
    configs: dict[str, str] = field(default_factory=dict)

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
    #: (group, state) of the share groups on the client's cluster that no client here names.
    other_share_groups: tuple[tuple[str, str], ...] = ()


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


def is_share_client(config: Any) -> bool:
    """Whether a `[[consumer_clients]]` entry reads as a share group (`share_group = true`)."""
    return getattr(config, "share_group", False) is True


def _share_group(cluster: Cluster, client: ClientTarget) -> tuple[GroupStatus, list[str]]:
    """The share group of `client`, and its topics: the application's, else those the group has
    share state on or its members are assigned."""
    cc = client.config
    facts = share_facts(cluster, cc.group_id)
    topics = list(client.topics) if client.topics is not None else facts.topics()
    existing = cluster.topics()
    tps: list[TP] = [tp for t in topics if t in existing for tp in cluster.partitions(t)]
    ends, lows = cluster.latest(tps), cluster.earliest(tps)
    # Where a new group starts: the broker's config, unless the group does not exist yet (the
    # service sets it from initial_offset when it starts).
    reset = facts.configs.get("share.auto.offset.reset") or cc.initial_offset
    if facts.state == "DEAD":
        reset = cc.initial_offset
    parts = []
    for tp in tps:
        lag = partition_lag(tp, facts.offsets, lows[tp], ends[tp], reset == "earliest")
        parts.append(
            PartitionStatus(
                tp[0],
                tp[1],
                None,
                ends[tp],
                lag.lag,
                start=lows[tp],
                share_start=lag.share_start,
                lag_source=lag.lag_source,
            )
        )
    notes = list(facts.notes)
    if any(p.lag_source == "estimate" for p in parts):
        notes.append(
            "~: lag estimated, the broker gave no count (end - share-partition start offset; "
            "with no share state yet, the records from where the group starts)"
        )
    group = GroupStatus(
        cc.group_id,
        "share",
        facts.state,
        facts.members,
        tuple(parts),
        "; ".join(notes) or None,
        facts.configs,
    )
    return group, topics


def client_status(
    client: ClientTarget, cluster: Cluster, known: set[str] | None = None
) -> ClientStatus:
    """The groups, retry backlog and dead letters of one consumer client; `known`: the share
    groups the target names (the others found on the cluster are listed)."""
    cc = client.config
    if is_share_client(cc):
        share, topics = _share_group(cluster, client)
        groups = [share]
    else:
        topics = main_topics(client, cluster)
        earliest = cc.initial_offset == "earliest"
        groups = [_group(cluster, cc.group_id, "main", topics, earliest, None)]
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
    others = other_share_groups(cluster, known if known is not None else {cc.group_id})
    return ClientStatus(
        client.index,
        client.servers,
        tuple(topics),
        tuple(groups),
        tuple(waiting),
        tuple(dead),
        others,
    )


def status(target: Target) -> StatusReport:
    """The status of every consumer client of the service."""
    known = {c.config.group_id for c in target.clients if is_share_client(c.config)}
    out = []
    for client in target.clients:
        out.append(client_status(client, Cluster(client.settings, client.where), known))
    return StatusReport(iso(time.time()), tuple(out))
