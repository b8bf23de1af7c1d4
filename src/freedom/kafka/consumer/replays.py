"""Whether the replay headers of a main-topic record are freedom's own (docs/contract.md, "Header
ownership").

`freedom dlq replay` (freedom/ops/replay.py) sends a dead letter of `{retry_fail_prefix}T` back to
T with `x-freedom-replay-count: n` and `x-freedom-replay-of: <fail-topic>/<partition>/<offset>`.
Anyone who may publish to T can write the same two headers; only the proxy and the replay job write
the dead-letter topic. So a main-topic record's replay headers are kept (delivered, and carried
into its retry and dead-letter records, where the next replay reads the count) only when the dead
letter they name proves them:

- `x-freedom-replay-of` (exactly one) names T's own dead-letter topic, a partition and an offset,
  and `x-freedom-replay-count` (exactly one) is a number from 1;
- the record at that position exists, has the same key and value, came from T
  (`x-freedom-original-topic`), is not a copy that left something out, and its own replay count
  (none: 0) is one less.

The dead letters' counts are trustworthy in turn: the proxy wrote them, copying only counts that
passed this check. Anything else is dropped as a forged control header. Checking reads the
dead-letter topic (a few records from the offset, cached), only for records that carry both
headers; when it cannot be read (no Read permission on it, the broker away for
:data:`READ_TIMEOUT_SEC`) the replay headers are dropped and a warning says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from freedom.wire.headers import (
    OMISSION_HEADERS,
    ORIGINAL_TOPIC_HEADER,
    REPLAY_COUNT_HEADER,
    REPLAY_OF_HEADER,
)

log = logging.getLogger("freedom.kafka.consumer.replays")

#: Records read from the named offset on (a replay sends a run of dead letters, in order).
WINDOW = 64
#: The longest one read of the dead-letter topic may take.
READ_TIMEOUT_SEC = 10.0
_CACHED = 10_000  # dead letters remembered (their digests), at most
_COUNT = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"[0-9]{1,19}")
_STORED_COUNT = re.compile(r"[0-9]{1,18}")
_OMITTED = frozenset(OMISSION_HEADERS)


@dataclass(frozen=True)
class Claim:
    """The dead letter a main-topic record says it is a replay of, and its replay count."""

    topic: str
    partition: int
    offset: int
    count: int


def claim_of(headers: Any, fail_topic: str | None) -> Claim | None:
    """The replay a record's headers claim, when they are well formed and name `fail_topic` (the
    dead-letter topic of the record's own topic); None otherwise (and for most records: cheap)."""
    if fail_topic is None:
        return None
    of: list[bytes | None] = []
    counts: list[bytes | None] = []
    for k, v in headers:
        if len(k) == len(REPLAY_OF_HEADER) and k.lower() == REPLAY_OF_HEADER:
            of.append(v)
        elif len(k) == len(REPLAY_COUNT_HEADER) and k.lower() == REPLAY_COUNT_HEADER:
            counts.append(v)
    if len(of) != 1 or len(counts) != 1 or of[0] is None or counts[0] is None:
        return None
    count = counts[0].decode("latin-1")
    topic, _, position = of[0].decode("latin-1").rpartition("/")
    topic, _, partition = topic.rpartition("/")
    if (
        topic != fail_topic
        or not _COUNT.fullmatch(count)
        or int(count) < 1
        or not _NUMBER.fullmatch(partition)
        or not _NUMBER.fullmatch(position)
    ):
        return None
    return Claim(topic, int(partition), int(position), int(count))


class DeadLetterSource(Protocol):
    """Reads records of one partition from an offset on (blocking: called in a worker thread)."""

    def read(self, topic: str, partition: int, offset: int, count: int) -> list[Any]:
        """Up to `count` records of `topic[partition]` from `offset` on, in order (fewer at the
        end); raises when the partition cannot be read."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _DeadLetter:
    """What a check compares of one dead letter."""

    key: bytes
    value: bytes
    original_topic: str | None
    replay_count: int | None  # None: a copy that left something out, which is never replayed


def _digest(data: bytes | None) -> bytes:
    if data is None:
        return b"none"
    return hashlib.sha256(data).digest()


def _last(headers: list[tuple[str, bytes | None]], name: str) -> bytes | None:
    found = None
    for k, v in headers:
        if k.lower() == name and v is not None:
            found = v
    return found


def _dead_letter(msg: Any) -> _DeadLetter:
    headers = msg.headers() or []
    topic = _last(headers, ORIGINAL_TOPIC_HEADER)
    count = _last(headers, REPLAY_COUNT_HEADER)
    text = count.decode("latin-1") if count is not None else ""
    # As the replay job reads it (ops/dlq.py): up to 18 digits, anything else 0.
    replays: int | None = int(text) if _STORED_COUNT.fullmatch(text) else 0
    if any(k.lower() in _OMITTED for k, _ in headers):
        replays = None
    return _DeadLetter(
        _digest(msg.key()),
        _digest(msg.value()),
        topic.decode("utf-8", "replace") if topic is not None else None,
        replays,
    )


class ReplayCheck:
    """Checks main-topic records' replay claims against the dead letters they name (see the
    module's docstring), for one consumer proxy."""

    def __init__(self, source: DeadLetterSource) -> None:
        self.source = source
        self._seen: dict[tuple[str, int, int], _DeadLetter | None] = {}  # None: no record there
        self._lock = asyncio.Lock()
        self._warned: float | None = None  # when the last warning was logged

    async def verified(self, record: Any, claim: Claim, source_topic: str) -> bool:
        """True when `record` (read from `source_topic`) is the replay `claim` says it is."""
        where = (claim.topic, claim.partition, claim.offset)
        if where not in self._seen:
            async with self._lock:  # one read at a time; the records after it come cached
                if where not in self._seen and not await self._read(claim):
                    return False
        dead = self._seen.get(where)
        return (
            dead is not None
            and dead.replay_count is not None
            and dead.replay_count + 1 == claim.count
            and dead.original_topic == source_topic
            and dead.key == _digest(record.key())
            and dead.value == _digest(record.value())
        )

    async def _read(self, claim: Claim) -> bool:
        try:
            records = await asyncio.to_thread(
                self.source.read, claim.topic, claim.partition, claim.offset, WINDOW
            )
        except Exception as exc:  # noqa: BLE001 - any failure to read: the claim is not proven
            now = time.monotonic()
            if self._warned is None or now - self._warned > 60:  # at most one a minute
                self._warned = now
                log.warning(
                    "cannot read dead-letter topic %r to check the replay headers of records "
                    "replayed from it (%s): they are delivered without them, so a replay that "
                    "fails again is dead-lettered without its replay count; the consumer needs "
                    "Read permission on %r",
                    claim.topic,
                    exc,
                    claim.topic,
                )
            return False
        if len(self._seen) + len(records) + 1 > _CACHED:
            self._seen.clear()
        found = {(claim.topic, claim.partition, int(m.offset())): _dead_letter(m) for m in records}
        self._seen[(claim.topic, claim.partition, claim.offset)] = None  # when not among them
        self._seen.update(found)
        return True

    def close(self) -> None:
        self.source.close()
