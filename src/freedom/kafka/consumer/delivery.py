"""Delivering a record to the service's route over HTTP: the consumer proxy's one outward call.

`POST {proxy_addr}{route path}` with the event id in the path, the value as body, the record
headers plus `x-message-key` and `x-retry-count`, keys and headers encoded where HTTP cannot carry
them as they are (`freedom.wire.encoding`); hop-by-hop and proxy headers are never forwarded. The answer's `x-freedom-outcome` header (see
`freedom.wire.outcomes`) decides first; otherwise a 2xx answer is success, and any other status, a
timeout or a connection error is a failure.

The transports (transports/): HTTP/1.1 (transports/http1.py) or HTTP/2 cleartext (pyreqwest,
transports/http.py), or, with `proxy_addr = "inprocess"`, a direct call of the ASGI application
in the same process (transports/asgi.py). This module holds what they share: the route, the
request headers, and the rule that reads the answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from freedom.kafka.consumer.backpressure import RETRY_AFTER_STATUSES, parse_retry_after
from freedom.kafka.consumer.keys import event_id
from freedom.observability.failures import take as take_failure
from freedom.wire.batch import BatchSettings
from freedom.wire.encoding import (
    ENCODED_HEADER,
    KEY_HEADER,
    b64encode,
    hex_name,
    is_key_itself,
    plain_name,
    plain_value,
    printable,
)
from freedom.wire.headers import (
    CONTROL_HEADERS,
    DEADLINE_HEADER,
    DELIVERY_COUNT_HEADER,
    MESSAGE_KEY_HEADER,
    OUTCOME_HEADER,
    REPLAY_HEADERS,
    RETRY_COUNT_HEADER,
    SECRET_HEADER,
    header_key,
)
from freedom.wire.outcomes import OUTCOMES, decode_reason, failure_detail
from freedom.wire.payloads import CONTENT_TYPE, DEFAULT_CONTENT_TYPE

log = logging.getLogger("freedom.kafka.delivery")

#: Record headers never forwarded to a delivery (docs/contract.md, "Header ownership"), whatever
#: topic the record came from: hop-by-hop headers and those that frame the request (they would
#: corrupt it or change how the server reads it: `expect: 100-continue` makes it answer 100 first),
#: and the proxy and client address headers (a server trusting them would take the record's word
#: for the caller's address).
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
        "content-length",
        "host",
        "expect",
        "forwarded",
        "via",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "client-ip",
    }
)
#: ... nor any header with one of these prefixes (`proxy-authorization`, `x-forwarded-for`, ...).
NOT_FORWARDED_PREFIXES = ("proxy-", "x-forwarded-")
#: The headers the proxy itself sets on a delivery: a record's own value is dropped, always.
PROXY_SET = frozenset(
    {
        MESSAGE_KEY_HEADER,
        RETRY_COUNT_HEADER,
        SECRET_HEADER,
        KEY_HEADER,
        ENCODED_HEADER,
        DEADLINE_HEADER,
        DELIVERY_COUNT_HEADER,
    }
)
#: On a record read from a main topic the control headers (the reason, omission and replay headers,
#: `x-freedom-outcome`, ...: wire.headers.CONTROL_HEADERS) come from outside and are dropped too; on
#: a record the proxy wrote (read from a retry or dead-letter topic) they are its own and are
#: forwarded. So are the replay headers of a main-topic replay the proxy checked (replays.py).
UNTRUSTED_ON_MAIN_TOPIC = frozenset(CONTROL_HEADERS)
KEPT_ON_A_REPLAY = frozenset(REPLAY_HEADERS)

#: The most bytes a delivery's headers may take (names, values and the event id in the path,
#: after encoding). Every server freedom runs on takes more (uvicorn with httptools has no limit,
#: granian ~500 KB); a record that needs more cannot be delivered as a request (permanent).
MAX_HEADER_BYTES = 256 * 1024

RecordHeaders = list[tuple[str, bytes | None]]

#: A delivery's timeout when its route gives none (`delivery_timeout_sec`'s default).
DEFAULT_TIMEOUT_SEC = 30.0
#: How much longer than the deadline it sends (`x-freedom-timeout-ms`) the proxy waits for the
#: answer: a freedom service cancels the handler at the deadline and answers 504, and that answer
#: normally arrives first, so the proxy never gives up on a handler that is still running.
DEADLINE_GRACE_SEC = 1.0


def deadline_of(route: EventRoute, default: float = DEFAULT_TIMEOUT_SEC) -> float:
    """The deadline of a delivery on `route`, in seconds: the route's `timeout_sec`, else `default`."""
    return route.timeout_sec if route.timeout_sec is not None else default


