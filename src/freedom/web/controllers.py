"""Turning controller classes into FastAPI routes, with per-request injection of attributes.

A controller is a plain class. For each request a new instance is made and every attribute
annotated with an injectable type (`freedom.Runtime`, `kafka.Producer`, ...) is filled in
before the route method runs. The method's own parameters are FastAPI parameters: path
parameters from the name's `by`s, anything else as FastAPI would read it (query, body).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from freedom.errors import RouteError
from freedom.web.lean_route import LeanRoute
from freedom.web.routing import ControllerRoute, controller_routes
from freedom.web.runtime import Runtime

# type -> provider(runtime) giving the value to inject
Injectables = dict[type, Callable[[Runtime], Any]]


def to_response(result: Any) -> Response:
    """What a route method returned, as a response: text for str, JSON for data, 200 for None."""
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status_code=200)
    if isinstance(result, str):
        return PlainTextResponse(result)
    if isinstance(result, (bytes, bytearray)):
        return Response(bytes(result), media_type="application/octet-stream")
    if type(result) in (dict, list):
        try:  # plain JSON data: no need for jsonable_encoder's walk (a few µs per delivery)
            return JSONResponse(result)
        except (TypeError, ValueError):
            pass  # something jsonable_encoder knows how to convert (a model, a date, ...)
    return JSONResponse(jsonable_encoder(result))


def _injections(
    controller: type, injectables: Injectables
) -> list[tuple[str, Callable[[Runtime], Any]]]:
    """(attribute, provider) for every attribute annotated with `Runtime` or an installed type (or a subclass)."""
    try:
        hints = typing.get_type_hints(controller)
    except Exception as exc:  # a NameError in a string annotation, say
        raise RouteError(
            f"{controller.__name__}: cannot read the attribute annotations: {exc}"
        ) from None
    providers: Injectables = {Runtime: lambda rt: rt, **injectables}
    out = []
    for attr, hint in hints.items():
        if not isinstance(hint, type):
            continue
        provide = next((p for t, p in providers.items() if issubclass(hint, t)), None)
        if provide is not None:
            out.append((attr, provide))
    return out


def make_endpoint(
    controller: type, func: Callable[..., Any], injectables: Injectables
) -> Callable[..., Any]:
    """An endpoint FastAPI can call: makes the controller, injects it, calls the method."""
    providers = _injections(controller, injectables)
    try:
        sig = inspect.signature(func, eval_str=True)
    except Exception as exc:
        raise RouteError(
            f"{controller.__name__}.{func.__name__}: cannot read the annotations: {exc}"
        ) from None
    params = [p for name, p in sig.parameters.items() if name != "self"]
    is_async = inspect.iscoroutinefunction(func)

    async def invoke(_freedom_request: Request, **kwargs: Any) -> Any:
        runtime = Runtime.of(_freedom_request)
        instance = controller()
        for attr, provide in providers:
            setattr(instance, attr, provide(runtime))
        if is_async:
            return await func(instance, **kwargs)
        return await run_in_threadpool(func, instance, **kwargs)

    async def endpoint(_freedom_request: Request, **kwargs: Any) -> Response:
        return to_response(await invoke(_freedom_request, **kwargs))

    request_param = inspect.Parameter(
        "_freedom_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
    )
    endpoint.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[
            request_param,
            *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params],
        ],
        return_annotation=inspect.Signature.empty,
    )
    endpoint.__name__ = f"{controller.__name__}.{func.__name__}"
    endpoint.__doc__ = func.__doc__
    # What direct delivery calls (web/direct.py): the method's own result, before `to_response`,
    # and whether the method runs in a worker thread.
    endpoint.__freedom_invoke__ = invoke  # type: ignore[attr-defined]
    endpoint.__freedom_threaded__ = not is_async  # type: ignore[attr-defined]
    return endpoint


def add_controller(
    api: FastAPI, prefix: str, controller: type, injectables: Injectables
) -> list[tuple[ControllerRoute, Callable[..., Any]]]:
    """Add every route of `controller` under `prefix`; returns the routes with their methods."""
    routes = controller_routes(prefix, controller)
    for route, func in routes:
        api.router.add_api_route(
            route.path,
            make_endpoint(controller, func, injectables),
            methods=[route.method],
            name=f"{controller.__name__}.{route.name}",
            response_class=Response,
            route_class_override=LeanRoute,  # skips dependency solving for request + str path params
        )
    return routes
