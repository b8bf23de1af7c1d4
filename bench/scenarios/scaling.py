"""Scaling (issue 14): `freedom run --workers N` and batch delivery, against the per-record, one-process service.

The same workload for every case: a new 6-partition topic, the service started on it and its
group settled (every worker a member holding partitions), then the records produced at once (in
a fraction of a second); the trivial handler, the concurrent proxy mode. The figure is records/s
from the first handled record until the group committed them all (`measure_throughput`), CPU
summed over the service's processes. The group settles first so that `workers 2` is not measured
through the rebalance that the second worker's join causes.

- `workers 1` / `workers 2`: per-record delivery, one service process or two (`--workers 2`).
- `batch 100`: batch delivery (`listen_event(..., batch=BatchSettings(max_records=100,
  max_wait_ms=5))`, one request per up to 100 records, a status per record), one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..common import (
    BenchError,
    Case,
    Consumer,
    Context,
    Skip,
    freedom_service,
    inprocess_unsupported,
    measure_throughput,
    new_group,
)

SCENARIO = "scaling"
TRANSPORTS = ("http1", "inprocess")
PARTITIONS = 6
#: (label, --workers, batch max_records or 0 for per-record delivery)
SHAPES = (("workers 1", 1, 0), ("workers 2", 2, 0), ("batch 100", 1, 100))


def records(ctx: Context, transport: str) -> int:
    return ctx.size(60_000, 10_000) if transport == "inprocess" else ctx.size(30_000, 5_000)


def case_name(transport: str, label: str) -> str:
    return f"freedom-{transport}-conc trivial {label}"


def _case(
    transport: str, label: str, workers: int, batch: int
) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        if transport == "inprocess" and (reason := inprocess_unsupported()):
            raise Skip(reason)
        n = records(ctx, transport)
        topic = ctx.kafka.new_topic("bench-scaling", PARTITIONS)
        group = new_group("scaling")
        env = {"BENCH_BATCH": str(batch)} if batch else {}
        service = freedom_service(
            ctx,
            f"scaling-{transport}-{label.replace(' ', '')}-{ctx.run_index}",
            topic,
            group,
            handler="trivial",
            mode="concurrent",
            expect=n,
            inprocess=transport == "inprocess",
            env=env,
            workers=workers,
        )
        settle_then_produce(ctx, service, group, workers, topic, n)
        return measure_throughput(ctx, service, group, topic, n)

    return run


def settle_then_produce(
    ctx: Context, service: Consumer, group: str, members: int, topic: str, n: int
) -> None:
    """Wait for `group` to settle with `members` members (stopping the service if it does not),
    then produce the `n` records at once: the span measured is not a member's join."""
    try:
        settled(ctx, service, group, members)
    except BaseException:
        service.stop()
        raise
    ctx.kafka.preload(topic, n)


def settled(
    ctx: Context, service: Consumer, group: str, members: int, timeout: float = 120.0
) -> None:
    """Wait until `group` has `members` members holding every partition between them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            desc = ctx.kafka.admin.describe_consumer_groups([group])[group].result(10)
            held = [{tp.partition for tp in m.assignment.topic_partitions} for m in desc.members]
            if len(held) == members and all(held) and len(set().union(*held)) == PARTITIONS:
                return
        except Exception:  # noqa: BLE001 - the group may not exist yet
            pass
        service.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"{service.name}: group {group} did not settle with {members} members in {timeout:.0f} s"
            )
        time.sleep(0.2)


def cases(ctx: Context) -> list[Case]:
    return [
        Case(SCENARIO, case_name(t, label), _case(t, label, w, b))
        for t in TRANSPORTS
        for label, w, b in SHAPES
    ]
