"""OpenTelemetry spans of the messaging path, per the messaging conventions (docs/observability.md).

- `send T` (PRODUCER): a record published with `await msg.publish()` (the outbox relay's included),
  and the consumer proxy's produce to a retry or dead-letter topic. Its context is what the
  record's `traceparent` carries.
- `process T` (CONSUMER): one record handled by the consumer proxy (its deliveries to the handler
  and what follows: the produce to the retry or dead-letter topic is a child). Its parent is the
  context the record carries (the `send` span), which it is also linked to; the delivery's
  `traceparent` is the process span's, so the handler's own spans nest under it. A retry, and a
  dead letter replayed to its topic, is linked to the process span of the record's first attempt
  (the `x-freedom-first-attempt` header, written at that attempt). A record without a trace
  context but with a Go freedom service's `TRACE-ID` (tracing.carried_trace) is processed in that
  trace: the parent is a remote stand-in span in it (the Go side has no spans), not linked.

Spans cost nothing unless a tracer provider that records (the OpenTelemetry SDK) is set, with
`opentelemetry.trace.set_tracer_provider` or :func:`set_tracer_provider`, before the service starts.
Without `opentelemetry-api` installed there are no spans at all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from freedom.observability.tracing import TRACEPARENT, carried_trace, parse_traceparent
from freedom.wire.headers import FIRST_ATTEMPT_HEADER

try:  # optional: OpenTelemetry's API (no SDK needed to import)
    from opentelemetry import context as otel_context
    from opentelemetry import propagate as otel_propagate
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import (
        Link,
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        StatusCode,
    )
except ImportError:  # pragma: no cover - without the API there are no spans
    otel_trace = None  # type: ignore[assignment]

__all__ = ["set_tracer_provider", "tracer", "process_span", "send_span", "end_process"]

SYSTEM = "kafka"
_KEY_CHARS = 256  # messaging.kafka.message.key is cut to this many characters

#: How often, at most, the global tracer provider is looked up again while none records: one that
#: is set after the service started is used within this many seconds.
RECHECK_SEC = 1.0

_override: Any = None  # the tracer of set_tracer_provider's provider
_global: Any = None  # the tracer of OpenTelemetry's global provider, once it is one that records
_checked_at = float("-inf")


def set_tracer_provider(provider: Any) -> None:
    """Send freedom's spans to `provider` instead of OpenTelemetry's global one (None: the global
    one again). For tests, and services that keep their providers apart."""
    global _override
    _override = None if provider is None or otel_trace is None else _recording_tracer(provider)


def _recording_tracer(provider: Any) -> Any:
    if isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider)):
        return None
    return provider.get_tracer("freedom")


def tracer() -> Any:
    """The tracer freedom's spans go to, or None when nothing would record them (no SDK). Called
    on every publish: without a provider it costs a clock read (the global provider, which
    OpenTelemetry lets be set only once, is looked up at most every RECHECK_SEC)."""
    global _global, _checked_at
    if _override is not None:
        return _override
    if _global is not None:
        return _global
    if otel_trace is None:
        return None
    now = time.monotonic()
    if now - _checked_at < RECHECK_SEC:
        return None
    _checked_at = now
    _global = _recording_tracer(otel_trace.get_tracer_provider())
    return _global


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _carrier(headers: Sequence[tuple[str, Any]] | Mapping[str, Any]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k.lower(): _text(v) for k, v in items if isinstance(k, str)}


def _span_context(traceparent: str | None) -> Any:
    """The SpanContext of a `traceparent` value, or None."""
    if not traceparent or parse_traceparent(traceparent) is None:
        return None
    ctx = otel_propagate.extract({TRACEPARENT: traceparent})
    sc = otel_trace.get_current_span(ctx).get_span_context()
    return sc if sc.is_valid else None


def _inject(span: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    otel_propagate.inject(carrier, context=otel_trace.set_span_in_context(span))
    return carrier


def _traceparent_of(span: Any) -> str:
    sc = span.get_span_context()
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def _replace(headers: list[tuple[str, Any]], new: Mapping[str, str]) -> list[tuple[str, Any]]:
    """`headers` with the names in `new` replaced by its values (bytes)."""
    names = {k.lower() for k in new}
    return [
        *(h for h in headers if h[0].lower() not in names),
        *((k, v.encode()) for k, v in new.items()),
    ]


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "replace")[:_KEY_CHARS]


# ----------------------------------------------------------------------------- consumer side


def process_span(record: Any, group_id: str) -> tuple[Any, Any] | None:
    """Start the `process T` span of `record` (on the current task), make it current, and put its
    context into the record's headers (the delivery's `traceparent`; `x-freedom-first-attempt`
    when the record has none yet). Returns what :func:`end_process` needs, None without a tracer."""
    tr = tracer()
    if tr is None:
        return None
    headers = list(record.headers() or [])
    carrier = _carrier(headers)
    carried = carried_trace(carrier)
    parent = (
        carried.otel
        if carried is not None and carried.otel is not None
        else otel_propagate.extract(carrier)
    )
    links = []
    created = otel_trace.get_current_span(parent).get_span_context()
    if created.is_valid and not (carried is not None and carried.go):
        links.append(Link(created, {"freedom.link": "creation"}))
    first = _span_context(carrier.get(FIRST_ATTEMPT_HEADER))
    if first is not None:
        links.append(Link(first, {"freedom.link": "first_attempt"}))
    topic = record.topic()
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(record.partition()),
        "messaging.kafka.offset": record.offset(),
        "messaging.consumer.group.name": group_id,
    }
    key = _key_text(record.key())
    if key is not None:
        attributes["messaging.kafka.message.key"] = key
    span = tr.start_span(
        f"process {topic}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=attributes,
    )
    new = _inject(span)
    if first is None:
        new[FIRST_ATTEMPT_HEADER] = _traceparent_of(span)
    set_headers = getattr(
        record, "set_headers", None
    )  # confluent-kafka's records; a stand-in may not have it
    if set_headers is not None:
        set_headers(_replace(headers, new))
    token = otel_context.attach(otel_trace.set_span_in_context(span, parent))
    return span, token


def record_outcome(outcome: str, error_type: str) -> None:
    """Note a delivery's outcome (and its error) on the current `process` span."""
    if otel_trace is None:
        return
    span = otel_trace.get_current_span()
    if not span.is_recording():
        return
    if (
        outcome == "redeliver"
    ):  # retry_count = 0: delivered again in place; a later attempt may succeed
        span.add_event("delivery failed; delivering again", {"error.type": error_type})
        return
    span.set_attribute("freedom.outcome", outcome)
    if error_type:
        span.set_attribute("error.type", error_type)
        span.set_status(StatusCode.ERROR)


