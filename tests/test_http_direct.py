"""Deliveries received over HTTP, called directly (`[consumer] http_dispatch = "direct"`, the
default; freedom/web/http_direct.py): the same service is run twice over real HTTP (uvicorn), once
with the entry that calls the event handlers in front of the ASGI application and once with
`http_dispatch = "asgi"`, and each answer is compared: the raw HTTP answer (status, headers,
body) and the result the consumer proxy reads from it (`result_of`, through its HTTP/1.1
transport). Then the delivery secret, the user's HTTP middleware, event middleware and the
start-up line."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.requests import Request as StarletteRequest

import freedom
from freedom.errors import ConfigError
from freedom.kafka.consumer.delivery import (
    DeliveryResult,
    EventRoute,
    request_headers,
    result_of,
)
from freedom.kafka.consumer.keys import event_id
from freedom.kafka.transports.http1 import Http1Transport
from freedom.testing import ServiceThread, free_port, write_config
from tests.test_direct_invoker import MESSAGE, ShopError, _answers

SECRET = secrets.token_urlsafe(24)
TOPIC = "orders"
#: Headers that differ between any two answers of a server (or that the user's middleware adds).
_NOT_COMPARED = {"date", "x-freedom-failure-id", "x-mw"}


class Order(BaseModel):
    id: int


def _app(config_dir: Path, dispatch: str, port: int, seen: dict[str, list[Any]], mw: bool):
    answers = _answers()

    class Store:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Any:
            seen["handler"].append(event_id)
            if event_id.startswith("mw-"):
                return None
            if event_id in ("boom", "response-500"):
                await asyncio.sleep(0)  # these wait first: the path under the deadline's timer
            if event_id == "json-body":
                return await self.runtime.request.json()
            if event_id == "echo":
                return {
                    "body": (await self.runtime.request.body()).decode(),
                    "secret": self.runtime.request.headers.get("x-freedom-secret"),
                    "retry": self.runtime.request.headers.get("x-retry-count"),
                }
            return answers[event_id]()

        async def post_number_by(self, number: int) -> None:
            assert isinstance(number, int)

        def post_blocking_by(self, event_id: str) -> str:
            if event_id == "boom":
                raise ValueError(MESSAGE)
            return "done"

        async def post_slow_by(self, event_id: str) -> None:
            try:
                await asyncio.Event().wait()  # hangs until cancelled
            except asyncio.CancelledError:
                seen["cancelled"].append(event_id)
                raise

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)

        @initiator.fastapi.post("/plain/{event_id}", status_code=202)
        async def plain(event_id: str, runtime: freedom.RuntimeDep):  # type: ignore[no-untyped-def]
            if event_id in answers:
                return answers[event_id]()
            return {"id": event_id, "tenant": runtime.request.headers.get("x-tenant")}

        @initiator.fastapi.post("/plain-sync/{event_id}")
        def plain_sync(event_id: str):  # type: ignore[no-untyped-def]
            return answers[event_id]() if event_id in answers else None

        @initiator.fastapi.post("/typed/{event_id}")
        async def typed(event_id: str, order: Order) -> None:
            seen["handler"].append(f"typed {order.id}")

        initiator.listen_event(TOPIC, "Store.post_event_by")
        initiator.listen_event("numbers", "Store.post_number_by")
        initiator.listen_event("blocking", "Store.post_blocking_by")
        initiator.listen_event("slow", "Store.post_slow_by")
        initiator.listen_event("plain", plain)
        initiator.listen_event("plain-sync", plain_sync)
        initiator.listen_event("typed", typed)

    write_config(
        config_dir,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka={  # no Kafka client runs (a server named: no embedded broker either)
            "consumer": {"open": False, "http_dispatch": dispatch, "secret": SECRET},
            "producer_clients": [{"servers": ["127.0.0.1:9"]}],
        },
    )
    app = freedom.Application(config_dir=config_dir, prepare=[prepare])

    @app.fastapi.middleware("http")
    async def stamp(request: Any, call_next: Any) -> Any:
        seen["middleware"].append(request.url.path)
        response = await call_next(request)
        response.headers["x-mw"] = "seen"
        return response

    async def shop_error(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"shop": str(exc)}, status_code=418)

    def unavailable_here(_request: Any, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("blocked in this country", status_code=451)

    app.fastapi.add_exception_handler(ShopError, shop_error)
    app.fastapi.add_exception_handler(451, unavailable_here)

    if mw:

        @app.event_middleware
        async def around(delivery: freedom.EventDelivery, call_next: Any) -> DeliveryResult:
            seen["event middleware"].append(delivery.event_id)
            if delivery.event_id == "mw-drop":
                raise freedom.Drop("by middleware")
            if delivery.event_id == "mw-new":
                return DeliveryResult(
                    status=503, outcome="retry", reason="busy: ü", retry_after=2.0
                )
            result = await call_next(delivery)
            if delivery.event_id == "mw-replace":
                return replace(result, status=409, detail="replaced")
            return result

    return app


class Service:
    """One running service, what it saw, and how to post to it as the consumer proxy does."""

    def __init__(self, tmp: Path, dispatch: str, mw: bool, tweak: Any = None) -> None:
        self.seen: dict[str, list[Any]] = {
            k: [] for k in ("handler", "middleware", "event middleware", "cancelled")
        }
        port = free_port()
        self.app = _app(tmp / dispatch, dispatch, port, self.seen, mw)
        if tweak is not None:
            tweak(self.app)
        self.thread = ServiceThread(self.app, port=port).start()
        self.base = self.thread.base_url

    def route(self, topic: str, timeout: float | None = None) -> EventRoute:
        return replace(self.app.event_routes[topic], timeout_sec=timeout)

    async def post(
        self,
        topic: str,
        key: str,
        body: bytes = b"{}",
        *,
        secret: str | None = SECRET,
        timeout: float = 30,
        extra: list[tuple[bytes, bytes]] | None = None,
        path: str | None = None,
        chunks: list[bytes] | None = None,
    ) -> httpx.Response:
        """The raw answer to a delivery as the consumer proxy makes it (its headers)."""
        headers = request_headers([], event_id(key), 0, timeout)
        if secret is not None:
            headers.append((b"x-freedom-secret", secret.encode()))
        headers += extra or []
        content: Any = body
        if chunks is not None:  # sent chunked, in parts: the server receives it in parts

            async def parts() -> Any:
                for chunk in chunks:
                    yield chunk

            content = parts()
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as client:
            return await client.post(
                path or self.route(topic).url_path(key), content=content, headers=headers
            )

    async def deliver(self, topic: str, key: str, timeout: float | None = None) -> DeliveryResult:
        """What the consumer proxy's HTTP/1.1 transport makes of a delivery (`result_of`)."""
        transport = Http1Transport(self.base, secret=SECRET)
        try:
            return await transport.deliver(self.route(topic, timeout), event_id(key), b"{}", [], 0)
        finally:
            await transport.aclose()


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "event-middleware"])
def services(request, tmp_path_factory) -> Iterator[tuple[Service, Service]]:
    tmp = tmp_path_factory.mktemp(f"http-direct-{request.param}")
    asgi = Service(tmp, "asgi", request.param)
    try:
        direct = Service(tmp, "direct", request.param)
    except BaseException:
        asgi.thread.stop()
        raise
    try:
        yield asgi, direct
    finally:
        direct.thread.stop()
        asgi.thread.stop()


