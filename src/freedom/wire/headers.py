"""Every header name of freedom's wire contract, in one leaf module
(docs/contract.md, "Header ownership").

The `x-freedom-` prefix belongs to freedom. Modules at every layer (the web layer, the consumer
proxy, the retry logic, the transports) import the names from here, so none of them has to import
another layer just to spell a header.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# --------------------------------------------------------------------------- set by the publisher
BUS_HEADER = "x-freedom-bus"  # JSON map propagated with the request (bus.py)
EVENT_NAME_HEADER = "x-freedom-event"  # a domain event's name as raised, e.g. "Goods:Shopping"
EVENT_ID_HEADER = "x-freedom-event-id"  # a unique id per domain event

# --------------------------------------------------------------------------- set by the consumer proxy on a delivery
MESSAGE_KEY_HEADER = "x-message-key"  # the record key (the event id), seed's name
RETRY_COUNT_HEADER = "x-retry-count"  # 0 from the main topic, n on the n-th retry (seed's name)
SECRET_HEADER = "x-freedom-secret"  # the shared secret authenticating deliveries (security.py)
#: A share group's record only (docs/share-groups.md): how many times the broker has handed the
#: record to a member, this delivery included (1 the first time; 2 or more after a member crashed
#: holding it, or released it).
DELIVERY_COUNT_HEADER = "x-delivery-count"
#: How long the handler has, in milliseconds from when the request arrives (a relative budget, as
#: gRPC's `grpc-timeout`, so the clocks need not agree): the topic's `delivery_timeout_sec`. freedom's
#: event routes cancel the handler when it runs out and answer 504 (freedom/web/deadline.py).
DEADLINE_HEADER = "x-freedom-timeout-ms"

# The wire encoding of keys and headers HTTP cannot carry as they are (wire.py)
ENCODED_HEADER = "x-freedom-encoded"  # the names of the headers whose values are base64url
KEY_HEADER = "x-freedom-key"  # the record key, base64url, when the event id is not the key itself
HEX_NAME_PREFIX = "x-freedom-hex-"  # a header name HTTP cannot carry: this + hex of its bytes

# --------------------------------------------------------------------------- answered by the handler
OUTCOME_HEADER = "x-freedom-outcome"  # retry | dead-letter | drop (outcomes.py)
REASON_HEADER = "x-freedom-reason"  # why, percent-encoded
#: On the 500 answer of freedom's event route whose handler raised: the id under which the service
#: holds the exception's traceback for the consumer proxy of its own process, which logs it once per
#: record, at the dead letter (freedom/observability/failures.py, web/failures.py).
FAILURE_HEADER = "x-freedom-failure-id"

# --------------------------------------------------------------------------- written by the proxy on retry / dead-letter records
ORIGINAL_TOPIC_HEADER = "x-freedom-original-topic"
ORIGINAL_PARTITION_HEADER = "x-freedom-original-partition"
ORIGINAL_OFFSET_HEADER = "x-freedom-original-offset"
FIRST_FAILURE_TIME_HEADER = "x-freedom-first-failure-time"
ERROR_HEADER = "x-freedom-error"  # the last failure: "HTTP 500", "ConnectError: ...", "..., handler asked: dead-letter (why)"
STATUS_HEADER = "x-freedom-status"  # the last HTTP status, when there was one

#: The reason headers only the proxy writes (on retry and dead-letter records). On a record that
#: arrives on a main topic they come from outside and are not trusted.
REASON_HEADERS = (
    ORIGINAL_TOPIC_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_OFFSET_HEADER,
    FIRST_FAILURE_TIME_HEADER,
    ERROR_HEADER,
    STATUS_HEADER,
)

# --------------------------------------------------------------------------- on a dead-letter copy that left something out
# A record too large even for the dead-letter topic goes there as a copy without its value (and,
# if even that is too large, without its key and its own headers): these say what was left out.
VALUE_OMITTED_HEADER = "x-freedom-value-omitted"  # the size in bytes of the value left out
KEY_OMITTED_HEADER = "x-freedom-key-omitted"  # the size in bytes of the key left out
KEY_SHA256_HEADER = "x-freedom-key-sha256"  # hex SHA-256 of the key left out
HEADERS_OMITTED_HEADER = (
    "x-freedom-headers-omitted"  # how many of the record's own headers were left out
)
OMISSION_HEADERS = (
    VALUE_OMITTED_HEADER,
    KEY_OMITTED_HEADER,
    KEY_SHA256_HEADER,
    HEADERS_OMITTED_HEADER,
)

# --------------------------------------------------------------------------- written by `freedom dlq replay` (freedom/ops/replay.py)
REPLAY_COUNT_HEADER = (
    "x-freedom-replay-count"  # how many times the record was replayed from a dead-letter topic
)
REPLAY_OF_HEADER = (
    "x-freedom-replay-of"  # the dead letter it is a replay of: "<fail-topic>/<partition>/<offset>"
)

# --------------------------------------------------------------------------- written by the consumer proxy when tracing (spans.py)
#: The `traceparent` of the `process` span of a record's first delivery; kept on its retry and
#: dead-letter records (and replays), whose `process` spans link to it.
FIRST_ATTEMPT_HEADER = "x-freedom-first-attempt"

# --------------------------------------------------------------------------- batch delivery (batch.py, infra/kafka/batching.py)
BATCH_HEADER = "x-freedom-batch"  # on a batch request: how many records its JSON envelope holds

# --------------------------------------------------------------------------- read from an answer (infra/kafka/backpressure.py)
#: On a 429 or 503 answer: how long the endpoint asks the proxy to wait (seconds or an HTTP date).
RETRY_AFTER_HEADER = "retry-after"

#: The ASGI request extension by which in-process delivery hands the record's value to the
#: application without an HTTP body stream (read by freedom's `Request`).
BODY_EXTENSION = "freedom.body"

# --------------------------------------------------------------------------- who may write what (docs/contract.md, "Header ownership")
#: The replay headers: on a main-topic record they are kept only when the consumer proxy checked
#: them against the dead letter they name (freedom/kafka/consumer/replays.py).
REPLAY_HEADERS = (REPLAY_COUNT_HEADER, REPLAY_OF_HEADER)
#: The control headers: freedom writes them on retry, dead-letter and replayed records (or on
#: requests and answers), never a publisher. On a record read from a main topic they came from
#: outside: dropped from its delivery and from its retry and dead-letter records (the replay
#: headers of a checked replay aside). Publishers' own `x-freedom-` headers (`x-freedom-bus`,
#: `x-freedom-event`, `x-freedom-event-id`) and the trace link `x-freedom-first-attempt` are not
#: among them.
CONTROL_HEADERS = (
    *REASON_HEADERS,
    *OMISSION_HEADERS,
    *REPLAY_HEADERS,
    OUTCOME_HEADER,
    REASON_HEADER,
    FAILURE_HEADER,
    BATCH_HEADER,
)


def header_key(name: str) -> str:
    """The name header rules compare: lowercased, and `_` read as `-`. WSGI and CGI servers fold
    the two (`x_forwarded_for` reaches a WSGI application as `HTTP_X_FORWARDED_FOR`, as
    `x-forwarded-for` does), so a rule about a name holds for each of its spellings."""
    return name.lower().replace("_", "-")


# RFC 9110 token: what an HTTP header name may contain (record headers become HTTP headers).
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Names the consumer proxy sets itself, or does not forward: a record header with one of them
# would never reach the handler as given.
_PROXY_HEADERS = {
    MESSAGE_KEY_HEADER,
    RETRY_COUNT_HEADER,
    SECRET_HEADER,
    DEADLINE_HEADER,
    DELIVERY_COUNT_HEADER,
}
_HOP_BY_HOP = {
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "http2-settings",
    "proxy-connection",
}


def check_message_headers(headers: Any) -> dict[str, bytes]:
    """The headers a user gives a message (`msg.set_headers`, a domain event's), checked and
    lowered: names that are HTTP tokens and that the consumer proxy forwards, values str or bytes
    without line breaks or NUL. A TypeError or ValueError names the header and the fix."""
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    out: dict[str, bytes] = {}
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {type(name).__name__} ({name!r})")
        if not _HEADER_NAME.match(name):
            raise ValueError(
                f"header name {name!r} is not a valid HTTP header name (the consumer proxy delivers headers "
                "over HTTP): use ASCII letters, digits and - _ . ! # $ % & ' * + ^ ` | ~, no spaces"
            )
        key = header_key(name)
        # `x_retry_count` is `x-retry-count` to a WSGI server: refused as that name is.
        spelled = f" (read as {key!r}: WSGI servers take _ for -)" if key != name.lower() else ""
        if key in _PROXY_HEADERS:
            raise ValueError(
                f"header {name!r}{spelled} is set by the consumer proxy when it delivers the record, "
                "so the handler would never see this value: use another name"
            )
        if key in _HOP_BY_HOP:
            raise ValueError(
                f"header {name!r}{spelled} is an HTTP connection header, which the consumer proxy "
                "does not forward to the handler: use another name"
            )
        if key in CONTROL_HEADERS:
            raise ValueError(
                f"header {name!r}{spelled} is a control header only freedom writes (on retry, "
                "dead-letter and replayed records), which the consumer proxy drops from a published "
                "record: use another name"
            )
        if isinstance(value, str):
            raw = value.encode()
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            raise TypeError(
                f"header {name!r} must have a str or bytes value, got {type(value).__name__} ({value!r})"
            )
        if b"\r" in raw or b"\n" in raw or b"\0" in raw:
            raise ValueError(
                f"header {name!r} has a line break or NUL in its value, which HTTP does not allow"
            )
        out[name.lower()] = raw
    return out
