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
confluent-kafka `Consumer`) and freedom.testing's in-memory broker. Both commit offsets, so both
keep a :class:`~freedom.kafka.consumer.ledger.CommitLedger` (:class:`OffsetSource`). A source that
acknowledges records one by one (a share group) implements `settled` as its acknowledgement and
`open_count` as the records it holds unacknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from freedom.kafka.consumer.ledger import TP, CommitLedger


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

    def __init__(self) -> None:
        self.ledger = CommitLedger()
        self.last_round = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None

    def handed(self, tp: TP, offset: int) -> None:
        self.ledger.track(tp, offset)

    def settled(self, tp: TP, offset: int) -> bool:
        return self.ledger.finish(tp, offset)

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
