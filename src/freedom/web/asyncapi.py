"""The service's AsyncAPI 3.0 document, made from its bindings (docs/asyncapi.md).

    GET /asyncapi.json                       # served by every Application
    freedom asyncapi example:app -o asyncapi.json

What it lists:
- a channel per listened topic T, its message's payload the JSON schema of the handler's body
  parameter (a Pydantic model, a dataclass, `dict`, `list[...]`: Pydantic makes the schema), and a
  `receive` operation per consumer client with its group id and the HTTP delivery it becomes; for
  a batch topic (`listen_event(..., batch=BatchSettings(record_type=Model))`) the payload is one
  record's (`record_type`), and the delivery's body is the batch envelope
  (components.schemas.`<topic>_BatchEnvelope`, each record's `value` with that payload's schema as
  its `contentSchema`) answered by components.schemas.BatchAnswer;
- per consumer client, the topics the proxy adds: `{retry_prefix}T` (a `send` by the proxy and a
  `receive` by `retry_group_id`, when `retry_count > 0`) and `{retry_fail_prefix}T` (a `send`);
- a channel and a `send` operation per topic declared with `initiator.publishes(topic, Model)`;
- the record headers of the wire contract (docs/contract.md, "Header ownership"; headers.py) on
  each kind of topic, and the HTTP headers of a delivery (components.schemas.DeliveryHeaders);
- the Kafka servers of kafka.toml (one per cluster; the embedded broker when a client has none).

Building it sets the application up (config, prepare hooks) and starts nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from freedom.config.models import ConsumerClientConfig, KafkaConfig
from freedom.kafka.consumer.delivery import EventRoute
from freedom.observability.tracing import TRACEPARENT
from freedom.wire.batch import STATUSES, BatchSettings
from freedom.wire.headers import (
    BATCH_HEADER,
    BUS_HEADER,
    DEADLINE_HEADER,
    DELIVERY_COUNT_HEADER,
    ENCODED_HEADER,
    ERROR_HEADER,
    EVENT_ID_HEADER,
    EVENT_NAME_HEADER,
    FIRST_FAILURE_TIME_HEADER,
    HEADERS_OMITTED_HEADER,
    KEY_HEADER,
    KEY_OMITTED_HEADER,
    KEY_SHA256_HEADER,
    MESSAGE_KEY_HEADER,
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_TOPIC_HEADER,
    OUTCOME_HEADER,
    REASON_HEADER,
    RETRY_COUNT_HEADER,
    SECRET_HEADER,
    STATUS_HEADER,
    VALUE_OMITTED_HEADER,
)
from freedom.wire.payloads import CONTENT_TYPE, DEFAULT_CONTENT_TYPE

if TYPE_CHECKING:
    from freedom.web.application import Application

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
_REF = "#/components/schemas/{model}"
_ID = re.compile(r"[^A-Za-z0-9_\-]")

Mode = Literal["validation", "serialization"]

_TEXT = {"type": "string"}


def _h(description: str, **extra: Any) -> dict[str, Any]:
    return {**_TEXT, "description": description, **extra}


#: The headers freedom writes on (or reads from) a record of a main topic.
RECORD_HEADERS: dict[str, dict[str, Any]] = {
    CONTENT_TYPE: _h(
        "The value's media type: application/json for objects freedom serialises (new_msg, "
        "domain_event), as set for others. A record without one is delivered as "
        f"{DEFAULT_CONTENT_TYPE}."
    ),
    BUS_HEADER: _h(
        "JSON object: the publisher's runtime bus (msg.set_runtime), passed on to the handler's "
        "Runtime.bus. Size-limited; malformed values are ignored."
    ),
    TRACEPARENT: _h(
        "W3C trace context of the publishing request (msg.set_runtime), continued by the handler."
    ),
    EVENT_NAME_HEADER: _h(
        "A domain event's name as raised, e.g. Goods:Shopping (its topic: Goods.Shopping)."
    ),
    EVENT_ID_HEADER: _h("A domain event's unique id."),
}
#: ... and the proxy's own, on the records it writes to a retry or dead-letter topic.
REASON_HEADERS: dict[str, dict[str, Any]] = {
    RETRY_COUNT_HEADER: _h(
        "The retries so far: 1 on the first retry record, ... (decimal digits).",
        pattern="^[0-9]{1,9}$",
    ),
    ORIGINAL_TOPIC_HEADER: _h("The topic the record was first published to."),
    ORIGINAL_PARTITION_HEADER: _h("Its partition there.", pattern="^[0-9]+$"),
    ORIGINAL_OFFSET_HEADER: _h("Its offset there.", pattern="^[0-9]+$"),
    FIRST_FAILURE_TIME_HEADER: _h(
        "When its first delivery failed (RFC 3339, UTC).", format="date-time"
    ),
    ERROR_HEADER: _h(
        "The last failure: 'HTTP 500', a transport error, the handler's outcome and reason, the "
        "validation detail of a refused body (at most 1000 bytes)."
    ),
    STATUS_HEADER: _h("The last HTTP status, when there was an answer.", pattern="^[0-9]{3}$"),
}
#: ... and on a dead-letter copy that had to leave something out (too large even for fail-T).
OMISSION_HEADERS: dict[str, dict[str, Any]] = {
    VALUE_OMITTED_HEADER: _h(
        "The size in bytes of the value left out (the record's value is empty)."
    ),
    KEY_OMITTED_HEADER: _h("The size in bytes of the key left out."),
    KEY_SHA256_HEADER: _h("Hex SHA-256 of the key left out."),
    HEADERS_OMITTED_HEADER: _h("How many of the record's own headers were left out."),
}
#: The HTTP headers of a delivery (POST {proxy_addr}{route path}) besides the record's own.
DELIVERY_HEADERS: dict[str, dict[str, Any]] = {
    MESSAGE_KEY_HEADER: _h(
        "The event id: the record key when it is plain text, else ~b64.…/~sha256.…/~pos.… "
        "(also in the route's path parameter)."
    ),
    RETRY_COUNT_HEADER: _h("0 from the main topic, n on the n-th retry.", pattern="^[0-9]{1,9}$"),
    CONTENT_TYPE: _h(f"The record's content-type, else {DEFAULT_CONTENT_TYPE}."),
    KEY_HEADER: _h("The record key, base64url, when the event id is not the key itself."),
    ENCODED_HEADER: _h(
        "The names of the headers whose values travel base64url-encoded (HTTP could not carry them)."
    ),
    SECRET_HEADER: _h(
        "The shared secret of [consumer] secret, when configured (taken out before the handler)."
    ),
    DEADLINE_HEADER: _h(
        "How long the handler has, in milliseconds from when the request arrives (the topic's "
        "delivery_timeout_sec); freedom's event routes cancel it then and answer 504.",
        pattern="^[0-9]{1,10}$",
    ),
    DELIVERY_COUNT_HEADER: _h(
        "A share group's record only: how many times the broker has handed it out, this delivery "
        "included (1 the first time).",
        pattern="^[0-9]{1,10}$",
    ),
}
#: The answer's headers the proxy reads (freedom.Retry / DeadLetter / Drop set them).
ANSWER_HEADERS: dict[str, dict[str, Any]] = {
    OUTCOME_HEADER: _h(
        "What to do with the record, over the status rule.", enum=["retry", "dead-letter", "drop"]
    ),
    REASON_HEADER: _h("Why, percent-encoded (into x-freedom-error)."),
}


def _object(
    properties: dict[str, dict[str, Any]], description: str, required: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": {"type": "string"},
    }
    if required:
        out["required"] = required
    return out


HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "RecordHeaders": _object(
        RECORD_HEADERS,
        "Headers of a record on a listened or published topic; any other "
        "header reaches the handler as an HTTP header (hop-by-hop and proxy headers excepted).",
    ),
    "RetryRecordHeaders": _object(
        {**RECORD_HEADERS, **REASON_HEADERS},
        "Headers of a record the consumer proxy "
        "wrote to a retry topic: the original's, with the retry count and the reasons.",
        [RETRY_COUNT_HEADER, ORIGINAL_TOPIC_HEADER, ERROR_HEADER],
    ),
    "DeadLetterHeaders": _object(
        {**RECORD_HEADERS, **REASON_HEADERS, **OMISSION_HEADERS},
        "Headers of a record in a dead-letter topic: the original's, with why it is there.",
        [RETRY_COUNT_HEADER, ORIGINAL_TOPIC_HEADER, ERROR_HEADER],
    ),
    "DeliveryHeaders": _object(
        DELIVERY_HEADERS,
        "HTTP headers of a delivery by the consumer proxy, besides the record's own headers.",
    ),
    "AnswerHeaders": _object(
        ANSWER_HEADERS,
        "HTTP headers of a handler's answer the consumer proxy reads first; "
        "then 2xx is success, a status in dead_letter_statuses (422, ...) a dead letter, any "
        "other status, a timeout or a connection error a failure.",
    ),
}

_KEY = {
    "type": "string",
    "description": "The message key: by default 32 upper-case hex characters, new per "
    "message; a domain event's entity identity(). It decides the partition (order per key).",
}


@dataclass
class _Payload:
    """A type whose JSON schema a message carries."""

    tp: Any
    mode: Mode
    schema: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None


def _content_type(tp: Any) -> str | None:
    if tp is bytes:
        return "application/octet-stream"
    if tp is str:
        return "text/plain"
    return None  # JSON: the document's defaultContentType


def _schemas(payloads: list[_Payload]) -> dict[str, Any]:
    """Fill each payload's schema (Pydantic; one pass, shared definitions); returns the definitions."""
    good = []
    for p in payloads:
        if p.tp is None:
            p.schema = {
                "description": "Any value: the handler reads the body itself (await request.body(), .json())."
            }
            continue
        try:
            TypeAdapter(p.tp).json_schema(mode=p.mode, ref_template=_REF)
        except Exception as exc:  # noqa: BLE001 - a type Pydantic has no schema for: any payload, said so
            p.schema = {
                "description": f"no JSON schema for {getattr(p.tp, '__name__', p.tp)!s}: {type(exc).__name__}"
            }
            continue
        good.append(p)
    if not good:
        return {}
    keyed, defs = TypeAdapter.json_schemas(
        [(i, p.mode, TypeAdapter(p.tp)) for i, p in enumerate(good)], ref_template=_REF
    )
    for i, p in enumerate(good):
        p.schema = keyed[(i, p.mode)]
    return dict(defs.get("$defs", {}))


