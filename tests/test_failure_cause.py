"""A handler that raises: its exception's type and message travel into the retry and dead-letter
records (`x-freedom-error`), the log has one line per failed attempt naming it and the traceback
once per record, at the dead letter (issue 20, point 3). Over HTTP/1.1 and in-process, on Apache
Kafka; the answer of an event route, and what stays as it was, without Kafka."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException
from fastapi.responses import JSONResponse

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.services.event_app import Delivery, Journal, event_app, reads_of
from tests.services.kafka_tools import committed, headers_of, produce, read_all, wait_drained

MESSAGE = "amount must be positive"
TRACEBACK = "Traceback (most recent call last)"


def _negative_amount(call: Delivery) -> None:
    raise ValueError(MESSAGE)


def _service(
    config_dir: Path,
    bootstrap: str,
    journal: Journal,
    topic: str,
    behave: Any,
    delivery: str,
    app: dict[str, Any] | None = None,
    **consumer: Any,
) -> ServiceThread:
    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    write_config(
        config_dir,
        app={"listen_addr": f"127.0.0.1:{port}", **(app or {})},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            delivery=delivery,
            retry_group_id=f"r-{group}",
            settings={"session.timeout.ms": 6000},
            **consumer,
        ),
    )
    return ServiceThread(event_app(config_dir, journal, topic, behave))


def _tracebacks(records: list[logging.LogRecord], mentioning: str) -> list[logging.LogRecord]:
    """The log records whose traceback (logged exception) mentions `mentioning`."""
    formatter = logging.Formatter()
    out = []
    for r in records:
        text = r.exc_text or (formatter.formatException(r.exc_info) if r.exc_info else "")
        out += [r] * sum(mentioning in part for part in text.split(TRACEBACK)[1:])
    return out


def _lines(records: list[logging.LogRecord], *parts: str) -> list[str]:
    messages = [r.getMessage() for r in records]
    return [m for m in messages if all(p in m for p in parts)]


def test_the_exception_reaches_the_dead_letter_and_its_traceback_is_logged_once(
    apache_kafka, new_topic, tmp_path, delivery, caplog
):
    caplog.set_level(logging.INFO)
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = _service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        _negative_amount,
        delivery,
        retry_count=1,
        retry_interval_sec=0.2,
    )
    with svc:
        produce(bootstrap, topic, [{"key": b"K-NEG", "value": b'{"amount": -3}'}])
        wait_drained(bootstrap, reads_of(svc.app, topic), 60, what="the record dead-lettered")
        dead = read_all(bootstrap, f"fail-{topic}")
        retried = read_all(bootstrap, f"retry-{topic}")
    assert [c.headers["x-retry-count"] for c in journal.of()] == ["0", "1"]
    expected = f"HTTP 500 (ValueError: {MESSAGE})"
    assert [headers_of(r)["x-freedom-error"] for r in retried] == [expected]
    [letter] = dead
    h = headers_of(letter)
    assert h["x-freedom-error"] == expected and h["x-freedom-status"] == "500", h
    assert letter.key() == b"K-NEG" and h["x-retry-count"] == "1"

    records = caplog.records
    # One line per failed attempt, naming the exception and the record as the proxy's lines do.
    attempts = _lines(records, f"failed: {expected}", "(key K-NEG) to /store/event/")
    assert len(attempts) == 2, attempts
    assert f"{topic}[0]@0 (key K-NEG)" in attempts[0] and "retry 1 of 1" in attempts[0]
    assert f"retry-{topic}[0]@0 (key K-NEG)" in attempts[1]
    assert f"dead-lettered to fail-{topic}" in attempts[1]
    # The traceback once, on the dead-letter line, and nowhere else (no server's traceback of
    # each attempt: uvicorn's "Exception in ASGI application", the in-process transport's).
    traced = _tracebacks(records, "_negative_amount")
    assert len(traced) == 1, [r.getMessage() for r in traced]
    assert traced[0].getMessage() == attempts[1]
    assert MESSAGE in (traced[0].exc_text or "")
    assert not _lines(records, "Exception in ASGI application")
    assert not _lines(records, "the application raised")
    assert not _lines(records, "no consumer proxy of this process took its traceback")


def test_error_detail_false_keeps_the_message_out_of_the_records(
    apache_kafka, new_topic, tmp_path, delivery, caplog
):
    """app.toml `error_detail = false`: the retry and dead-letter records name the type alone."""
    caplog.set_level(logging.INFO)
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()
    svc = _service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        _negative_amount,
        delivery,
        app={"error_detail": False},
        retry_count=1,
        retry_interval_sec=0.2,
    )
    with svc:
        produce(bootstrap, topic, [{"key": b"K-PII", "value": b"{}"}])
        wait_drained(bootstrap, reads_of(svc.app, topic), 60, what="the record dead-lettered")
        written = read_all(bootstrap, f"retry-{topic}") + read_all(bootstrap, f"fail-{topic}")
    assert len(written) == 2
    for record in written:
        h = headers_of(record)
        assert h["x-freedom-error"] == "HTTP 500 (ValueError)", h
        assert not any(MESSAGE in v for v in h.values()), h
    attempts = _lines(caplog.records, "failed: HTTP 500 (ValueError)", "(key K-PII)")
    assert len(attempts) == 2 and not any(MESSAGE in line for line in attempts), attempts
    assert len(_tracebacks(caplog.records, "_negative_amount")) == 1  # the service's own log


def test_redelivered_in_place_the_traceback_comes_with_the_first_failure(
    apache_kafka, new_topic, tmp_path, delivery, caplog
):
    """With retry_count = 0 there may never be a dead letter: the traceback goes with the first
    failed attempt, and not with the ones after it."""
    caplog.set_level(logging.INFO)
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    journal = Journal()

    def twice(call: Delivery) -> None:
        if call.nth < 2:
            raise ValueError(MESSAGE)

    svc = _service(tmp_path, bootstrap, journal, topic, twice, delivery, retry_count=0)
    group = svc.app.kafka_config.consumer_clients[0].group_id
    with svc:
        produce(bootstrap, topic, [{"key": b"K-TWICE", "value": b"{}"}])
        wait_until(lambda: committed(bootstrap, group, topic)[0] == 1, 30, what="the commit")
    assert len(journal.of()) == 3
    attempts = _lines(
        caplog.records, f"failed: HTTP 500 (ValueError: {MESSAGE})", "delivering again"
    )
    assert len(attempts) == 2, attempts
    traced = _tracebacks(caplog.records, "twice")
    assert [r.getMessage() for r in traced] == attempts[:1]


# ------------------------------------------------------------------ the answer, without Kafka


class ShopError(Exception):
    pass


def _app(tmp_path: Path, **app_toml: Any) -> freedom.Application:
    class Store:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> None:
            what = self.runtime.request.headers.get("x-do")
            if what == "http":
                raise HTTPException(status_code=409, detail="sold out")
            if what == "shop":
                raise ShopError("handled by the application")
            if what == "retry":
                raise freedom.Retry("later")
            raise ValueError(f"{MESSAGE}\n\x1b[2J" + "x" * 600)

        async def post_plain(self) -> None:
            raise ValueError("not an event route")

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event("orders", "Store.post_event_by")

    write_config(tmp_path, app=app_toml)
    app = freedom.Application(config_dir=tmp_path, prepare=[prepare])

    async def shop_error(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"shop": str(exc)}, status_code=418)

    app.fastapi.add_exception_handler(ShopError, shop_error)
    return app.setup()


async def _post(app: Any, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post(path, headers=headers)


async def test_an_event_route_answers_500_naming_the_exception(tmp_path):
    from freedom.kafka.consumer.delivery import result_of
    from freedom.wire.outcomes import MAX_SUMMARY_BYTES

    r = await _post(_app(tmp_path), "/store/event/K1")
    assert r.status_code == 500
    detail = r.json()["detail"]
    assert detail.startswith(f"ValueError: {MESSAGE}\n\x1b[2Jxxx") and detail.endswith("...")
    assert len(detail.encode()) == MAX_SUMMARY_BYTES
    assert r.headers["x-freedom-reason"].startswith("ValueError: amount must be positive%0A%1B")
    # Read by the proxy's rule: the text escaped, and the traceback held for this answer taken.
    result = result_of(
        500,
        None,
        r.headers["x-freedom-reason"],
        r.content,
        failure=r.headers["x-freedom-failure-id"],
    )
    assert result.describe().startswith(f"HTTP 500 (ValueError: {MESSAGE}\\n\\x1b[2Jxxx")
    assert result.trace is not None and result.trace.startswith(TRACEBACK)
    assert "post_event_by" in result.trace and MESSAGE in result.trace
    again = result_of(500, None, None, None, failure=r.headers["x-freedom-failure-id"])
    assert again.trace is None  # taken once


async def test_error_detail_false_answers_the_type_alone(tmp_path):
    r = await _post(_app(tmp_path, error_detail=False), "/store/event/K1")
    assert (r.status_code, r.json(), r.headers["x-freedom-reason"]) == (
        500,
        {"detail": "ValueError"},
        "ValueError",
    )


@pytest.mark.parametrize(
    "what, status",
    [("http", 409), ("shop", 418), ("retry", 503)],
)
async def test_exceptions_with_a_handler_keep_it(tmp_path, what, status):
    r = await _post(_app(tmp_path), "/store/event/K1", **{"x-do": what})
    assert r.status_code == status and "x-freedom-failure-id" not in r.headers


async def test_other_routes_and_an_own_exception_handler_keep_fastapi_s_behaviour(tmp_path):
    app = _app(tmp_path)
    transport = httpx.ASGITransport(app=app)  # the exception leaves the application
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(ValueError, match="not an event route"):
            await client.post("/store/plain")

    async def everything(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"own": type(exc).__name__}, status_code=500)

    own = _app(tmp_path / "own")
    own.fastapi.add_exception_handler(Exception, everything)
    r = await _post(own, "/store/event/K1")
    assert (r.status_code, r.json()) == (500, {"own": "ValueError"})
    assert "x-freedom-failure-id" not in r.headers


async def test_a_traceback_no_proxy_takes_is_logged_where_it_happened(
    tmp_path, caplog, monkeypatch
):
    """A delivery from elsewhere (`freedom proxy`, another process, curl): the route logs it."""
    import asyncio

    from freedom.observability import failures

    monkeypatch.setattr(failures, "UNCLAIMED_AFTER_SEC", 0.05)
    caplog.set_level(logging.INFO)
    r = await _post(_app(tmp_path), "/store/event/K-ELSEWHERE", **{"x-retry-count": "2"})
    assert r.status_code == 500
    for _ in range(200):  # until the held traceback was handed back (UNCLAIMED_AFTER_SEC)
        if _lines(caplog.records, "no consumer proxy of this process took its traceback"):
            break
        await asyncio.sleep(0.01)
    [line] = _lines(caplog.records, "no consumer proxy of this process took its traceback")
    assert "POST /store/event/K-ELSEWHERE raised ValueError: amount must be positive\\n" in line
    assert "(x-retry-count 2)" in line
    assert len(_tracebacks(caplog.records, "post_event_by")) == 1
    assert failures.take(r.headers["x-freedom-failure-id"]) is None  # handed back, not held


async def test_a_batch_s_traceback_goes_with_its_first_record_only():
    """A batch handler that raised: every record of the batch fails naming the exception; the
    traceback is logged (at most) once, with the first record."""
    from freedom.kafka.consumer.batching import results_of
    from freedom.kafka.consumer.delivery import RawAnswer
    from freedom.observability import failures

    token = failures.hold(f"{TRACEBACK}:\nValueError: {MESSAGE}\n", lambda _text: None)
    answer = RawAnswer(500, None, f"ValueError: {MESSAGE}", b"{}", token)
    results = results_of(answer, ["a", "b", "c"])
    assert [r.describe() for r in results] == [f"HTTP 500 (ValueError: {MESSAGE})"] * 3
    assert results[0].trace is not None and MESSAGE in results[0].trace
    assert results[1].trace is None and results[2].trace is None
