"""What the consumer proxy reports about its records: metrics, spans and log fields (docs/observability.md).

One :class:`ProxyObserver` per ConsumerProxy. proxy.py calls it at a few points (a delivery
answered, a record forwarded to its retry or dead-letter topic, a log line about a record); the
metrics, the spans and the JSON log fields are defined in freedom.observability.metrics, freedom.observability.spans and
freedom.observability.json_logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from freedom.observability import metrics, spans
from freedom.observability.tracing import record_trace_id

if TYPE_CHECKING:
    from freedom.config.models import ConsumerClientConfig
    from freedom.kafka.consumer.delivery import DeliveryResult
    from freedom.kafka.consumer.plan import BatchHandler, Handler, TopicPlan
    from freedom.kafka.consumer.retry import Copy, Plan


class ProxyObserver:
    """Metrics, spans and log fields of one consumer proxy's records."""

    def __init__(self, config: ConsumerClientConfig) -> None:
        retry_group = config.retry_group_id if config.retry_count > 0 else None
        self.metrics = metrics.DeliveryMetrics(config.group_id, retry_group)
        self.lag_stats: dict[str, metrics.LagStats] = {}

    def consumer_settings(self, group_id: str, settings: dict[str, Any]) -> dict[str, Any]:
        """The librdkafka settings of a group's consumer, with its lag statistics turned on."""
        settings, self.lag_stats[group_id] = metrics.LagStats.settings(settings)
        return settings

    def around(self, handle: Handler, group_id: str) -> Handler:
        """The group's per-record call: `handle` itself, or inside the record's `process` span
        when a tracer records spans (the chain is made once, when the group is made)."""
        return _traced(handle, group_id) if spans.tracer() is not None else handle

    def around_batch(self, handle_batch: BatchHandler) -> BatchHandler | None:
        """The group's per-chunk call for batch topics: `handle_batch`, or None when a tracer
        records spans (each record then goes the per-record way, inside its own `process` span)."""
        return handle_batch if spans.tracer() is None else None

    def delivered(
        self, record: Any, plan: TopicPlan, result: DeliveryResult, step: Plan, seconds: float
    ) -> None:
        """One delivery of `record` took `seconds` and led to `step`."""
        outcome = self.metrics.delivered(record, plan, result, step, seconds)
        if outcome is not None:
            spans.record_outcome(outcome, metrics.error_type(result))

    def forwarded(
        self, record: Any, plan: TopicPlan, kind: str, topic: str, result: DeliveryResult
    ) -> None:
        """The broker acknowledged `record` on its retry or dead-letter `topic`."""
        if kind == "dead-letter":
            self.metrics.dead_lettered(topic, plan, result, record.topic() != plan.source_topic)

    @contextlib.contextmanager
    def sending(self, topic: str, copy: Copy) -> Iterator[None]:
        """Around one produce of the proxy to a retry or dead-letter topic: its `send` span (whose
        context the copy carries), its duration and its count."""
        from freedom.kafka.consumer.retry import ProduceRefused

        send = spans.send_span(topic, copy.key, copy.headers)
        if send is not None:
            copy.headers[:] = spans.replace_headers(copy.headers, send.headers())
        started = time.perf_counter()
        error = ""
        try:
            yield
        except ProduceRefused as exc:
            error = _code_name(exc.code)
            raise
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        finally:
            metrics.observe_send(topic, time.perf_counter() - started, error)
            if error != "cancelled":
                metrics.count_sent_name(topic, error)
            if send is not None:
                send.end(error)

    @staticmethod
    def log_fields(record: Any, outcome: str) -> dict[str, Any]:
        """The fields of a log line about `record` (JSON logs): topic, partition, offset, outcome, and
        trace id (tracing.record_trace_id: `traceparent`, else a Go service's TRACE-ID)."""
        return {
            "topic": record.topic(),
            "partition": record.partition(),
            "offset": record.offset(),
            "outcome": outcome,
            "trace_id": record_trace_id(record.headers()),
        }


def _code_name(code: int) -> str:
    import confluent_kafka

    try:
        return str(confluent_kafka.KafkaError(code).name())
    except Exception:  # noqa: BLE001
        return str(code)


def _traced(handle: Handler, group_id: str) -> Handler:
    """`handle` inside the record's `process` span."""

    async def traced(record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        started = spans.process_span(record, group_id)
        try:
            finished = await handle(record, plan, lost)
        except BaseException as exc:
            spans.end_process(started, exc)
            raise
        if (
            not finished and started is not None
        ):  # the partition went away first: delivered again later
            started[0].set_attribute("freedom.outcome", "abandoned")
        spans.end_process(started)
        return finished

    return traced