def proxy_wait(deadline: float) -> float:
    """How long the proxy waits for the answer to a delivery with `deadline` before it counts as
    failed ("timed out waiting for the handler"): the deadline plus :data:`DEADLINE_GRACE_SEC`."""
    return deadline + DEADLINE_GRACE_SEC


class UnsendableRecord(Exception):
    """The record cannot be encoded as an HTTP request (the message names the cause)."""

    def result(self) -> DeliveryResult:
        return DeliveryResult(
            error=f"the record cannot be sent as an HTTP request: {self}", permanent=True
        )


# Where a record was read from, for the rules below (the index of its verdict in a _NameRule).
_MAIN, _WRITTEN, _REPLAY = 3, 4, 5  # a main topic; a topic the proxy writes; a checked replay


def _dropped(name: str, source: int) -> bool:
    """Whether a record header `name` (lowercased) read from `source` stays out of the delivery.
    Every rule holds for each spelling of a name (`x_forwarded_for` is `x-forwarded-for`:
    headers.header_key); freedom writes its control headers with `-` only, so another spelling of
    one is never its own."""
    key = header_key(name)
    if key in NOT_FORWARDED or key in PROXY_SET or key.startswith(NOT_FORWARDED_PREFIXES):
        return True
    return forged_control(name, key, from_main=source != _WRITTEN, replay=source == _REPLAY)


def forged_control(name: str, key: str, *, from_main: bool, replay: bool) -> bool:
    """Whether a record header `name` (lowercased; `key` its headers.header_key) is a control
    header freedom did not write: another spelling than freedom's of one, from any topic; or, on
    a record read from a main topic, any control header but the replay headers of a replay the
    proxy checked (`replay`, replays.py). The one rule for deliveries (request_headers) and for
    the retry and dead-letter copies (retry.py)."""
    if key not in UNTRUSTED_ON_MAIN_TOPIC:
        return False
    if key != name:
        return True
    return from_main and not (replay and name in KEPT_ON_A_REPLAY)


# What request_headers decided about a record header name: (name as bytes, lowercased, travels as
# it is, dropped from a main-topic record, from a retry-topic record, from a checked replay). Names
# repeat from record to record; the cache is bounded because hostile records can carry any names.
_NameRule = tuple[bytes, bytes, bool, bool, bool, bool]
_NAMES: dict[str | bytes, _NameRule] = {}
_NAMES_MAX = 4096
_CONTENT_TYPE = CONTENT_TYPE.encode()
_CONTENT_TYPE_RULE: _NameRule = (_CONTENT_TYPE, _CONTENT_TYPE, True, False, False, False)
_DEFAULT_CONTENT_TYPE = DEFAULT_CONTENT_TYPE.encode()
_DEADLINE = DEADLINE_HEADER.encode()
_ENCODED = ENCODED_HEADER.encode()
_MESSAGE_KEY = MESSAGE_KEY_HEADER.encode()
_KEY = KEY_HEADER.encode()
_RETRY_COUNT = RETRY_COUNT_HEADER.encode()
_DELIVERY_COUNT = DELIVERY_COUNT_HEADER.encode()
# Values that repeat from delivery to delivery, made once: retry counts, deadlines in ms (bounded).
_COUNTS = [str(n).encode() for n in range(101)]  # retry_count is at most 100
_DEADLINES: dict[float, bytes] = {}


def _name_rule(k: str | bytes) -> _NameRule:
    rule = _NAMES.get(k)
    if rule is None:
        name = k.encode("utf-8", "surrogatepass") if isinstance(k, str) else k
        lower = name.lower()
        plain = plain_name(name)
        text = lower.decode("latin-1")
        rule = (
            name,
            lower,
            plain,
            plain and _dropped(text, _MAIN),
            plain and _dropped(text, _WRITTEN),
            plain and _dropped(text, _REPLAY),
        )
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[k] = rule
    return rule


@dataclass(frozen=True)
class EventRoute:
    """Where the records of one topic are delivered."""

    topic: str
    path: str  # e.g. /store/sell/goods/{event_id}
    param: str | None  # the path parameter that receives the message key
    batch: BatchSettings | None = (
        None  # listen_event(..., batch=): records go in batches (infra/kafka/batching.py)
    )
    #: How long one delivery may take (the topic's `delivery_timeout_sec`, put here by the consumer
    #: proxy); None: the transport's default.
    timeout_sec: float | None = None

    def url_path(self, key: str) -> str:
        """The path of a delivery: `key` (an event id, or a key as text) percent-encoded in the parameter."""
        if self.param is None:
            return self.path
        return self.path.replace("{" + self.param + "}", quote(event_id(key), safe=""))


