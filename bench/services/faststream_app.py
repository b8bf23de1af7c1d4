"""The FastStream peer: the same trivial (or 5 ms) JSON handler, confluent backend, committing after
processing (`AckPolicy.ACK`: the offset is committed once the handler returned).

Run as `python faststream_app.py` with `$BENCH_BOOTSTRAP`, `$BENCH_TOPIC`, `$BENCH_GROUP`; stops on SIGTERM.
Per-message logging is off (WARNING), as it is for the freedom service, so neither pays for log lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from bench_probe import PROBE
from faststream import AckPolicy, FastStream
from faststream.confluent import KafkaBroker

SLOW = os.environ.get("BENCH_HANDLER", "trivial") == "slow"

broker = KafkaBroker(os.environ["BENCH_BOOTSTRAP"], logger=None, log_level=logging.WARNING)


@broker.subscriber(
    os.environ["BENCH_TOPIC"],
    group_id=os.environ["BENCH_GROUP"],
    auto_offset_reset="earliest",
    ack_policy=AckPolicy.ACK,
    session_timeout_ms=6000,
)
async def handle(body: dict[str, Any]) -> None:
    if SLOW:
        await asyncio.sleep(0.005)
    PROBE.hit(body)


app = FastStream(broker, logger=None)

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(app.run())
