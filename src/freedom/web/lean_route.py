"""`LeanRoute`: a FastAPI route that calls simple controller endpoints without FastAPI's per-request
dependency solving.

Event handlers are controller methods like `post_sell_goods_by(self, event_id: str)`: the only
inputs are the request (read through the injected `Runtime`) and string path parameters. For such
an endpoint FastAPI's request handler (dependency solving, parameter validation, its exit stacks)
was most of the web layer's CPU per delivery (`bench/perf-log.md`), yet it computes nothing that
the path match has not already given: a string path parameter is the matched text.

So a route is *lean* when its endpoint takes only the request and path parameters annotated
`str` (or not annotated), without defaults, matched by the plain `{name}` convertor, with no
dependencies, query, header, cookie or body parameters, and no body-size limit. A lean route calls
the endpoint directly with `scope["path_params"]`; any other route, and any request the fast path
does not recognise, goes through FastAPI's own handler, so behaviour (OpenAPI, validation errors,
exception handlers) is the same. Exceptions raised by the endpoint go to the application's
exception handlers through Starlette's `ExceptionMiddleware`, as FastAPI's handler leaves them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.convertors import StringConvertor
from starlette.types import Receive, Scope, Send

from freedom.web.runtime import Request


class LeanRoute(APIRoute):
    """An `APIRoute` with a fast path for endpoints that only take the request and `str` path parameters."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.lean = self._is_lean()
        if self.lean:
            self._full_app = self.app
            self.app = self._lean_app

    def _is_lean(self) -> bool:
        d = self.dependant
        if d.query_params or d.header_params or d.cookie_params or d.body_params or d.dependencies:
            return False
        if getattr(self, "max_body_size", None) is not None or not inspect.iscoroutinefunction(
            self.endpoint
        ):
            return False
        params = list(inspect.signature(self.endpoint).parameters.values())
        if not params or params[0].name != d.request_param_name:
            return False
        for p in params[1:]:
            if (
                p.kind is not p.KEYWORD_ONLY
                or p.default is not p.empty
                or p.annotation not in (str, p.empty)
            ):
                return False
            if not isinstance(self.param_convertors.get(p.name), StringConvertor):
                return False
        return len(params) - 1 == len(self.param_convertors)

    async def _lean_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        path_params = scope.get("path_params")
        if path_params is None or len(path_params) != len(self.param_convertors):
            await self._full_app(
                scope, receive, send
            )  # not a request the fast path knows: FastAPI decides
            return
        request = Request(scope, receive, send)
        response = await self.endpoint(request, **path_params)
        await response(scope, receive, send)