def _body_type(route: APIRoute | None) -> Any:
    """The handler's body parameter type (None: it reads the raw body; a dict of name -> type when
    it has several, which FastAPI reads as one JSON object)."""
    if route is None:
        return None
    params = route.dependant.body_params
    if not params:
        return None
    if len(params) == 1 and not getattr(params[0].field_info, "embed", False):
        return params[0].field_info.annotation
    from pydantic import create_model

    fields: Any = {p.alias: (p.field_info.annotation, ...) for p in params}
    return create_model(f"{route.name.replace('.', '_')}_Body", **fields)


BATCH_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["statuses"],
    "description": "The answer to a batch delivery (2xx, JSON): a status per record id; a record not named is "
    "retried, an empty answer is ok for every record (freedom.wire.batch).",
    "properties": {
        "statuses": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "status"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": list(STATUSES)},
                    "reason": {
                        "type": "string",
                        "description": "Into the retry or dead-letter copy's "
                        f"{ERROR_HEADER}: 'batch answer, handler asked: <status> (<reason>)'.",
                    },
                },
            },
        }
    },
}


def _batch_envelope(topic: str, settings: BatchSettings, payload: _Payload) -> dict[str, Any]:
    """The JSON schema of a batch delivery's body (freedom.wire.batch), one record's payload inside."""
    value: dict[str, Any] = {
        "type": "string",
        "description": "The record's value: as text when it is UTF-8 (value_encoding text; "
        "for JSON, the record payload contentSchema gives), else standard base64.",
    }
    if payload.content_type is None:  # JSON: the payload schema describes the text
        value |= {"contentMediaType": DEFAULT_CONTENT_TYPE, "contentSchema": payload.schema}
    record = {
        "type": "object",
        "required": ["id", "value"],
        "properties": {
            "id": {"type": "string", "description": "Unique in the batch: <partition>-<offset>."},
            "event_id": {
                "type": "string",
                "description": f"The record's {MESSAGE_KEY_HEADER} (its event id).",
            },
            "topic": {"type": "string"},
            "partition": {"type": "integer"},
            "offset": {"type": "integer"},
            "retry_count": {"type": "integer", "description": f"As {RETRY_COUNT_HEADER}."},
            "content_type": {"type": "string"},
            "headers": {
                "type": "array",
                "description": "The headers a per-record delivery would carry, as [name, value].",
                "items": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 2,
                    "maxItems": 2,
                },
            },
            "value": value,
            "value_encoding": {"type": "string", "enum": ["text", "base64"]},
        },
    }
    return {
        "type": "object",
        "required": ["topic", "records"],
        "description": f"The body of a batch delivery of {topic} (header {BATCH_HEADER}: the record count): up to "
        f"{settings.max_records} records, sent when full or after {settings.max_wait_ms} ms.",
        "properties": {
            "topic": {"type": "string", "enum": [topic]},
            "records": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.max_records,
                "items": record,
            },
        },
    }


