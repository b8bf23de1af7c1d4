"""FastAPI's own OpenTelemetry check, made cheap: looked up at most once a second while it is off.

FastAPI (0.16x) asks on every request whether its native telemetry is on
(`NativeTelemetry.enabled`): it looks up OpenTelemetry's global tracer, meter and logger providers,
which reads environment variables each time while none is set. Measured: 4.7 µs per request, about
2.5% of an in-process delivery's CPU and of the publish route's (py-spy, `python -m bench.ab
--profile`). This keeps FastAPI's answer, looked up again at most every :data:`RECHECK_SEC` while
it is "off" (a provider set after start-up is used within that time, as freedom's own spans do,
freedom/observability/spans.py) and kept for good once it is "on" (OpenTelemetry lets a global provider be set
only once). When FastAPI has no such check (another version), nothing changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: How often, at most, FastAPI's telemetry check runs again while it said "off".
RECHECK_SEC = 1.0


def cache_telemetry_check(api: Any) -> None:
    """Replace `api`'s per-request telemetry check with one that asks FastAPI at most every RECHECK_SEC."""
    native = getattr(api, "_native_telemetry", None)
    check: Callable[[], bool] | None = getattr(native, "enabled", None)
    if native is None or not callable(check):
        return
    on = False
    checked_at = float("-inf")

    def enabled() -> bool:
        nonlocal on, checked_at
        if on:
            return True
        now = time.monotonic()
        if now - checked_at < RECHECK_SEC:
            return False
        checked_at = now
        on = bool(check())
        return on

    native.enabled = enabled
