"""What an event handler can ask the consumer proxy to do with its record, besides succeed or fail.

In Python, raise one of these from an event handler (a controller method or a FastAPI route):

    raise freedom.Retry("stock service is down")        # try again later, through the retry topic
    raise freedom.DeadLetter("not valid JSON")          # to the dead-letter topic now, no more retries
    raise freedom.Drop("duplicate order")               # forget the record (logged), commit it

On the wire the answer carries the header `x-freedom-outcome: retry | dead-letter | drop`, and
`x-freedom-reason` with the (percent-encoded) message. Any service, in any language, can send
these headers; the proxy reads the header first, then the status (2xx success, else failure).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from .headers import OUTCOME_HEADER, REASON_HEADER

MAX_REASON = 500

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
    return PlainTextResponse(exc.reason or exc.outcome, status_code=exc.status_code, headers=headers)


async def handle_outcome(_request: Request, exc: Exception) -> Response:
    """Exception handler the Application registers for :class:`Outcome`."""
    assert isinstance(exc, Outcome)
    return outcome_response(exc)
