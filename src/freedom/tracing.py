"""Trace ids: read from and written to the W3C `traceparent` header.

A request without a valid `traceparent` starts a new trace. Messages published with a runtime
carry the trace on, so the producer's and the handler's log lines share one trace id.
"""

from __future__ import annotations

import re
import secrets

TRACEPARENT = "traceparent"
_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_trace_id() -> str:
    return secrets.token_hex(16)


def parse_traceparent(value: str | bytes | None) -> str | None:
    """The trace id of a valid `traceparent`, else None."""
    if not value:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    m = _TRACEPARENT_RE.match(value.strip().lower())
    if not m or m.group(1) == "0" * 32:
        return None
    return m.group(1)


def make_traceparent(trace_id: str) -> str:
    """A `traceparent` for a new span (a message send) in the given trace."""
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"
