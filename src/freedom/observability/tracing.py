"""Trace context: read from incoming headers, written into published messages.

The wire format is the W3C `traceparent` header. When `opentelemetry-api` is installed, its
configured propagator does the reading and writing (so `tracestate`, baggage, or another format
set with OTEL_PROPAGATORS travel too), and a span the service's own OpenTelemetry instrumentation
started becomes the parent of the message. Without it, a plain `traceparent` is parsed and written.

A request without a valid trace context starts a new trace. Messages published with a runtime
carry the trace on, so the producer's and the handler's log lines share one trace id.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from freedom.wire.headers import BUS_HEADER

try:  # optional: OpenTelemetry's API (no SDK needed)
    from opentelemetry import context as otel_context
    from opentelemetry import propagate as otel_propagate
    from opentelemetry import trace as otel_trace
except ImportError:  # pragma: no cover - exercised by the plain-header tests via monkeypatch
    otel_trace = None  # type: ignore[assignment]
    otel_propagate = None  # type: ignore[assignment]
    otel_context = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def otel_enabled() -> bool:
    """True when OpenTelemetry's API is importable and used for propagation."""
    return otel_propagate is not None


def new_trace_id() -> str:
    return secrets.token_hex(16)


def _new_span_id() -> str:
    while True:
        span = secrets.token_hex(8)
        if span != "0" * 16:
            return span


def parse_traceparent(value: str | bytes | None) -> str | None:
    """The trace id of a valid `traceparent`, else None."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    m = _TRACEPARENT_RE.match(value.strip().lower())
    if not m or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1)


#: The bus key a Go freedom service keeps its trace id under (`middleware.NewTrace("TRACE-ID")`),
#: compared without regard to case; its value is a UUID's 32 hex digits (dashes are ignored).
GO_TRACE_KEY = "trace-id"
_GO_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_MAX_BUS_BYTES = 8 * 1024  # bus.MAX_BUS_BYTES (bus.py imports nothing of this module's; kept apart)


def go_trace_id(bus: str | bytes | None) -> str | None:
    """The trace id a Go freedom service put in its `x-freedom-bus` header (`{"TRACE-ID": "…"}`), as
    32 lower-case hex digits; None when there is none, or it is not 32 hex digits, or the header is
    not a JSON object. Never raises: the header is untrusted input."""
    if not bus or len(bus) > _MAX_BUS_BYTES:
        return None
    try:
        value = json.loads(bus)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(value, dict):
        return None
    for key, item in value.items():
        if key.lower() == GO_TRACE_KEY and isinstance(item, str):
            text = item.replace("-", "").strip().lower()
            if _GO_TRACE_ID.fullmatch(text) and text != "0" * 32:
                return text
    return None


def make_traceparent(trace_id: str, sampled: bool = True) -> str:
    """A `traceparent` for a new span (a message send) in the given trace."""
    return f"00-{trace_id}-{_new_span_id()}-{'01' if sampled else '00'}"


@dataclass(frozen=True)
class TraceContext:
    """The trace a request belongs to: its id (32 hex), whether it is sampled, and OpenTelemetry's
    context. `go`: the id is a Go freedom service's TRACE-ID, so the context's parent span is a
    stand-in (the Go side has no spans): nothing to link to."""

    trace_id: str
    sampled: bool = True
    otel: Any = None  # the extracted opentelemetry Context, when OpenTelemetry is used
    go: bool = False


Headers = Iterable[tuple[str, "str | bytes | None"]] | Mapping[str, str]


def _carrier(headers: Headers) -> dict[str, str]:
    """Header names in lower case, values as text (bytes as Latin-1, which gives the bytes back);
    of a name given twice, the last value."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {
        k.lower(): v.decode("latin-1") if isinstance(v, bytes) else v
        for k, v in items
        if isinstance(k, str) and v is not None
    }


def _bus_bytes(text: str | None) -> str | bytes | None:
    """The `x-freedom-bus` value as the bytes it came as (the carrier holds it as Latin-1 text)."""
    if text is None:
        return None
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # a str that never was bytes
        return text


