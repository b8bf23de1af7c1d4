"""The per-call CPU cost of the metrics hooks (issue 13), in this process: `python -m bench.hook_cost`.

What a delivery pays with the metrics on (two perf_counter calls and `ProxyObserver.delivered`: one
histogram observation), and what a produced record pays (`metrics.count_sent`: a dictionary
increment). The end-to-end scenario `metrics` measures the same side by side on Kafka; on a
shared machine its noise is larger than these costs.
"""

from __future__ import annotations

import time
import timeit

from freedom.config.models import ConsumerClientConfig
from freedom.kafka.consumer.delivery import DeliveryResult, EventRoute
from freedom.kafka.consumer.group import TopicPlan
from freedom.kafka.consumer.observer import ProxyObserver
from freedom.kafka.consumer.retry import Plan
from freedom.observability import metrics


class _Record:
    def topic(self) -> str:
        return "orders"

    def partition(self) -> int:
        return 3


def main(n: int = 300_000) -> None:
    observer = ProxyObserver(ConsumerClientConfig(servers=("127.0.0.1:9092",), group_id="bench"))
    plan = TopicPlan(route=EventRoute("orders", "/orders/{id}", "id"), source_topic="orders")
    record, ok, done = _Record(), DeliveryResult(status=200), Plan("done")

    def delivery() -> None:
        started = time.perf_counter()
        observer.delivered(record, plan, ok, done, time.perf_counter() - started)

    per_delivery = min(timeit.repeat(delivery, number=n, repeat=5)) / n * 1e6
    per_record = (
        min(timeit.repeat(lambda: metrics.count_sent("orders", None), number=n, repeat=5)) / n * 1e6
    )
    print(
        f"per delivery: {per_delivery:.2f} µs; per produced record: {per_record:.2f} µs (best of 5 x {n:,})"
    )


if __name__ == "__main__":
    main()