def _route(app: Application, event: EventRoute) -> APIRoute | None:
    for r in app.fastapi.router.routes:
        if isinstance(r, APIRoute) and r.path == event.path and "POST" in (r.methods or ()):
            return r
    return None


class _Ids:
    """Identifiers AsyncAPI accepts ([A-Za-z0-9_-]), unique."""

    def __init__(self) -> None:
        self.used: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name in self.used:
            return self.used[name]
        base = _ID.sub("_", name) or "_"
        made, n = base, 2
        while made in self.used.values():
            made, n = f"{base}_{n}", n + 1
        self.used[name] = made
        return made


def _servers(config: KafkaConfig | None) -> dict[str, Any]:
    if config is None:
        return {}
    clusters: dict[tuple[str, ...] | None, list[str]] = {}
    secure: dict[tuple[str, ...] | None, bool] = {}
    for c in config.producer_clients:
        clusters.setdefault(c.servers, []).append(f"producer client {c.name or '(default)'}")
        secure[c.servers] = secure.get(c.servers, False) or _secure(c.librdkafka_settings)
    for cc in config.consumer_clients:
        clusters.setdefault(cc.servers, []).append(
            f"consumer groups {cc.group_id}, {cc.retry_group_id}"
        )
        secure[cc.servers] = secure.get(cc.servers, False) or _secure(cc.librdkafka_settings)
    out: dict[str, Any] = {}
    for i, (servers, users) in enumerate(clusters.items()):
        name = "kafka" if len(clusters) == 1 else f"kafka-{i + 1}"
        if servers is None:
            out[name] = {
                "host": "127.0.0.1",
                "protocol": "kafka",
                "description": "The embedded broker freedom starts with the service (no `servers` in "
                f"{config.file}), on a free port. Used by: {'; '.join(users)}.",
            }
        else:
            out[name] = {
                "host": servers[0],
                "protocol": "kafka-secure" if secure[servers] else "kafka",
                "description": f"Bootstrap servers: {', '.join(servers)}. Used by: {'; '.join(users)}.",
            }
    return out


