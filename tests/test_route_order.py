"""Event routes are matched before the GET-only documents ahead of them (freedom/web/route_order.py),
and no request is answered by another route than before."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

import freedom
from freedom.web.route_order import move_event_routes_forward


def _paths(api: FastAPI) -> list[str]:
    return [getattr(r, "path", "?") for r in api.router.routes]


def _client(api: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t")


async def test_an_event_route_moves_ahead_of_routes_with_other_methods_only():
    api = FastAPI()  # /openapi.json, /docs, /docs/oauth2-redirect, /redoc: GET only

    @api.get("/store/list")
    async def listing() -> str:
        return "list"

    @api.post("/store/event/special")  # a POST route before the event route: it keeps its place
    async def special() -> str:
        return "special"

    @api.post("/store/event/{event_id}")
    async def event(event_id: str) -> str:
        return f"event {event_id}"

    @api.get("/{anything}")  # after it: stays after it
    async def catch_all(anything: str) -> str:
        return f"get {anything}"

    before = _paths(api)
    move_event_routes_forward(api, {"/store/event/{event_id}", "/nowhere"})
    after = _paths(api)
    assert after.index("/store/event/{event_id}") == before.index("/store/event/special") + 1
    assert after.index("/store/event/special") == before.index("/store/event/special")
    assert sorted(after) == sorted(before)
    async with _client(api) as client:
        assert (await client.post("/store/event/special")).json() == "special"
        assert (await client.post("/store/event/7")).json() == "event 7"
        assert (await client.get("/store/list")).json() == "list"
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.get("/store")).json() == "get store"


async def test_an_application_matches_its_event_routes_first():
    class Store:
        async def post_event_by(self, event_id: str) -> str:
            return event_id

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", Store)
        initiator.listen_event("event-ro", "Store.post_event_by")

    app = freedom.Application(prepare=[prepare])
    app.setup()
    routes = app.fastapi.router.routes
    first = routes[0]
    assert getattr(first, "path", "") == "/store/event/{event_id}" and "POST" in getattr(
        first, "methods", ()
    )
    async with _client(app.fastapi) as client:
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.get("/asyncapi.json")).status_code == 200
