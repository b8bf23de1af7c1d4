"""`@freedom.prepare` and the `Initiator` it hands to start-up hooks.

As in the seed, modules register start-up functions at import time; the application calls
them once, with an `Initiator`, when it is set up. A hook belongs to the module that registered it
(the module whose code ran the decorator): an `Application` runs the hooks of the module it was
made in, so two services in one process (two test modules, each with its `make_app()`) do not run
each other's hooks. `Application(prepare=[hook, module, ...])` names others (a module: every hook
that module registered); `@app.prepare` registers a hook on one application.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import compile_path

from freedom.domain.events import event_topic
from freedom.errors import RouteError
from freedom.kafka.consumer.delivery import EventRoute
from freedom.web.controllers import Injectables, add_controller
from freedom.web.guard import RequireDelivery
from freedom.wire.batch import BatchSettings

if TYPE_CHECKING:
    from freedom.web.application import Application

PrepareHook = Callable[["Initiator"], Any]
#: (the registering module's name, the hook), in the order registered.
_prepare_hooks: list[tuple[str, PrepareHook]] = []


def calling_module() -> str:
    """The name (`__name__`) of the nearest module up the call stack that is not freedom's own:
    whose code called `freedom.prepare` or `freedom.Application(...)` (a user's Application
    subclass is in the user's module). "__main__" for a script."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            name = frame.f_globals.get("__name__")
            if isinstance(name, str) and name != "freedom" and not name.startswith("freedom."):
                return name
            frame = frame.f_back
        return "__main__"
    finally:
        del frame  # a frame kept in a local would keep every local of the stack alive


def prepare(hook: PrepareHook) -> PrepareHook:
    """Register a start-up hook (decorator): `hook(initiator)` binds controllers and events.

    It belongs to the module that registers it: an Application made in that module runs it
    (others name the module: `Application(prepare=[module])`)."""
    _prepare_hooks.append((calling_module(), hook))
    return hook


def registered_prepare_hooks(module: str | None = None) -> list[PrepareHook]:
    """The `@freedom.prepare` hooks `module` (a module's `__name__`) registered; None: every one."""
    return [hook for owner, hook in _prepare_hooks if module is None or owner == module]


def prepare_modules() -> list[str]:
    """The names of the modules that registered `@freedom.prepare` hooks, in order."""
    return list(dict.fromkeys(owner for owner, _ in _prepare_hooks))


class Initiator:
    """What a start-up hook uses to build the service."""

    def __init__(self, app: Application, api: FastAPI, injectables: Injectables) -> None:
        self.app = app
        self.fastapi = api  # add plain FastAPI routes here, or use app.fastapi
        self._injectables = injectables
        self._controllers: dict[str, type] = {}
        self._method_routes: dict[
            Any, tuple[str, str, tuple[str, ...]]
        ] = {}  # func -> (verb, path, params)
        self._events: list[tuple[str, Any]] = []
        self._batches: dict[str, BatchSettings] = {}  # topic -> listen_event(..., batch=)

    def bind_controller(self, prefix: str, controller: type) -> None:
        """Route every verb-named method of `controller` under `prefix` (e.g. "/store")."""
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise RouteError(f'bind_controller: the prefix must start with "/", got {prefix!r}')
        if isinstance(controller, type) and controller.__name__ in self._controllers:
            raise RouteError(f"bind_controller: {controller.__name__} is already bound")
        for route, func in add_controller(self.fastapi, prefix, controller, self._injectables):
            self._method_routes[func] = (route.method, route.path, route.path_params)
        self._controllers[controller.__name__] = controller

    def listen_event(
        self, topic: str, handler: str | Callable[..., Any], *, batch: BatchSettings | None = None
    ) -> None:
        """Deliver the records of `topic` to `handler`.

        `handler` is "Controller.method" (a bound controller's POST method), that method itself,
        or the endpoint function of a plain FastAPI POST route. Its path may have one parameter,
        which receives the message key.

        With `batch=freedom.BatchSettings(max_records=..., max_wait_ms=...)` the handler gets many
        records in one request and answers for each (`batch: freedom.Batch`, docs/scaling.md); its
        path has no parameter then.
        """
        check = _checked_topic(topic)
        if any(t == check for t, _ in self._events):
            raise RouteError(f"listen_event: topic {check!r} already has a listener")
        if batch is not None:
            if not isinstance(batch, BatchSettings):
                raise RouteError(
                    f"listen_event({topic!r}): batch must be a freedom.BatchSettings, got {batch!r}"
                )
            self._batches[check] = batch
        self._events.append((check, handler))

    def publishes(
        self, topic: str, payload: Any = bytes, *, description: str | None = None
    ) -> None:
        """Declare that the service publishes to `topic` (an event name maps as in listen_event),
        with `payload` its content's type (a Pydantic model, a dataclass, `dict`, `list[...]`,
        `str`, `bytes`): the AsyncAPI document (asyncapi.py) lists it. Publishing does not check it."""
        from pydantic import TypeAdapter
        from pydantic.errors import PydanticSchemaGenerationError

        checked = _checked_topic(topic)
        try:
            TypeAdapter(payload)
        except PydanticSchemaGenerationError:
            name = getattr(payload, "__qualname__", repr(payload))
            raise RouteError(
                f"initiator.publishes({topic!r}, {name}): Pydantic cannot describe {name}; use a "
                "Pydantic model, a dataclass, dict, list[...], str or bytes"
            ) from None
        self.app.declared_publishes[checked] = (payload, description)

    def event_routes(self) -> dict[str, EventRoute]:
        """Resolve every `listen_event` to the route its records are posted to."""
        return {topic: self._resolve(topic, handler) for topic, handler in self._events}

    def _resolve(self, topic: str, handler: str | Callable[..., Any]) -> EventRoute:
        if isinstance(handler, str):
            cls_name, _, method = handler.partition(".")
            controller = self._controllers.get(cls_name)
            if controller is None or not method:
                known = ", ".join(sorted(self._controllers)) or "none"
                raise RouteError(
                    f"listen_event({topic!r}, {handler!r}): no bound controller {cls_name!r} "
                    f'(write "Controller.method"; bound controllers: {known})'
                )
            func = getattr(controller, method, None)
            if func is None:
                raise RouteError(
                    f"listen_event({topic!r}, {handler!r}): {cls_name} has no method {method!r}"
                )
            handler = func
        func = inspect.unwrap(cast("Callable[..., Any]", handler))  # a str was resolved above
        if func in self._method_routes:
            verb, path, params = self._method_routes[func]
        else:
            api_route = next(
                (r for r in self.fastapi.routes if isinstance(r, APIRoute) and r.endpoint is func),
                None,
            )
            if api_route is None:
                raise RouteError(
                    f"listen_event({topic!r}, {getattr(func, '__qualname__', func)!r}): not a route of this app "
                    "(bind its controller first, or decorate it with @app.fastapi.post(...))"
                )
            assert api_route.methods is not None  # APIRoute always sets them
            verb = "POST" if "POST" in api_route.methods else sorted(api_route.methods)[0]
            path = api_route.path
            params = tuple(api_route.param_convertors)
        if verb != "POST":
            raise RouteError(
                f"listen_event({topic!r}): the handler must be a POST route (name it post_...), it is {verb} {path}"
            )
        if len(params) > 1:
            raise RouteError(
                f"listen_event({topic!r}): {path} has {len(params)} path parameters; an event route may have one, for the message key"
            )
        batch = self._batches.get(topic)
        if batch is not None and params:
            raise RouteError(
                f"listen_event({topic!r}, batch=...): {path} has a path parameter; a batch route takes "
                "none (each record's key is in the batch)"
            )
        return EventRoute(topic, path, params[0] if params else None, batch)


def _checked_topic(topic: str) -> str:
    """The topic of an event name, by the domain-event rule (':' -> '.'; see domain/events.py)."""
    try:
        return event_topic(topic)
    except (TypeError, ValueError) as exc:
        raise RouteError(f"listen_event: {exc}") from None


def route_keys_with_slashes(
    api: FastAPI, routes: dict[str, EventRoute], secret: str | None
) -> None:
    """Let a message key with a '/' in it reach its event route.

    The proxy puts the key, percent-encoded, in the path (`/store/sell/goods/tenant%2F7`), and the
    server decodes it (`.../tenant/7`), which a `{event_id}` parameter does not match: such a record
    would get 404 on every try and end in the dead-letter topic. So each event route gets a copy at
    the end of the route list whose key parameter matches slashes too. Being last, it never takes a
    request another route matches. With a secret, it checks the verdict of the guard in front of
    the application (security.DeliveryGuard, which knows only the plain paths and has already
    taken the secret out of the request, so application middleware never sees it).
    """
    for path, param in sorted({(r.path, r.param) for r in routes.values() if r.param}):
        route = next(
            (
                r
                for r in api.router.routes
                if isinstance(r, APIRoute) and r.path == path and "POST" in (r.methods or ())
            ),
            None,
        )
        if route is None:
            continue
        any_key = path.replace("{" + param + "}", "{" + param + ":path}")
        fallback = copy.copy(route)
        fallback.path_regex, fallback.path_format, fallback.param_convertors = compile_path(any_key)
        fallback.include_in_schema = False
        if secret:
            fallback.app = RequireDelivery(route.app)
        api.router.routes.append(fallback)
