"""freedom: Kafka message events delivered to a Python web service as HTTP handler calls.

    import freedom

    @freedom.prepare
    def _(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event("event-sell", "StoreController.post_sell_goods_by")

    app = freedom.Application()

The distribution is `freedom-events` (`pip install freedom-events`); `freedom.__version__` is its version.
"""

from importlib import metadata as _metadata
from pathlib import Path as _Path

from freedom.domain import Database, DomainEventError, Entity, EventNameError, UnitOfWork
from freedom.errors import ConfigError, FreedomError, PublishError, RouteError, UnknownClientError
from freedom.web.application import Application, StartupError
from freedom.web.initiator import Initiator, prepare
from freedom.web.runtime import Request, Runtime, RuntimeDep, get_runtime
from freedom.wire.batch import Batch, BatchRecord, BatchSettings
from freedom.wire.context import Bus
from freedom.wire.outcomes import DeadLetter, Drop, Outcome, Retry

DISTRIBUTION = "freedom-events"


def _version() -> str:
    """The installed distribution's version; in a source tree that is not installed, pyproject's."""
    try:
        return _metadata.version(DISTRIBUTION)
    except _metadata.PackageNotFoundError:
        import tomllib

        try:
            with open(_Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
                project = tomllib.load(f)["project"]
            if project["name"] == DISTRIBUTION:
                return str(project["version"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Application",
    "Batch",
    "BatchRecord",
    "BatchSettings",
    "Bus",
    "Database",
    "DomainEventError",
    "Entity",
    "EventNameError",
    "UnitOfWork",
    "DeadLetter",
    "Drop",
    "ConfigError",
    "FreedomError",
    "Initiator",
    "Outcome",
    "PublishError",
    "Request",
    "Retry",
    "RouteError",
    "Runtime",
    "RuntimeDep",
    "StartupError",
    "UnknownClientError",
    "get_runtime",
    "prepare",
]