@dataclass(frozen=True)
class DeliveryResult:
    """How one delivery went: the status (or the transport error) and the handler's outcome, if any."""

    status: int | None = None
    error: str | None = None
    outcome: str | None = None  # "retry", "dead-letter", "drop" from the x-freedom-outcome header
    reason: str | None = None  # x-freedom-reason, decoded
    # What the body of a 4xx/5xx answer said, in one line (outcomes.failure_detail: FastAPI's
    # validation errors as `body.amount: Field required`), at most outcomes.MAX_DETAIL_BYTES.
    detail: str | None = None
    # True when the same delivery can never succeed however often it is tried (the record cannot
    # be encoded as a request, the handler refused the body as invalid, ...): the proxy then
    # dead-letters it at once, whatever retry_count says (docs/contract.md, "Every record
    # settles").
    permanent: bool = False
    #: Seconds a 429/503 answer's `Retry-After` asked to wait (backpressure.py), None without one.
    retry_after: float | None = None
    #: The traceback of the handler's exception, when freedom's event route in this process held it
    #: for this answer (`x-freedom-failure-id`, observability/failures.py): logged once per record,
    #: at its dead letter (proxy.py). Not part of `describe()`.
    trace: str | None = None

    @property
    def ok(self) -> bool:
        """Handled: 2xx without a retry/dead-letter outcome, or an explicit drop."""
        if self.outcome == "drop":
            return True
        return self.outcome is None and self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        """One line for logs and the dead-letter `x-freedom-error` header (control characters escaped)."""
        what = f"HTTP {self.status}" if self.status is not None else (self.error or "unknown error")
        if self.outcome:
            what += f", handler asked: {self.outcome}"
        if self.reason:
            what += f" ({self.reason})"
        elif self.detail:
            what += f" ({self.detail})"
        return printable(what)  # the reason is the handler's text, an error may quote the service's


@dataclass(frozen=True)
class RawAnswer:
    """A transport's answer to a request other than a per-record delivery (a batch): the status,
    the raw outcome headers and the body (up to the size asked for)."""

    status: int
    outcome: str | None
    reason: str | None
    body: bytes
    failure: str | None = None  # the raw x-freedom-failure-id


def request_headers(
    record_headers: RecordHeaders, key: str, retry_count: int, deadline: float | None = None
) -> list[tuple[bytes, bytes]]:
    """The headers of one delivery, the one place where they are built, by the rule of
    `freedom.wire.encoding`: the record's headers (minus :data:`NOT_FORWARDED` and the proxy's own), each
    as it is when HTTP can carry it, else encoded and named in `x-freedom-encoded`; then
    `x-message-key` (the event id), `x-freedom-key` (the key, when the id is not the key itself),
    `x-retry-count`, and with a `deadline` (seconds) `x-freedom-timeout-ms`.

    Every delivery has one `content-type` (freedom.wire.payloads): the record's (its last non-empty
    one), else `application/json`, so that typed handler parameters parse the body.

    `key` is the record's :class:`~.keys.EventId` (`record_key`), or the key as text. Raises
    :class:`UnsendableRecord` when the result would exceed :data:`MAX_HEADER_BYTES`.
    """
    eid = event_id(key)
    source = _WRITTEN if eid.proxy_written else _REPLAY if eid.verified_replay else _MAIN
    kept: list[tuple[_NameRule, bytes]] = []
    encoded: set[bytes] = set()  # lowercased names of which some value cannot travel as it is
    typed: int | None = None  # where in `kept` the record's content-type is
    for k, v in record_headers:
        rule = _NAMES.get(k) or _name_rule(k)
        if rule[source]:
            continue
        v = v or b""
        if rule[1] == _CONTENT_TYPE:  # one per delivery: the record's last non-empty one
            if not v:
                continue
            if typed is not None:
                kept[typed] = (rule, v)
            else:
                typed = len(kept)
                kept.append((rule, v))
        else:
            kept.append((rule, v))
        if not rule[2] or not plain_value(v):
            encoded.add(rule[1])
    if typed is None:  # a record without one (Go freedom services send JSON without it)
        kept.append((_CONTENT_TYPE_RULE, _DEFAULT_CONTENT_TYPE))
    # One value of a name that HTTP cannot carry as it is: every value of that name is encoded.
    # (Names are lowercase here, whatever the record's spelling: servers see them so.)
    if not encoded:  # the usual case: every header as it is
        out = [(rule[1], v) for rule, v in kept]
    else:
        out = []
        listed: list[bytes] = []
        for rule, v in kept:
            lower = rule[1]
            if lower in encoded:
                if not rule[2]:
                    lower = hex_name(rule[0])
                if lower not in listed:
                    listed.append(lower)
                out.append((lower, b64encode(v)))
            else:
                out.append((lower, v))
        out.append((_ENCODED, b",".join(listed)))
    out.append((_MESSAGE_KEY, eid.encode()))
    if eid.key is not None and not is_key_itself(eid):
        out.append((_KEY, b64encode(eid.key)))
    out.append(
        (
            _RETRY_COUNT,
            _COUNTS[retry_count] if 0 <= retry_count <= 100 else str(retry_count).encode(),
        )
    )
    if eid.delivery_count is not None:
        out.append((_DELIVERY_COUNT, str(eid.delivery_count).encode()))
    if deadline is not None:
        ms = _DEADLINES.get(deadline)
        if ms is None:
            ms = str(max(1, round(deadline * 1000))).encode()
            if len(_DEADLINES) < 256:
                _DEADLINES[deadline] = ms
        out.append((_DEADLINE, ms))
    size = len(eid) + 4 * len(out)
    for header, text in out:
        size += len(header) + len(text)
    if size > MAX_HEADER_BYTES:
        raise UnsendableRecord(
            f"its headers and key take {size} bytes as HTTP headers, over the "
            f"{MAX_HEADER_BYTES} a delivery may carry (delivery.MAX_HEADER_BYTES)"
        )
    return out


