"""Which dead letters `freedom dlq purge` purged: read by every command that decides what still
waits (`dlq list`, `dlq show`, `dlq replay`, `status`, the console), so a purged record is as if it
were not in the dead-letter topic.

A purge is a *job*, like a replay (:mod:`freedom.ops.jobs`): a consumer group whose committed
offsets on the dead-letter topic say how far it has come, committed in Kafka transactions
(exactly once, resumable, fenced; on the embedded broker also by plain offset commits). Its group is named after the topic and its filter, the filter
itself written into the name: `freedom-replay.<fail-topic>.purge` (no filter) or
`freedom-replay.<fail-topic>.purge.<filter as base64url JSON>`. A record is purged when a purge
job of its topic has committed an offset past it and the job's filter matches it. A filter matches
by what a record holds (key, timestamp, error, status, partition, offset), never by when it is
asked, so every reader finds the same records purged that the job purged, records it passed over
(not matching: left for replays) stay, and no list of offsets has to be kept anywhere. The name
(not the offsets' commit metadata) holds the filter because every broker keeps a group's name,
the embedded one included.

The offsets are read with `require_stable`: a purge's offsets become visible a moment after its
transaction commits (the coordinator writes the commit markers then); a reader waits for them, and
takes what was committed for good when an open transaction (a purge running, or one that was
killed and not yet aborted) stays open.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from freedom.config.librdkafka import scrub
from freedom.ops.cluster import TP, Cluster
from freedom.ops.common import JOB_PREFIX
from freedom.ops.records import DeadLetter, Filter
from freedom.ops.target import OpsError

PURGE = "purge"
#: The longest filter a purge's group name takes (base64url characters).
MAX_FILTER_CHARS = 1200
_STABLE_SECONDS = 5.0  # how long a reader waits for a purge's offsets to become stable
_BEYOND = 1 << 62  # an offset past the end of any partition
_FIELDS = frozenset({"key", "since", "until", "grep", "partition", "offsets"})


# ----------------------------------------------------------------------------- names


def _spec(flt: Filter) -> dict[str, Any]:
    """The filter as exact JSON values (times as Unix seconds, not rounded as describe() rounds them)."""
    out: dict[str, Any] = {}
    for name in ("key", "since", "until", "grep", "partition"):
        value = getattr(flt, name)
        if value is not None:
            out[name] = value
    if flt.offsets is not None:
        out["offsets"] = list(flt.offsets)
    return out


def purge_group(fail_topic: str, flt: Filter) -> str:
    """The consumer group (and transactional id) of the purge job of `fail_topic` and `flt`; the
    same command gives the same job, so running it again resumes it."""
    base = f"{JOB_PREFIX}{fail_topic}.{PURGE}"
    if flt.empty:
        return base
    text = json.dumps(_spec(flt), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    encoded = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    if len(encoded) > MAX_FILTER_CHARS:
        raise OpsError(
            f"the filter is too long for a purge (its job's group name holds it, at most "
            f"{MAX_FILTER_CHARS} characters once encoded): shorten --key or --grep"
        )
    return f"{base}.{encoded}"


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def purge_filter(group: str, fail_topic: str) -> Filter | None:
    """The filter of a purge job of `fail_topic` named `group`; None for any other group."""
    base = f"{JOB_PREFIX}{fail_topic}.{PURGE}"
    if group == base:
        return Filter()
    if not group.startswith(base + "."):
        return None
    encoded = group[len(base) + 1 :]
    try:
        spec = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(spec, dict) or not spec or set(spec) - _FIELDS:
        return None
    times = [spec.get(k) for k in ("since", "until")]
    offsets = spec.get("offsets")
    if (
        any(not isinstance(spec.get(k, ""), str) for k in ("key", "grep"))
        or any(
            t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool))
            for t in times
        )
        or ("partition" in spec and not _int(spec["partition"]))
        or (
            offsets is not None
            and not (
                isinstance(offsets, list)
                and len(offsets) == 2
                and _int(offsets[0])
                and (offsets[1] is None or _int(offsets[1]))
            )
        )
    ):
        return None
    try:
        return Filter(
            key=spec.get("key"),
            since=times[0],
            until=times[1],
            grep=spec.get("grep"),
            partition=spec.get("partition"),
            offsets=(offsets[0], offsets[1]) if offsets is not None else None,
        )
    except OpsError:
        return None


# ----------------------------------------------------------------------------- reading


def _failed(cluster: Cluster, what: str, exc: BaseException) -> OpsError:
    err = exc.args[0] if exc.args else exc
    text = err.str() if isinstance(err, confluent_kafka.KafkaError) else str(err)
    return OpsError(
        f"{what} on {cluster.settings.get('bootstrap.servers')}: {scrub(text, cluster.settings)}"
    )


def job_groups(cluster: Cluster, prefix: str) -> list[str]:
    """The consumer groups whose name starts with `prefix`."""
    try:
        listed = cluster.admin.list_consumer_groups(request_timeout=cluster.timeout).result(
            cluster.timeout
        )
    except confluent_kafka.KafkaException as exc:
        raise _failed(cluster, "cannot list the consumer groups", exc) from None
    return sorted(g.group_id for g in listed.valid or [] if g.group_id.startswith(prefix))


def stable_committed(cluster: Cluster, group: str, tps: list[TP]) -> dict[TP, int]:
    """The offsets `group` has committed on `tps` for good (`require_stable`: those of a transaction
    that just committed included). An offset still in an open transaction after a few seconds (a
    run going on, or killed) is left at what was committed before it."""
    out: dict[TP, int] = {}
    want = list(tps)
    deadline = time.monotonic() + _STABLE_SECONDS
    while want:
        stable = time.monotonic() < deadline
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in want])
        try:
            result = cluster.admin.list_consumer_group_offsets(
                [request], require_stable=stable, request_timeout=cluster.timeout
            )[group].result(cluster.timeout)
        except confluent_kafka.KafkaException as exc:
            raise _failed(
                cluster, f"cannot read the committed offsets of group {group!r}", exc
            ) from None
        want = []
        for tp in result.topic_partitions or []:
            if (
                tp.error is not None
                and tp.error.code() == confluent_kafka.KafkaError.UNSTABLE_OFFSET_COMMIT
            ):
                want.append((tp.topic, tp.partition))
            elif tp.error is None and tp.offset >= 0:
                out[(tp.topic, tp.partition)] = int(tp.offset)
        if want and stable:
            time.sleep(0.05)  # the commit markers are being written: ask again
    return out


@dataclass(frozen=True)
class PurgeJob:
    """One purge job of a topic: its filter and how far it has come."""

    group: str
    flt: Filter
    offsets: dict[TP, int]

    def covers(self, d: DeadLetter) -> bool:
        """`d` is purged by this job."""
        if d.offset >= self.offsets.get((d.topic, d.partition), 0):
            return False
        start, stop = self.flt.bounds(d.partition, 0, _BEYOND)
        return start <= d.offset < stop and self.flt.matches(d)


@dataclass(frozen=True)
class Purges:
    """The purge jobs of one dead-letter topic."""

    topic: str
    jobs: tuple[PurgeJob, ...] = ()

    def covers(self, d: DeadLetter) -> bool:
        """`d` was purged (by any job): it no longer waits for anything."""
        return any(j.covers(d) for j in self.jobs)

    def whole(self, tp: TP) -> int:
        """Every record of `tp` below this offset is purged (by a purge without a filter)."""
        return max((j.offsets.get(tp, 0) for j in self.jobs if j.flt.empty), default=0)

    def reach(self, tp: TP) -> int:
        """No record of `tp` at or after this offset is purged."""
        return max((j.offsets.get(tp, 0) for j in self.jobs), default=0)


def purges_of(cluster: Cluster, topic: str) -> Purges:
    """The purge jobs of the dead-letter topic `topic` and how far each has come."""
    groups = job_groups(cluster, f"{JOB_PREFIX}{topic}.{PURGE}")
    found = [(g, f) for g in groups if (f := purge_filter(g, topic)) is not None]
    if not found:
        return Purges(topic)
    tps = cluster.partitions(topic)
    jobs = []
    for group, flt in found:
        offsets = stable_committed(cluster, group, tps)
        if offsets:
            jobs.append(PurgeJob(group, flt, offsets))
    return Purges(topic, tuple(jobs))


def waiting(
    cluster: Cluster, topic: str, bounds: dict[TP, tuple[int, int]], done: dict[TP, int]
) -> int:
    """The records of `topic` (`bounds`: each partition's first and end offset) after the offsets
    `done` (the unfiltered replay job's) that no purge purged: the dead letters still waiting
    (`freedom status`'s "not replayed"). Offsets are counted, as without purges; the records a
    filtered purge went past are read, to count those it left."""
    purges = purges_of(cluster, topic)
    total = 0
    reader = None
    try:
        for tp, (low, end) in sorted(bounds.items()):
            start = max(low, done.get(tp, 0), purges.whole(tp))
            reach = min(end, purges.reach(tp))
            if reach > start:  # a filtered purge went further: count what it left
                reader = reader or cluster.reader()
                total += sum(
                    1
                    for msg in reader.read(tp[0], tp[1], start, reach)
                    if not purges.covers(DeadLetter.of(msg))
                )
                start = reach
            total += max(0, end - start)
    finally:
        if reader is not None:
            reader.close()
    return total