def _raw(answer: httpx.Response) -> dict[str, Any]:
    """Status, headers (those that may differ between two answers left out) and body."""
    headers = sorted((k, v) for k, v in answer.headers.multi_items() if k not in _NOT_COMPARED)
    failure = answer.headers.get("x-freedom-failure-id")
    assert failure is None or re.fullmatch(r"[0-9a-f]{32}", failure), failure
    return {
        "status": answer.status_code,
        "headers": headers,
        "failure id": failure is not None,
        "body": answer.content,
    }


def _read(answer: httpx.Response) -> DeliveryResult:
    """What `result_of` reads from a raw answer, the traceback taken back (checked, then left out)."""
    body = answer.content[:1024] if answer.status_code >= 400 else None
    result = result_of(
        answer.status_code,
        answer.headers.get("x-freedom-outcome"),
        answer.headers.get("x-freedom-reason"),
        body,
        answer.headers.get("retry-after"),
        answer.headers.get("x-freedom-failure-id"),
    )
    return _comparable(result)


def _comparable(result: DeliveryResult) -> DeliveryResult:
    if result.trace is not None:
        assert result.trace.startswith("Traceback (most recent call last)")
    return replace(result, trace="held" if result.trace else None)


CASES = (
    [(TOPIC, name) for name in _answers()]
    + [("numbers", "12"), ("numbers", "twelve"), ("blocking", "K"), ("blocking", "boom")]
    + [("plain", name) for name in ("none-given", "json", "none", "retry", "boom", "http-409")]
    + [("plain-sync", name) for name in ("none-given", "drop", "boom")]
)


