"""The web layer: routes from controller method names, typed path parameters, injection, event binding."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Request

import freedom
from freedom.errors import RouteError
from freedom.infra import kafka
from freedom.web.routing import route_of_method


def _route(prefix, name, func):
    r = route_of_method(prefix, name, func)
    return (r.method, r.path) if r else None


def test_route_names_follow_the_seed_convention():
    assert _route("/shop", "get_by", lambda self, id: None) == ("GET", "/shop/{id}")
    assert _route("/store", "post_sell_goods_by", lambda self, event_id: None) == (
        "POST",
        "/store/sell/goods/{event_id}",
    )
    assert _route("/shop", "get", lambda self: None) == ("GET", "/shop")
    assert _route("/u", "put_profile_by_avatar", lambda self, uid: None) == (
        "PUT",
        "/u/profile/{uid}/avatar",
    )
    assert _route("/u", "delete_by", lambda self, uid: None) == ("DELETE", "/u/{uid}")
    assert _route("/u", "helper", lambda self: None) is None
    assert _route("/u", "_get_private", lambda self: None) is None
    with pytest.raises(RouteError, match="each 'by' in the name takes one parameter"):
        route_of_method("/u", "get_by", lambda self: None)


class Controller:
    runtime: freedom.Runtime
    producer: kafka.Producer

    async def get_by(self, id: int) -> dict:
        return {
            "id": id,
            "type": type(id).__name__,
            "bus": dict(self.runtime.bus),
            "has_producer": isinstance(self.producer, kafka.Producer),
        }

    def get_sync_by(self, name: str) -> str:  # plain def: runs in the threadpool
        return f"hello {name}"

    async def post_items(self, limit: int = 10) -> dict:
        return {"limit": limit}

    def not_a_route(self) -> None:
        raise AssertionError("must not be routed")


def make_app(hook) -> freedom.Application:
    return freedom.Application(config_dir="/nonexistent-freedom-config", prepare=[hook]).setup()


async def call(app, method: str, url: str, **kw) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        return await client.request(method, url, **kw)


async def test_typed_path_parameters_and_injection():
    app = make_app(lambda i: i.bind_controller("/c", Controller))
    r = await call(app, "GET", "/c/42", headers={"x-freedom-bus": '{"tenant": "acme"}'})
    assert r.status_code == 200
    assert r.json() == {"id": 42, "type": "int", "bus": {"tenant": "acme"}, "has_producer": True}
    assert (await call(app, "GET", "/c/abc")).status_code == 422  # not an int
    r = await call(app, "GET", "/c/sync/ana")
    assert (
        r.status_code == 200
        and r.text == "hello ana"
        and r.headers["content-type"].startswith("text/plain")
    )
    assert (await call(app, "POST", "/c/items", params={"limit": 3})).json() == {"limit": 3}


async def test_malformed_bus_header_is_ignored_not_an_error(caplog):
    app = make_app(lambda i: i.bind_controller("/c", Controller))
    r = await call(app, "GET", "/c/1", headers={"x-freedom-bus": "{not json"})
    assert r.status_code == 200 and r.json()["bus"] == {}
    assert "ignoring x-freedom-bus header: not valid JSON" in caplog.text


def test_listen_event_resolves_controller_methods_and_plain_fastapi_routes():
    def hook(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)

        @initiator.fastapi.post("/hooks/audit/{key}")
        async def audit(key: str, request: Request) -> None: ...

        initiator.listen_event("event-sell", "StoreController.post_sell_goods_by")
        initiator.listen_event("event-refund", StoreController.post_refund)
        initiator.listen_event("event-audit", audit)

    class StoreController:
        async def post_sell_goods_by(self, event_id: str) -> None: ...
        async def post_refund(self) -> None: ...
        async def get_by(self, id: int) -> None: ...

    routes = make_app(hook).event_routes
    assert routes["event-sell"].url_path("AB C") == "/store/sell/goods/AB%20C"
    assert routes["event-refund"].url_path("K") == "/store/refund"
    assert routes["event-audit"].url_path("K1") == "/hooks/audit/K1"


@pytest.mark.parametrize(
    "bind, message",
    [
        (lambda i: i.listen_event("t", "Nope.post_x"), "no bound controller 'Nope'"),
        (lambda i: i.listen_event("bad topic!", "Nope.post_x"), "characters Kafka does not allow"),
        (
            lambda i: (i.bind_controller("/s", S), i.listen_event("t", "S.get_by")),
            "must be a POST route",
        ),
        (lambda i: (i.bind_controller("/s", S), i.listen_event("t", "S.post_by")), None),
        (
            lambda i: (
                i.bind_controller("/s", S),
                i.listen_event("t", "S.post_by"),
                i.listen_event("t", "S.post_by"),
            ),
            "already has a listener",
        ),
        (lambda i: i.bind_controller("s", S), 'must start with "/"'),
        (lambda i: i.bind_controller("/s", S()), "expects a class"),
    ],
)
def test_binding_mistakes_are_clear_errors(bind, message):
    if message is None:
        make_app(bind)
        return
    with pytest.raises(RouteError, match=message):
        make_app(bind)


class S:
    async def get_by(self, id: int) -> None: ...
    async def post_by(self, key: str) -> None: ...


async def test_producer_without_kafka_config_explains_itself():
    class Pub:
        producer: kafka.Producer

        async def get(self) -> str:
            await self.producer.new_msg("t", b"x").publish()
            return "sent"

    app = make_app(lambda i: i.bind_controller("/p", Pub))
    with pytest.raises(
        freedom.PublishError, match="Kafka is not configured: create conf/infra/kafka.toml"
    ):
        await call(app, "GET", "/p")


async def test_inherited_routes_and_overrides():
    class Base:
        async def get_by(self, id: int) -> str:
            return "base"

        async def get_ping(self) -> str:
            return "pong"

    class Child(Base):
        async def get_by(self, id: int) -> str:
            return "child"

    app = make_app(lambda i: i.bind_controller("/k", Child))
    assert (await call(app, "GET", "/k/1")).text == "child"
    assert (await call(app, "GET", "/k/ping")).text == "pong"
