"""LeanRoute answers exactly as FastAPI's own route does, for the routes it takes and those it leaves."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.routing import APIRoute

import freedom
from freedom.web.controllers import add_controller, make_endpoint
from freedom.web.lean_route import LeanRoute
from freedom.wire.outcomes import Outcome, handle_outcome


class Store:
    runtime: freedom.Runtime

    async def post_sell_by(self, event_id: str) -> dict:
        body = await self.runtime.request.json()
        if body.get("do") == "http-error":
            raise HTTPException(status_code=409, detail="sold out")
        if body.get("do") == "dead-letter":
            raise freedom.DeadLetter("bad order")
        if body.get("do") == "crash":
            raise RuntimeError("boom")
        return {
            "key": event_id,
            "action": self.runtime.request.headers.get("x-action"),
            "body": body,
        }

    async def post_count_by(self, n: int) -> dict:  # an int path parameter: FastAPI validates it
        return {"n": n}

    async def post_search(self, q: str) -> dict:  # a query parameter: FastAPI reads it
        return {"q": q}


def _app(lean: bool) -> FastAPI:
    api = FastAPI()
    api.add_exception_handler(Outcome, handle_outcome)
    if lean:
        add_controller(api, "/store", Store, {})
    else:  # the same endpoints on FastAPI's own route class
        for name, path in (
            ("post_sell_by", "/store/sell/{event_id}"),
            ("post_count_by", "/store/count/{n}"),
            ("post_search", "/store/search"),
        ):
            api.router.add_api_route(
                path,
                make_endpoint(Store, getattr(Store, name), {}),
                methods=["POST"],
                route_class_override=APIRoute,
            )
    return api


REQUESTS = [
    ("/store/sell/a%20b", {"n": 1}),
    ("/store/sell/k1", {"do": "http-error"}),
    ("/store/sell/k1", {"do": "dead-letter"}),
    ("/store/sell/k1", {"do": "crash"}),
    ("/store/count/7", {}),
    ("/store/count/seven", {}),
    ("/store/search?q=tea", {}),
    ("/store/search", {}),
]


@pytest.mark.parametrize("path, body", REQUESTS)
async def test_lean_and_fastapi_routes_answer_alike(path, body):
    answers = []
    for lean in (True, False):
        transport = httpx.ASGITransport(app=_app(lean), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post(path, json=body, headers={"x-action": "购买".encode()})
        answers.append(
            (
                r.status_code,
                r.headers.get("x-freedom-outcome"),
                r.headers.get("x-freedom-reason"),
                r.content,
            )
        )
    assert answers[0] == answers[1]


def test_only_request_and_str_path_routes_are_lean():
    api = _app(lean=True)
    lean = {r.path: r.lean for r in api.routes if isinstance(r, LeanRoute)}
    assert lean == {
        "/store/sell/{event_id}": True,
        "/store/count/{n}": False,
        "/store/search": False,
    }


async def test_the_lean_route_passes_the_key_and_headers():
    transport = httpx.ASGITransport(app=_app(lean=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post(
            "/store/sell/a%20b%E8%B4%AD", json={"n": 1}, headers={"x-action": "购买".encode()}
        )
    assert r.status_code == 200
    assert r.json() == {"key": "a b购", "action": "购买", "body": {"n": 1}}
