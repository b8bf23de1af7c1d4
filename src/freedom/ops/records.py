"""One dead letter and the filters of `freedom dlq`: a record of a dead-letter topic with the
reasons the proxy wrote read out of its headers (docs/contract.md, "Retries and dead letters":
original topic, partition, offset, first failure time, the last error and status), its error class,
and which records a command considers (key, time, error text, partition, offsets).

An error class is the error text with what differs from record to record taken out (numbers, ids,
UUIDs, hex), so that "timeout after 3012 ms for order 81f3..." and "timeout after 2977 ms for order
0c4e..." count as one class.
"""

from __future__ import annotations

import base64
import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from freedom.observability.tracing import record_trace_id
from freedom.ops.common import iso
from freedom.ops.target import OpsError
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
