"""A service run as a real subprocess by the SIGKILL and `--workers` tests (`freedom run kill_service:app`).

The handler of $EVENT_TOPIC appends a "start" line, waits a random 0-$MAX_LATENCY_MS ms, then
appends an "end" line to $RECORD_FILE. Each line is one `os.write` on an O_APPEND descriptor, so
it is in the file as soon as it is written, whatever happens to the process afterwards.

Failures, for the retry tests (both off unless set): a key starting with $FAIL_ALWAYS_PREFIX is
answered 500 every time; a key starting with $FAIL_FIRST_PREFIX is answered 500 the first time any
process sees it (a marker file per key, created with O_EXCL in $MARKER_DIR: the retry may come to
another worker), 200 after. A failed call appends a "fail" line instead of the "end" line. With
either rule set, each line also carries the delivery's `x-retry-count` as "retry".
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

from starlette.responses import Response

import freedom
from freedom.wire.headers import RETRY_COUNT_HEADER

TOPIC = os.environ.get("EVENT_TOPIC", "event-sell")
MAX_LATENCY = float(os.environ.get("MAX_LATENCY_MS", "20")) / 1000
FAIL_FIRST_PREFIX = os.environ.get("FAIL_FIRST_PREFIX", "")
FAIL_ALWAYS_PREFIX = os.environ.get("FAIL_ALWAYS_PREFIX", "")
MARKER_DIR = os.environ.get("MARKER_DIR", "")
RULES = bool(FAIL_FIRST_PREFIX or FAIL_ALWAYS_PREFIX)
_fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _line(event: str, key: str, **extra: str | None) -> None:
    line = {"ev": event, "key": key, "t": time.time(), "pid": os.getpid(), **extra}
    os.write(_fd, (json.dumps(line) + "\n").encode())


def _first_sight(key: str) -> bool:
    """True for the first call with `key` in any process (the marker file did not exist yet)."""
    try:
        os.close(
            os.open(
                os.path.join(MARKER_DIR, key.encode().hex()),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                0o644,
            )
        )
    except FileExistsError:
        return False
    return True


def _fails(key: str) -> bool:
    if FAIL_ALWAYS_PREFIX and key.startswith(FAIL_ALWAYS_PREFIX):
        return True
    return bool(FAIL_FIRST_PREFIX) and key.startswith(FAIL_FIRST_PREFIX) and _first_sight(key)


class StoreController:
    runtime: freedom.Runtime

    async def post_event_by(self, event_id: str) -> str | Response:
        # The lines carry the retry count only for the retry tests (the other tests' lines unchanged).
        extra = {"retry": self.runtime.request.headers.get(RETRY_COUNT_HEADER)} if RULES else {}
        _line("start", event_id, **extra)
        await asyncio.sleep(random.uniform(0, MAX_LATENCY))
        if _fails(event_id):
            _line("fail", event_id, **extra)
            return Response(status_code=500)
        _line("end", event_id, **extra)
        return "ok"

    async def get(self) -> dict[str, int]:
        """GET /store: which worker process answered (tests of `--workers` use it)."""
        return {"pid": os.getpid()}


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(TOPIC, "StoreController.post_event_by")


app = freedom.Application()
