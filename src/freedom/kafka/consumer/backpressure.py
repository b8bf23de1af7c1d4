"""Slowing one topic's deliveries down when its endpoint asks, or as configured (issue 15.2).

- `Retry-After`: a `429` or `503` answer (without `x-freedom-outcome`) carrying `Retry-After`
  (delay-seconds or an HTTP date, RFC 9110 §10.2.3) pauses every delivery of the topic in this
  process (its main and retry groups) for that long, at least :data:`MIN_PAUSE_SEC` and at most
  `retry_after_max_sec`. The record is delivered again after the pause with the same
  `x-retry-count`: it is not a failed attempt, until the pauses its own answers asked for add up to
  more than `backpressure_max_sec`; then the answer is a failure like any other (proxy.py).
  Knative Eventing's `retryAfterMax` is the anchor for the cap.
- `rate_limit_per_sec`: deliveries of the topic start at most that often, evenly spaced (a
  token bucket of one token: GCRA, the theoretical arrival time of the next start).
- `max_concurrency`: at most that many deliveries of the topic are in their HTTP call at once
  (max_in_flight bounds the records being handled; this bounds the calls, across partitions and
  the retry group), so a slow endpoint holds its own share and not the shared connections.

One :class:`Gate` per topic of a ConsumerProxy; every delivery of a record (not of a batch) passes
it. Limits are per process: a fleet of N proxy instances allows N times as much.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import email.utils
import time
from typing import Any

__all__ = ["RETRY_AFTER_STATUSES", "MIN_PAUSE_SEC", "Gate", "parse_retry_after"]

#: The answer statuses whose `Retry-After` pauses the topic.
RETRY_AFTER_STATUSES = frozenset({429, 503})

#: The shortest pause a `Retry-After` causes (`Retry-After: 0` or a date in the past included), so
#: that an endpoint answering it to every call cannot make the proxy call it in a tight loop.
MIN_PAUSE_SEC = 1.0

#: The longest Retry-After read at all (about 24.8 days, config_models.MAX_SECONDS); longer is cut to it.
_MAX_READ_SEC = 2_147_483.0


def parse_retry_after(value: str | bytes | None, now: float | None = None) -> float | None:
    """The seconds a `Retry-After` value asks to wait (0 for a date in the past), or None when it
    is absent or not one of the two RFC 9110 forms (delay-seconds: ASCII digits; an HTTP date)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if text.isascii() and text.isdigit():
        return min(float(int(text[:12])), _MAX_READ_SEC)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime's form has no zone: HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), _MAX_READ_SEC)


class Gate:
    """The pause, rate limit and concurrency limit of one topic's deliveries (loop side only)."""

    def __init__(
        self,
        *,
        rate_per_sec: float | None = None,
        max_concurrency: int | None = None,
        retry_after_max_sec: float = 60.0,
        backpressure_max_sec: float = 300.0,
    ) -> None:
        self.rate_per_sec = rate_per_sec
        self.max_concurrency = max_concurrency
        self.retry_after_max_sec = retry_after_max_sec
        self.backpressure_max_sec = backpressure_max_sec  # 0: Retry-After is not read
        self._interval = 1.0 / rate_per_sec if rate_per_sec else 0.0
        self._next_start = 0.0  # loop time: the earliest the next rate-limited delivery may start
        self._paused_until = 0.0  # loop time
        self._calls = 0  # deliveries in their call (counted only with max_concurrency)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._limited = bool(rate_per_sec or max_concurrency)

    @property
    def in_call(self) -> int:
        """Deliveries that entered and did not leave yet (counted only with max_concurrency);
        read-only, for tests and diagnostics."""
        return self._calls

    @property
    def waiting(self) -> int:
        """Deliveries waiting for a concurrency place now; read-only, for tests and diagnostics."""
        return len(self._waiters)

    def free(self) -> bool:
        """True when a delivery may start now without waiting or counting (the common case)."""
        return not self._limited and self._paused_until <= time.monotonic()

    def pause(self, retry_after: float) -> float:
        """A `Retry-After` of `retry_after` seconds arrived: pause the topic; returns the pause."""
        wait = min(max(retry_after, MIN_PAUSE_SEC), self.retry_after_max_sec)
        self._paused_until = max(self._paused_until, time.monotonic() + wait)
        return wait

    def paused_for(self) -> float:
        """Seconds left of the current pause (0: not paused)."""
        return max(0.0, self._paused_until - time.monotonic())

    async def enter(self, lost: asyncio.Event) -> bool:
        """Wait for a slot, the end of any pause and the rate limit's turn; False when `lost` was
        set first (then nothing is held). Every True is followed by one :meth:`leave`."""
        if self.max_concurrency is not None and not await self._take_slot(lost):
            return False
        try:
            while (left := self.paused_for()) > 0:
                if await _wait(lost, left):
                    self._give_slot()
                    return False
            if self._interval:
                now = time.monotonic()
                start = max(now, self._next_start)
                self._next_start = start + self._interval
                if start > now:
                    try:
                        gone = await _wait(lost, start - now)
                    except BaseException:
                        self._give_turn()
                        raise
                    if gone:
                        self._give_turn()
                        self._give_slot()
                        return False
        except BaseException:  # cancelled (the head-of-line guard, the drain deadline)
            self._give_slot()
            raise
        return True

    def _give_turn(self) -> None:
        """A reserved start not taken: the next reservation may come one interval sooner (else the
        waiters of a revoked partition would hold the rate's turns long after they left)."""
        self._next_start = max(time.monotonic(), self._next_start - self._interval)

    def leave(self) -> None:
        """A delivery that entered has its answer."""
        self._give_slot()

    async def _take_slot(self, lost: asyncio.Event) -> bool:
        loop = asyncio.get_running_loop()
        assert self.max_concurrency is not None
        while self._calls >= self.max_concurrency:
            if lost.is_set():
                return False
            turn: asyncio.Future[None] = loop.create_future()
            self._waiters.append(turn)
            gone = asyncio.ensure_future(lost.wait())
            either: set[asyncio.Future[Any]] = {turn, gone}
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                if turn.done() and not turn.cancelled():
                    self._wake_next()  # woken, but not taking it: pass the turn on
                raise
            finally:
                gone.cancel()
                if not turn.done():
                    turn.cancel()
                    try:
                        self._waiters.remove(turn)
                    except ValueError:
                        pass
            if lost.is_set():
                if not turn.cancelled():
                    self._wake_next()
                return False
        self._calls += 1
        return True

    def _give_slot(self) -> None:
        if self.max_concurrency is not None:
            self._calls -= 1
            self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
        return True
    except TimeoutError:
        return event.is_set()
