"""Publish throughput: 100-byte records/s until every record is acknowledged by the broker.

freedom awaited (`await msg.publish()`, 1,000 in flight) and batched (`producer.publish_batch`),
FastStream's `broker.publish` (1,000 in flight) and `broker.publish_batch`, and a bare
confluent-kafka `produce()` + `flush()` with freedom's producer settings (the ceiling). Each runs in
its own process, into a fresh topic, and publishes one acknowledged warm-up record before its
clock starts (connection set-up is not throughput; see bench/services/publisher.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from ..common import SERVICES, BenchError, Case, Context, Skip, child_env, tail

SCENARIO = "publish"
KINDS = ["bare", "freedom-awaited", "freedom-batch", "faststream-awaited", "faststream-batch"]
NAMES = {
    "bare": "bare produce+flush",
    "freedom-awaited": "freedom awaited x1000",
    "freedom-batch": "freedom publish_batch",
    "faststream-awaited": "faststream awaited x1000",
    "faststream-batch": "faststream publish_batch",
}


def records(ctx: Context, kind: str) -> int:
    if kind in ("bare", "freedom-batch", "faststream-batch"):
        return ctx.size(300_000, 50_000)
    return ctx.size(100_000, 20_000)


def _config(ctx: Context) -> str:
    from freedom.testing import write_config

    conf = write_config(
        ctx.workdir / "publish" / "conf",
        app={"log_level": "WARNING"},
        kafka={
            "producer": {"open": True},
            "producer_clients": [{"servers": [ctx.kafka.bootstrap]}],
        },
    )
    return str(conf)


def _case(kind: str) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        if kind == "freedom-batch":
            from freedom.kafka.producer import Producer

            if not hasattr(Producer, "publish_batch"):
                raise Skip("Producer.publish_batch does not exist yet (issue 4)")
        n = records(ctx, kind)
        topic = ctx.kafka.new_topic("bench-publish")
        log = ctx.workdir / "publish" / f"{kind}-{ctx.run_index}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "BENCH_BOOTSTRAP": ctx.kafka.bootstrap,
            "BENCH_TOPIC": topic,
            "BENCH_CONFIG": _config(ctx),
        }
        with log.open("wb") as err:
            result = subprocess.run(
                [sys.executable, str(SERVICES / "publisher.py"), kind, str(n)],
                cwd=SERVICES,
                env=child_env(env),
                stdout=subprocess.PIPE,
                stderr=err,
                timeout=600,
            )
        if result.returncode != 0:
            raise BenchError(
                f"publisher {kind} failed (rc={result.returncode}); log {log}:\n{tail(log)}"
            )
        out = json.loads(result.stdout.decode().strip().splitlines()[-1])
        return {"records/s": out["n"] / out["seconds"]}

    return run


def cases(ctx: Context) -> list[Case]:
    return [Case(SCENARIO, NAMES[k], _case(k)) for k in KINDS]
