"""Retry path cost: records/s when 10% of the records fail once.

The freedom service runs with `retry_count = 1, retry_interval_sec = 0` (fresh retry and
dead-letter prefixes per run, so no run sees another's retries); its handler answers 500 the
first time it sees a key `k<i>` with `i % 10 == 0`, and succeeds on the retry. The figure is N
over the time from the first success until all N succeeded and the main group committed all N.
Compare with `e2e`'s freedom-http1 trivial figures of the same run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from ..common import Case, Context, Skip, freedom_service, new_group, wait_committed
from . import e2e

SCENARIO = "retry"
FAIL_EVERY = 10


def supported() -> str | None:
    """None when kafka.toml accepts the retry keys (issue 3), else why not."""
    from freedom.config.models import ConsumerClientConfig

    fields = ConsumerClientConfig.model_fields
    if "retry_count" not in fields or "retry_interval_sec" not in fields:
        return "retry topics are not supported by this build (issue 3)"
    return None


def _case(mode: str) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        reason = supported()
        if reason:
            raise Skip(reason)
        n = e2e.records(ctx, "freedom", "trivial", mode)
        topic = ctx.preloaded("e2e", n)
        group = new_group("retry")
        tag = uuid.uuid4().hex[:6]
        retry = {
            "retry_count": 1,
            "retry_interval_sec": 0,
            "retry_group_id": f"{group}-retry",
            "retry_prefix": f"r{tag}-",
            "retry_fail_prefix": f"f{tag}-",
        }
        service = freedom_service(
            ctx,
            f"retry-{mode}-{ctx.run_index}",
            topic,
            group,
            handler="trivial",
            mode=mode,
            expect=n,
            extra=retry,
            env={"BENCH_FAIL_EVERY": str(FAIL_EVERY)},
        )
        try:
            first = service.wait_probe(lambda s: s.get("count", 0) >= 1, 120, "the first record")
            cpu0 = service.cpu_seconds()
            done = service.wait_probe(
                lambda s: bool(s.get("t_last")), 120 + n / 20, f"all {n} records to succeed"
            )
            t_commit = wait_committed(ctx, group, topic, n, 120, service)
            cpu1 = service.cpu_seconds()
            seconds = max(done["t_last"], t_commit) - first["t_first"]
            return {"records/s": n / seconds, "CPU µs/record": (cpu1 - cpu0) / n * 1e6}
        finally:
            service.stop()

    return run


def cases(ctx: Context) -> list[Case]:
    return [
        Case(SCENARIO, f"freedom-http1-{e2e.SHORT_MODE[m]} 10% fail once", _case(m))
        for m in ("sequential", "concurrent")
    ]
