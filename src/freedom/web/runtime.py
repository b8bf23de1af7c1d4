"""`Runtime`: what a handler knows about the request it serves.

It holds the request, a logger bound to the request's trace id, the propagated bus and a
request-scoped store. The bus comes from the `x-freedom-bus` header (untrusted: size-limited,
malformed values ignored with a warning, see bus.py) and the trace from `traceparent` (through
OpenTelemetry's propagator when it is installed, see tracing.py); `msg.set_runtime(runtime)`
carries both on into the messages the handler publishes. Controllers get it injected into an attribute annotated `freedom.Runtime`;
plain FastAPI routes ask for it with `runtime: freedom.RuntimeDep`.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from functools import cached_property
from typing import Annotated, Any

from fastapi import Depends
from starlette.datastructures import Headers
from starlette.requests import Request as _StarletteRequest

from freedom.observability.tracing import TraceContext, extract_trace
from freedom.wire.context import BUS_HEADER, Bus
from freedom.wire.encoding import ENCODED_HEADER, KEY_HEADER, decode_headers, key_of
from freedom.wire.headers import BODY_EXTENSION, MESSAGE_KEY_HEADER

_ENCODED_RAW = ENCODED_HEADER.encode()
_KEY_RAW = KEY_HEADER.encode()
_MESSAGE_KEY_RAW = MESSAGE_KEY_HEADER.encode()


def decode_header(raw: bytes) -> str:
    """A header value as text: UTF-8, or latin-1 when it is not valid UTF-8 (any bytes decode)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class Utf8Headers(Headers):
    """Request headers as the record had them: freedom's wire encoding undone, values decoded as
    UTF-8 (falling back to latin-1).

    Kafka header values are bytes, usually UTF-8 (the seed sends `x-action: 购买`). Those HTTP
    cannot carry as they are (control bytes, non-UTF-8, names that are not HTTP tokens) travel
    encoded, listed in `x-freedom-encoded` (see `freedom.wire.encoding`); here they read as the record
    carried them, and `x-freedom-encoded` itself is not shown. `.raw` stays the wire form;
    :meth:`record_raw` gives the record's bytes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        decoded = decode_headers(self._list) if _ENCODED_RAW in (k for k, _ in self._list) else None
        # (name as text, lowercased name for lookups, value bytes); None: nothing was encoded
        self._record: list[tuple[str, str, bytes]] | None = None
        self._record_raw: list[tuple[bytes, bytes]] | None = decoded
        if decoded is not None:
            self._record = []
            for k, v in decoded:
                name = decode_header(k)
                self._record.append((name, name.lower(), v))

    def record_raw(self) -> list[tuple[bytes, bytes]]:
        """The headers as (name, value) bytes with the wire encoding undone, in order. Token
        names arrive lowercased (HTTP); names HTTP could not carry keep their bytes and case."""
        return list(self._list if self._record_raw is None else self._record_raw)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __getitem__(self, key: str) -> str:
        if self._record is not None:
            wanted_text = key.lower()
            for _, lower, v in self._record:
                if lower == wanted_text:
                    return decode_header(v)
            raise KeyError(key)
        wanted = key.lower().encode("latin-1", "replace")
        for k, v in self._list:
            if k == wanted:
                return decode_header(v)
        raise KeyError(key)

    def __contains__(self, key: Any) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._list) if self._record is None else len(self._record)

    def getlist(self, key: str) -> list[str]:
        if self._record is not None:
            wanted_text = key.lower()
            return [decode_header(v) for _, lower, v in self._record if lower == wanted_text]
        wanted = key.lower().encode("latin-1", "replace")
        return [decode_header(v) for k, v in self._list if k == wanted]

    def keys(self) -> list[str]:  # type: ignore[override]
        if self._record is not None:
            return [n for n, _, _ in self._record]
        return [k.decode("latin-1") for k, _ in self._list]

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        if self._record is not None:
            return [(n, decode_header(v)) for n, _, v in self._record]
        return [(k.decode("latin-1"), decode_header(v)) for k, v in self._list]

    def values(self) -> list[str]:  # type: ignore[override]
        if self._record is not None:
            return [decode_header(v) for _, _, v in self._record]
        return [decode_header(v) for _, v in self._list]


_BUS_RAW = BUS_HEADER.encode()


class Request(_StarletteRequest):
    """A Starlette request whose `headers` read as the record had them (decoded as UTF-8, freedom's
    wire encoding undone), with the record's key as `message_key`."""

    async def body(self) -> bytes:
        if not hasattr(self, "_body"):
            extensions = self.scope.get("extensions")
            given: bytes | None = extensions.get(BODY_EXTENSION) if extensions else None
            if given is not None:
                self._body = given  # the same bytes `receive` would give
                return given
        return await super().body()

    @property
    def message_key(self) -> bytes | None:
        """The record key of a delivery, as the bytes it was published with (None: the record had
        no key). The path parameter and `x-message-key` carry the event id, which is the key
        itself when it is plain text, else `~b64.…`/`~sha256.…` with the key in `x-freedom-key`."""
        raw = self.headers.record_raw()
        event_id = key_header = None
        for k, v in raw:
            if k == _MESSAGE_KEY_RAW:
                event_id = decode_header(v)
            elif k == _KEY_RAW:
                key_header = v
        return key_of(event_id, key_header)

    @property
    def headers(self) -> Utf8Headers:
        if not hasattr(self, "_utf8_headers"):
            self._utf8_headers = Utf8Headers(scope=self.scope)
        return self._utf8_headers


