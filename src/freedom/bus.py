"""The bus: a string-keyed JSON map that travels with a request through every message it causes.

On the wire it is the `x-freedom-bus` header (HTTP and Kafka alike). The header is untrusted
input: it is size-limited, and a malformed value is ignored with a warning, never an error.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .headers import BUS_HEADER

__all__ = ["BUS_HEADER", "Bus", "MAX_BUS_BYTES"]
MAX_BUS_BYTES = 8 * 1024

log = logging.getLogger("freedom.bus")


class Bus(dict[str, Any]):
    """Values the service wants to see again in every handler down the line (tenant, user, ...)."""

    def to_header(self) -> bytes:
        return json.dumps(self, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_header(cls, raw: bytes | str | None) -> "Bus":
        """Parse an incoming header; anything oversized or malformed gives an empty bus and a warning."""
        if not raw:
            return cls()
        if isinstance(raw, str):
            raw = raw.encode("latin-1", "replace")
        if len(raw) > MAX_BUS_BYTES:
            log.warning("ignoring %s header: %d bytes is over the %d-byte limit", BUS_HEADER, len(raw), MAX_BUS_BYTES)
            return cls()
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring %s header: not valid JSON", BUS_HEADER)
            return cls()
        if not isinstance(value, dict):
            log.warning("ignoring %s header: not a JSON object", BUS_HEADER)
            return cls()
        return cls(value)
