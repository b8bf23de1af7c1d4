"""Share groups (issue 23): three instances of a service in one share group against one instance
alone, on a one-partition topic, a 20 ms handler, `max_in_flight` 20 each (one instance's ceiling:
1000 records/s), 3,000 records (quick mode: 1,000). The figure is records/s from the first
handler call to the last one's end; the goal is three instances at least 2x one (the ratio).
The cases run bench/share_groups.py's `run_case` on the session's broker, which has share groups
on with the tests' timing (tests/kafka/broker.py); `python -m bench.share_groups` runs them alone.
"""

from __future__ import annotations

import argparse

from ..common import Case, Context

SCENARIO = "share"
ONE, THREE = "freedom share group 1 instance", "freedom share group 3 instances"


def _case(n: int) -> object:
    def run(ctx: Context) -> dict[str, float]:
        from ..share_groups import run_case

        args = argparse.Namespace(
            records=ctx.size(3000, 1000), handler_ms=20, max_in_flight=20, batch=0
        )
        work = ctx.workdir / f"share-{n}-{ctx.run_index}"
        result = run_case(ctx.kafka.bootstrap, n, args, work)
        smallest = min(result["spread"].values()) / args.records
        return {"records/s": result["rate"], "smallest share %": smallest * 100}

    return run


def cases(ctx: Context) -> list[Case]:
    return [Case(SCENARIO, ONE, _case(1)), Case(SCENARIO, THREE, _case(3))]  # type: ignore[arg-type]