class _TraceLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds the trace id to every record (as `record.trace_id`) and to the message."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.setdefault("extra", {})
        extra.setdefault("trace_id", self.extra["trace_id"])  # type: ignore[index]
        return f"[trace {self.extra['trace_id']}] {msg}", kwargs  # type: ignore[index]


class Runtime:
    """The request context of one handler call.

    The bus, the trace and the logger are read from the request when first used, not for every
    request: an event handler that never looks at them does not pay for parsing them.
    """

    def __init__(self, request: _StarletteRequest, *, logger_name: str = "freedom") -> None:
        self.request: Request = (
            request if isinstance(request, Request) else Request(request.scope, request.receive)
        )
        self.store: dict[str, Any] = {}
        self._logger_name = logger_name

    @cached_property
    def bus(self) -> Bus:
        """The propagated bus, from the `x-freedom-bus` header; changes go on with `msg.set_runtime`."""
        # The raw bytes (the wire encoding undone), not the text `headers.get` gives: that falls back
        # to latin-1, which would let a bus that is not UTF-8 through as valid text.
        raw = next((v for k, v in self.request.headers.record_raw() if k.lower() == _BUS_RAW), None)
        return Bus.from_header(raw)

    @cached_property
    def trace(self) -> TraceContext:
        """The trace context from `traceparent`, or a new trace."""
        return extract_trace(self.request.headers.items())

    @cached_property
    def trace_id(self) -> str:
        """32 hex digits, also in every line of `logger`."""
        return self.trace.trace_id

    @cached_property
    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger that puts the trace id in every line."""
        return _TraceLogger(logging.getLogger(self._logger_name), {"trace_id": self.trace_id})

    @classmethod
    def of(cls, request: _StarletteRequest) -> Runtime:
        """The runtime of a request, made once and then shared by everything serving it.

        Kept in the request's state (`request.state.freedom_runtime`), read as a plain dict.
        """
        state = request.scope.setdefault("state", {})
        runtime: Runtime | None = state.get("freedom_runtime")
        if runtime is None:
            runtime = state["freedom_runtime"] = cls(request)
        return runtime


def get_runtime(request: _StarletteRequest) -> Runtime:
    """FastAPI dependency giving a plain route the same `Runtime` controllers get injected."""
    return Runtime.of(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
"""The request's `Runtime` in a plain FastAPI route (`runtime: freedom.RuntimeDep`)."""
