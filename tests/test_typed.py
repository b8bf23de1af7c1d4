"""Typed events: Pydantic payloads both ways, the content-type rule, and poison records dead-lettered at once.

One typed service per run (HTTP/1.1, h2c, in-process on Apache Kafka; HTTP/1.1 on the embedded
broker) receives every kind of payload: a model published by a route with `new_msg(topic, Model)`,
a Go-shaped record (JSON, no content-type), a list of models, a dict, a dataclass, a plain FastAPI
route, a typed domain event; a record failing validation is dead-lettered after one delivery with
the validation detail, a 5xx still goes through retry-T, and a topic whose `dead_letter_statuses`
is `[]` retries a 422 like any failure.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from starlette.responses import Response

import freedom
from freedom.config.loading import load_kafka_config
from freedom.errors import ConfigError
from freedom.infra import kafka
from freedom.kafka.consumer.delivery import request_headers, result_of
from freedom.kafka.consumer.keys import EventId
from freedom.kafka.producer import Producer
from freedom.testing import (
    ServiceThread,
    TestBroker,
    free_port,
    kafka_config,
    wait_until,
    write_config,
)
from freedom.wire import payloads
from tests.services.event_app import reads_of
from tests.services.kafka_tools import create_topic, headers_of, produce, read_all, wait_drained


class OrderCreated(BaseModel):
    id: int
    amount: int


class OrderPaid(BaseModel):
    id: int
    total: float


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Order(freedom.Entity):
    def __init__(self, order_id: int, event: str) -> None:
        self.order_id, self.event = order_id, event

    def identity(self) -> str:
        return f"ORDER-{self.order_id}"

    def pay(self, total: float) -> None:
        self.domain_event(
            self.event, OrderPaid(id=self.order_id, total=total), headers={"x-action": "pay"}
        )


# --------------------------------------------------------------------------- no broker


def test_the_content_type_rule_of_published_values():
    assert payloads.encode(OrderCreated(id=1, amount=2)) == (
        b'{"id":1,"amount":2}',
        "application/json",
    )
    assert payloads.encode(Point(1.5, 2)) == (b'{"x":1.5,"y":2.0}', "application/json")
    assert payloads.encode({"购买": [1, OrderCreated(id=3, amount=4)]}) == (
        '{"购买":[1,{"id":3,"amount":4}]}'.encode(),
        "application/json",
    )
    assert payloads.encode([1, "a"]) == (b'[1,"a"]', "application/json")
    assert payloads.encode(b"\x00raw") == (b"\x00raw", None)  # bytes and str are the content itself
    assert payloads.encode("text é") == ("text é".encode(), None)
    for bad, name in ((object(), "object"), (None, "NoneType"), (threading.Lock(), "_thread.lock")):
        with pytest.raises(
            TypeError, match=f"cannot serialise a value of type {name} as a message"
        ):
            payloads.encode(bad)
    producer = Producer()
    assert producer.new_msg("t", OrderCreated(id=1, amount=2)).wire_headers() == [
        ("content-type", b"application/json")
    ]
    assert producer.new_msg("t", b"{}").wire_headers() == []
    mine = producer.new_msg("t", {"a": 1}).set_headers(
        {"Content-Type": "application/vnd.shop+json", "x-a": "1"}
    )
    assert mine.wire_headers() == [("content-type", b"application/vnd.shop+json"), ("x-a", b"1")]


def test_decoding_a_value_by_its_content_type():
    assert payloads.decode(b'{"id": 1, "amount": 2}', None, OrderCreated) == OrderCreated(
        id=1, amount=2
    )
    assert payloads.decode(b"[1, 2]", "application/json; charset=utf-8", list[int]) == [1, 2]
    assert payloads.decode(b'{"a": 1}', "application/vnd.shop+json") == {"a": 1}
    assert payloads.decode("é".encode(), "text/plain; charset=utf-8") == "é"
    assert payloads.decode(b"\xff", "application/octet-stream") == b"\xff"
    with pytest.raises(payloads.PayloadError, match="not a valid OrderCreated"):
        payloads.decode(b'{"id": 1}', None, OrderCreated)
    with pytest.raises(payloads.PayloadError, match="not valid JSON"):
        payloads.decode(b"{oops", None)
    with pytest.raises(payloads.PayloadError, match="cannot be read as OrderCreated"):
        payloads.decode(b"x", "text/plain", OrderCreated)


def test_a_delivery_always_has_one_content_type():
    def ct(record_headers: list[tuple[str, bytes | None]]) -> list[bytes]:
        return [
            v
            for k, v in request_headers(record_headers, EventId("k", b"k"), 0)
            if k == b"content-type"
        ]

    assert ct([]) == [b"application/json"]  # a Go freedom service's record
    assert ct([("content-type", b"")]) == [b"application/json"]  # empty: as none
    assert ct([("Content-Type", b"text/plain"), ("content-type", b"application/xml")]) == [
        b"application/xml"
    ]


def test_the_validation_detail_of_a_refused_delivery():
    body = (
        b'{"detail":[{"type":"missing","loc":["body","amount"],"msg":"Field required","input":{"id":1,'
        b'"x":"' + b"y" * 40_000 + b'"}}]}'
    )
    for kept in (
        body,
        body[: 16 * 1024],
    ):  # also when the transport kept only the start of the body
        result = result_of(422, None, None, kept)
        assert result.detail == "body.amount: Field required"
        assert result.describe() == "HTTP 422 (body.amount: Field required)"
    assert result_of(500, None, None, b"x" * 5000).detail == "x" * 1021 + "..."
    assert result_of(200, None, None, b"fine").detail is None


def test_dead_letter_statuses_are_checked_and_overridden_per_topic(tmp_path):
    def load(client: dict[str, Any]) -> Any:
        write_config(tmp_path, kafka={"consumer": {"open": True}, "consumer_clients": [client]})
        return load_kafka_config(tmp_path).consumer_clients[0]

    client = load(
        {"dead_letter_statuses": [422, 400], "topics": {"t": {"dead_letter_statuses": []}, "u": {}}}
    )
    assert client.consume_config("t").dead_letter_statuses == frozenset()
    assert client.consume_config("u").dead_letter_statuses == {400, 422}
    assert client.consume_config("other").dead_letter_statuses == {400, 422}
    assert 422 in load({}).consume_config("t").dead_letter_statuses
    assert {404, 408, 409, 429, 500, 503}.isdisjoint(load({}).dead_letter_statuses)
    with pytest.raises(
        ConfigError,
        match=r"consumer_clients\[0\].dead_letter_statuses\[1\]: must be an HTTP "
        r"failure status, 400 to 599, got 200",
    ):
        load({"dead_letter_statuses": [422, 200]})


def test_openapi_has_no_event_routes_and_the_service_name_as_title(tmp_path):
    write_config(tmp_path, app={"service_name": "orders"})

    class OrderController:
        async def get_by(self, id: int) -> str:
            return "ok"

        async def post_created_by(self, event_id: str, order: OrderCreated) -> None:
            return None

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/orders", OrderController)

        @initiator.fastapi.post("/api/paid/{event_id}")
        async def paid(event_id: str, paid: OrderPaid) -> None:
            return None

        @initiator.fastapi.post("/api/public")
        async def public(order: OrderCreated) -> None:
            return None

        initiator.listen_event("order-created", "OrderController.post_created_by")
        initiator.listen_event("Order:Paid", paid)

    app = freedom.Application(config_dir=tmp_path, prepare=[prepare]).setup()
    schema = app.fastapi.openapi()
    assert schema["info"]["title"] == "orders"
    assert sorted(schema["paths"]) == ["/api/public", "/orders/{id}"]
    titled = freedom.Application(config_dir=tmp_path, prepare=[prepare], title="Shop API").setup()
    assert titled.fastapi.openapi()["info"]["title"] == "Shop API"


# --------------------------------------------------------------------------- end to end


@dataclasses.dataclass
class Seen:
    """What the handlers got, and every delivery that reached the application (also those FastAPI refused)."""

    calls: list[tuple[str, str, Any, dict[str, str]]] = dataclasses.field(default_factory=list)
    requests: list[tuple[str, str, str]] = dataclasses.field(
        default_factory=list
    )  # (path, key, x-retry-count)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def add(self, route: str, key: str, value: Any, headers: Any) -> None:
        with self.lock:
            self.calls.append((route, key, value, dict(headers.items())))

    def of(self, route: str) -> dict[str, tuple[Any, dict[str, str]]]:
        with self.lock:
            return {k: (v, h) for r, k, v, h in self.calls if r == route}

    def deliveries(self, key: str) -> list[str]:
        with self.lock:
            return [n for _, k, n in self.requests if k == key]


class CountDeliveries:
    """ASGI middleware: records every POST with its message key, before FastAPI validates the body."""

    def __init__(self, app: Any, seen: Seen) -> None:
        self.app, self.seen = app, seen

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            h = {k.decode(): v.decode("latin-1") for k, v in scope["headers"]}
            with self.seen.lock:
                self.seen.requests.append(
                    (scope["path"], h.get("x-message-key", ""), h.get("x-retry-count", ""))
                )
        await self.app(scope, receive, send)


def typed_app(
    config_dir: Path, seen: Seen, t: dict[str, str], paid_event: str
) -> freedom.Application:
    class OrderController:
        runtime: freedom.Runtime
        producer: kafka.Producer

        async def get_order_by(self, id: int) -> str:  # a route that publishes a model
            await (
                self.producer.new_msg(t["created"], OrderCreated(id=id, amount=2))
                .set_key(f"O-{id}")
                .publish()
            )
            return "ok"

        async def post_lenient_by(self, event_id: str, order: OrderCreated) -> None:
            seen.add("lenient", event_id, order, self.runtime.request.headers)

        async def post_bulk_by(self, event_id: str, orders: list[OrderCreated]) -> None:
            seen.add("bulk", event_id, orders, self.runtime.request.headers)

        async def post_raw_by(self, event_id: str, data: dict[str, Any]) -> None:
            seen.add("raw", event_id, data, self.runtime.request.headers)

        async def post_point_by(self, event_id: str, point: Point) -> None:
            seen.add("point", event_id, point, self.runtime.request.headers)

        async def post_paid_by(self, event_id: str, paid: OrderPaid) -> None:
            seen.add("paid", event_id, paid, self.runtime.request.headers)

    class CreatedController:
        runtime: freedom.Runtime

        async def post_by(
            self, event_id: str, order: OrderCreated
        ) -> Response | None:  # POST /created/{event_id}
            seen.add("created", event_id, order, self.runtime.request.headers)
            if event_id == "FLAKY" and self.runtime.request.headers["x-retry-count"] == "0":
                return Response(status_code=500)
            return None

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/orders", OrderController)
        initiator.bind_controller("/created", CreatedController)

        @initiator.fastapi.post("/api/orders/{event_id}")
        async def plain_route(event_id: str, order: OrderCreated, request: freedom.Request) -> None:
            seen.add("fastapi", event_id, order, request.headers)

        initiator.listen_event(t["created"], "CreatedController.post_by")
        for name in ("lenient", "bulk", "raw", "point"):
            initiator.listen_event(t[name], f"OrderController.post_{name}_by")
        initiator.listen_event(paid_event, "OrderController.post_paid_by")
        initiator.listen_event(t["fastapi"], plain_route)

    app = freedom.Application(config_dir=config_dir, prepare=[prepare])
    app.install_domain_event_infra(kafka.get_domain_event_infra())
    app.fastapi.add_middleware(CountDeliveries, seen=seen)
    return app


TOPICS = ("created", "lenient", "bulk", "raw", "point", "fastapi")


def typed_config(
    bootstrap: str,
    port: int,
    t: dict[str, str],
    *,
    transport: str,
    mode: str,
    retry_interval_sec: float,
) -> dict[str, Any]:
    """kafka.toml of the typed service: one retry, every topic in `mode`, 422 retried on `lenient`."""
    group = f"g-typed-{t['created']}"
    topics: dict[str, dict[str, Any]] = {topic: {"mode": mode} for topic in t.values()}
    topics[t["lenient"]]["dead_letter_statuses"] = []
    config = kafka_config(
        bootstrap,
        port,
        group_id=group,
        delivery="inprocess" if transport == "inprocess" else "http",
        retry_group_id=f"r-{group}",
        retry_count=1,
        retry_interval_sec=retry_interval_sec,
        settings={"session.timeout.ms": 6000},
        topics=topics,
    )
    config["consumer"]["proxy_http2"] = transport == "h2c"
    return config


def run_typed_service(tmp_path: Path, bootstrap: str, transport: str, mode: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    t = {n: create_topic(bootstrap, f"typed-{n}-{suffix}") for n in TOPICS}
    paid_event = f"Order:Paid-{suffix}"
    create_topic(bootstrap, f"Order.Paid-{suffix}")
    port = free_port()
    config = typed_config(
        bootstrap, port, t, transport=transport, mode=mode, retry_interval_sec=0.3
    )
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=config)
    seen = Seen()
    app = typed_app(tmp_path, seen, t, paid_event)

    async def pay() -> None:
        async with freedom.UnitOfWork(app) as uow:
            uow.track(Order(3, paid_event)).pay(12.5)

    with ServiceThread(app) as svc:
        with httpx.Client(http1=transport != "h2c", http2=transport == "h2c", timeout=30) as client:
            assert client.get(f"{svc.base_url}/orders/order/1").text == "ok"
        producer = app.producer
        produce(
            bootstrap,
            t["created"],
            [
                {
                    "key": b"GO-7",
                    "value": b'{"id": 7, "amount": 3}',
                },  # as a Go freedom service publishes: no content-type
                {
                    "key": b"BAD",
                    "value": b'{"id": 8}',
                    "headers": [("x-action", b"buy")],
                },  # fails validation
            ],
        )
        produce(bootstrap, t["lenient"], [{"key": b"BAD-LENIENT", "value": b'{"id": 9}'}])
        batch = svc.run(
            producer.publish_batch(
                [
                    producer.new_msg(t["created"], OrderCreated(id=500, amount=1)).set_key("FLAKY"),
                    producer.new_msg(
                        t["bulk"], [OrderCreated(id=1, amount=1), OrderCreated(id=2, amount=5)]
                    ).set_key("B-1"),
                    producer.new_msg(t["raw"], {"k": "购买", "n": [1, 2]}).set_key("R-1"),
                    producer.new_msg(t["raw"], {"a": 1})
                    .set_headers({"content-type": "application/vnd.shop+json"})
                    .set_key("R-2"),
                ]
            )
        )
        assert batch.ok, batch.failed
        producer.new_msg(t["point"], Point(1.5, -2)).set_key("P-1").publish_sync(timeout=30)
        producer.new_msg(t["fastapi"], OrderCreated(id=9, amount=9)).set_key("F-9").publish_sync(
            timeout=30
        )
        svc.run(pay())

        def all_handled() -> bool:
            return (
                set(seen.of("created")) == {"O-1", "GO-7", "FLAKY"}
                and len(seen.deliveries("FLAKY")) == 2
                and {"B-1"} == set(seen.of("bulk"))
                and {"R-1", "R-2"} == set(seen.of("raw"))
                and {"P-1"} == set(seen.of("point"))
                and {"F-9"} == set(seen.of("fastapi"))
                and {"ORDER-3"} == set(seen.of("paid"))
            )

        try:
            wait_until(all_handled, 60, what=f"every typed handler to be called ({transport})")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; handled: {sorted((r, k) for r, k, *_ in seen.calls)}"
            ) from None
        # Every record and retry record committed, so every retry record and dead letter
        # (acknowledged before the commit) is there now.
        wait_drained(
            bootstrap, reads_of(app, *t.values()), 30, what=f"every record settled ({transport})"
        )
        dead = read_all(bootstrap, f"fail-{t['created']}")
        dead_lenient = read_all(bootstrap, f"fail-{t['lenient']}")
        retried = read_all(bootstrap, f"retry-{t['created']}")
    check_typed(seen, paid_event, dead, dead_lenient, retried)


def check_typed(
    seen: Seen, paid_event: str, dead: list[Any], dead_lenient: list[Any], retried: list[Any]
) -> None:
    """What the typed service's handlers got, and where the refused records went (any broker)."""
    created = seen.of("created")
    for key, (order, headers) in created.items():
        assert isinstance(order, OrderCreated), (key, order)
        assert headers["content-type"] == "application/json", (key, headers)
    assert created["O-1"][0] == OrderCreated(id=1, amount=2)
    assert created["GO-7"][0] == OrderCreated(
        id=7, amount=3
    )  # no content-type on the record: JSON by default
    assert created["FLAKY"][1]["x-retry-count"] == "1"
    bulk, bulk_headers = seen.of("bulk")["B-1"]
    assert bulk == [OrderCreated(id=1, amount=1), OrderCreated(id=2, amount=5)]
    assert bulk_headers["content-type"] == "application/json"
    raw = seen.of("raw")
    assert raw["R-1"][0] == {"k": "购买", "n": [1, 2]}
    assert (
        raw["R-2"] == ({"a": 1}, raw["R-2"][1])
        and raw["R-2"][1]["content-type"] == "application/vnd.shop+json"
    )
    assert seen.of("point")["P-1"][0] == Point(1.5, -2.0)
    assert seen.of("fastapi")["F-9"][0] == OrderCreated(id=9, amount=9)
    paid, paid_headers = seen.of("paid")["ORDER-3"]
    assert paid == OrderPaid(id=3, total=12.5)
    assert (
        paid_headers["content-type"] == "application/json"
        and paid_headers["x-freedom-event"] == paid_event
    )
    assert paid_headers["x-action"] == "pay"

    # The record failing validation: one delivery, then the dead-letter topic with the detail.
    assert seen.deliveries("BAD") == ["0"]
    assert [d.key() for d in dead] == [b"BAD"]
    h = headers_of(dead[0])
    assert dead[0].value() == b'{"id": 8}' and h["x-action"] == "buy" and "content-type" not in h
    assert h["x-retry-count"] == "0" and h["x-freedom-status"] == "422"
    assert h["x-freedom-error"] == (
        "HTTP 422 (body.amount: Field required); "
        "HTTP 422 is in dead_letter_statuses: dead-lettered without retries"
    )
    # The 5xx went through retry-T (and was handled on its retry).
    assert [r.key() for r in retried] == [b"FLAKY"]
    assert headers_of(retried[0])["x-freedom-status"] == "500"
    # The topic with `dead_letter_statuses = []`: the 422 is retried like any failure.
    assert seen.deliveries("BAD-LENIENT") == ["0", "1"]
    assert [d.key() for d in dead_lenient] == [b"BAD-LENIENT"]
    assert (
        headers_of(dead_lenient[0])["x-freedom-error"] == "HTTP 422 (body.amount: Field required)"
    )
    assert "lenient" not in {r for r, *_ in seen.calls}  # the handler itself never ran


