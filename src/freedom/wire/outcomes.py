"""What an event handler can ask the consumer proxy to do with its record, besides succeed or fail.

In Python, raise one of these from an event handler (a controller method or a FastAPI route):

    raise freedom.Retry("stock service is down")        # try again later, through the retry topic
    raise freedom.DeadLetter("not valid JSON")          # to the dead-letter topic now, no more retries
    raise freedom.Drop("duplicate order")               # forget the record (logged), commit it

On the wire the answer carries the header `x-freedom-outcome: retry | dead-letter | drop`, and
`x-freedom-reason` with the (percent-encoded) message. Any service, in any language, can send
these headers; the proxy reads the header first, then the status (2xx success, else failure).

Without the header, a status that can never succeed on a retry (:data:`DEAD_LETTER_STATUSES`,
configurable per consumer client and per topic as `dead_letter_statuses`) sends the record to the
dead-letter topic at once; a 422 (the body failed validation) is one. What the answer's body says,
folded into one line of at most 1 KiB (:func:`failure_detail`), goes with it into
`x-freedom-error` when the answer gave no `x-freedom-reason`.

freedom's event routes answer a handler's uncaught exception with `500` and
:func:`exception_summary` as the reason (`ValueError: amount must be positive`: web/failures.py).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from freedom.wire.headers import OUTCOME_HEADER, REASON_HEADER

MAX_REASON = 500
MAX_DETAIL_BYTES = 1024  # failure_detail's longest result, in UTF-8 bytes
#: The longest :func:`exception_summary`, in UTF-8 bytes: within the MAX_REASON characters of
#: `x-freedom-reason` that the consumer proxy keeps.
MAX_SUMMARY_BYTES = 500

#: The statuses that dead-letter a record at once (no retries): the request as sent can never
#: succeed, however often it is repeated. Knative Eventing's rule is the anchor (4xx is not retried,
#: except 404, 408, 409, 429; 5xx is); freedom also retries 401, 403 and 405, which a wrong shared
#: secret or a route deployed with another method gives every record alike (configuration, fixed by
#: fixing it; dead-lettering would empty whole topics), and 423, 424 and 425, which are temporary.
#: 422 (Unprocessable Content: FastAPI's validation error) is the poison message's status.
DEAD_LETTER_STATUSES: tuple[int, ...] = (
    400,
    402,
    406,
    410,
    411,
    412,
    413,
    414,
    415,
    416,
    417,
    421,
    422,
    426,
    428,
    431,
    451,
)

OutcomeName = Literal["retry", "dead-letter", "drop"]
OUTCOMES: tuple[str, ...] = ("retry", "dead-letter", "drop")


class Outcome(Exception):
    """Base of the handler outcomes: raising one answers the delivery with its outcome header."""

    outcome: OutcomeName = "retry"
    status_code: int = 503

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Retry(Outcome):
    """Deliver the record again later (through the retry topic), as a failure would; answers 503."""

    outcome: OutcomeName = "retry"
    status_code = 503


class DeadLetter(Outcome):
    """Send the record to the dead-letter topic now, without using up the retries; answers 422."""

    outcome: OutcomeName = "dead-letter"
    status_code = 422


class Drop(Outcome):
    """Do nothing more with the record: it is committed and a warning is logged; answers 200."""

    outcome: OutcomeName = "drop"
    status_code = 200


def encode_reason(reason: str) -> str:
    """The reason as a header value: printable ASCII, at most MAX_REASON characters."""
    return quote(reason[:MAX_REASON], safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def decode_reason(value: str) -> str:
    return unquote(value)[:MAX_REASON]


def outcome_response(exc: Outcome) -> Response:
    """The HTTP answer carrying `exc`'s outcome (and reason) to the consumer proxy."""
    headers: dict[str, str] = {OUTCOME_HEADER: exc.outcome}
    if exc.reason:
        headers[REASON_HEADER] = encode_reason(exc.reason)
    return PlainTextResponse(
        exc.reason or exc.outcome, status_code=exc.status_code, headers=headers
    )


async def handle_outcome(_request: Request, exc: Exception) -> Response:
    """Exception handler the Application registers for :class:`Outcome`."""
    assert isinstance(exc, Outcome)
    return outcome_response(exc)


def exception_summary(exc: BaseException, *, message: bool = True) -> str:
    """What freedom's event route answers for a handler that raised `exc` (web/failures.py), in
    `x-freedom-reason` and the body's `detail`: `ValueError: amount must be positive`, the type
    named as Python's traceback names it (with its module unless it is a built-in or `__main__`'s),
    at most :data:`MAX_SUMMARY_BYTES`. `message=False` (app.toml `error_detail = false`): the type
    alone, for services whose exception messages may hold personal data. Control characters are
    kept: the header is percent-encoded, and whoever shows the text escapes them
    (`DeliveryResult.describe`)."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ not in ("builtins", "__main__"):
        name = f"{cls.__module__}.{name}"
    if message:
        try:
            text = str(exc)
        except Exception:  # noqa: BLE001 - a broken __str__ must not break the answer
            text = "<exception str() failed>"
        if text:
            name = f"{name}: {text}"
    return _cut(name, MAX_SUMMARY_BYTES)


# `"loc": [...], "msg": "..."` of one FastAPI/Pydantic validation error, found even in a body
# cut short (its `input` may hold the whole record value).
_LOC_MSG = re.compile(rb'"loc"\s*:\s*\[([^\]]*)\]\s*,\s*"msg"\s*:\s*"((?:[^"\\]|\\.)*)"')


def failure_detail(body: bytes) -> str | None:
    """What a refusing answer's body says, in one line of at most MAX_DETAIL_BYTES.

    FastAPI's validation errors (`{"detail": [{"loc": [...], "msg": ...}, ...]}`) become
    `body.amount: Field required; body.id: Input should be a valid integer` (their `input`, which
    may hold the record's data, is left out); `{"detail": "..."}` gives its text; any other body
    its text, whitespace folded. None for an empty body.
    """
    if not body:
        return None
    text: str | None = None
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
        found = _LOC_MSG.findall(body)  # a JSON body cut short: the errors it still shows
        if found:
            text = "; ".join(f"{_loc(b'[' + loc + b']')}: {_json_text(msg)}" for loc, msg in found)
    if isinstance(data, dict) and "detail" in data:
        detail = data["detail"]
        if isinstance(detail, str):
            text = detail
        elif isinstance(detail, list):
            parts = [
                f"{'.'.join(str(p) for p in e.get('loc') or ())}: {e.get('msg')}"
                if isinstance(e, dict)
                else str(e)
                for e in detail
            ]
            text = "; ".join(parts)
    if text is None:
        text = body.decode("utf-8", "replace")
    return _cut(" ".join(text.split()), MAX_DETAIL_BYTES) or None


def _loc(raw: bytes) -> str:
    try:
        return ".".join(str(p) for p in json.loads(raw))
    except (ValueError, TypeError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace").strip("[]")


def _json_text(raw: bytes) -> str:
    try:
        return str(json.loads(b'"' + raw + b'"'))
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _cut(text: str, limit: int) -> str:
    raw = text.encode("utf-8", "replace")
    return raw[: limit - 3].decode("utf-8", "ignore") + "..." if len(raw) > limit else text
