"""A service run as a real subprocess by the crash tests (`freedom run recording_service:app`).

The event handler appends what it got as one JSON line to $RECORD_FILE. With $HANG_AFTER_RECORD
set it then never answers, so the record is received but never committed: the state a SIGKILL
test needs.
"""

from __future__ import annotations

import asyncio
import json
import os

import freedom

TOPIC = os.environ.get("EVENT_TOPIC", "event-sell")


class StoreController:
    runtime: freedom.Runtime

    async def post_sell_goods_by(self, event_id: str) -> str:
        line = json.dumps(
            {
                "event_id": event_id,
                "body": (await self.runtime.request.body()).decode(),
                "retry": self.runtime.request.headers.get("x-retry-count"),
            }
        )
        with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if os.environ.get("HANG_AFTER_RECORD"):
            await asyncio.sleep(3600)
        return "ok"


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(TOPIC, "StoreController.post_sell_goods_by")


app = freedom.Application()