def end_process(started: tuple[Any, Any] | None, error: BaseException | None = None) -> None:
    """End a span :func:`process_span` started, and make the previous context current again."""
    if started is None:
        return
    span, token = started
    if error is not None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(StatusCode.ERROR)
    span.end()
    otel_context.detach(token)


# ----------------------------------------------------------------------------- producer side


class _Send:
    """A `send T` span while it runs: its context (to inject), then its end with the outcome."""

    def __init__(self, span: Any) -> None:
        self.span = span
        self.started = time.perf_counter()

    def headers(self) -> dict[str, str]:
        """The trace headers that carry this span's context in the record."""
        return _inject(self.span)

    def end(
        self, error_type: str = "", partition: int | None = None, offset: int | None = None
    ) -> None:
        if partition is not None:
            self.span.set_attribute("messaging.destination.partition.id", str(partition))
        if offset is not None:
            self.span.set_attribute("messaging.kafka.offset", offset)
        if error_type:
            self.span.set_attribute("error.type", error_type)
            self.span.set_status(StatusCode.ERROR)
        self.span.end()


def send_span(
    topic: str,
    key: bytes | str | None,
    headers: Sequence[tuple[str, Any]] | Mapping[str, Any],
    parent: Any = None,
    message_id: str | None = None,
) -> _Send | None:
    """Start a `send T` span, None without a tracer. Its parent: `parent` (an OpenTelemetry
    Context, e.g. the request's), else the current span, else the context `headers` carry (an
    outbox row keeps the raising request's)."""
    tr = tracer()
    if tr is None:
        return None
    if otel_trace.get_current_span().get_span_context().is_valid:
        parent = None  # the current span (the service's instrumentation, or a process span) wins
    elif parent is None or not otel_trace.get_current_span(parent).get_span_context().is_valid:
        parent = otel_propagate.extract(_carrier(headers))
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
    }
    text = _key_text(key.encode() if isinstance(key, str) else key)
    if text is not None:
        attributes["messaging.kafka.message.key"] = text
    if message_id:
        attributes["messaging.message.id"] = message_id
    return _Send(
        tr.start_span(
            f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
        )
    )


def replace_headers(
    headers: list[tuple[str, Any]], new: Mapping[str, str]
) -> list[tuple[str, Any]]:
    """`headers` (a record's list) with the trace headers `new` instead of their old values."""
    return _replace(headers, new)