def carried_trace(headers: Headers) -> TraceContext | None:
    """The trace `headers` (a record's or a request's) carry; None when they carry none.

    The one rule for a record's trace id (the handler's `runtime.trace_id`, the consumer proxy's
    JSON log fields and its `process` span, `freedom dlq show`): a valid trace context wins (the
    W3C `traceparent`, or what the configured OpenTelemetry propagator reads); else a Go freedom
    service's `TRACE-ID` in `x-freedom-bus` (:func:`go_trace_id`), whose OpenTelemetry context is
    a remote stand-in parent span in that trace; else none. Never raises."""
    carrier = _carrier(headers)
    ctx = None
    if otel_propagate is not None:
        ctx = otel_propagate.extract(carrier)
        span = otel_trace.get_current_span(ctx).get_span_context()
        if span.is_valid:
            return TraceContext(format(span.trace_id, "032x"), bool(span.trace_flags.sampled), ctx)
    else:
        raw = carrier.get(TRACEPARENT)
        trace_id = parse_traceparent(raw)
        if trace_id is not None and raw is not None:
            return TraceContext(trace_id, raw.strip().endswith("01"))
    go = go_trace_id(_bus_bytes(carrier.get(BUS_HEADER)))
    if go is None:
        return None
    if ctx is not None:
        stand_in = otel_trace.SpanContext(
            trace_id=int(go, 16),
            span_id=int(_new_span_id(), 16),
            is_remote=True,
            trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
        )
        ctx = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(stand_in), ctx)
    return TraceContext(go, True, ctx, go=True)


def record_trace_id(headers: Headers | None) -> str | None:
    """The trace id a record's headers carry (:func:`carried_trace`), None when none."""
    trace = carried_trace(headers or ())
    return trace.trace_id if trace is not None else None


def extract_trace(headers: Headers) -> TraceContext:
    """The trace context of incoming headers (HTTP request or delivered record); a new trace if none.

    What the headers carry (:func:`carried_trace`: `traceparent`, else a Go freedom service's
    TRACE-ID, so that the Go and the Python log lines of one request share it); else a span the
    service's own OpenTelemetry instrumentation started; else a new trace."""
    carried = carried_trace(headers)
    if carried is not None:
        return carried
    if otel_propagate is not None:
        ctx = otel_context.get_current()
        span = otel_trace.get_current_span(ctx).get_span_context()
        if span.is_valid:
            return TraceContext(format(span.trace_id, "032x"), bool(span.trace_flags.sampled), ctx)
        return TraceContext(new_trace_id(), True, ctx)
    return TraceContext(new_trace_id())


def inject_trace(trace: TraceContext) -> dict[str, str]:
    """Headers that continue `trace` in a published message (a new span id, the same trace id)."""
    if otel_propagate is None:
        return {TRACEPARENT: make_traceparent(trace.trace_id, trace.sampled)}
    current = otel_context.get_current()
    span = otel_trace.get_current_span(current).get_span_context()
    if span.is_valid and format(span.trace_id, "032x") == trace.trace_id:
        ctx = current  # a span the service's instrumentation started in this trace is the parent
    else:
        parent = (
            otel_trace.get_current_span(trace.otel).get_span_context()
            if trace.otel is not None
            else None
        )
        span_context = otel_trace.SpanContext(
            trace_id=int(trace.trace_id, 16),
            span_id=int(_new_span_id(), 16),
            is_remote=False,
            trace_flags=otel_trace.TraceFlags(
                otel_trace.TraceFlags.SAMPLED if trace.sampled else 0
            ),
            trace_state=parent.trace_state if parent is not None and parent.is_valid else None,
        )
        ctx = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(span_context), trace.otel)
    carrier: dict[str, str] = {}
    otel_propagate.inject(carrier, context=ctx)
    if TRACEPARENT not in carrier:  # a propagator without W3C trace context: keep ours too
        carrier[TRACEPARENT] = make_traceparent(trace.trace_id, trace.sampled)
    return carrier
