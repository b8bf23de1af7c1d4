"""`freedom dlq list` and `freedom dlq show`: the records of the dead-letter topics, with the
reasons the proxy wrote (docs/contract.md, "Retries and dead letters": original topic, partition,
offset, first failure time, the last error and status), grouped by error class or one by one,
filtered. One record, its error class and the filters are :mod:`freedom.ops.records`.

Records are read up to the end offsets taken when the command starts. A record a `freedom dlq
purge` purged is left out, as if it were not in the topic (:mod:`freedom.ops.purged`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from freedom.ops.cluster import TP, Cluster
from freedom.ops.common import iso, main_topics
from freedom.ops.purged import Purges, purges_of
from freedom.ops.records import DeadLetter as DeadLetter
from freedom.ops.records import Filter as Filter
from freedom.ops.records import error_class as error_class
from freedom.ops.records import parse_offsets as parse_offsets
from freedom.ops.records import parse_time as parse_time
from freedom.ops.target import ClientTarget, OpsError, Target

#: No filter: every dead letter.
ANY = Filter()

# ----------------------------------------------------------------------------- topics


@dataclass(frozen=True)
class FailTopic:
    """A dead-letter topic, the consumer client whose proxy writes it, and its cluster."""

    topic: str
    client: ClientTarget
    cluster: Cluster = field(repr=False)


def fail_topics(target: Target, topic: str | None = None) -> list[FailTopic]:
    """The dead-letter topics of the service (`topic`: just that one; a main topic names its own).

    Without the application's listened topics (only --config), the topics its groups have
    committed offsets on count (not every topic with the prefix: the cluster may serve other
    services). A topic named explicitly may be any with a client's `retry_fail_prefix`; OpsError
    for one that is none of them.
    """
    out: list[FailTopic] = []
    known: list[str] = []
    for client in target.clients:
        prefix = client.config.retry_fail_prefix
        if not prefix:
            continue
        cluster = Cluster(client.settings, client.where)
        existing = cluster.topics()
        mine = [f"{prefix}{t}" for t in main_topics(client, cluster) if f"{prefix}{t}" in existing]
        known += mine
        if topic is None:
            out += [FailTopic(t, client, cluster) for t in mine]
        elif topic in mine:
            out.append(FailTopic(topic, client, cluster))
        elif f"{prefix}{topic}" in mine:
            out.append(FailTopic(f"{prefix}{topic}", client, cluster))
        elif topic.startswith(prefix) and topic in existing:
            out.append(FailTopic(topic, client, cluster))
    if topic is not None and not out:
        listed = ", ".join(known) if known else "none yet"
        raise OpsError(
            f"unknown dead-letter topic {topic!r} (the service's dead-letter topics: {listed})"
        )
    seen: set[tuple[str, str]] = set()
    unique = []
    for f in out:  # two clients on one cluster with the same prefix share their dead-letter topics
        if (f.client.servers, f.topic) not in seen:
            seen.add((f.client.servers, f.topic))
            unique.append(f)
    return unique


def snapshot(fail: FailTopic) -> dict[TP, tuple[int, int]]:
    """The first and end offset of each partition of the topic now."""
    tps = fail.cluster.partitions(fail.topic)
    lows, ends = fail.cluster.earliest(tps), fail.cluster.latest(tps)
    return {tp: (lows[tp], ends[tp]) for tp in tps}


def scan(
    fail: FailTopic,
    flt: Filter,
    starts: dict[TP, int] | None = None,
    ends: dict[TP, tuple[int, int]] | None = None,
    purges: Purges | None = None,
) -> Iterator[tuple[DeadLetter, Any]]:
    """The dead letters of `fail` matching `flt` that no purge purged (`purges`, else those of the
    topic now), partition by partition, up to the end offsets at the start (`ends`, else now);
    `starts` overrides where each partition begins."""
    bounds = ends if ends is not None else snapshot(fail)
    if purges is None:
        purges = purges_of(fail.cluster, fail.topic)
    reader = fail.cluster.reader()
    try:
        for (topic, p), (low, end) in sorted(bounds.items()):
            start, stop = flt.bounds(p, low, end)
            if starts is not None and (topic, p) in starts:
                start = max(start, starts[(topic, p)])
            for msg in reader.read(topic, p, start, stop):
                d = DeadLetter.of(msg)
                if flt.matches(d) and not purges.covers(d):
                    yield d, msg
    finally:
        reader.close()


# ----------------------------------------------------------------------------- list and show


@dataclass(frozen=True)
class ErrorClass:
    """Dead letters of one topic that failed the same way."""

    error_class: str
    status: int | None
    original_topic: str | None
    count: int
    first: str | None  # the earliest and latest time they were dead-lettered
    last: str | None
    example: str  # one error text as it was recorded


@dataclass(frozen=True)
class TopicDeadLetters:
    """One dead-letter topic: how many records, grouped by error class (largest first)."""

    topic: str
    records: int  # the dead letters listed (purged ones left out)
    classes: tuple[ErrorClass, ...]
    purged: int = 0  # those `freedom dlq purge` purged (matching the filter), not listed


def list_dead_letters(
    target: Target, topic: str | None = None, flt: Filter = ANY
) -> list[TopicDeadLetters]:
    """`freedom dlq list`: the dead letters of each dead-letter topic grouped by error class (those
    a purge purged counted apart, not listed)."""
    out = []
    for fail in fail_topics(target, topic):
        groups: dict[tuple[str, int | None, str | None], list[DeadLetter]] = {}
        total = purged = 0
        purges = purges_of(fail.cluster, fail.topic)
        for d, _ in scan(fail, flt, purges=Purges(fail.topic)):
            if purges.covers(d):
                purged += 1
                continue
            total += 1
            groups.setdefault((d.error_class, d.status, d.original_topic), []).append(d)
        classes = []
        for (cls, status, original), items in groups.items():
            times = sorted(d.ts_ms for d in items if d.ts_ms)
            classes.append(
                ErrorClass(
                    cls,
                    status,
                    original,
                    len(items),
                    iso(times[0] / 1000.0) if times else None,
                    iso(times[-1] / 1000.0) if times else None,
                    items[-1].error,
                )
            )
        classes.sort(key=lambda c: (-c.count, c.error_class))
        out.append(TopicDeadLetters(fail.topic, total, tuple(classes), purged))
    return out


def show_dead_letters(
    target: Target, topic: str | None = None, flt: Filter = ANY, limit: int | None = 20
) -> list[DeadLetter]:
    """`freedom dlq show`: the dead letters matching `flt`, at most `limit` (None: all)."""
    if limit is not None and limit < 1:
        raise OpsError("--limit must be 1 or more")
    out: list[DeadLetter] = []
    for fail in fail_topics(target, topic):
        for d, _ in scan(fail, flt):
            out.append(d)
            if limit is not None and len(out) >= limit:
                return out
    return out
