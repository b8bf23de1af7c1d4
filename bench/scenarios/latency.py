"""Latency at a fixed offered rate: p50/p99 from publish to the handler, at half the maximum rate.

The consumer starts on a fresh topic and is warmed up (records marked `warm` until one is
handled); then records carrying their publish time are produced at rate R for a few seconds, and
the handler computes `now - t`. R is half of the median throughput measured for the same consumer
and handler in this session (the `e2e` scenario runs first within each run); without it, a fixed
200 records/s.

The freedom cases are e2e's (`e2e.FREEDOM`): HTTP/1.1, h2c, the in-process ASGI call and, concurrent,
the direct invoker (`freedom-direct-conc`, `[consumer] inprocess_dispatch = "direct"`; skipped with
the reason where the measured code does not accept the key), each with the trivial and the 5 ms
handler.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import confluent_kafka

from ..common import (
    PAD,
    BenchError,
    Case,
    Consumer,
    Context,
    Skip,
    check_delivery_path,
    dispatch_unsupported,
    freedom_service,
    inprocess_unsupported,
    new_group,
    peer_process,
    percentile,
)
from . import e2e

SCENARIO = "latency"
DEFAULT_RATE = 200.0
MAX_RATE = 20_000.0  # the harness's own producer (Python, same 2 cores) cannot pace much faster


def offered_rate(ctx: Context, e2e_case: str) -> float:
    best = ctx.median(e2e.SCENARIO, e2e_case, "records/s")
    return min(best / 2, MAX_RATE) if best else DEFAULT_RATE


def publish_at_rate(bootstrap: str, topic: str, rate: float, n: int) -> float:
    """Produce `n` timestamped records at `rate` per second; returns the achieved rate."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            producer.produce(
                topic, json.dumps({"t": time.time(), "pad": PAD}).encode(), key=f"k{sent}".encode()
            )
            sent += 1
        producer.poll(0)
        time.sleep(0.0005)
    achieved = n / (time.perf_counter() - t0)
    producer.flush(30)
    return achieved


def warm_up(bootstrap: str, topic: str, consumer: Consumer, timeout: float = 120.0) -> None:
    """Send warm-up records until the consumer has handled one (it joined its group and serves)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    deadline = time.monotonic() + timeout
    while True:
        producer.produce(topic, json.dumps({"warm": 1}).encode())
        producer.flush(5)
        try:
            consumer.wait_probe(lambda s: s.get("warm", 0) >= 1, 0.5, "warm-up")
            return
        except BenchError:  # not yet (or the consumer died: check_alive raises that at once)
            consumer.check_alive()
            if time.monotonic() > deadline:
                raise


def _measure(
    ctx: Context,
    consumer: Consumer,
    topic: str,
    rate: float,
    n: int,
    *,
    http2: bool = False,
    dispatch: str = "",
) -> dict[str, float]:
    try:
        try:
            warm_up(ctx.kafka.bootstrap, topic, consumer, timeout=20 if http2 else 120)
        except BenchError as exc:
            if (
                not http2 or consumer.proc.poll() is not None
            ):  # a dead service is a failure, not a skip
                raise
            reason = e2e.http2_unsupported(f"http://127.0.0.1:{consumer.port}")
            raise Skip(reason or f"no delivery over HTTP/2 within 20 s: {exc}") from None
        achieved = publish_at_rate(ctx.kafka.bootstrap, topic, rate, n)
        state = consumer.wait_probe(
            lambda s: s.get("count", 0) >= n and s.get("t_last"), 60 + n / 50, f"{n} timed records"
        )
        if dispatch:
            check_delivery_path(consumer, state, dispatch)
        lat = [x * 1000 for x in state["latencies"]]
        return {"offered/s": achieved, "p50 ms": percentile(lat, 50), "p99 ms": percentile(lat, 99)}
    finally:
        consumer.stop()


def _case(
    consumer_kind: str, handler: str, transport: str = "", mode: str = ""
) -> Callable[[Context], dict[str, float]]:
    e2e_case = e2e.case_name(
        f"freedom-{transport}" if consumer_kind == "freedom" else consumer_kind,
        handler,
        mode or None,
    )

    def run(ctx: Context) -> dict[str, float]:
        if ("e2e", e2e_case) in ctx.skipped:
            raise Skip(ctx.skipped[("e2e", e2e_case)])
        rate = offered_rate(ctx, e2e_case)
        n = max(50, int(rate * ctx.size(8, 3)))
        topic = ctx.kafka.new_topic("bench-latency")
        group = new_group(consumer_kind)
        name = f"latency-{e2e_case.replace(' ', '-')}-{ctx.run_index}"
        if consumer_kind == "freedom":
            if transport in e2e.IN_PROCESS and (reason := inprocess_unsupported()):
                raise Skip(reason)
            if transport == "direct" and (reason := dispatch_unsupported()):
                raise Skip(reason)
            proc = freedom_service(
                ctx,
                name,
                topic,
                group,
                handler=handler,
                mode=mode,
                expect=n,
                http2=transport == "http2",
                inprocess=transport in e2e.IN_PROCESS,
                dispatch=e2e.IN_PROCESS.get(transport, "asgi"),
            )
        else:
            proc = peer_process(ctx, consumer_kind, name, topic, group, handler=handler, expect=n)
        return _measure(
            ctx,
            proc,
            topic,
            rate,
            n,
            http2=transport == "http2",
            dispatch=e2e.IN_PROCESS.get(transport, ""),
        )

    return run


def cases(ctx: Context) -> list[Case]:
    out = [Case(SCENARIO, e2e.case_name("bare", "trivial"), _case("bare", "trivial"), order=1)]
    for handler in e2e.HANDLERS:
        out.append(
            Case(
                SCENARIO,
                e2e.case_name("faststream", handler),
                _case("faststream", handler),
                order=1,
            )
        )
        for transport, mode in e2e.FREEDOM:
            out.append(
                Case(
                    SCENARIO,
                    e2e.case_name(f"freedom-{transport}", handler, mode),
                    _case("freedom", handler, transport, mode),
                    order=1,
                )
            )
    return out
