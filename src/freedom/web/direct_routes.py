"""Which event routes the consumer proxy calls directly, decided once at start-up (web/direct.py
makes the calls; docs/consumer-proxy.md, "Which path a delivery takes").

A route qualifies when its endpoint takes nothing but the request and its path parameter (the key):
a controller method taking only the key, or a plain FastAPI POST route taking the key, the request
and `freedom.RuntimeDep`, without a response model. :func:`not_direct` says, in one short phrase,
why any other route is delivered through the ASGI application; the Kafka side puts it in its
start-up line (freedom/kafka/service.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.convertors import StringConvertor

from freedom.kafka.consumer.delivery import EventRoute
from freedom.kafka.transports.direct import DirectRoutes
from freedom.web.direct import RouteCall
from freedom.web.event_middleware import EventMiddleware
from freedom.web.failures import FailureAnswers
from freedom.web.runtime import get_runtime


def compile_direct(
    api: FastAPI,
    routes: Mapping[str, EventRoute],
    failures: FailureAnswers,
    middleware: Sequence[EventMiddleware] = (),
    make: type[RouteCall] = RouteCall,
) -> DirectRoutes:
    """The direct call of each event route that qualifies (a `make`: the consumer proxy's
    RouteCall, or the HTTP entry's http_direct.WireCall), and why each other one does not."""
    calls: dict[str, RouteCall] = {}
    fallbacks: dict[str, str] = {}
    for event_route in routes.values():
        path = event_route.path
        if path in calls or path in fallbacks:
            continue
        route = next(
            (
                r
                for r in api.router.routes
                if isinstance(r, APIRoute) and r.path == path and "POST" in (r.methods or ())
            ),
            None,
        )
        why = "no POST route on this path" if route is None else not_direct(route, event_route)
        if why is not None or route is None:
            fallbacks[path] = why or "no POST route on this path"
        else:
            calls[path] = make(api, route, failures, middleware)
    return DirectRoutes(calls, fallbacks)


_SPECIAL = {
    "response_param_name": "a Response parameter",
    "background_tasks_param_name": "a BackgroundTasks parameter",
    "http_connection_param_name": "an HTTPConnection parameter",
    "websocket_param_name": "a WebSocket parameter",
    "security_scopes_param_name": "a SecurityScopes parameter",
}


def not_direct(route: APIRoute, event_route: EventRoute) -> str | None:
    """Why `route` cannot be called directly (it takes more than the request and the key), or None."""
    if event_route.batch is not None:
        return "a batch route: each batch is one request"
    d = route.dependant
    for kind, fields in (
        ("query", d.query_params),
        ("header", d.header_params),
        ("cookie", d.cookie_params),
        ("body", d.body_params),
    ):
        if fields:
            return f"takes the {kind} parameter {', '.join(f.name for f in fields)}"
    for dep in d.dependencies:
        if not _is_runtime(route, dep):
            name = dep.name or getattr(dep.call, "__name__", repr(dep.call))
            return f"takes the FastAPI dependency {name}"
    for attr, what in _SPECIAL.items():
        if getattr(d, attr, None):
            return f"takes {what}"
    convertors = route.param_convertors
    if len(convertors) > 1 or len(d.path_params) > len(convertors):
        return "takes path parameters other than the key"
    if d.path_params:
        field = d.path_params[0]
        if field.alias not in convertors:
            return f"its path parameter {field.name} is read as {field.alias}"
        if not isinstance(convertors[field.alias], StringConvertor):
            return "its path parameter has a convertor ({name:type})"
    if not hasattr(route.endpoint, "__freedom_invoke__"):  # a plain FastAPI route
        if inspect.isgeneratorfunction(route.endpoint) or inspect.isasyncgenfunction(
            route.endpoint
        ):
            return "streams its answer (a generator)"
        if route.response_field is not None:
            return "has a response model (response_model or its return annotation)"
    return None


def _is_runtime(route: APIRoute, dep: Any) -> bool:
    """True for `freedom.RuntimeDep` as it is (not overridden): the one dependency resolved here."""
    overrides = getattr(route.dependency_overrides_provider, "dependency_overrides", None) or {}
    return (
        dep.call is get_runtime
        and get_runtime not in overrides
        and bool(dep.name)
        and not (dep.dependencies or dep.query_params or dep.header_params or dep.body_params)
    )
