"""Memory: the consumer's resident set size with a large backlog and a slow handler.

1,000,000 records (quick mode: 100,000) are pre-loaded into one topic; the consumer starts on it
with the 5 ms handler, so nearly all of the backlog stays unprocessed, and its RSS (process and
children, psutil) is sampled every 0.25 s for a while. The figure is the peak; `committed` is how
many records the group had committed by the end (how far into the backlog it got).

The freedom cases: HTTP/1.1 sequential and concurrent, and the direct invoker, concurrent
(`freedom-direct-conc slow`, `[consumer] inprocess_dispatch = "direct"`, issue 19; skipped with the
reason where the measured code does not accept the key): the path that gets furthest into the
backlog, so the most records in flight at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..common import (
    Case,
    Consumer,
    Context,
    Skip,
    dispatch_unsupported,
    freedom_service,
    inprocess_unsupported,
    new_group,
    peer_process,
)

SCENARIO = "memory"


def _sample(
    ctx: Context, consumer: Consumer, group: str, topic: str, seconds: float
) -> dict[str, float]:
    peak = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            consumer.check_alive()
            peak = max(peak, consumer.rss())
            time.sleep(0.25)
        return {"peak RSS MB": peak / 2**20, "committed": float(ctx.kafka.committed(group, topic))}
    finally:
        consumer.stop()
        ctx.kafka.forget(group)


def _case(kind: str, mode: str = "", dispatch: str = "") -> Callable[[Context], dict[str, float]]:
    """`kind` "freedom" (over HTTP/1.1, or in-process with `dispatch`), "faststream"."""

    def run(ctx: Context) -> dict[str, float]:
        if dispatch and (reason := inprocess_unsupported() or dispatch_unsupported()):
            raise Skip(reason)
        backlog = ctx.size(1_000_000, 100_000)
        topic = ctx.preloaded("memory", backlog)
        group = new_group(f"mem-{kind}")
        name = f"memory-{kind}-{dispatch or 'http1'}-{mode}-{ctx.run_index}"
        if kind == "freedom":
            proc = freedom_service(
                ctx,
                name,
                topic,
                group,
                handler="slow",
                mode=mode,
                expect=backlog,
                inprocess=bool(dispatch),
                dispatch=dispatch or "asgi",
            )
        else:
            proc = peer_process(ctx, kind, name, topic, group, handler="slow", expect=backlog)
        return _sample(ctx, proc, group, topic, ctx.size(30, 10))

    return run


def cases(ctx: Context) -> list[Case]:
    return [
        Case(SCENARIO, "freedom-http1-seq slow", _case("freedom", "sequential")),
        Case(SCENARIO, "freedom-http1-conc slow", _case("freedom", "concurrent")),
        Case(SCENARIO, "freedom-direct-conc slow", _case("freedom", "concurrent", "direct")),
        Case(SCENARIO, "faststream slow", _case("faststream")),
    ]
