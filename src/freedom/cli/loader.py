"""Loading a `module:app` target, as `freedom run`, `freedom config`, `freedom asyncapi` and the
operations commands (`freedom status module:app`, ...) do: one way, one set of error messages.

It imports only the errors module at import time, so any layer's command code can import it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from freedom.errors import FreedomError

if TYPE_CHECKING:
    from freedom.web.application import Application


def load_app(target: str) -> object:
    """Import `module:attribute` (the attribute defaults to `app`)."""
    module_name, _, attr = target.partition(":")
    attr = attr or "app"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise FreedomError(
                f"cannot import {module_name!r}: no such module (run from the directory that contains it)"
            ) from None
        raise
    except (
        SyntaxError
    ) as exc:  # an edit that does not parse (freedom run --reload waits for the next one)
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        raise FreedomError(f"cannot import {module_name!r}: {exc.msg} ({where})") from None
    app = getattr(module, attr, None)
    if app is None:
        raise FreedomError(
            f"module {module_name!r} has no attribute {attr!r} (write module:attribute, e.g. example:app)"
        )
    return app


def load_application(target: str, config_dir: str | None) -> Application:
    """The freedom Application `target` (module:attribute) names, not set up yet.

    `config_dir` (a command's `--config`) becomes $FREEDOM_PROJECT_CONFIG first, so the
    application finds it when it is set up; anything else at `target` is a FreedomError.
    """
    from freedom.web.application import Application

    if config_dir:
        os.environ["FREEDOM_PROJECT_CONFIG"] = config_dir
    app = load_app(target)
    if not isinstance(app, Application):
        raise FreedomError(f"{target} is a {type(app).__name__}, not a freedom.Application")
    return app