@pytest.mark.parametrize("topic, key", CASES)
async def test_the_same_answer_on_both_paths(services, topic, key):
    asgi, direct = services
    via_asgi, via_direct = await asgi.post(topic, key), await direct.post(topic, key)
    assert _raw(via_direct) == _raw(via_asgi)
    assert _read(via_direct) == _read(via_asgi)
    assert _comparable(await direct.deliver(topic, key)) == _comparable(
        await asgi.deliver(topic, key)
    )
    assert key in direct.seen["handler"] or topic != TOPIC  # it reached the handler


async def test_what_the_answers_are(services):
    """The comparison above is not between two wrong answers: a few, spelled out."""
    _, direct = services
    assert await direct.deliver(TOPIC, "none") == DeliveryResult(status=200)
    assert (await direct.deliver(TOPIC, "retry")).describe() == (
        "HTTP 503, handler asked: retry (stock service down)"
    )
    assert (await direct.deliver(TOPIC, "drop")).ok
    assert (await direct.deliver(TOPIC, "http-409")).describe() == "HTTP 409 (sold out)"
    assert (await direct.deliver(TOPIC, "http-503")).retry_after == 2.0
    assert (await direct.deliver(TOPIC, "response-429")).retry_after == 3.0
    assert (await direct.deliver(TOPIC, "http-451")).describe() == (
        "HTTP 451 (blocked in this country)"
    )
    boom = await direct.deliver(TOPIC, "boom")
    assert boom.describe() == f"HTTP 500 (ValueError: {MESSAGE}\\n\\x1b[2J)"
    assert boom.trace is not None and "post_event_by" in boom.trace  # held, taken by the proxy
    assert (await direct.deliver("numbers", "twelve")).describe() == (
        "HTTP 422 (path.number: Input should be a valid integer, unable to parse string as an integer)"
    )
    answer = await direct.post(TOPIC, "boom")
    assert answer.status_code == 500 and "x-mw" not in answer.headers  # not through the stack


async def test_the_deadline_gives_the_same_504(services):
    asgi, direct = services
    via_asgi = await asgi.post("slow", "HUNG", timeout=0.2)
    via_direct = await direct.post("slow", "HUNG", timeout=0.2)
    assert _raw(via_direct) == _raw(via_asgi)
    assert via_direct.status_code == 504
    assert (
        _read(via_direct)
        .describe()
        .startswith("HTTP 504 (the handler did not finish within its deadline of 200 ms")
    )
    results = [await s.deliver("slow", "LATE", timeout=0.2) for s in (asgi, direct)]
    assert results[0] == results[1] and results[0].status == 504
    for service in (asgi, direct):
        assert service.seen["cancelled"][-2:] == ["HUNG", "LATE"]


@pytest.mark.parametrize(
    "case",
    [
        "no body",
        "chunked",
        "not json",
        "bad key",
        "slash key",
        "huge header",
        "typed not json",
        "typed",
    ],
)
async def test_hostile_input_gets_the_same_answer(services, case):
    asgi, direct = services
    kw: dict[str, Any] = {
        "no body": {"topic": TOPIC, "key": "echo", "body": b""},
        "chunked": {"topic": TOPIC, "key": "echo", "chunks": [b"x" * 70_000, b"y" * 70_000]},
        "not json": {"topic": TOPIC, "key": "json-body", "body": b"{not json"},
        "bad key": {"topic": "numbers", "key": "1e400"},
        "slash key": {"topic": TOPIC, "key": "a/b"},
        "huge header": {"topic": TOPIC, "key": "none", "extra": [(b"x-big", b"x" * 200_000)]},
        "typed not json": {"topic": "typed", "key": "K", "body": b"{not json"},
        "typed": {"topic": "typed", "key": "K", "body": b'{"id": 7}'},
    }[case]
    via_asgi, via_direct = await asgi.post(**kw), await direct.post(**kw)
    assert _raw(via_direct) == _raw(via_asgi)
    assert _read(via_direct) == _read(via_asgi)
    if case == "chunked":
        assert via_direct.json()["body"] == "x" * 70_000 + "y" * 70_000
    if case == "not json":
        assert via_direct.status_code == 500 and "JSONDecodeError" in via_direct.text
    if case == "typed not json":
        assert via_direct.status_code == 422


async def test_the_handler_sees_the_request_without_the_secret(services):
    asgi, direct = services
    for service in (asgi, direct):
        answer = await service.post(TOPIC, "echo", b"the body")
        assert answer.json() == {"body": "the body", "secret": None, "retry": "0"}


