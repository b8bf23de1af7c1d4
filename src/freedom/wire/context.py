"""The bus: a string-keyed JSON map that travels with a request through every message it causes.

On the wire it is the `x-freedom-bus` header (HTTP and Kafka alike). The header is untrusted
input: any client can send it to any route. :meth:`Bus.from_header` never raises: a value that is
over :data:`MAX_BUS_BYTES`, nested deeper than :data:`MAX_BUS_DEPTH`, not UTF-8, not strict JSON,
or not a JSON object gives an empty bus and one warning on the `freedom.wire.context` logger.

"Strict JSON" means what every JSON parser reads the same way, so the bus that goes on with
`set_runtime` is the bus that came in: no `NaN`/`Infinity`, no number too large for a double
(`1e999`) or with more than :data:`MAX_INT_DIGITS` digits, no duplicate key in an object, no
unpaired UTF-16 surrogate (`"\\ud800"`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any

from freedom.wire.headers import BUS_HEADER

__all__ = ["BUS_HEADER", "Bus", "MAX_BUS_BYTES", "MAX_BUS_DEPTH", "MAX_INT_DIGITS"]
MAX_BUS_BYTES = 8 * 1024
#: Deepest nesting of arrays and objects accepted (the top-level object is depth 1).
MAX_BUS_DEPTH = 32
#: Longest integer accepted, in digits (a 64-bit id has 20).
MAX_INT_DIGITS = 64

log = logging.getLogger("freedom.wire.context")

# A JSON string (skipped), or one bracket. Both alternatives match single, disjoint characters,
# so the scan is linear whatever the input.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class _Malformed(ValueError):
    """The header is not a bus; the message says why (it goes into the warning)."""


def _depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (an upper bound for malformed JSON)."""
    depth = deepest = 0
    for m in _TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_BUS_DEPTH:
                    break  # enough to know
        elif c in "]}":
            depth -= 1
    return deepest


def _constant(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Malformed(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is too large")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Malformed(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:  # parsers differ on which one wins: refuse to guess
            raise _Malformed(f"duplicate key {json.dumps(key[:40])}")
        value[key] = item
    return value


def _parse(raw: bytes) -> dict[str, Any]:
    """The bus in `raw`, or _Malformed saying why not."""
    if len(raw) > MAX_BUS_BYTES:
        raise _Malformed(f"{len(raw)} bytes is over the {MAX_BUS_BYTES}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("not UTF-8") from None
    # Checked before parsing: json's parser recurses once per level (RecursionError at ~1000).
    if _depth(text) > MAX_BUS_DEPTH:
        raise _Malformed(f"nested deeper than {MAX_BUS_DEPTH} levels")
    try:
        value = json.loads(
            text,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
            object_pairs_hook=_object,
        )
    except _Malformed:
        raise
    except (ValueError, RecursionError):
        raise _Malformed("not valid JSON") from None
    if not isinstance(value, dict):
        raise _Malformed("not a JSON object")
    try:  # what set_runtime will send on must be valid UTF-8 and within the limit too
        again = Bus(value).to_header()
    except (ValueError, UnicodeError):  # an unpaired surrogate in a string
        raise _Malformed("a string is not valid Unicode (unpaired surrogate)") from None
    if len(again) > MAX_BUS_BYTES:
        raise _Malformed(
            f"{len(again)} bytes once re-encoded is over the {MAX_BUS_BYTES}-byte limit"
        )
    return value


class Bus(dict[str, Any]):
    """Values the service wants to see again in every handler down the line (tenant, user, ...)."""

    def to_header(self) -> bytes:
        """Compact JSON, UTF-8; ValueError for what JSON cannot hold (NaN, infinity)."""
        return json.dumps(self, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()

    @classmethod
    def from_header(cls, raw: bytes | bytearray | memoryview | str | None) -> Bus:
        """Parse an incoming header; never raises: anything malformed gives an empty bus and one warning.

        A str is taken as text (as `runtime.request.headers` decodes header values) and read as
        UTF-8; bytes must be UTF-8.
        """
        if not raw:
            return cls()
        try:
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogatepass")  # a lone surrogate: "not UTF-8" below
            elif isinstance(raw, (bytearray, memoryview)):
                raw = bytes(raw)
            elif not isinstance(raw, bytes):
                raise _Malformed(f"a value of type {type(raw).__name__}, not bytes or str")
            return cls(_parse(raw))
        except _Malformed as exc:
            log.warning("ignoring %s header: %s", BUS_HEADER, exc)
        except Exception as exc:  # noqa: BLE001 - untrusted input must never fail the request
            log.warning("ignoring %s header: cannot be parsed (%s)", BUS_HEADER, type(exc).__name__)
        return cls()
