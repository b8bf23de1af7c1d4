"""A handler's traceback, from freedom's event route to the consumer proxy's log line about its
record (docs/observability.md, "When a handler raises").

When an event handler raises, its route answers 500 naming the exception (freedom/web/failures.py)
and holds the traceback here, under a new id that the answer carries in `x-freedom-failure-id`.
The consumer proxy of the same process takes it back when it reads the answer
(`freedom.kafka.consumer.delivery.result_of`) and logs it once per record, with the line saying the
record was dead-lettered (with `retry_count = 0`, with its first failed attempt), never at every
attempt. A traceback no consumer proxy of this process took within :data:`UNCLAIMED_AFTER_SEC`
(the delivery came from elsewhere: `freedom proxy`, another process of `uvicorn --workers`, a
client calling the route), or pushed out by :data:`MAX_HELD` newer ones, is handed back to whoever
held it, which logs it itself: a traceback is never lost, and never logged twice.

Only text is held (no frames: an exception keeps every local of its stack alive), at most
:data:`MAX_TRACEBACK_CHARS` of it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "MAX_HELD",
    "MAX_TRACEBACK_CHARS",
    "UNCLAIMED_AFTER_SEC",
    "cut_traceback",
    "hold",
    "log_with_traceback",
    "take",
]

#: How long a held traceback waits for the consumer proxy of this process (which takes it as soon
#: as it reads the answer) before it is handed back to be logged where it happened.
UNCLAIMED_AFTER_SEC = 10.0
#: The most tracebacks held at once; the oldest is handed back beyond it.
MAX_HELD = 1000
#: The longest traceback text held: a longer one keeps its start and its end (where it was raised).
MAX_TRACEBACK_CHARS = 64 * 1024
_HEAD_CHARS = 2048

Unclaimed = Callable[[str], None]

_held: dict[str, tuple[str, Unclaimed]] = {}  # id -> (the traceback, who logs it if unclaimed)
_lock = threading.Lock()


def cut_traceback(text: str) -> str:
    """`text` cut to :data:`MAX_TRACEBACK_CHARS`: its first lines and its end, with what was left
    out counted between them."""
    if len(text) <= MAX_TRACEBACK_CHARS:
        return text
    left = len(text) - MAX_TRACEBACK_CHARS
    tail = text[-(MAX_TRACEBACK_CHARS - _HEAD_CHARS) :]
    return f"{text[:_HEAD_CHARS]}\n  ... ({left} characters of the traceback left out) ...\n{tail}"


def hold(text: str, unclaimed: Unclaimed) -> str:
    """Hold the traceback `text` for the consumer proxy of this process; returns its id (for
    `x-freedom-failure-id`). `unclaimed(text)` is called, on this event loop, when no one took it
    within :data:`UNCLAIMED_AFTER_SEC`, or when :data:`MAX_HELD` newer ones pushed it out."""
    token = secrets.token_hex(16)
    pushed_out: list[tuple[str, Unclaimed]] = []
    with _lock:
        while len(_held) >= MAX_HELD:
            pushed_out.append(_held.pop(next(iter(_held))))
        _held[token] = (cut_traceback(text), unclaimed)
    for old, call in pushed_out:
        call(old)
    asyncio.get_running_loop().call_later(UNCLAIMED_AFTER_SEC, _expire, token)
    return token


def take(token: str | bytes | None) -> str | None:
    """The traceback held under `token`, which is no longer held; None for an id this process does
    not hold (another process's, one already taken or handed back, anything else)."""
    if not token:
        return None
    if isinstance(token, bytes):
        token = token.decode("latin-1")
    with _lock:
        held = _held.pop(token.strip(), None)
    return held[0] if held is not None else None


def _expire(token: str) -> None:
    with _lock:
        held = _held.pop(token, None)
    if held is not None:
        text, unclaimed = held
        unclaimed(text)


def log_with_traceback(
    logger: logging.Logger,
    level: int,
    trace: str | None,
    msg: str,
    *args: Any,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Log `msg % args` as `logger.log` would, with `trace` (a traceback as text, or None) as the
    line's exception: the text formatters print it under the line, JSON lines put it in their
    `exception` field (json_logs.py), as for a line logged with `exc_info`."""
    if not logger.isEnabledFor(level):
        return
    if trace is None:
        logger.log(level, msg, *args, extra=extra, stacklevel=2)
        return
    fn, lno, func, _ = logger.findCaller(stacklevel=2)
    record = logger.makeRecord(logger.name, level, fn, lno, msg, args, None, func, extra)
    record.exc_text = trace.rstrip("\n")
    logger.handle(record)
