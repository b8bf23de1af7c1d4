"""What freedom's event routes answer when their handler raises (docs/contract.md, "The answer";
docs/consumer-proxy.md, "When a handler raises").

An exception no exception handler of the application takes (not `freedom.Retry` & co., not an
`HTTPException`, not a class the application registered a handler for) used to leave the route,
and the server answered `500 Internal Server Error` and logged its traceback: at every attempt,
while the record's retry and dead-letter records said only `HTTP 500 (Internal Server Error)`.
An event route now answers it itself (the wrapper is deadline.DeadlineRoute, which every event
route has):

- `500`, `x-freedom-reason: <the exception's type and message>` (percent-encoded; the consumer
  proxy puts it into `x-freedom-error`: `HTTP 500 (ValueError: amount must be positive)`) and the
  same text as the JSON body's `detail`; with app.toml `error_detail = false`, the type alone;
- `x-freedom-failure-id`: the id under which the traceback is held for the consumer proxy of this
  process (freedom/observability/failures.py), which logs it once per record, at its dead letter.
  When no proxy of this process takes it (the delivery came from elsewhere), it is logged here.

Ordinary routes keep FastAPI's behaviour, and so does an application that registered its own
handler for `Exception` (or 500): the exception is left to it, as before.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import MutableMapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.routing import get_route_path  # type: ignore[attr-defined]  # Starlette's own import

from freedom.kafka.consumer.delivery import DeliveryResult, result_of
from freedom.observability.failures import hold, log_with_traceback
from freedom.wire.encoding import printable
from freedom.wire.headers import FAILURE_HEADER, REASON_HEADER, RETRY_COUNT_HEADER
from freedom.wire.outcomes import encode_reason, exception_summary

log = logging.getLogger("freedom.web.failures")

ASGISend = Any

_REASON = REASON_HEADER.encode()
_FAILURE = FAILURE_HEADER.encode()
_RETRY_COUNT = RETRY_COUNT_HEADER.encode()


def handled_elsewhere(scope: MutableMapping[str, Any], exc: Exception) -> bool:
    """True when an exception handler of the application takes `exc`: Starlette's for
    `HTTPException`, one registered for its class or a base class (freedom's `Outcome`, the
    application's own), or the application's own handler for `Exception` or 500."""
    if isinstance(exc, HTTPException):
        return True
    handlers = scope.get("starlette.exception_handlers")  # ExceptionMiddleware's, by class
    if handlers and any(cls in handlers[0] for cls in type(exc).__mro__):
        return True
    own = getattr(scope.get("app"), "exception_handlers", None) or {}
    return Exception in own or 500 in own


class FailureAnswers:
    """How the event routes of one application answer an exception of their handler."""

    def __init__(self, *, detail: bool = True) -> None:
        #: app.toml's `error_detail`: the exception's message goes into the answer (else its type only).
        self.detail = detail

    async def answer(self, scope: MutableMapping[str, Any], exc: Exception, send: ASGISend) -> None:
        """Answer 500 for `exc` (the response has not started), holding its traceback for the
        consumer proxy."""
        headers, body = self.parts(scope, exc)
        await send({"type": "http.response.start", "status": 500, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def parts(
        self, scope: MutableMapping[str, Any], exc: Exception
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The headers and body of :meth:`answer`'s 500 for `exc`, its traceback held."""
        summary, token = self.hold(scope, exc)
        body = json.dumps({"detail": summary}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (_REASON, encode_reason(summary).encode("ascii")),
            (_FAILURE, token.encode()),
        ]
        return headers, body

    def result(self, scope: MutableMapping[str, Any], exc: Exception) -> DeliveryResult:
        """What the consumer proxy makes of :meth:`answer`'s 500 for `exc` (its traceback taken
        back at once): a direct delivery's result (web/direct.py), the same as the answer's."""
        summary, token = self.hold(scope, exc)
        body = json.dumps({"detail": summary}).encode()
        return result_of(500, None, encode_reason(summary), body, failure=token)

    def hold(self, scope: MutableMapping[str, Any], exc: Exception) -> tuple[str, str]:
        """The summary of `exc` the answer gives, and the id under which its traceback is held for
        the consumer proxy (logged here if no proxy of this process takes it)."""
        summary = exception_summary(exc, message=self.detail)
        path = printable(get_route_path(scope))
        attempt = next(
            (v for k, v in scope.get("headers") or () if k.lower() == _RETRY_COUNT), None
        )

        def unclaimed(trace: str) -> None:
            log_with_traceback(
                log,
                logging.ERROR,
                trace,
                "the handler of POST %s raised %s (%s %s); no consumer proxy of this process "
                "took its traceback (the delivery came from elsewhere), so it is logged here",
                path,
                printable(summary),
                RETRY_COUNT_HEADER,
                printable(attempt.decode("latin-1")) if attempt is not None else "absent",
            )

        return summary, hold("".join(traceback.format_exception(exc)), unclaimed)
