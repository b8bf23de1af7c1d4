"""A service run as a real subprocess by the share-group tests (`freedom run share_service:app`).

The handler of $EVENT_TOPIC appends a "start" line, sleeps $HANDLER_MS ms, then appends an "end"
line to $RECORD_FILE; each line names the instance ($INSTANCE), the record's key, the delivery's
`x-delivery-count` and `x-retry-count` headers and the time. Each line is one `os.write` on an
O_APPEND descriptor: every instance appends to the same file, and a line is there as soon as it is
written, whatever happens to the process afterwards.

A key starting with $FAIL_ALWAYS_PREFIX is answered 500 every time (a "fail" line instead of the
"end" line). A key starting with $SLOW_PREFIX takes $SLOW_MS ms instead of $HANDLER_MS.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from starlette.responses import Response

import freedom
from freedom.wire.headers import DELIVERY_COUNT_HEADER, RETRY_COUNT_HEADER

TOPIC = os.environ.get("EVENT_TOPIC", "event-share")
INSTANCE = os.environ.get("INSTANCE", "0")
HANDLER = float(os.environ.get("HANDLER_MS", "20")) / 1000
SLOW_PREFIX = os.environ.get("SLOW_PREFIX", "")
SLOW = float(os.environ.get("SLOW_MS", "0")) / 1000
FAIL_ALWAYS_PREFIX = os.environ.get("FAIL_ALWAYS_PREFIX", "")
_fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _line(event: str, key: str, headers: dict[str, str]) -> None:
    line = {
        "ev": event,
        "key": key,
        "inst": INSTANCE,
        "dc": int(headers.get(DELIVERY_COUNT_HEADER) or 0),
        "retry": int(headers.get(RETRY_COUNT_HEADER) or 0),
        "t": time.time(),
    }
    os.write(_fd, (json.dumps(line) + "\n").encode())


class ShareController:
    runtime: freedom.Runtime

    async def post_event_by(self, event_id: str) -> str | Response:
        headers = dict(self.runtime.request.headers)
        _line("start", event_id, headers)
        slow = SLOW_PREFIX and event_id.startswith(SLOW_PREFIX)
        await asyncio.sleep(SLOW if slow else HANDLER)
        if FAIL_ALWAYS_PREFIX and event_id.startswith(FAIL_ALWAYS_PREFIX):
            _line("fail", event_id, headers)
            return Response(status_code=500)
        _line("end", event_id, headers)
        return "ok"


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/share", ShareController)
    initiator.listen_event(TOPIC, "ShareController.post_event_by")


app = freedom.Application()
