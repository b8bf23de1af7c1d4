"""freedom: Kafka message events delivered to a Python web service as HTTP handler calls.

    import freedom

    @freedom.prepare
    def _(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event("event-sell", "StoreController.post_sell_goods_by")

    app = freedom.Application()
"""

from .application import Application
from .bus import Bus
from .domain import Database, DomainEventError, Entity, EventNameError, UnitOfWork
from .errors import ConfigError, FreedomError, PublishError, RouteError, UnknownClientError
from .initiator import Initiator, prepare
from .outcomes import DeadLetter, Drop, Outcome, Retry
from .runtime import Request, Runtime, RuntimeDep, get_runtime

__all__ = [
    "Application",
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
    "UnknownClientError",
    "get_runtime",
    "prepare",
]
