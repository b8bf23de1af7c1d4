"""Scaling (issue 14): `freedom run --workers N` and batch delivery, against the per-record, one-process service.

The same workload for every case: records pre-loaded into a 6-partition topic (shared by the
cases, each reads it with a new group from the earliest offset), the trivial handler, the
concurrent proxy mode; the figure is records/s from the first handled record until the group
committed them all (`measure_throughput`), CPU summed over the service's processes.

- `workers 1` / `workers 2`: per-record delivery, one service process or two (`--workers 2`).
- `batch 100`: batch delivery (`listen_event(..., batch=BatchSettings(max_records=100,
  max_wait_ms=5))`, one request per up to 100 records, a status per record), one process.

Caveat for `workers 2`: the records are there before the service starts, so the first worker
starts on every partition and the group rebalances when the second joins (about a second, inside
the measured time): the full mode's larger count makes that a smaller share than quick mode's.
"""

from __future__ import annotations

from typing import Callable

from ..common import Case, Context, Skip, freedom_service, inprocess_unsupported, measure_throughput, new_group

SCENARIO = "scaling"
TRANSPORTS = ("http1", "inprocess")
PARTITIONS = 6
#: (label, --workers, batch max_records or 0 for per-record delivery)
SHAPES = (("workers 1", 1, 0), ("workers 2", 2, 0), ("batch 100", 1, 100))


def records(ctx: Context, transport: str) -> int:
    return ctx.size(60_000, 10_000) if transport == "inprocess" else ctx.size(30_000, 5_000)


def case_name(transport: str, label: str) -> str:
    return f"freedom-{transport}-conc trivial {label}"


def _case(transport: str, label: str, workers: int, batch: int) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        if transport == "inprocess" and (reason := inprocess_unsupported()):
            raise Skip(reason)
        n = records(ctx, transport)
        topic = ctx.preloaded("scaling", n, PARTITIONS)
        group = new_group("scaling")
        env = {"BENCH_BATCH": str(batch)} if batch else {}
        service = freedom_service(ctx, f"scaling-{transport}-{label.replace(' ', '')}-{ctx.run_index}", topic, group,
                                  handler="trivial", mode="concurrent", expect=n, inprocess=transport == "inprocess",
                                  env=env, workers=workers)
        return measure_throughput(ctx, service, group, topic, n)
    return run


def cases(ctx: Context) -> list[Case]:
    return [Case(SCENARIO, case_name(t, label), _case(t, label, w, b)) for t in TRANSPORTS for label, w, b in SHAPES]