@pytest.mark.parametrize(
    "secret",
    [None, "wrong-" + "x" * 20, SECRET.upper()],
    ids=[
        "none",
        "wrong",
        "other-case",
    ],  # fixed ids: the secret is random, pytest-xdist's workers must agree
)
async def test_a_request_without_the_secret_is_refused_the_same_way(services, secret, caplog):
    caplog.set_level(logging.WARNING, logger="freedom.web.guard")
    asgi, direct = services
    for path in (None, "/store/event/a%2Fb"):
        before = [len(s.seen["handler"]) for s in (asgi, direct)]
        via_asgi = await asgi.post(TOPIC, "none", secret=secret, path=path)
        via_direct = await direct.post(TOPIC, "none", secret=secret, path=path)
        assert via_direct.status_code == 401
        assert _raw(via_direct) == _raw(via_asgi)
        assert [len(s.seen["handler"]) for s in (asgi, direct)] == before  # never reached
    refusals = [r for r in caplog.records if "refused a POST to event route" in r.getMessage()]
    assert len(refusals) == 4
    assert SECRET not in caplog.text


async def test_other_routes_and_methods_go_through_the_application(services):
    asgi, direct = services
    for service in (asgi, direct):
        async with httpx.AsyncClient(base_url=service.base) as client:
            get = await client.get("/store/event/none")
            missing = await client.post("/nowhere", headers={"x-freedom-secret": SECRET})
            docs = await client.get("/asyncapi.json")
        assert get.status_code == 405 and get.headers["x-mw"] == "seen"
        assert missing.status_code == 404 and missing.headers["x-mw"] == "seen"
        assert docs.status_code == 200


async def test_the_http_middleware_runs_with_asgi_only(services):
    asgi, direct = services
    for service in (asgi, direct):
        service.seen["middleware"].clear()
        answer = await service.post(TOPIC, "none")
        assert answer.status_code == 200
    assert asgi.seen["middleware"] == ["/store/event/none"]
    assert direct.seen["middleware"] == []  # the lean path: no HTTP middleware


async def test_event_middleware_runs_on_direct_http_deliveries(services):
    asgi, direct = services
    if not direct.app._event_middleware:
        pytest.skip("the service variant without event middleware")
    direct.seen["event middleware"].clear()
    dropped = await direct.post(TOPIC, "mw-drop")
    assert dropped.status_code == 200
    assert dropped.headers["x-freedom-outcome"] == "drop"
    assert _read(dropped).describe() == "HTTP 200, handler asked: drop (by middleware)"
    new = await direct.post(TOPIC, "mw-new")
    assert _read(new) == DeliveryResult(
        status=503, outcome="retry", reason="busy: ü", retry_after=2.0
    )
    replaced = await direct.post(TOPIC, "mw-replace")  # dataclasses.replace: written anew
    assert _read(replaced) == DeliveryResult(status=409, detail="replaced")
    assert replaced.json() == {"detail": "replaced"}
    assert direct.seen["event middleware"] == ["mw-drop", "mw-new", "mw-replace"]
    assert "mw-drop" not in direct.seen["handler"]
    assert asgi.seen["event middleware"] == []  # not on the ASGI path


def test_the_start_up_line_names_the_skipped_middleware(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="freedom.web")
    seen: dict[str, list[Any]] = {k: [] for k in ("handler", "middleware", "event middleware")}
    for dispatch in ("direct", "asgi"):
        port = free_port()
        app = _app(tmp_path / dispatch, dispatch, port, seen, False)
        with ServiceThread(app, port=port):
            pass
    lines = [r.getMessage() for r in caplog.records if "HTTP deliveries received" in r.getMessage()]
    assert lines == [
        "HTTP deliveries received: direct: 6 routes (each handler called in front of the ASGI "
        'application, without HTTP middleware: stamp does not run around them; http_dispatch = "asgi" '
        "keeps it); ASGI: 1 route (/typed/{event_id}: takes the body parameter order)",
        'HTTP deliveries received: through the ASGI application, every route (http_dispatch = "asgi")',
    ]