def _secure(settings: dict[str, Any]) -> bool:
    return str(settings.get("security.protocol", "plaintext")).lower() in ("ssl", "sasl_ssl")


def _group(group_id: str) -> dict[str, Any]:
    return {
        "kafka": {
            "groupId": {"type": "string", "enum": [group_id]},
            "bindingVersion": KAFKA_BINDING,
        }
    }


def _message(
    name: str, title: str, payload: _Payload, headers: str, summary: str
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "name": name,
        "title": title,
        "summary": summary,
        "headers": {"$ref": f"#/components/schemas/{headers}"},
        "payload": payload.schema,
        "bindings": {"kafka": {"key": _KEY, "bindingVersion": KAFKA_BINDING}},
    }
    if payload.content_type:
        msg["contentType"] = payload.content_type
    return msg


def _channel(topic: str, description: str, messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": topic,
        "title": topic,
        "description": description,
        "messages": messages,
        "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING}},
    }


def document(app: Application) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `app` (set up here if it was not)."""
    app.setup()
    config = app.kafka_config
    consumers: list[ConsumerClientConfig] = (
        config.consumer_clients if config and config.consumer.open else []
    )
    ids = _Ids()
    listened = {topic: (event, _route(app, event)) for topic, event in app.event_routes.items()}
    received = {
        t: _Payload(e.batch.record_type if e.batch is not None else _body_type(r), "validation")
        for t, (e, r) in listened.items()
    }  # a batch topic: one record's payload, not the envelope
    sent = {t: _Payload(tp, "serialization") for t, (tp, _) in app.declared_publishes.items()}
    definitions = _schemas([*received.values(), *sent.values()])
    for p in [*received.values(), *sent.values()]:
        p.content_type = _content_type(p.tp)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    envelopes: dict[str, Any] = {}
    for topic, (event, _) in listened.items():
        if event.batch is not None:
            envelopes[f"{ids(topic)}_BatchEnvelope"] = _batch_envelope(
                topic, event.batch, received[topic]
            )
    if envelopes:
        envelopes["BatchAnswer"] = BATCH_ANSWER_SCHEMA

    def ref(channel: str, message: str | None = None) -> dict[str, str]:
        return {"$ref": f"#/channels/{channel}" + (f"/messages/{message}" if message else "")}

    for topic in sorted(set(listened) | set(sent)):
        ch = ids(topic)
        messages: dict[str, Any] = {}
        description = []
        if topic in sent:
            desc = app.declared_publishes[topic][1]
            messages["published"] = _message(
                f"{ch}.published",
                f"{topic} (published)",
                sent[topic],
                "RecordHeaders",
                desc or f"What the service publishes to {topic}.",
            )
            description.append("The service publishes to it (initiator.publishes).")
        if topic in listened:
            event, route = listened[topic]
            handler = route.name if route is not None else event.path
            messages["received"] = _message(
                f"{ch}.received",
                f"{topic} (received)",
                received[topic],
                "RecordHeaders",
                f"What the handler {handler} reads.",
            )
            description.append(
                f"Listened: each record is delivered to POST {event.path} ({handler})."
            )
        channels[ch] = _channel(topic, " ".join(description), messages)
        if topic in sent:
            operations[ids(f"send {topic}")] = {
                "action": "send",
                "channel": ref(ch),
                "messages": [ref(ch, "published")],
                "summary": f"Publish to {topic}",
                "description": app.declared_publishes[topic][1]
                or "Declared with initiator.publishes.",
            }
    for cc in consumers:
        tag = "" if len(consumers) == 1 else f" ({cc.group_id})"
        for topic, (event, route) in sorted(listened.items()):
            ch = ids(topic)
            handler = route.name if route is not None else event.path
            about = (route.endpoint.__doc__ or "").strip() if route is not None else ""
            delivery = (
                f"The consumer proxy delivers each record as POST {event.path}: the key in the path parameter "
                f"and {MESSAGE_KEY_HEADER}, the value as the body, the record's headers plus "
                f"{RETRY_COUNT_HEADER} (components.schemas.DeliveryHeaders). Success is a 2xx answer; "
                "components.schemas.AnswerHeaders says how a handler chooses retry, dead-letter or drop."
            )
            how: dict[str, Any] = {"method": "POST", "path": event.path, "handler": handler}
            if event.batch is not None:
                envelope = f"{ch}_BatchEnvelope"
                delivery = (
                    f"The consumer proxy delivers the records in batches as POST {event.path}: the body is "
                    f"components.schemas.{envelope} (each record's value, key and headers inside), the "
                    f"answer components.schemas.BatchAnswer, a status per record; each record then settles "
                    "on its own (retry, dead-letter, drop, commit)."
                )
                how["batch"] = {
                    "maxRecords": event.batch.max_records,
                    "maxWaitMs": event.batch.max_wait_ms,
                    "body": {"$ref": f"#/components/schemas/{envelope}"},
                    "answer": {"$ref": "#/components/schemas/BatchAnswer"},
                }
            operations[ids(f"receive {topic}{tag}")] = {
                "action": "receive",
                "channel": ref(ch),
                "messages": [ref(ch, "received")],
                "summary": f"{handler}: records of {topic}, group {cc.group_id}",
                "description": (about + "\n\n" if about else "") + delivery,
                "bindings": _group(cc.group_id),
                "x-freedom-delivery": how,
            }
            payload = received[topic]
            if cc.retry_count > 0:
                retry = f"{cc.retry_prefix}{topic}"
                rch = ids(retry)
                channels.setdefault(
                    rch,
                    _channel(
                        retry,
                        f"Retries of {topic}: a record whose delivery failed, "
                        f"with {RETRY_COUNT_HEADER} n + 1, delivered again no earlier than "
                        f"its timestamp + retry_interval_sec ({cc.retry_interval_sec:g} s).",
                        {
                            "retry": _message(
                                f"{rch}.retry",
                                f"{retry} (retry)",
                                payload,
                                "RetryRecordHeaders",
                                f"A retry of a {topic} record.",
                            )
                        },
                    ),
                )
                operations[ids(f"send {retry}{tag}")] = {
                    "action": "send",
                    "channel": ref(rch),
                    "messages": [ref(rch, "retry")],
                    "summary": f"The consumer proxy retries a failed {topic} record (up to {cc.retry_count} times)",
                }
                operations[ids(f"receive {retry}{tag}")] = {
                    "action": "receive",
                    "channel": ref(rch),
                    "messages": [ref(rch, "retry")],
                    "summary": f"{handler}: retries of {topic}, group {cc.retry_group_id}",
                    "description": f"Read from the earliest offset when the group is new; each record is delivered "
                    f"to POST {event.path} once due.",
                    "bindings": _group(cc.retry_group_id),
                }
            if cc.retry_fail_prefix:
                fail = f"{cc.retry_fail_prefix}{topic}"
                fch = ids(fail)
                if fail not in listened:
                    channels.setdefault(
                        fch,
                        _channel(
                            fail,
                            f"Dead letters of {topic}: records that used up their "
                            "retries, that the handler dead-lettered, or that can never "
                            "succeed (a body refused with 422, ...), with the reason headers.",
                            {
                                "dead-letter": _message(
                                    f"{fch}.dead-letter",
                                    f"{fail} (dead letter)",
                                    payload,
                                    "DeadLetterHeaders",
                                    f"A dead-lettered {topic} record.",
                                )
                            },
                        ),
                    )
                    messages_ref = [ref(fch, "dead-letter")]
                else:  # a service listening on its own dead letters: the channel is the listened one
                    messages_ref = [ref(fch, "received")]
                operations[ids(f"send {fail}{tag}")] = {
                    "action": "send",
                    "channel": ref(fch),
                    "messages": messages_ref,
                    "summary": f"The consumer proxy dead-letters a {topic} record",
                }

    doc: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": app.config.service_name,
            "version": app.fastapi.version or "0.0.0",
            "description": "Kafka topics of this freedom service: what it listens to (each record delivered to "
            "an HTTP route by the consumer proxy), what it publishes, and the retry and "
            "dead-letter topics the proxy adds.",
        },
        "defaultContentType": DEFAULT_CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": {**HEADER_SCHEMAS, **envelopes, **definitions}},
    }
    servers = _servers(config)
    if servers:
        doc["servers"] = servers
    return doc


# --------------------------------------------------------------------------- freedom asyncapi
