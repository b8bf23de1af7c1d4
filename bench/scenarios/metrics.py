"""The hot-path cost of the metrics (issue 13): end-to-end throughput with metrics on and off, side by side.

The same freedom service and workload as `e2e` (trivial handler, concurrent proxy mode,
in-process and HTTP/1.1 delivery), once as it is ("metrics on": one histogram observation and
one counter increment per delivery, one dictionary increment per produced record) and once with
those hooks replaced by no-ops (`BENCH_METRICS=off`, see services/freedom_app.py). Both cases run
in every run, one after the other, so the ratio on/off compares the same machine load.
"""

from __future__ import annotations

from collections.abc import Callable

from ..common import (
    Case,
    Context,
    Skip,
    freedom_service,
    inprocess_unsupported,
    measure_throughput,
    new_group,
)
from . import e2e

SCENARIO = "metrics"
TRANSPORTS = ("inprocess", "http1")


def _case(transport: str, metrics: str) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        if transport == "inprocess" and (reason := inprocess_unsupported()):
            raise Skip(reason)
        n = e2e.records(ctx, f"freedom-{transport}", "trivial", "concurrent")
        topic = ctx.preloaded("e2e", n)
        group = new_group("metrics")
        service = freedom_service(
            ctx,
            f"metrics-{transport}-{metrics}-{ctx.run_index}",
            topic,
            group,
            handler="trivial",
            mode="concurrent",
            expect=n,
            inprocess=transport == "inprocess",
            env={"BENCH_METRICS": metrics},
        )
        return measure_throughput(ctx, service, group, topic, n)

    return run


def case_name(transport: str, metrics: str) -> str:
    return f"freedom-{transport}-conc trivial metrics {metrics}"


def cases(ctx: Context) -> list[Case]:
    return [Case(SCENARIO, case_name(t, m), _case(t, m)) for t in TRANSPORTS for m in ("on", "off")]
