"""Domain events: the record an entity raises, and the rule that turns an event name into a topic.

The name rule (used identically by `Entity.domain_event` and `Initiator.listen_event`):

* every `:` becomes `.` — the seed names events `Entity:Method`, and Kafka topic names cannot
  hold `:`, so `"Goods:Shopping"` is published to, and listened on, topic `"Goods.Shopping"`;
* nothing else is changed: the result must be a legal Kafka topic name (letters, digits, `.`,
  `_`, `-`; 1 to 249 characters; not `.` or `..`), otherwise the name is rejected with
  :class:`EventNameError`.

So `"Goods:Shopping"` and `"Goods.Shopping"` name the same event, and a plain topic name such as
`"event-sell"` is its own event name.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from freedom.errors import FreedomError
from freedom.kafka.topics import check_topic
from freedom.wire import payloads
from freedom.wire.headers import EVENT_ID_HEADER, EVENT_NAME_HEADER, check_message_headers

if TYPE_CHECKING:
    from freedom.web.runtime import Runtime


_sequence = itertools.count()  # raise order across entities of one unit of work


class EventNameError(FreedomError, ValueError):
    """An event name that cannot be mapped to a Kafka topic name."""


class DomainEventError(FreedomError):
    """Domain events are used without their infrastructure, or it is installed twice."""


def event_topic(name: object) -> str:
    """The Kafka topic of event `name`: `:` becomes `.`, the rest must already be legal."""
    if not isinstance(name, str):
        raise EventNameError(f"an event name must be a string, got {type(name).__name__}")
    topic = name.replace(":", ".")
    try:
        return check_topic(topic)
    except (TypeError, ValueError) as exc:
        raise EventNameError(
            f"event name {name!r} cannot be mapped to a Kafka topic: {exc} "
            "(':' becomes '.', every other character must already be legal)"
        ) from None


def new_event_id() -> str:
    """A new unique event id: 32 upper-case hex characters, like a default message key."""
    return secrets.token_hex(16).upper()


def to_json(obj: Any) -> bytes:
    """`obj` as compact UTF-8 JSON, serialised by Pydantic (freedom.wire.payloads): Pydantic models,
    dataclasses, dicts, lists and whatever else Pydantic serialises. A domain event is always
    JSON (docs/contract.md, "Domain events on the wire"), published with
    `content-type: application/json`."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raise TypeError(
            "a domain event carries an object serialised as JSON, not bytes: pass the object itself"
        )
    if obj is None:
        return b"null"  # an event without data
    try:
        return payloads.to_json(obj)
    except payloads.Unserialisable as exc:
        raise TypeError(
            f"cannot serialise the event object ({exc.type_name}) as JSON: {exc.why}"
        ) from None


def check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Event headers as a dict of lower-case names to str values, checked as a message's headers are.

    Checked when the event is raised, so that the outbox never holds an event that can not be sent.
    """

    if headers is None:
        return {}
    if isinstance(headers, Mapping) and any(not isinstance(v, str) for v in headers.values()):
        bad = next(k for k, v in headers.items() if not isinstance(v, str))
        raise TypeError(
            f"event header {bad!r} must have a str value, got {type(headers[bad]).__name__}"
        )
    return {name: value.decode() for name, value in check_message_headers(headers).items()}


def request_context(runtime: Runtime) -> dict[str, Any]:
    """The bus, trace id and trace headers a runtime gives the events raised while serving it."""
    from freedom.observability.tracing import inject_trace
    from freedom.wire.context import BUS_HEADER, MAX_BUS_BYTES

    size = len(runtime.bus.to_header())
    if size > MAX_BUS_BYTES:
        raise ValueError(
            f"the runtime's bus is {size} bytes as JSON, over the {MAX_BUS_BYTES}-byte limit of the "
            f"{BUS_HEADER} header (receivers would ignore it): keep ids in the bus, not data"
        )
    return {
        "bus": dict(runtime.bus),
        "trace_id": runtime.trace_id,
        "trace_headers": inject_trace(runtime.trace),
    }


@dataclass(frozen=True)
class DomainEvent:
    """One event raised by an entity: what is published, and the request context it carries."""

    name: str  # as raised, e.g. "Goods:Shopping"
    topic: str  # event_topic(name)
    key: str  # the entity's identity(): events of one aggregate share a partition, so keep order
    payload: bytes  # the object, as JSON
    headers: dict[str, str] = field(default_factory=dict)
    bus: dict[str, Any] | None = None  # the raising request's bus (None: not known yet)
    trace_id: str | None = None
    trace_headers: dict[str, str] = field(
        default_factory=dict
    )  # traceparent (and the like) continuing its trace
    event_id: str = field(default_factory=new_event_id)
    seq: int = field(default_factory=lambda: next(_sequence), compare=False)

    def wire_headers(self) -> dict[str, str]:
        """`content-type: application/json` (unless the user's headers set one), the user's headers,
        and the event's name and id. Added here, when it is published, so outbox rows written
        before content types existed get it too."""
        return {
            payloads.CONTENT_TYPE: payloads.JSON,
            **self.headers,
            EVENT_NAME_HEADER: self.name,
            EVENT_ID_HEADER: self.event_id,
        }
