"""Event routes matched first: a delivery is not tried against the routes before it in vain.

Starlette tries a request against the application's routes in order. FastAPI's own routes
(`/openapi.json`, `/docs`, `/redoc`, ...) and freedom's `/asyncapi.json` come before the user's,
so every delivery paid five failed path matches before its own route (~1.5 µs each; cProfile of
the test broker: 6 `Route.matches` calls per delivery). :func:`move_event_routes_forward` moves each
event route ahead of the routes before it **that can never answer the same request**: routes
with methods disjoint from its own (the GET-only documents). The first route that fully matches a
request is the same as before for every request (two routes with disjoint methods never both
match one fully), so which handler answers is unchanged; a route without methods (a mount, a
websocket) or one sharing a method stops the move.
"""

from __future__ import annotations

from collections.abc import Collection

from fastapi import FastAPI
from starlette.routing import BaseRoute, Route


def _methods(route: BaseRoute) -> frozenset[str] | None:
    methods = getattr(route, "methods", None) if isinstance(route, Route) else None
    return frozenset(methods) if methods else None


def move_event_routes_forward(api: FastAPI, paths: Collection[str]) -> None:
    """Move the POST routes on `paths` (the event routes) ahead of the routes before them that
    have methods disjoint from theirs; the order is otherwise kept."""
    routes = api.router.routes
    for route in list(routes):
        mine = _methods(route)
        if mine is None or getattr(route, "path", None) not in paths or "POST" not in mine:
            continue
        at = routes.index(route)
        to = at
        while to > 0 and (theirs := _methods(routes[to - 1])) is not None and not theirs & mine:
            to -= 1
        if to < at:
            routes.insert(to, routes.pop(at))
