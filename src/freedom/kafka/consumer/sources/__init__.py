"""Record sources: where a consumer group's records come from and where their outcomes go.

A consumer group (group.py) schedules and delivers records; a *source* fetches them and settles
them. The port has two sides:

- :class:`Sink`, what the group offers a source: `dispatch` a batch of fetched records (on the
  event loop), `release` partitions that go away (drain their deliveries), and `room` / `busy`,
  read from any thread, so a source fetches only as much as the group has room for;
- :class:`RecordSource`, what the group asks of a source: start and stop, pause and resume a
  partition, and per record `handed` (fetched, not settled), `settled` (finished: committable, or
  acknowledged), `skip` (settled elsewhere already); plus the clock a retry group waits on.

Sources today: the Kafka consumer group (sources/kafka.py, the only module that builds a
confluent-kafka `Consumer`), a Kafka share group (sources/share.py, the only one that builds a
`ShareConsumer`) and freedom.testing's in-memory broker (both kinds). A classic group commits
offsets, so its source keeps a :class:`~freedom.kafka.consumer.ledger.CommitLedger`
(:class:`OffsetSource`); a share group acknowledges records one by one: `settled` is its ACCEPT,
`abandoned` (a record given up: the drain deadline, a stop, a failure redelivered) its RELEASE, and
`open_count` the records it holds unacknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from freedom.kafka.consumer.ledger import TP, CommitLedger

#: How much longer than a delivery's deadline a share group's acquisition lock is at least: room
#: for the answer, the retry or dead-letter copy and the acknowledgement after the deadline.
SHARE_LOCK_MARGIN_SEC = 5.0


@dataclass(frozen=True)
class ShareTerms:
    """What a share group's source needs beyond what a classic group's does."""

    #: The shortest acquisition lock the group's deliveries need: the longest delivery deadline of
    #: its topics plus a margin. A record must never be delivered twice at once; the source raises
    #: the group's `share.record.lock.duration.ms` to this at start-up (or refuses to start).
    lock_sec: float
    #: The most records the source's fetches ask for (`max.poll.records`, shared out between its
    #: fetchers): twice the group's concurrency, since a share consumer fetches again only once
    #: every record of its last fetch is acknowledged (the broker may still hand out a whole
    #: producer batch at once).
    max_records: int


class Sink(Protocol):
    """The consumer group, as its source sees it."""

    group_id: str
    assigned: asyncio.Event

    def room(self, assigned: int) -> int:
        """How many records to fetch now, the source holding `assigned` partitions (any thread;
        an estimate)."""
        ...

    def handing(self, n: int) -> None:
        """`n` records are on their way to `dispatch` (the fetch thread, before it hands them)."""
        ...

    def busy(self) -> bool:
        """Records handed out and not settled (any thread): settlements are due soon."""
        ...

    def dispatch(self, records: list[Any]) -> None:
        """Fetched records, in offset order per partition (on the event loop)."""
        ...

    async def release(self, tps: list[TP]) -> None:
        """Partitions go away: drain their deliveries within the drain timeout (event loop)."""
        ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class RecordSource(Protocol):
    """Where a group's records come from and where their outcomes go."""

    #: When the source's fetch loop last began a round (time.monotonic()), for /livez.
    last_round: float
    #: A share group's source (records acknowledged one by one, unordered), not a classic group's.
    shared: bool

    async def start(self, sink: Sink) -> None: ...

    async def stop(self) -> None:
        """Stop fetching (the sink then releases its partitions and calls `close`)."""
        ...

    async def close(self) -> None:
        """After the last release: the last settlements, then close the client."""
        ...

    def alive(self) -> bool | None:
        """None: no fetch loop to watch (not started, stopping); else whether it still runs."""
        ...

    def flow_paused(self, tp: TP, paused: bool) -> None:
        """The group paused (or resumed) `tp` for its backlog: fetch in short rounds meanwhile."""
        ...

    def pause(self, tp: TP) -> None: ...

    def resume(self, tp: TP) -> None: ...

    def room_freed(self) -> None:
        """Some partition's backlog has room again (event loop)."""
        ...

    def handed(self, tp: TP, offset: int) -> None: ...

    def settled(self, tp: TP, offset: int) -> bool:
        """The record finished; True when the partition's committed position moved."""
        ...

    def abandoned(self, tp: TP, offset: int) -> None:
        """The record was given up unfinished (the drain deadline, a failed handling): a classic
        group delivers it again after a rebalance; a share group releases it to another member."""
        ...

    def skip(self, tp: TP, offset: int) -> bool: ...

    def open_count(self, tp: TP) -> int: ...

    def forget(self, tp: TP) -> None: ...

    def now(self) -> float:
        """The time retry records are due by (the wall clock; the test broker simulates it)."""
        ...

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        """Call `callback` on the event loop when `seconds` have passed on this source's clock."""
        ...


class OffsetSource:
    """The settling half of a source that commits offsets: its :class:`CommitLedger`."""

    shared = False

    def __init__(self) -> None:
        self.ledger = CommitLedger()
        self.last_round = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None

    def handed(self, tp: TP, offset: int) -> None:
        self.ledger.track(tp, offset)

    def settled(self, tp: TP, offset: int) -> bool:
        return self.ledger.finish(tp, offset)

    def abandoned(self, tp: TP, offset: int) -> None:
        return None  # left uncommitted: delivered again after the next rebalance or restart

    def skip(self, tp: TP, offset: int) -> bool:
        return self.ledger.skip(tp, offset)

    def open_count(self, tp: TP) -> int:
        return self.ledger.open_count(tp)

    def forget(self, tp: TP) -> None:
        self.ledger.forget(tp)

    def now(self) -> float:
        return time.time()

    def flow_paused(self, tp: TP, paused: bool) -> None:
        return None

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        assert self._loop is not None
        return self._loop.call_later(seconds, callback)
