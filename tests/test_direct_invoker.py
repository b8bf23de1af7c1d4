"""Direct in-process delivery (`inprocess_dispatch = "direct"`, the default with
`proxy_addr = "inprocess"`): the consumer proxy calls the event handler itself, without HTTP. What
the handler sees and what the proxy makes of its answer are what the ASGI path gives: compared
case by case on one application, then end to end on the test broker with both invokers."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response

import freedom
from freedom.errors import ConfigError, RouteError
from freedom.kafka.consumer.delivery import DeliveryResult, EventRoute
from freedom.kafka.consumer.keys import event_id
from freedom.kafka.transports.asgi import AsgiTransport
from freedom.kafka.transports.direct import DirectTransport
from freedom.testing import TestBroker, write_config

TOPIC = "orders"
MESSAGE = "amount must be positive"
DISPATCH = ["direct", "asgi"]


class ShopError(Exception):
    """Taken by an exception handler of the application (418)."""


def _kafka_toml(dispatch: str = "direct") -> dict[str, Any]:
    return {
        "consumer": {"open": True, "proxy_addr": "inprocess", "inprocess_dispatch": dispatch},
        "producer": {"open": True},
        "producer_clients": [{"servers": ["127.0.0.1:9"]}],
        "consumer_clients": [{"servers": ["127.0.0.1:9"], "group_id": "g-direct"}],
    }


def _configure(config_dir: Path, dispatch: str = "direct", **app_toml: Any) -> Path:
    return write_config(config_dir, app=app_toml, kafka=_kafka_toml(dispatch))


# ------------------------------------------------------------------ the answers, case by case


async def _background() -> None:
    return None


async def _stream() -> Any:
    yield b"not "
    yield b"enough stock"


def _answers() -> dict[str, Any]:
    """What the handler does for each event id: return something, or raise."""

    def raise_(exc: BaseException) -> Any:
        def go() -> Any:
            raise exc

        return go

    return {
        "none": lambda: None,
        "text": lambda: "fine",
        "json": lambda: {"stock": 3},
        "no-content": lambda: Response(status_code=204),
        "response-drop": lambda: Response(
            headers={"x-freedom-outcome": "drop", "x-freedom-reason": "seen%20before"}
        ),
        "response-500": lambda: JSONResponse({"detail": "stock service down"}, status_code=500),
        "response-429": lambda: PlainTextResponse("busy", 429, headers={"Retry-After": "3"}),
        "response-bogus-outcome": lambda: Response(headers={"x-freedom-outcome": "maybe"}),
        "streaming-400": lambda: StreamingResponse(_stream(), status_code=400),
        "background": lambda: Response(status_code=202, background=BackgroundTask(_background)),
        "retry": raise_(freedom.Retry("stock service down")),
        "dead-letter": raise_(freedom.DeadLetter("not valid JSON: ünïcode")),
        "dead-letter-bare": raise_(freedom.DeadLetter()),
        "drop": raise_(freedom.Drop("duplicate order")),
        "http-409": raise_(HTTPException(status_code=409, detail="sold out")),
        "http-503": raise_(HTTPException(503, "later", headers={"Retry-After": "2"})),
        "http-500": raise_(HTTPException(500, "broken")),
        "shop": raise_(ShopError("handled by the application")),
        "http-451": raise_(HTTPException(451, "not here")),  # a handler for the status
        "boom": raise_(ValueError(f"{MESSAGE}\n\x1b[2J")),
        "key-error": raise_(KeyError("customer")),
    }


def _comparison_app(config_dir: Path, **app_toml: Any) -> freedom.Application:
    answers = _answers()

    class Store:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Any:
            if event_id in ("boom", "response-500"):
                await asyncio.sleep(0)  # these wait first: the path under the deadline's timer
            return answers[event_id]()

        async def post_number_by(self, number: int) -> None:
            assert isinstance(number, int)

        def post_blocking_by(self, event_id: str) -> str:
            if event_id == "boom":
                raise ValueError(MESSAGE)
            return threading.current_thread().name

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)

        @initiator.fastapi.post("/plain/{event_id}", status_code=202)
        async def plain(event_id: str, request: StarletteRequest, runtime: freedom.RuntimeDep):  # type: ignore[no-untyped-def]
            assert runtime.request.scope is request.scope
            if event_id in answers:
                return answers[event_id]()
            return {"id": event_id}

        @initiator.fastapi.post("/plain-sync/{event_id}")
        def plain_sync(event_id: str):  # type: ignore[no-untyped-def]
            return answers[event_id]() if event_id in answers else None

        initiator.listen_event(TOPIC, "Store.post_event_by")
        initiator.listen_event("numbers", "Store.post_number_by")
        initiator.listen_event("blocking", "Store.post_blocking_by")
        initiator.listen_event("plain", plain)
        initiator.listen_event("plain-sync", plain_sync)

    _configure(config_dir, **app_toml)
    app = freedom.Application(config_dir=config_dir, prepare=[prepare])

    async def shop_error(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"shop": str(exc)}, status_code=418)

    def unavailable_here(_request: Any, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("blocked in this country", status_code=451)

    app.fastapi.add_exception_handler(ShopError, shop_error)
    app.fastapi.add_exception_handler(451, unavailable_here)  # a plain `def`: in the thread pool
    return app.setup()


def _transports(app: freedom.Application) -> tuple[AsgiTransport, DirectTransport]:
    direct = app.direct_calls()
    assert direct is not None
    asgi = AsgiTransport(app.fastapi)
    return asgi, DirectTransport(direct, asgi)


def _route(app: freedom.Application, topic: str, timeout: float | None = None) -> EventRoute:
    return replace(app.event_routes[topic], timeout_sec=timeout)


def _comparable(result: DeliveryResult) -> DeliveryResult:
    """The result with its traceback (different frames on the two paths) checked, then left out."""
    if result.trace is not None:
        assert result.trace.startswith("Traceback (most recent call last)")
    return replace(result, trace="held" if result.trace else None)


async def _both(app: freedom.Application, topic: str, key: str | bytes, **kw: Any) -> Any:
    asgi, direct = _transports(app)
    route = _route(app, topic, kw.pop("timeout", None))
    headers = kw.pop("headers", [])
    via_asgi = await asgi.deliver(route, event_id(key), b"{}", headers, 0)
    via_direct = await direct.deliver(route, event_id(key), b"{}", headers, 0)
    return via_asgi, via_direct


@pytest.mark.parametrize(
    "topic, key",
    [(TOPIC, name) for name in _answers()]
    + [("numbers", "12"), ("numbers", "twelve"), ("blocking", "K"), ("blocking", "boom")]
    + [("plain", name) for name in ("none-given", "json", "none", "retry", "boom", "http-409")]
    + [("plain-sync", name) for name in ("none-given", "drop", "boom")],
)
async def test_direct_and_asgi_give_the_same_result(tmp_path, topic, key):
    app = _comparison_app(tmp_path)
    via_asgi, via_direct = await _both(app, topic, key)
    assert _comparable(via_direct) == _comparable(via_asgi)


async def test_what_the_results_are(tmp_path):
    """The comparison above is not between two wrong answers: a few, spelled out."""
    app = _comparison_app(tmp_path)
    _, direct = _transports(app)
    route = _route(app, TOPIC)

    async def result(key: str, topic: str = TOPIC) -> DeliveryResult:
        return await direct.deliver(_route(app, topic), event_id(key), b"{}", [], 0)

    assert await result("none") == DeliveryResult(status=200)
    assert (
        await result("retry")
    ).describe() == "HTTP 503, handler asked: retry (stock service down)"
    assert (await result("dead-letter")).outcome == "dead-letter"
    assert (await result("drop")).ok
    assert (await result("http-409")).describe() == "HTTP 409 (sold out)"
    assert (await result("http-503")).retry_after == 2.0
    assert (await result("shop")).status == 418
    assert (await result("http-451")).describe() == "HTTP 451 (blocked in this country)"
    boom = await result("boom")
    assert boom.describe() == f"HTTP 500 (ValueError: {MESSAGE}\\n\\x1b[2J)"
    assert boom.trace is not None and "post_event_by" in boom.trace
    assert (await result("twelve", "numbers")).describe() == (
        "HTTP 422 (path.number: Input should be a valid integer, unable to parse string as an integer)"
    )
    assert (await result("plain", "plain")).status == 202
    direct_calls = app.direct_calls()
    assert direct_calls is not None and route.path in direct_calls.calls
    assert not direct_calls.fallbacks  # every route of this application is called directly


async def test_error_detail_false_gives_the_type_alone_on_both_paths(tmp_path):
    app = _comparison_app(tmp_path, error_detail=False)
    via_asgi, via_direct = await _both(app, TOPIC, "boom")
    assert _comparable(via_direct) == _comparable(via_asgi)
    assert via_direct.describe() == "HTTP 500 (ValueError)"


async def test_an_own_exception_handler_answers_on_both_paths_and_is_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    app = _comparison_app(tmp_path)

    async def everything(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"own": type(exc).__name__}, status_code=500)

    app.fastapi.add_exception_handler(Exception, everything)
    via_asgi, via_direct = await _both(app, TOPIC, "boom")
    assert via_direct == via_asgi
    assert via_direct.describe() == 'HTTP 500 ({"own":"ValueError"})'
    lines = [r for r in caplog.records if "the application raised" in r.getMessage()]
    assert len(lines) == 2, [r.getMessage() for r in lines]  # one per path, with the traceback
    assert all(r.exc_info for r in lines)


async def test_the_deadline_cancels_the_handler_on_both_paths(tmp_path, caplog):
    cancelled: list[str] = []

    class Slow:
        async def post_slow_by(self, event_id: str) -> None:
            try:
                await asyncio.Event().wait()  # hangs until cancelled
            except asyncio.CancelledError:
                cancelled.append(event_id)
                raise

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/slow", Slow)
        initiator.listen_event("slow", "Slow.post_slow_by")

    _configure(tmp_path)
    app = freedom.Application(config_dir=tmp_path, prepare=[prepare]).setup()
    via_asgi, via_direct = await _both(app, "slow", "K", timeout=0.2)
    assert via_direct == via_asgi
    assert via_direct.status == 504
    assert via_direct.describe().startswith(
        "HTTP 504 (the handler did not finish within its deadline of 200 ms"
    )
    assert cancelled == ["K", "K"]
    late = [r for r in caplog.records if "ran past its 200 ms deadline" in r.getMessage()]
    assert len(late) == 2


async def test_an_unsendable_record_is_a_permanent_failure_as_before(tmp_path):
    app = _comparison_app(tmp_path)
    huge = [("x-big", b"x" * 300_000)]
    via_asgi, via_direct = await _both(app, TOPIC, "none", headers=huge)
    assert via_direct == via_asgi and via_direct.permanent


# ------------------------------------------------------------------ end to end, both invokers


def _seeing_app(config_dir: Path, dispatch: str, seen: list[dict[str, Any]]) -> freedom.Application:
    class Store:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> None:
            request = self.runtime.request
            seen.append(
                {
                    "event_id": event_id,
                    "key": request.message_key,
                    "body": await request.body(),
                    "json": await request.json(),
                    "headers": dict(request.headers.items()),
                    "raw": request.headers.record_raw(),
                    "path": request.url.path,
                    "path_params": dict(request.path_params),
                    "app": request.app is self.runtime.request.scope["app"],
                    "bus": dict(self.runtime.bus),
                    "trace_id": self.runtime.trace_id,
                    "client": request.client,
                }
            )

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event(TOPIC, "Store.post_event_by")

    _configure(config_dir, dispatch)
    return freedom.Application(config_dir=config_dir, prepare=[prepare])


async def _seen_by(tmp_path: Path, dispatch: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with TestBroker(_seeing_app(tmp_path, dispatch, seen)) as broker:
        broker.publish(
            TOPIC,
            b'{"id": 7}',
            key=b"\xff\xfe",
            headers=[
                ("x-action", "购买".encode()),
                ("x-crlf", b"a\r\nINJECTED: 1"),
                ("bad name", b"v"),
                ("x-bin", b"\xff\x00"),
                ("x-freedom-bus", b'{"tenant": "t7"}'),
                ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ("x-forwarded-for", b"6.6.6.6"),
            ],
        )
        broker.publish(TOPIC, b'{"id": 8}', key="tenant/7 ü")
        await broker.settle()
    return seen


@pytest.mark.parametrize("dispatch", DISPATCH)
async def test_the_handler_sees_the_record(tmp_path, dispatch):
    first, second = await _seen_by(tmp_path, dispatch)
    assert first["key"] == b"\xff\xfe" and first["event_id"] == "~b64.__4"
    assert first["body"] == b'{"id": 7}' and first["json"] == {"id": 7}
    h = first["headers"]
    assert h["x-action"] == "购买" and h["x-crlf"] == "a\r\nINJECTED: 1"
    assert h["x-message-key"] == "~b64.__4" and h["x-retry-count"] == "0"
    assert h["content-type"] == "application/json" and h["x-freedom-timeout-ms"] == "30000"
    assert "x-forwarded-for" not in h  # never forwarded
    raw = dict(first["raw"])
    assert raw[b"bad name"] == b"v" and raw[b"x-bin"] == b"\xff\x00"
    assert first["path"] == "/store/event/~b64.__4"
    assert first["path_params"] == {"event_id": "~b64.__4"} and first["app"]
    assert first["bus"] == {"tenant": "t7"}
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert first["client"] is None
    assert second["event_id"] == "tenant/7 ü" and second["key"] == "tenant/7 ü".encode()
    assert second["path"] == "/store/event/tenant/7 ü"


async def test_both_invokers_show_the_handler_the_same(tmp_path):
    direct = await _seen_by(tmp_path / "direct", "direct")
    asgi = await _seen_by(tmp_path / "asgi", "asgi")
    for without_traceparent in (direct[1], asgi[1]):
        assert len(without_traceparent.pop("trace_id")) == 32  # a new trace each time
    assert direct == asgi


def _outcome_app(config_dir: Path, dispatch: str) -> freedom.Application:
    answers = _answers()

    class Store:
        async def post_event_by(self, event_id: str) -> Any:
            return answers[event_id]()

        async def post_number_by(self, number: int) -> None:
            return None

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event(TOPIC, "Store.post_event_by")
        initiator.listen_event("numbers", "Store.post_number_by")

    _configure(config_dir, dispatch)
    app = freedom.Application(config_dir=config_dir, prepare=[prepare])

    async def shop_error(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"shop": str(exc)}, status_code=418)

    app.fastapi.add_exception_handler(ShopError, shop_error)
    return app


@pytest.mark.parametrize("dispatch", DISPATCH)
async def test_outcomes_end_to_end(tmp_path, dispatch):
    app = _outcome_app(tmp_path, dispatch)
    keys = ["none", "retry", "dead-letter", "drop", "http-409", "boom", "shop"]
    async with TestBroker(app, retry_count=1, retry_interval_sec=45) as broker:
        for key in keys:
            broker.publish(TOPIC, b"{}", key=key)
        broker.publish("numbers", b"{}", key="twelve")
        await broker.settle()
        errors = {d.key().decode(): d.header("x-freedom-error") for d in broker.dead_letters(TOPIC)}
        retried = sorted(r.key().decode() for r in broker.retries(TOPIC))
        [number] = broker.dead_letters("numbers")
        assert broker.committed(TOPIC) == len(keys)
    assert retried == ["boom", "http-409", "retry", "shop"]
    assert errors == {
        "retry": "HTTP 503, handler asked: retry (stock service down)",
        "dead-letter": "HTTP 422, handler asked: dead-letter (not valid JSON: ünïcode)",
        "http-409": "HTTP 409 (sold out)",
        "boom": f"HTTP 500 (ValueError: {MESSAGE}\\n\\x1b[2J)",
        "shop": 'HTTP 418 ({"shop":"handled by the application"})',
    }
    assert number.header("x-freedom-error") == (
        "HTTP 422 (path.number: Input should be a valid integer, unable to parse string as an "
        "integer); HTTP 422 is in dead_letter_statuses: dead-lettered without retries"
    )


@pytest.mark.parametrize("dispatch", DISPATCH)
async def test_the_deadline_cancels_a_hung_handler(tmp_path, dispatch):
    cancelled: list[str] = []

    class Store:
        async def post_event_by(self, event_id: str) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(event_id)
                raise

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event(TOPIC, "Store.post_event_by")

    _configure(tmp_path, dispatch)
    app = freedom.Application(config_dir=tmp_path, prepare=[prepare])
    async with TestBroker(
        app, retry_count=1, retry_interval_sec=0, delivery_timeout_sec=0.2
    ) as broker:
        broker.publish(TOPIC, b"{}", key="HUNG")
        await broker.settle()
        [dead] = broker.dead_letters(TOPIC)
    assert cancelled == ["HUNG", "HUNG"]
    assert (dead.header("x-freedom-error") or "").startswith(
        "HTTP 504 (the handler did not finish within its deadline of 200 ms"
    )


async def test_a_plain_def_handler_runs_in_a_worker_thread(tmp_path):
    threads: list[str] = []

    class Store:
        runtime: freedom.Runtime

        def post_event_by(self, event_id: str) -> None:
            threads.append(threading.current_thread().name)
            assert self.runtime.request.headers["x-message-key"] == event_id

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event(TOPIC, "Store.post_event_by")

    _configure(tmp_path)
    app = freedom.Application(config_dir=tmp_path, prepare=[prepare])
    async with TestBroker(app) as broker:
        broker.publish(TOPIC, b"{}", key="K")
        await broker.settle()
        loop_thread = threading.current_thread().name
    assert len(threads) == 1 and threads[0] != loop_thread


# ------------------------------------------------------------------ event middleware


def _middleware_app(config_dir: Path, dispatch: str, journal: list[Any]) -> freedom.Application:
    class Store:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> None:
            journal.append(("handler", self.runtime.store.get("tenant")))
            if event_id == "BAD":
                raise ValueError(MESSAGE)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event(TOPIC, "Store.post_event_by")

    _configure(config_dir, dispatch)
    app = freedom.Application(config_dir=config_dir, prepare=[prepare])

    @app.event_middleware
    async def outer(delivery: freedom.EventDelivery, call_next: Any) -> freedom.DeliveryResult:
        journal.append(("outer", delivery.topic, delivery.event_id, delivery.body))
        result = await call_next(delivery)
        journal.append(("outer done", result.status, result.describe()))
        return result

    @app.event_middleware
    async def inner(delivery: freedom.EventDelivery, call_next: Any) -> freedom.DeliveryResult:
        journal.append(("inner", delivery.retry_count, delivery.headers["x-tenant"]))
        if delivery.event_id == "DUP":
            raise freedom.Drop("seen before")
        delivery.runtime.store["tenant"] = delivery.headers["x-tenant"]
        return await call_next(delivery)

    return app


async def test_event_middleware_runs_in_order_around_the_handler(tmp_path):
    journal: list[Any] = []
    app = _middleware_app(tmp_path, "direct", journal)
    async with TestBroker(app, retry_count=1, retry_interval_sec=45) as broker:
        broker.publish(TOPIC, b"one", key="OK", headers={"x-tenant": "t1"})
        await broker.settle()
        assert journal == [
            ("outer", TOPIC, "OK", b"one"),
            ("inner", 0, "t1"),
            ("handler", "t1"),  # what the middleware put in the runtime's store
            ("outer done", 200, "HTTP 200"),
        ]
        journal.clear()
        broker.publish(TOPIC, b"two", key="DUP", headers={"x-tenant": "t2"})
        broker.publish(TOPIC, b"three", key="BAD", headers={"x-tenant": "t3"})
        await broker.settle()
        assert broker.retries(TOPIC)[0].key() == b"BAD"
        assert broker.committed(TOPIC) == 3
    assert ("handler", "t2") not in journal  # Drop in a middleware skips the handler
    assert ("outer done", 200, "HTTP 200, handler asked: drop (seen before)") in journal
    assert ("outer done", 500, f"HTTP 500 (ValueError: {MESSAGE})") in journal
    assert ("handler", "t3") in journal


async def test_event_middleware_does_not_run_on_the_asgi_path(tmp_path):
    journal: list[Any] = []
    app = _middleware_app(tmp_path, "asgi", journal)
    async with TestBroker(app) as broker:
        broker.publish(TOPIC, b"one", key="OK", headers={"x-tenant": "t1"})
        await broker.settle()
    assert journal == [("handler", None)]


def test_event_middleware_must_be_async(tmp_path):
    app = freedom.Application(config_dir=tmp_path)

    def blocking(delivery: Any, call_next: Any) -> Any:
        return call_next(delivery)

    with pytest.raises(RouteError, match="async def"):
        app.event_middleware(blocking)


# ------------------------------------------------------------------ which path, and the log


def _mixed_app(config_dir: Path, dispatch: str, calls: list[str]) -> freedom.Application:
    def db() -> str:
        return "database"

    class Store:
        async def post_event_by(self, event_id: str) -> None:
            calls.append(f"direct-able {event_id}")

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)

        @initiator.fastapi.post("/with-dep/{event_id}")
        async def with_dep(event_id: str, conn: str = Depends(db)) -> None:
            calls.append(f"{conn} {event_id}")

        initiator.listen_event(TOPIC, "Store.post_event_by")
        initiator.listen_event("with-dep", with_dep)

    _configure(config_dir, dispatch)
    return freedom.Application(config_dir=config_dir, prepare=[prepare])


def _path_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "consumer deliveries:" in r.getMessage()]


async def test_a_route_with_a_dependency_falls_back_and_the_path_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    calls: list[str] = []
    async with TestBroker(_mixed_app(tmp_path, "direct", calls)) as broker:
        broker.publish(TOPIC, b"{}", key="A")
        broker.publish("with-dep", b"{}", key="B")
        await broker.settle()
    assert sorted(calls) == ["database B", "direct-able A"]  # both delivered
    [line] = _path_lines(caplog)
    assert line.startswith("consumer deliveries: in-process direct: 1 route ")
    assert line.endswith(
        "; ASGI: 1 route (/with-dep/{event_id}: takes the FastAPI dependency conn)"
    )


async def test_inprocess_dispatch_asgi_is_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    calls: list[str] = []
    async with TestBroker(_mixed_app(tmp_path, "asgi", calls)) as broker:
        broker.publish(TOPIC, b"{}", key="A")
        await broker.settle()
    assert calls == ["direct-able A"]
    assert _path_lines(caplog) == [
        "consumer deliveries: in-process through the ASGI application, every route "
        '(inprocess_dispatch = "asgi")'
    ]


def test_the_key_and_its_environment_variable(tmp_path, monkeypatch):
    from freedom.config.loading import load_kafka_config

    write_config(tmp_path, kafka=_kafka_toml())
    config = load_kafka_config(tmp_path)
    assert config is not None and config.consumer.inprocess_dispatch == "direct"
    monkeypatch.setenv("FREEDOM_KAFKA__CONSUMER__INPROCESS_DISPATCH", "asgi")
    config = load_kafka_config(tmp_path)
    assert config is not None and config.consumer.inprocess_dispatch == "asgi"
    monkeypatch.setenv("FREEDOM_KAFKA__CONSUMER__INPROCESS_DISPATCH", "http")
    with pytest.raises(ConfigError) as err:
        load_kafka_config(tmp_path)
    assert str(err.value) == (
        "environment FREEDOM_KAFKA__CONSUMER__INPROCESS_DISPATCH: must be one of 'direct', 'asgi', "
        'got "http"'
    )
    monkeypatch.delenv("FREEDOM_KAFKA__CONSUMER__INPROCESS_DISPATCH")
    write_config(tmp_path, kafka=_kafka_toml("both"))
    with pytest.raises(ConfigError, match="consumer.inprocess_dispatch: must be one of"):
        load_kafka_config(tmp_path)
