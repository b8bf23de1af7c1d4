"""Routes from controller method names, the convention of the seed (Iris MVC) in snake_case.

`get_by(self, id: int)` on a controller bound at `/shop` is `GET /shop/{id}`;
`post_sell_goods_by(self, event_id: str)` at `/store` is `POST /store/sell/goods/{event_id}`.
The first word is the HTTP verb, every other word a path segment, and each `by` takes the next
parameter of the method as a path parameter. Methods not starting with a verb are not routes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freedom.errors import RouteError

HTTP_VERBS = ("get", "post", "put", "patch", "delete", "head", "options")


@dataclass(frozen=True)
class ControllerRoute:
    """One controller method turned into a route."""

    method: str  # HTTP verb, upper case
    path: str  # with FastAPI `{name}` parameters
    name: str  # the method's name
    path_params: tuple[str, ...]


def route_of_method(prefix: str, name: str, func: Callable[..., Any]) -> ControllerRoute | None:
    """The route a controller method stands for, or None when its name does not start with a verb."""
    if name.startswith("_"):
        return None
    words = name.split("_")
    verb = words[0]
    if verb not in HTTP_VERBS:
        return None
    params = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
    segments: list[str] = []
    path_params: list[str] = []
    for word in words[1:]:
        if not word:
            raise RouteError(f"{name}: empty word in the method name (double underscore?)")
        if word == "by":
            if len(path_params) >= len(params):
                raise RouteError(
                    f"{name}: each 'by' in the name takes one parameter of the method, "
                    f"but it has only {len(params)} (add a parameter, like {name}(self, id: int))"
                )
            param = params[len(path_params)]
            if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise RouteError(f"{name}: path parameter '{param.name}' must be a plain parameter")
            path_params.append(param.name)
            segments.append("{" + param.name + "}")
        else:
            segments.append(word)
    path = "/".join([prefix.rstrip("/"), *segments]) or "/"
    if not path.startswith("/"):
        path = "/" + path
    return ControllerRoute(verb.upper(), path, name, tuple(path_params))


def controller_routes(
    prefix: str, controller: type
) -> list[tuple[ControllerRoute, Callable[..., Any]]]:
    """Every route of a controller class, in definition order."""
    if not isinstance(controller, type):
        raise RouteError(
            f"bind_controller expects a class, got {controller!r} (pass StoreController, not StoreController())"
        )
    members: dict[str, Any] = {}
    for klass in reversed(controller.__mro__[:-1]):  # base classes first, so subclasses override
        members.update(vars(klass))
    out = []
    for name, func in members.items():
        if not callable(func) or isinstance(func, (staticmethod, classmethod, type)):
            continue
        route = route_of_method(prefix, name, func)
        if route is not None:
            out.append((route, func))
    # Static segments before parameters, so `get_ping` (/ping) is not shadowed by `get_by` (/{id}).
    out.sort(key=lambda rf: tuple(seg.startswith("{") for seg in rf[0].path.split("/")))
    if not out:
        raise RouteError(
            f"{controller.__name__} has no route methods: name them like get_by(self, id: int) or post_sell_goods_by(self, event_id: str)"
        )
    return out