def test_the_key_and_its_environment_variable(tmp_path, monkeypatch):
    from freedom.config.loading import load_kafka_config

    write_config(tmp_path, kafka={"consumer": {"open": False}})
    config = load_kafka_config(tmp_path)
    assert config is not None and config.consumer.http_dispatch == "direct"
    monkeypatch.setenv("FREEDOM_KAFKA__CONSUMER__HTTP_DISPATCH", "asgi")
    config = load_kafka_config(tmp_path)
    assert config is not None and config.consumer.http_dispatch == "asgi"
    monkeypatch.setenv("FREEDOM_KAFKA__CONSUMER__HTTP_DISPATCH", "lean")
    with pytest.raises(ConfigError) as err:
        load_kafka_config(tmp_path)
    assert str(err.value) == (
        "environment FREEDOM_KAFKA__CONSUMER__HTTP_DISPATCH: must be one of 'direct', 'asgi', "
        'got "lean"'
    )
    monkeypatch.delenv("FREEDOM_KAFKA__CONSUMER__HTTP_DISPATCH")
    write_config(tmp_path, kafka={"consumer": {"open": False, "http_dispatch": "both"}})
    with pytest.raises(ConfigError, match="consumer.http_dispatch: must be one of"):
        load_kafka_config(tmp_path)


async def _append(sent: list[Any], message: Any) -> None:
    sent.append(message)


async def test_a_body_that_does_not_come_within_the_deadline_is_answered_504(services):
    """The handler reads the body under the deadline on both paths (with event middleware the
    entry reads it first, under the deadline too): a body that stops coming is the route's 504."""
    answers = []
    for service in services:
        headers = request_headers([], event_id("echo"), 0, 0.2)
        headers += [(b"x-freedom-secret", SECRET.encode()), (b"transfer-encoding", b"chunked")]
        path = service.route(TOPIC).url_path("echo")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "POST",
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
            "state": {},
        }
        parts = [{"type": "http.request", "body": b"first part", "more_body": True}]
        sent: list[dict[str, Any]] = []

        async def receive(parts: list[Any] = parts) -> Any:
            if parts:
                return parts.pop()
            await asyncio.Event().wait()  # the rest never comes

        await service.app(scope, receive, functools.partial(_append, sent))
        start, body = sent[0], sent[1]
        answers.append((start["status"], body["body"]))
    assert answers[0] == answers[1]
    assert answers[1][0] == 504 and b"deadline of 200 ms" in answers[1][1]


async def test_a_route_with_a_body_size_limit_goes_through_the_application(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="freedom.web")
    calls: list[str] = []

    def prepare(initiator: freedom.Initiator) -> None:
        @initiator.fastapi.post("/limited/{event_id}", max_body_size=4)
        async def limited(event_id: str, request: StarletteRequest) -> None:
            calls.append((await request.body()).decode())

        initiator.listen_event("limited", limited)

    write_config(
        tmp_path,
        kafka={"consumer": {"open": False}, "producer_clients": [{"servers": ["127.0.0.1:9"]}]},
    )
    app = freedom.Application(config_dir=tmp_path, prepare=[prepare])
    await app.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://svc"
        ) as client:
            small = await client.post("/limited/K", content=b"ok")
            big = await client.post("/limited/K", content=b"far too long")
    finally:
        await app.stop()
    assert (small.status_code, big.status_code) == (200, 413)
    assert calls == ["ok"]
    [line] = [r.getMessage() for r in caplog.records if "HTTP deliveries" in r.getMessage()]
    assert line.endswith(
        "ASGI: 1 route (/limited/{event_id}: has a body size limit (max_body_size))"
    )


async def test_the_application_s_own_handler_for_exception_answers_on_both_paths(tmp_path, caplog):
    def own_handler(app: freedom.Application) -> None:
        async def everything(_request: Any, exc: Exception) -> JSONResponse:
            return JSONResponse({"own": type(exc).__name__}, status_code=500)

        app.fastapi.add_exception_handler(Exception, everything)

    services = [Service(tmp_path, d, False, own_handler) for d in ("asgi", "direct")]
    try:
        asgi, direct = services
        via_asgi, via_direct = await asgi.post(TOPIC, "boom"), await direct.post(TOPIC, "boom")
        assert _raw(via_direct) == _raw(via_asgi)
        assert _read(via_direct).describe() == 'HTTP 500 ({"own":"ValueError"})'
        assert await direct.deliver(TOPIC, "boom") == await asgi.deliver(TOPIC, "boom")
    finally:
        for service in services:
            service.thread.stop()
    # logged with its traceback on both paths: by the server, and by the entry
    logged = [r for r in caplog.records if r.exc_info and "ValueError" in repr(r.exc_info[1])]
    assert {r.name for r in logged} == {"uvicorn.error", "freedom.kafka.delivery"}
