"""Loading a `module:app` target, as `freedom run`, `freedom config`, `freedom asyncapi` and the
operations commands (`freedom status module:app`, ...) do: one way, one set of error messages.

It imports only the errors module at import time, so any layer's command code can import it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import sysconfig
import traceback
from typing import TYPE_CHECKING

from freedom.errors import FreedomError

if TYPE_CHECKING:
    from freedom.web.application import Application

log = logging.getLogger("freedom.cli")


def _not_user_code() -> tuple[str, ...]:
    """Directories whose files are not the user's: the standard library, installed packages and
    freedom itself (an editable install is outside site-packages)."""
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # .../freedom
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def _where(exc: BaseException) -> str:
    """`file, line N` of the deepest frame of `exc`'s traceback in the user's code (the module being
    imported, or one it imports), else of the imported module's own frame (a service installed in
    site-packages); the file relative to the working directory when under it."""
    frames = traceback.extract_tb(exc.__traceback__)
    skip = _not_user_code()
    user = [
        f
        for f in frames
        if not f.filename.startswith("<") and not os.path.realpath(f.filename).startswith(skip)
    ]
    # The frames importlib runs the module in come right after its own (<frozen importlib...>).
    bootstrap = [i for i, f in enumerate(frames) if f.filename.startswith("<frozen importlib")]
    module = frames[bootstrap[0] + 1 :] if bootstrap else frames
    module = [f for f in module if not f.filename.startswith("<")]
    if not user and not module:
        return ""
    frame = user[-1] if user else module[0]
    path = os.path.abspath(frame.filename)
    cwd = os.path.join(os.getcwd(), "")
    shown = path[len(cwd) :] if path.startswith(cwd) else path
    return f"{shown}, line {frame.lineno}"


def import_error(module_name: str, exc: Exception) -> FreedomError:
    """One line for an exception raised while importing the user's module: the exception, and the
    file and line in the user's code it came from; the traceback goes to the DEBUG log."""
    log.debug("importing %r raised", module_name, exc_info=exc)
    text = " ".join(str(exc).split())
    where = _where(exc)
    hint = (
        ""
        if log.isEnabledFor(logging.DEBUG)
        else "; `freedom run --log-level debug` shows the traceback"
    )
    return FreedomError(
        f"cannot import {module_name!r}: {type(exc).__name__}{': ' + text if text else ''}"
        f"{f' ({where})' if where else ''}{hint}"
    )


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
        raise import_error(module_name, exc) from None  # one the module imports is missing
    except (
        SyntaxError
    ) as exc:  # an edit that does not parse (freedom run --reload waits for the next one)
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else f"line {exc.lineno}"
        raise FreedomError(f"cannot import {module_name!r}: {exc.msg} ({where})") from None
    except FreedomError:
        raise  # freedom's own errors (a bad Application(...) argument) are one line already
    except Exception as exc:  # the module raised while it ran: one line, the traceback at DEBUG
        raise import_error(module_name, exc) from None
    app = getattr(module, attr, None)
    if app is None:
        raise FreedomError(
            f"module {module_name!r} has no attribute {attr!r} (write module:attribute, e.g. example:app)"
        )
    return app


def check_config_option(config_dir: str | None) -> None:
    """A command's `--config DIR`: a FreedomError naming the option when DIR is not a directory
    (it would otherwise reach the application as $FREEDOM_PROJECT_CONFIG, and be blamed on that)."""
    if config_dir is None or os.path.isdir(config_dir):
        return
    what = "a file" if os.path.exists(config_dir) else "nothing there"
    raise FreedomError(
        f"--config {config_dir} is not a directory ({what}): give the config directory, the one "
        "holding app.toml and infra/kafka.toml"
    )


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