# Every transport and every delivery mode on Apache Kafka (one run each: a mode per transport).
@pytest.mark.parametrize(
    "transport, mode",
    [("http1", "concurrent"), ("h2c", "sequential"), ("inprocess", "key-ordered")],
)
def test_typed_handlers_on_apache_kafka(apache_kafka, tmp_path, transport, mode):
    run_typed_service(tmp_path, apache_kafka.bootstrap, transport, mode)


def test_typed_handlers_on_the_embedded_broker(embedded_kafka, tmp_path):
    run_typed_service(tmp_path, embedded_kafka.bootstrap, "http1", "sequential")


@pytest.mark.parametrize("mode", ["sequential", "concurrent", "key-ordered"])
async def test_typed_handlers_on_the_test_broker(tmp_path, mode):
    # The same program and the same checks, on freedom.testing.TestBroker: no Kafka, no network,
    # and the 45 s retry interval passes on the broker's clock.
    suffix = uuid.uuid4().hex[:10]
    t = {n: f"typed-{n}-{suffix}" for n in TOPICS}
    paid_event = f"Order:Paid-{suffix}"
    write_config(
        tmp_path,
        app={"listen_addr": "127.0.0.1:9"},
        kafka=typed_config(
            "127.0.0.1:9", 9, t, transport="inprocess", mode=mode, retry_interval_sec=45
        ),
    )
    seen = Seen()
    app = typed_app(tmp_path, seen, t, paid_event)
    async with TestBroker(app) as broker:
        assert (await broker.client.get("/orders/order/1")).text == "ok"
        broker.publish(
            t["created"], b'{"id": 7, "amount": 3}', key=b"GO-7"
        )  # Go-shaped: no content-type
        broker.publish(t["created"], b'{"id": 8}', key=b"BAD", headers=[("x-action", b"buy")])
        broker.publish(t["lenient"], b'{"id": 9}', key=b"BAD-LENIENT")
        producer = app.producer
        batch = await producer.publish_batch(
            [
                producer.new_msg(t["created"], OrderCreated(id=500, amount=1)).set_key("FLAKY"),
                producer.new_msg(
                    t["bulk"], [OrderCreated(id=1, amount=1), OrderCreated(id=2, amount=5)]
                ).set_key("B-1"),
                producer.new_msg(t["raw"], {"k": "购买", "n": [1, 2]}).set_key("R-1"),
                producer.new_msg(t["raw"], {"a": 1})
                .set_headers({"content-type": "application/vnd.shop+json"})
                .set_key("R-2"),
            ]
        )
        assert batch.ok, batch.failed
        await producer.new_msg(t["point"], Point(1.5, -2)).set_key("P-1").publish()
        await producer.new_msg(t["fastapi"], OrderCreated(id=9, amount=9)).set_key("F-9").publish()
        async with freedom.UnitOfWork(app) as uow:
            uow.track(Order(3, paid_event)).pay(12.5)
        started = time.monotonic()
        await broker.settle(timeout=30)
        assert time.monotonic() - started < 10  # the 45 s retry came on the broker's clock
        check_typed(
            seen,
            paid_event,
            broker.dead_letters(t["created"]),
            broker.dead_letters(t["lenient"]),
            broker.retries(t["created"]),
        )
