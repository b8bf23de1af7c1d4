"""The test broker's clock, as its in-memory record sources wait on it (memory_clients.py's
classic source, memory_share.py's share-group member): `now()` is the broker's simulated time, a
`call_later` wait fires when the clock moves (the caller checks its due time again) or after the
real seconds, and the broker wakes a source from any thread when records come or the clock moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from freedom.testing.broker import TestBroker


class _Timer:
    """One wait on the broker's clock."""

    def __init__(
        self, source: SimulatedClock, callback: Callable[[], None], seconds: float
    ) -> None:
        self.source, self.callback = source, callback
        assert source._loop is not None
        self._real = source._loop.call_later(seconds, self.fire)

    def fire(self) -> None:
        if self not in self.source._timers:
            return
        self.source._timers.discard(self)
        self._real.cancel()
        self.callback()

    def cancel(self) -> None:
        self.source._timers.discard(self)
        self._real.cancel()


class SimulatedClock:
    """The clock half of an in-memory source; the source sets the four attributes below."""

    broker: TestBroker
    _loop: asyncio.AbstractEventLoop | None
    _poke: asyncio.Event  # set to make the source's pump look again
    _timers: set[_Timer]

    def now(self) -> float:
        return self.broker.time()

    def call_later(self, seconds: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self, callback, seconds)
        self._timers.add(timer)
        return timer

    def wake(self, *, clock: bool = False) -> None:
        """From any thread: records to fetch (or, `clock`, the clock moved)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._clock_moved if clock else self._poke.set)
        except RuntimeError:  # the loop closed meanwhile: nothing to wake
            pass

    def _clock_moved(self) -> None:  # on the loop
        for timer in list(self._timers):
            timer.fire()
        self._poke.set()
