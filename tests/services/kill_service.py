"""A service run as a real subprocess by the SIGKILL tests (`freedom run kill_service:app`).

The handler of $EVENT_TOPIC appends a "start" line, waits a random 0-$MAX_LATENCY_MS ms, then
appends an "end" line to $RECORD_FILE. Each line is one `os.write` on an O_APPEND descriptor, so
it is in the file as soon as it is written, whatever happens to the process afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time

import freedom

TOPIC = os.environ.get("EVENT_TOPIC", "event-sell")
MAX_LATENCY = float(os.environ.get("MAX_LATENCY_MS", "20")) / 1000
_fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _line(event: str, key: str) -> None:
    os.write(_fd, (json.dumps({"ev": event, "key": key, "t": time.time(), "pid": os.getpid()}) + "\n").encode())


class StoreController:
    runtime: freedom.Runtime

    async def post_event_by(self, event_id: str) -> str:
        _line("start", event_id)
        await asyncio.sleep(random.uniform(0, MAX_LATENCY))
        _line("end", event_id)
        return "ok"

    async def get(self) -> dict[str, int]:
        """GET /store: which worker process answered (tests of `--workers` use it)."""
        return {"pid": os.getpid()}


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(TOPIC, "StoreController.post_event_by")


app = freedom.Application()
