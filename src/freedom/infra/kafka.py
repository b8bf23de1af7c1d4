"""Kafka for freedom: the producer, the consumer proxy and the settings hook.

from freedom.infra import kafka

class ShopController:
    producer: kafka.Producer          # injected per request

The seed-shaped facade: `Producer`, `Msg`, ... are the objects `freedom` exports
(`kafka.Producer is freedom.Producer`); docs/api.md lists them. `EventRoute` stays importable
here for compatibility but is internal (not in `__all__`).
"""

from freedom.kafka.consumer.delivery import EventRoute as EventRoute  # internal; not in __all__
from freedom.kafka.domain_events import KafkaDomainEventInfra, get_domain_event_infra
from freedom.kafka.producing.batch import BatchResult, PendingBatch
from freedom.kafka.producing.client import ProducerClosedError
from freedom.kafka.producing.delivery import Delivered, RecordTooLargeError
from freedom.kafka.producing.msg import Msg, new_key
from freedom.kafka.producing.producer import Producer
from freedom.kafka.settings import setting_config

__all__ = [
    "BatchResult",
    "PendingBatch",
    "ProducerClosedError",
    "RecordTooLargeError",
    "Delivered",
    "KafkaDomainEventInfra",
    "Msg",
    "Producer",
    "get_domain_event_infra",
    "new_key",
    "setting_config",
]
