"""Publish throughput, one kind per process: `python publisher.py KIND N` with `$BENCH_BOOTSTRAP`,
`$BENCH_TOPIC`, `$BENCH_CONFIG` (a freedom config dir with the producer open). Prints one JSON line:
`{"n": N, "seconds": S}`, S from the first publish to the last acknowledgement.

Kinds:
- `freedom-awaited`: `await msg.publish()`, 1,000 in flight (1,000 workers over a shared counter);
- `freedom-batch`: `await producer.publish_batch(msgs)`, batches of 10,000 one after the other;
- `faststream-awaited` / `faststream-batch`: the same with FastStream's confluent broker (its
  `publish_batch` fails with librdkafka's "queue full" when more than ~100,000 records are queued
  at once, hence one batch at a time for both);
- `bare`: confluent-kafka `produce()` with a delivery callback, then `flush()` (the ceiling).
Every kind sends 100-byte values and waits for the broker's acknowledgement of every record.
Every kind first publishes one record and waits for its acknowledgement, outside the measured
time: connecting, fetching metadata and getting the idempotent producer id take ~0.3-0.5 s, which
is set-up, not throughput (it used to be most of the bare loop's time in quick mode). The bare
producer uses freedom's producer defaults (acks, idempotence, linger, compression), so the two
differ only by the framework.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import confluent_kafka

VALUE = b'{"pad":"' + b"x" * 90 + b'"}'
assert len(VALUE) == 100
IN_FLIGHT = 1000
BATCH = 10_000


async def _workers(n: int, one: Callable[[], Awaitable[Any]]) -> None:
    left = [n]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(min(IN_FLIGHT, n))))


async def freedom_kind(kind: str, n: int, topic: str) -> float:
    import freedom

    app = freedom.Application(config_dir=os.environ["BENCH_CONFIG"], prepare=[])
    await app.start()
    try:
        producer = app.producer
        await producer.new_msg(topic, VALUE).publish()  # warm-up: connected, metadata, producer id
        t0 = time.perf_counter()
        if kind == "freedom-awaited":
            await _workers(n, lambda: producer.new_msg(topic, VALUE).publish())
        else:
            for i in range(0, n, BATCH):
                result = await producer.publish_batch(
                    [producer.new_msg(topic, VALUE) for _ in range(min(BATCH, n - i))]
                )
                result.raise_for_failures()
        return time.perf_counter() - t0
    finally:
        await app.stop()


async def faststream_kind(kind: str, n: int, topic: str) -> float:
    import logging

    from faststream.confluent import KafkaBroker

    broker = KafkaBroker(os.environ["BENCH_BOOTSTRAP"], logger=None, log_level=logging.WARNING)
    await broker.start()
    try:
        await broker.publish(VALUE, topic)  # warm-up: connected, metadata
        t0 = time.perf_counter()
        if kind == "faststream-awaited":
            await _workers(n, lambda: broker.publish(VALUE, topic))
        else:
            for i in range(0, n, BATCH):
                await broker.publish_batch(*([VALUE] * min(BATCH, n - i)), topic=topic)
        return time.perf_counter() - t0
    finally:
        await broker.stop()


def bare_kind(n: int, topic: str) -> float:
    try:  # the measured freedom's defaults (acks=all, idempotence, linger, compression): same settings
        from freedom.config.librdkafka import PRODUCER_DEFAULTS as settings
    except ImportError:
        settings = {"enable.idempotence": True, "acks": "all", "linger.ms": 5}
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": os.environ["BENCH_BOOTSTRAP"], **settings}
    )
    producer.produce(topic, VALUE)  # warm-up: connected, metadata, producer id
    if producer.flush(30):
        raise SystemExit("bare producer: the warm-up record was not acknowledged within 30 s")
    acked = [0]
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            acked[0] += 1
        else:
            errors.append(err.str())

    t0 = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                producer.produce(topic, VALUE, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    seconds = time.perf_counter() - t0
    if errors or acked[0] != n:
        raise SystemExit(f"bare producer: {acked[0]} of {n} acknowledged; errors: {errors[:3]}")
    return seconds


def main() -> None:
    kind, n = sys.argv[1], int(sys.argv[2])
    topic = os.environ["BENCH_TOPIC"]
    if kind == "bare":
        seconds = bare_kind(n, topic)
    elif kind.startswith("freedom-"):
        seconds = asyncio.run(freedom_kind(kind, n, topic))
    elif kind.startswith("faststream-"):
        seconds = asyncio.run(faststream_kind(kind, n, topic))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps({"n": n, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
