"""`Msg`: a message the user builds with `producer.new_msg(...)` and publishes; `new_key`, its
default key."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import time
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING

from freedom.errors import PublishError
from freedom.kafka.producing import delivery
from freedom.kafka.producing.delivery import Delivered, check_not_on_loop
from freedom.observability.tracing import inject_trace
from freedom.wire.context import BUS_HEADER, MAX_BUS_BYTES
from freedom.wire.headers import check_message_headers
from freedom.wire.payloads import CONTENT_TYPE, JSON, encode

if TYPE_CHECKING:
    from freedom.kafka.producing.producer import Producer
    from freedom.web.runtime import Runtime

_NO_HEADERS: Mapping[str, bytes] = types.MappingProxyType({})
_JSON_TYPE = JSON.encode()  # the content-type header value of objects sent as JSON

# Unused default keys, 32 upper-case hex characters each. One `os.urandom` read makes 256 of them
# (a system call per key was a tenth of a batch's cost); `deque.popleft` hands each out once, from
# any thread, without a lock. A forked child empties the pool, so it never repeats its parent's keys.
_KEYS_PER_READ = 256
_key_pool: collections.deque[str] = collections.deque()
os.register_at_fork(after_in_child=_key_pool.clear)


def new_key() -> str:
    """The default message key: a new unique id, 32 upper-case hex characters (docs/contract.md,
    "The published record")."""
    try:
        return _key_pool.popleft()
    except IndexError:
        hexed = os.urandom(16 * _KEYS_PER_READ).hex().upper()
        _key_pool.extend(hexed[i : i + 32] for i in range(32, len(hexed), 32))
        return hexed[:32]


class Msg:
    """A message being built; every setter returns the message, so calls chain."""

    def __init__(self, producer: Producer, topic: str, content: object) -> None:
        if content.__class__ is bytes:  # the hot path: bytes are the value as they are
            value: bytes = content
            content_type: bytes | None = None
        else:
            value, label = encode(content)  # TypeError naming the type when it cannot be serialised
            content_type = _JSON_TYPE if label == JSON else label.encode() if label else None
        self._producer = producer
        self.topic = topic
        self.value: bytes = value
        #: What freedom labels the value with (`application/json` for objects it serialised; None
        #: for bytes and str); a `content-type` given to set_headers wins (payloads.py).
        self.content_type: bytes | None = content_type
        # Both start as one shared empty mapping and are replaced, never changed in place: two
        # fewer objects per message for the garbage collector (a batch makes thousands of messages).
        self.headers: Mapping[str, bytes] = _NO_HEADERS
        self.context_headers: Mapping[str, bytes] = _NO_HEADERS
        self.key: str = new_key()
        self.client: str | None = None
        self.runtime: Runtime | None = None

    def set_headers(self, headers: Mapping[str, str | bytes]) -> Msg:
        """Add headers to the record (values str, sent as UTF-8, or bytes); names are HTTP header names."""
        self.headers = {**self.headers, **check_message_headers(headers)}
        return self

    def set_runtime(self, runtime: Runtime) -> Msg:
        """Carry the request's bus and trace on to whoever handles the message.

        The bus is copied now: later changes to `runtime.bus` do not reach this message.
        """
        bus = runtime.bus.to_header()
        if len(bus) > MAX_BUS_BYTES:
            raise ValueError(
                f"the runtime's bus is {len(bus)} bytes as JSON, over the {MAX_BUS_BYTES}-byte limit of the "
                f"{BUS_HEADER} header (receivers would ignore it): keep ids in the bus, not data"
            )
        self.runtime = runtime
        self.context_headers = {
            BUS_HEADER: bus,
            **{k: v.encode() for k, v in inject_trace(runtime.trace).items()},
        }
        return self

    def select_client(self, name: str) -> Msg:
        """Publish through the `[[producer_clients]]` entry called `name`; unknown names raise here."""
        if not isinstance(name, str):
            raise TypeError(f"client name must be a str, got {type(name).__name__}")
        self._producer.client(name)
        self.client = name
        return self

    def set_key(self, key: str | bytes) -> Msg:
        """Set the record key (it decides the partition; the handler gets it as the event id)."""
        if isinstance(key, bytes):
            key = key.decode()
        if not isinstance(key, str) or not key:
            raise TypeError(f"message key must be a non-empty str, got {key!r}")
        self.key = key
        return self

    def wire_headers(self) -> list[tuple[str, bytes]]:
        """The record's headers: `content-type` (unless the user set one), the user's, then the bus
        and trace context of `set_runtime`."""
        headers = self.headers
        if self.content_type is not None and CONTENT_TYPE not in headers:
            headers = {CONTENT_TYPE: self.content_type, **headers}
        if not self.context_headers:
            return list(headers.items())
        return list({**headers, **self.context_headers}.items())

    def size(self) -> int:
        """The record's size as the error messages give it: value, key and headers."""
        return (
            len(self.value)
            + len(self.key.encode())
            + sum(len(k) + len(v) for k, v in self.wire_headers())
        )

    async def publish(self) -> Delivered:
        """Send the record; returns where the broker stored it, raises PublishError if it could not."""
        return await self._producer.send(self)

    def publish_sync(self, timeout: float | None = None) -> Delivered:
        """`publish()` for synchronous code (a plain `def` handler, a script): blocks until acknowledged.

        `timeout` (seconds) bounds the wait; without it the client's `delivery_timeout_sec` does.
        """
        check_not_on_loop("publish_sync()", "await msg.publish()")
        future = delivery.produce(self._producer.client(self.client), self)
        started = time.monotonic()
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # nobody waits any more: a later failure is logged
            raise PublishError(
                f"message to {self.topic!r} (key {self.key}) was not acknowledged within "
                f"{time.monotonic() - started:.1f} s; it may still be delivered"
            ) from None
