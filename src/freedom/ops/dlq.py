"""`freedom dlq list` and `freedom dlq show`: the records of the dead-letter topics, with the
reasons the proxy wrote (docs/contract.md, "Retries and dead letters": original topic, partition,
offset, first failure time, the last error and status), grouped by error class or one by one,
filtered.

An error class is the error text with what differs from record to record taken out (numbers, ids,
UUIDs, hex), so that "timeout after 3012 ms for order 81f3..." and "timeout after 2977 ms for order
0c4e..." count as one class. Records are read up to the end offsets taken when the command starts.
"""

from __future__ import annotations

import base64
import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from freedom.observability.tracing import record_trace_id
from freedom.ops.cluster import TP, Cluster
from freedom.ops.status import iso, main_topics
from freedom.ops.target import ClientTarget, OpsError, Target
from freedom.wire.encoding import printable
from freedom.wire.headers import (
    ERROR_HEADER,
    FIRST_FAILURE_TIME_HEADER,
    OMISSION_HEADERS,
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_TOPIC_HEADER,
    REPLAY_COUNT_HEADER,
    RETRY_COUNT_HEADER,
    STATUS_HEADER,
)

PREVIEW_BYTES = 200
HEADER_CHARS = 1000  # a header value longer than this is shown cut, with its length


def _shown(text: str) -> str:
    if len(text) <= HEADER_CHARS:
        return printable(text)
    return f"{printable(text[:HEADER_CHARS])}... ({len(text)} characters)"


# ----------------------------------------------------------------------------- one dead letter


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _last(headers: list[tuple[str, Any]], name: str) -> str | None:
    found = None
    for k, v in headers:
        if k.lower() == name and v is not None:
            found = _text(v)
    return found