#: The most bytes of a failure answer's body a transport keeps for :func:`result_of` (the detail
#: is cut much shorter; a longer body is read and dropped).
MAX_FAILURE_BODY = 16 * 1024


def keeps_body(status: int) -> bool:
    """True for the answers whose body the transports keep (up to :data:`MAX_FAILURE_BODY`): 4xx, 5xx."""
    return status >= 400


def result_of(
    status: int,
    outcome: str | None,
    reason: str | None,
    body: bytes | None = None,
    retry_after: str | bytes | None = None,
    failure: str | bytes | None = None,
) -> DeliveryResult:
    """The result of an answer with `status`, the raw `x-freedom-outcome` / `x-freedom-reason`
    values, (for a 4xx/5xx answer) the start of its body, its raw `Retry-After` (read on a
    429 or 503 answer only, backpressure.py) and its raw `x-freedom-failure-id` (the traceback
    freedom's event route holds for it in this process is taken: DeliveryResult.trace)."""
    if outcome is not None:
        outcome = outcome.strip().lower()
        if outcome not in OUTCOMES:
            log.warning(
                "ignoring unknown %s: %r (expected one of %s)",
                OUTCOME_HEADER,
                outcome,
                ", ".join(OUTCOMES),
            )
            outcome = None
    detail = failure_detail(body) if body and keeps_body(status) else None
    wait = (
        parse_retry_after(retry_after)
        if retry_after is not None and status in RETRY_AFTER_STATUSES
        else None
    )
    return DeliveryResult(
        status=status,
        outcome=outcome,
        reason=decode_reason(reason) if reason else None,
        detail=detail,
        retry_after=wait,
        trace=take_failure(failure) if failure is not None else None,
    )


class Transport(Protocol):
    """How deliveries reach the service: over HTTP (transports/http.py, http1.py), by calling the
    ASGI application in the same process (transports/asgi.py), or by calling the event handlers
    themselves (transports/direct.py). They send the same request (or, direct, hand the handler what
    that request would give it) and read the answer by the same rule (:func:`result_of`)."""

    proxy_addr: str

    async def wait_until_reachable(self, deadline: float, stop: asyncio.Event) -> bool:
        """Wait until the service can take deliveries; False at the loop time `deadline`."""
        ...

    async def deliver(
        self, route: EventRoute, key: str, value: bytes, headers: RecordHeaders, retry_count: int
    ) -> DeliveryResult:
        """Deliver one record; never raises for the service's or the network's faults."""
        ...

    async def post(
        self,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        keep_body: int,
        wait: float | None = None,
    ) -> RawAnswer | DeliveryResult:
        """`POST path` with `headers` and `body` (a batch, batching.py), keeping up to `keep_body`
        bytes of the answer; a DeliveryResult when there was no answer (within `wait` seconds)."""
        ...

    async def aclose(self) -> None: ...


INPROCESS = "inprocess"  # proxy_addr value selecting in-process delivery
