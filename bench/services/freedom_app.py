"""The freedom service under benchmark, run as `freedom run freedom_app:app --config DIR` from this folder.

One controller route bound to `$BENCH_TOPIC`. The handler is the trivial JSON one (parse the body,
answer `{"ok": true}`), or with `BENCH_HANDLER=slow` it also awaits 5 ms (`BENCH_SLOW_MS=50`: 50 ms,
the go scenario). With `BENCH_FAIL_EVERY=k` a record whose key is `k<i>` with `i % k == 0` answers
500 the first time its key is seen (the retry-path scenario); the retry delivery then succeeds.
With `BENCH_BATCH=n` the topic is bound with batch delivery (up to n records per request; the
scaling scenario): the handler parses each record and answers ok for all.

The Kafka side's start-up line saying which path deliveries take (`consumer deliveries: ...`,
logged at INFO, below the service's WARNING) is caught and put in the probe file as
`delivery_path`, so the harness can check that a `freedom-direct-*` case took the direct invoker
(`common.check_delivery_path`).
"""

from __future__ import annotations

import asyncio
import os

from bench_probe import PROBE
from fastapi import HTTPException

import freedom

TOPIC = os.environ["BENCH_TOPIC"]
SLOW = os.environ.get("BENCH_HANDLER", "trivial") == "slow"
SLOW_SECONDS = (
    int(os.environ.get("BENCH_SLOW_MS", "5") or 5) / 1000
)  # the slow handler's wait (go scenario: 50)
FAIL_EVERY = int(os.environ.get("BENCH_FAIL_EVERY", "0") or 0)
BATCH = int(os.environ.get("BENCH_BATCH", "0") or 0)
_seen: set[str] = set()

if (
    os.environ.get("BENCH_METRICS") == "off"
):  # the metrics scenario's baseline: the hot-path hooks as no-ops
    from freedom.kafka.consumer import observer

    try:  # where a delivery report counts the record (freedom.kafka.producer before issue 22)
        from freedom.kafka.producing import delivery as reporting
    except ImportError:
        from freedom.kafka import producer as reporting  # type: ignore[no-redef]

    observer.ProxyObserver.delivered = lambda *args, **kwargs: None  # type: ignore[method-assign]
    reporting.count_sent = lambda *args: None  # type: ignore[assignment]


def _catch_delivery_path() -> None:
    """Wrap `freedom.kafka.service.delivery_path` (where it exists) to keep the line it gives."""
    try:
        from freedom.kafka import service
    except ImportError:
        return
    original = getattr(service, "delivery_path", None)
    if original is None:
        return

    def delivery_path(*args: object, **kwargs: object) -> str:
        line = original(*args, **kwargs)
        PROBE.delivery_path = str(line)
        return line

    service.delivery_path = delivery_path  # type: ignore[assignment]


_catch_delivery_path()


def _fails_first_time(key: str) -> bool:
    if not FAIL_EVERY or key in _seen:
        return False
    digits = key.lstrip("k")
    if digits.isdigit() and int(digits) % FAIL_EVERY == 0:
        _seen.add(key)
        return True
    return False


class BenchController:
    runtime: freedom.Runtime

    async def post_event_by(self, event_id: str) -> dict[str, bool]:
        data = await self.runtime.request.json()
        if SLOW:
            await asyncio.sleep(SLOW_SECONDS)
        if _fails_first_time(event_id):
            raise HTTPException(status_code=500, detail="benchmark: fails once")
        PROBE.hit(data)
        return {"ok": True}

    async def post_batch(self, batch: freedom.Batch) -> dict[str, object]:
        for record in batch.records:
            PROBE.hit(record.load())
        return batch.answer()


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/bench", BenchController)
    if BATCH:
        initiator.listen_event(
            TOPIC,
            "BenchController.post_batch",
            batch=freedom.BatchSettings(max_records=BATCH, max_wait_ms=5),
        )
    else:
        initiator.listen_event(TOPIC, "BenchController.post_event_by")


app = freedom.Application()