def _int(value: str | None) -> int | None:
    return (
        int(value)
        if value is not None and value.isascii() and value.isdigit() and len(value) < 19
        else None
    )


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, with its reason headers read out."""

    topic: str
    partition: int
    offset: int
    timestamp: str | None  # when it was dead-lettered (the record's timestamp)
    key: str | None  # printable text of the key; None for a record without a key
    key_base64: str | None
    headers: tuple[tuple[str, str], ...]  # every header, values as printable text
    value_size: int
    value_preview: str  # the first PREVIEW_BYTES bytes, printable
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    first_failure_time: str | None
    error: str
    status: int | None
    retry_count: int | None
    replay_count: int
    trace_id: str | None
    value_omitted: bool  # a copy without its value (or key): it cannot be replayed as it was
    ts_ms: int = field(default=0, repr=False, compare=False)

    @property
    def error_class(self) -> str:
        return error_class(self.error)

    @staticmethod
    def of(msg: Any) -> DeadLetter:
        raw = list(msg.headers() or [])
        key = msg.key()
        value = msg.value() or b""
        kind, ms = msg.timestamp()
        return DeadLetter(
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            timestamp=iso(ms / 1000.0) if kind else None,
            key=printable(_text(key)) if key is not None else None,
            key_base64=base64.b64encode(key).decode() if key is not None else None,
            headers=tuple((printable(k[:HEADER_CHARS]), _shown(_text(v))) for k, v in raw),
            value_size=len(value),
            value_preview=printable(_text(value[:PREVIEW_BYTES])),
            original_topic=_last(raw, ORIGINAL_TOPIC_HEADER),
            original_partition=_int(_last(raw, ORIGINAL_PARTITION_HEADER)),
            original_offset=_int(_last(raw, ORIGINAL_OFFSET_HEADER)),
            first_failure_time=_last(raw, FIRST_FAILURE_TIME_HEADER),
            error=_last(raw, ERROR_HEADER) or "",
            status=_int(_last(raw, STATUS_HEADER)),
            retry_count=_int(_last(raw, RETRY_COUNT_HEADER)),
            replay_count=_int(_last(raw, REPLAY_COUNT_HEADER)) or 0,
            trace_id=record_trace_id(raw),
            value_omitted=any(_last(raw, h) is not None for h in OMISSION_HEADERS),
            ts_ms=ms if kind else 0,
        )


_CLASS_RULES = (
    (
        re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
        "<id>",
    ),
    (re.compile(r"\b(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,}\b"), "<id>"),  # hex ids, event ids
    (
        re.compile(r"\b(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{16,}\b"),
        "<id>",
    ),  # long tokens with digits
    (re.compile(r"[0-9]+(?:[.:][0-9]+)*"), "<n>"),
    (re.compile(r"\s+"), " "),
)


_HTTP_STATUS = re.compile(r"\bHTTP ([1-5][0-9]{2})\b")


def error_class(error: str) -> str:
    """`error` with numbers and ids replaced (`<n>`, `<id>`): the same failure of different records.
    An HTTP status ("HTTP 503") is kept: it is the class, not a detail."""
    parts = _HTTP_STATUS.split(error)  # [text, status, text, status, ..., text]
    for i in range(0, len(parts), 2):
        for pattern, repl in _CLASS_RULES:
            parts[i] = pattern.sub(repl, parts[i])
    text = "".join(f"HTTP {part}" if i % 2 else part for i, part in enumerate(parts))
    return " ".join(text.split()) or "(no error recorded)"


# ----------------------------------------------------------------------------- filters


def parse_time(value: str, option: str) -> float:
    """An ISO 8601 time (UTC when it names no zone) as a Unix time; OpsError naming `option`."""
    try:
        parsed = datetime.datetime.fromisoformat(
            value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        )
    except ValueError:
        raise OpsError(
            f"{option}: not an ISO 8601 time: {value!r} (e.g. 2026-12-01T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


_RANGE = re.compile(r"([0-9]{0,18})-([0-9]{0,18})|([0-9]{1,18})")


def parse_offsets(value: str) -> tuple[int, int | None]:
    """`A-B` (both included), `A-` (from A on), `-B` or `N` (that one offset); OpsError otherwise."""
    m = _RANGE.fullmatch(value.strip())
    if not m or (m.group(3) is None and not (m.group(1) or m.group(2))):
        raise OpsError(f"--offsets: expected A-B, A-, -B or N (offsets, numbers), got {value!r}")
    if m.group(3) is not None:
        return int(m.group(3)), int(m.group(3))
    low = int(m.group(1)) if m.group(1) else 0
    high = int(m.group(2)) if m.group(2) else None
    if high is not None and high < low:
        raise OpsError(f"--offsets: the range {value!r} is empty (B is below A)")
    return low, high


@dataclass(frozen=True)
class Filter:
    """Which dead letters a command considers; None means any."""

    key: str | None = None  # the record key, as printed (exact)
    since: float | None = None  # dead-lettered at or after (Unix time)
    until: float | None = None  # dead-lettered before
    grep: str | None = None  # a text the error contains (case-insensitive), or the status
    partition: int | None = None
    offsets: tuple[int, int | None] | None = None  # offset range, both ends included

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise OpsError("--until must be later than --since")
        if self.partition is not None and self.partition < 0:
            raise OpsError("--partition must be 0 or more")

    @property
    def empty(self) -> bool:
        return self == Filter()

    def describe(self) -> dict[str, Any]:
        """The filter as plain values (audit lines, JSON, the replay job's name)."""
        out: dict[str, Any] = {}
        if self.key is not None:
            out["key"] = self.key
        if self.since is not None:
            out["since"] = iso(self.since)
        if self.until is not None:
            out["until"] = iso(self.until)
        if self.grep is not None:
            out["grep"] = self.grep
        if self.partition is not None:
            out["partition"] = self.partition
        if self.offsets is not None:
            out["offsets"] = (
                f"{self.offsets[0]}-{'' if self.offsets[1] is None else self.offsets[1]}"
            )
        return out

    def bounds(self, partition: int, low: int, end: int) -> tuple[int, int]:
        """The offsets [start, stop) of `partition` worth reading."""
        if self.partition is not None and partition != self.partition:
            return low, low
        if self.offsets is None:
            return low, end
        a, b = self.offsets
        return max(low, a), min(end, b + 1) if b is not None else end

    def matches(self, d: DeadLetter) -> bool:
        if self.key is not None and d.key != self.key:
            return False
        t = d.ts_ms / 1000.0
        if self.since is not None and t < self.since:
            return False
        if self.until is not None and t >= self.until:
            return False
        if self.grep is not None:
            needle = self.grep.lower()
            if needle not in d.error.lower() and needle != str(d.status):
                return False
        return True


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
) -> Iterator[tuple[DeadLetter, Any]]:
    """The dead letters of `fail` matching `flt`, partition by partition, up to the end offsets at
    the start (`ends`, else now); `starts` overrides where each partition begins."""
    bounds = ends if ends is not None else snapshot(fail)
    reader = fail.cluster.reader()
    try:
        for (topic, p), (low, end) in sorted(bounds.items()):
            start, stop = flt.bounds(p, low, end)
            if starts is not None and (topic, p) in starts:
                start = max(start, starts[(topic, p)])
            for msg in reader.read(topic, p, start, stop):
                d = DeadLetter.of(msg)
                if flt.matches(d):
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
    records: int
    classes: tuple[ErrorClass, ...]


def list_dead_letters(
    target: Target, topic: str | None = None, flt: Filter = Filter()
) -> list[TopicDeadLetters]:
    """`freedom dlq list`: the dead letters of each dead-letter topic grouped by error class."""
    out = []
    for fail in fail_topics(target, topic):
        groups: dict[tuple[str, int | None, str | None], list[DeadLetter]] = {}
        total = 0
        for d, _ in scan(fail, flt):
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
        out.append(TopicDeadLetters(fail.topic, total, tuple(classes)))
    return out


def show_dead_letters(
    target: Target, topic: str | None = None, flt: Filter = Filter(), limit: int | None = 20
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
