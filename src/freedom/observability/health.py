"""Health of a running service: what `/livez` and `/readyz` answer (docs/observability.md).

Live (`/livez`): every consumer group's consumer thread began a round (group.py `_round`: fetch,
pause/resume, commit) and the event loop ran its tick within app.toml's `liveness_timeout_sec`
(default 60 s). An idle consumer thread still rounds every 0.2 s and the tick comes every
second, so silence means a stuck thread or a blocked loop: a consumer that stopped listening
must not look healthy. (A rebalance may hold the consumer thread for `drain_timeout_sec` + 5 s,
and pinning new partitions up to 20 s: keep the timeout above that.)

Ready (`/readyz`): the application has started (its start-up code included), every consumer group
got its partition assignment and its consumer has a broker connection up, the consumer proxies
found the service accepting deliveries, and every producer client reaches its cluster (a metadata
request answered within 2 s, checked at most every 10 s).

A consumer group's connections are read from librdkafka's statistics (metrics.LagStats, every
`statistics.interval.ms`, 5 s by default, on the consumer thread: no request of its own): once they
have shown no broker connection up for CONSUMER_UNREACHABLE_SEC, the group's cluster counts as
unreachable, so /readyz turns 503 within the statistics interval plus CONSUMER_UNREACHABLE_SEC
(15 s by default) of a broker outage, and 200 again at the first statistics after librdkafka
reconnected. A consumer-only service (no producer client) has no other view of its cluster.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

__all__ = ["LoopTick", "consumer_problems", "liveness", "readiness", "TICK_SEC"]

#: How often the event loop's tick runs.
TICK_SEC = 1.0
#: How long a producer client's answered metadata request counts as "reaches its cluster".
PRODUCER_CHECK_TTL_SEC = 10.0
PRODUCER_CHECK_TIMEOUT_SEC = 2.0
#: How long a consumer group's statistics must show no broker connection up before /readyz says
#: its cluster is unreachable (a broker restart that another broker covers within that time, or a
#: single reconnect, does not flap the probe).
CONSUMER_UNREACHABLE_SEC = 10.0


class LoopTick:
    """A task noting, every TICK_SEC, that the event loop runs."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self.last = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="freedom-loop-tick"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(TICK_SEC)


def _groups(app: Any) -> list[Any]:
    kafka = getattr(app, "kafka", None)
    return [g for proxy in list(getattr(kafka, "proxies", None) or ()) for g in proxy.groups]


def liveness(app: Any, tick: LoopTick, timeout: float) -> list[str]:
    """What makes the service not live: one line per stalled part (empty: live)."""
    now = time.monotonic()
    problems = []
    for group in _groups(app):
        alive = group.source.alive()
        if alive is None:
            continue  # not started yet, stopping, or a source without a fetch thread
        if not alive:
            problems.append(f"consumer group {group.group_id!r}: its consumer thread has ended")
            continue
        silent = now - group.last_round
        if silent > timeout:
            problems.append(
                f"consumer group {group.group_id!r}: the consumer thread made no progress "
                f"for {silent:.1f} s (liveness_timeout_sec = {timeout:g})"
            )
    if tick.running and now - tick.last > timeout:
        problems.append(
            f"the event loop ran no tick for {now - tick.last:.1f} s "
            f"(liveness_timeout_sec = {timeout:g})"
        )
    return problems


class ProducerCheck:
    """Whether each producer client reaches its cluster, asked at most every PRODUCER_CHECK_TTL_SEC."""

    def __init__(self) -> None:
        self._answers: dict[int, tuple[float, str | None]] = {}

    async def problems(self, producer: Any) -> list[str]:
        out = []
        for name in producer.client_names:
            client = producer.client(name)
            inner = getattr(client, "_producer", None)
            if inner is None or not hasattr(inner, "list_topics"):
                continue  # a stand-in without a cluster (freedom.testing.TestBroker)
            at, problem = self._answers.get(id(client), (0.0, None))
            if time.monotonic() - at > PRODUCER_CHECK_TTL_SEC:
                problem = await asyncio.to_thread(_metadata_problem, inner, client.label)
                self._answers[id(client)] = (time.monotonic(), problem)
            if problem:
                out.append(problem)
        return out


def _metadata_problem(producer: Any, label: str) -> str | None:
    try:
        producer.list_topics(timeout=PRODUCER_CHECK_TIMEOUT_SEC)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure: not reachable
        text = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        return f"producer client {label}: no answer from the cluster within {PRODUCER_CHECK_TIMEOUT_SEC:g} s ({text})"


def consumer_problems(proxies: Any) -> list[str]:
    """The consumer groups of `proxies` whose consumer has had no broker connection up for
    CONSUMER_UNREACHABLE_SEC, per librdkafka's statistics (one line each)."""
    now = time.monotonic()
    out = []
    for proxy in list(proxies):
        stats_of = getattr(getattr(proxy, "observer", None), "lag_stats", None) or {}
        for group in proxy.groups:
            since = getattr(stats_of.get(group.group_id), "down_since", None)
            if since is not None and now - since >= CONSUMER_UNREACHABLE_SEC:
                out.append(
                    f"consumer group {group.group_id!r}: no broker of its cluster reachable "
                    f"(no connection up for {now - since:.0f} s)"
                )
    return out


async def readiness(app: Any, producers: ProducerCheck) -> list[str]:
    """What keeps the service from being ready: one line per part (empty: ready)."""
    kafka = getattr(app, "kafka", None)
    if not getattr(app, "_started", False):
        return ["the application has not started"]
    if kafka is None:
        return []
    problems = []
    if not kafka.app_started.is_set():
        problems.append("the application's start-up code has not finished")
    for proxy in list(kafka.proxies):
        for group in proxy.groups:
            if not group.assigned.is_set():
                problems.append(f"consumer group {group.group_id!r}: no partition assignment yet")
        if not proxy._service_up.is_set():
            problems.append(
                f"consumer group {proxy.config.group_id!r}: the service does not accept deliveries yet"
            )
    problems += consumer_problems(kafka.proxies)
    if kafka.config.producer.open:
        problems += await producers.problems(kafka.producer)
    return problems
