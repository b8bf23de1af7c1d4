"""A batch-delivery service run as a real subprocess by test_batch's SIGKILL test
(`freedom run batch_service:app`).

The batch handler of $EVENT_TOPIC appends one JSON line per record ({"key", "offset", "pid"}) to
$RECORD_FILE with one `os.write` on an O_APPEND descriptor; with $HANG_AFTER_RECORD set it then
never answers, so its records are received but never committed.
"""

from __future__ import annotations

import asyncio
import json
import os

import freedom

TOPIC = os.environ.get("EVENT_TOPIC", "event-sell")
_fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


class BatchController:
    async def post_batch(self, batch: freedom.Batch) -> dict[str, object]:
        lines = "".join(
            json.dumps({"key": (r.key or b"").decode(), "offset": r.offset, "pid": os.getpid()})
            + "\n"
            for r in batch.records
        )
        os.write(_fd, lines.encode())
        if os.environ.get("HANG_AFTER_RECORD"):
            await asyncio.sleep(3600)
        return batch.answer()


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/store", BatchController)
    initiator.listen_event(
        TOPIC,
        "BatchController.post_batch",
        batch=freedom.BatchSettings(max_records=10, max_wait_ms=50),
    )


app = freedom.Application()
