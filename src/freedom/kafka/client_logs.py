"""librdkafka's own log lines, folded: one line per client, broker and state, then a count.

While a broker is down librdkafka logs every reconnect attempt (about 20 lines a second per
client). Every Kafka client freedom makes hands its lines to :data:`LIBRDKAFKA_LOG` (the
`freedom.kafka.librdkafka` logger; the `logger` setting, served on the client's poll), and the
:class:`FoldRepeats` filter on that logger lets the first line of each state through and counts
the repeats: the count comes as `<the line> (repeated N times in S s)` when the state changes
(another line from the same client and broker thread), and otherwise after 5 s, then 10, 20, ...
at most every 5 minutes while the repeats go on. A state quiet for a minute is forgotten, so the
next outage shows its first line again.

"The same line" means the same text once what changes at every attempt is left out: durations
(`after 3ms`), counts of suppressed errors, and other free-standing numbers (addresses, ports and
broker ids stay, so each broker has its own lines).
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["FIRST_WINDOW", "FoldRepeats", "LIBRDKAFKA_LOG", "MAX_WINDOW"]

#: Seconds before the first count of a repeating line; doubled after each count, up to MAX_WINDOW.
FIRST_WINDOW = 5.0
MAX_WINDOW = 300.0
#: A state with no line for this long is forgotten: its next line is printed as new.
FORGET_AFTER = 60.0
_MAX_STATES = 1000  # bounds memory whatever librdkafka says

# librdkafka lines through confluent-kafka: "FAC [rdkafka#consumer-2] [thrd:host:port/id]: text"
_THREAD = re.compile(r"^\S+ (\[[^\]]*\] \[thrd:[^\]]*\])")
_SUPPRESSED = re.compile(r",? \d+ identical error\(s\) suppressed")
_NUMBER = re.compile(r"(?<![\w.:#/\[-])\d+(?:\.\d+)?(?:ms|s|us)?(?![\w.:/\]-])")


def fold_key(message: str) -> tuple[str, str]:
    """(client and broker thread, the line without what changes at every attempt)."""
    m = _THREAD.match(message)
    source = m.group(1) if m else ""
    return source, _NUMBER.sub("N", _SUPPRESSED.sub("", message))


@dataclass
class _State:
    level: int
    line: str  # the latest repeat, as librdkafka wrote it
    since: float  # start of the current count
    last: float  # the latest line of this state
    window: float = FIRST_WINDOW
    count: int = 0  # repeats not shown yet


class FoldRepeats(logging.Filter):
    """A logging filter that lets the first line of a state through and counts its repeats."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        first_window: float = FIRST_WINDOW,
        max_window: float = MAX_WINDOW,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        super().__init__()
        self.logger = logger
        self.first_window = first_window
        self.max_window = max_window
        self.forget_after = forget_after
        self._states: dict[tuple[str, str], _State] = {}
        self._current: dict[str, tuple[str, str]] = {}  # source -> its latest state
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "folded", False):
            return True  # our own count line
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's business, not ours
            return True
        key = fold_key(message)
        now = time.monotonic()
        counts: list[tuple[int, str]] = []
        with self._lock:
            previous = self._current.get(key[0])
            if (
                previous is not None and previous != key
            ):  # the state changed: show the old one's count
                counts += self._take(previous, now)
            self._current[key[0]] = key
            state = self._states.get(key)
            if state is None:
                if len(self._states) >= _MAX_STATES:
                    self._forget(now, everything_quiet=True)
                if len(self._states) < _MAX_STATES:  # else shown, not tracked: memory stays bounded
                    self._states[key] = _State(record.levelno, message, now, now, self.first_window)
                show = True
            else:
                state.count += 1
                state.line, state.last = message, now
                show = False
                self._start()
                self._wake.notify()
        self._emit(counts)
        return show

    def flush(self) -> None:
        """Show every count not shown yet (at exit, and for tests)."""
        with self._lock:
            counts = [c for key in list(self._states) for c in self._take(key, time.monotonic())]
        self._emit(counts)

    # ------------------------------------------------------------------ under the lock

    def _take(self, key: tuple[str, str], now: float) -> list[tuple[int, str]]:
        """The count line of `key` (if it has repeats), starting a new count."""
        state = self._states.get(key)
        if state is None or state.count == 0:
            return []
        line = (
            state.level,
            f"{state.line} (repeated {state.count} time{'s' if state.count > 1 else ''} "
            f"in {max(now - state.since, 0.1):.1f} s)",
        )
        state.count, state.since = 0, now
        state.window = min(state.window * 2, self.max_window)
        return [line]

    def _forget(self, now: float, *, everything_quiet: bool = False) -> None:
        limit = 0.0 if everything_quiet else self.forget_after
        for key, state in list(self._states.items()):
            if state.count == 0 and now - state.last >= limit:
                del self._states[key]
                if self._current.get(key[0]) == key:
                    del self._current[key[0]]

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._main, name="freedom-librdkafka-log", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ the counting thread

    def _main(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                counts = [
                    c
                    for key, s in list(self._states.items())
                    if s.count and now >= s.since + s.window
                    for c in self._take(key, now)
                ]
                self._forget(now)
                due = [s.since + s.window for s in self._states.values() if s.count]
                if not counts:
                    self._wake.wait(max(0.05, min(due) - now) if due else self.forget_after)
            self._emit(counts)

    def _emit(self, counts: list[tuple[int, str]]) -> None:
        for level, line in counts:  # outside the lock: handlers may be slow, or log themselves
            self.logger.log(level, "%s", line, extra={"folded": True})


LIBRDKAFKA_LOG = logging.getLogger("freedom.kafka.librdkafka")
FOLD = FoldRepeats(LIBRDKAFKA_LOG)
LIBRDKAFKA_LOG.addFilter(FOLD)
atexit.register(FOLD.flush)
