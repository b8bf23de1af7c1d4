"""freedom: Kafka message events delivered to a Python web service as HTTP handler calls.

    import freedom

    @freedom.prepare
    def _(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event("event-sell", "StoreController.post_sell_goods_by")

    app = freedom.Application()

The distribution is `freedom-events` (`pip install freedom-events`); `freedom.__version__` is its version.

`__all__` is the public API, listed with where each name is explained in docs/api.md; every
other module (`freedom.web`, `freedom.kafka`, `freedom.config`, ...) is internal and may change.
`freedom.infra.kafka` is the seed-shaped facade (`from freedom.infra import kafka`): its
`Producer`, `Msg`, ... are these same objects.
"""

from freedom._version import DISTRIBUTION as DISTRIBUTION
from freedom._version import __version__ as __version__
from freedom.domain import Database, DomainEventError, Entity, EventNameError, UnitOfWork
from freedom.errors import ConfigError, FreedomError, PublishError, RouteError, UnknownClientError
from freedom.kafka.consumer.delivery import DeliveryResult
from freedom.kafka.domain_events import get_domain_event_infra
from freedom.kafka.producing.batch import BatchResult, PendingBatch
from freedom.kafka.producing.client import ProducerClosedError
from freedom.kafka.producing.delivery import Delivered, RecordTooLargeError
from freedom.kafka.producing.msg import Msg
from freedom.kafka.producing.producer import Producer
from freedom.kafka.settings import setting_config
from freedom.observability import log_text as _log_text
from freedom.web.application import Application, StartupError
from freedom.web.event_middleware import EventDelivery
from freedom.web.initiator import Initiator, prepare
from freedom.web.runtime import Request, Runtime, RuntimeDep
from freedom.web.runtime import get_runtime as get_runtime  # importable; not in __all__
from freedom.wire.batch import Batch, BatchRecord, BatchSettings
from freedom.wire.context import Bus
from freedom.wire.outcomes import DeadLetter, Drop, Outcome, Retry

# Control and bidirectional characters in the arguments of freedom's log lines are escaped
# (docs/observability.md): every `freedom.*` import runs this package's __init__ first.
_log_text.escape_log_arguments()

__all__ = [
    # application and routing
    "Application",
    "StartupError",
    "Initiator",
    "prepare",
    # the request
    "Runtime",
    "RuntimeDep",
    "Request",
    "Bus",
    # publishing
    "Producer",
    "Msg",
    "Delivered",
    "BatchResult",
    "PendingBatch",
    "setting_config",
    # outcomes
    "Outcome",
    "Retry",
    "DeadLetter",
    "Drop",
    # event middleware (direct delivery)
    "EventDelivery",
    "DeliveryResult",
    # batches
    "Batch",
    "BatchRecord",
    "BatchSettings",
    # domain events
    "Entity",
    "UnitOfWork",
    "Database",
    "get_domain_event_infra",
    "DomainEventError",
    "EventNameError",
    # errors
    "FreedomError",
    "ConfigError",
    "RouteError",
    "UnknownClientError",
    "PublishError",
    "ProducerClosedError",
    "RecordTooLargeError",
]
