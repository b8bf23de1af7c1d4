"""The publishing API's first home, kept for its importers: the parts now live in
freedom.kafka.producing (client.py: the librdkafka adapter; msg.py: `Msg`; delivery.py:
`Delivered` and the delivery errors; batch.py: the batch results; producer.py: `Producer`).
"""

from freedom.kafka.producing.batch import BatchResult as BatchResult
from freedom.kafka.producing.batch import PendingBatch as PendingBatch
from freedom.kafka.producing.client import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from freedom.kafka.producing.client import ProducerClient as ProducerClient
from freedom.kafka.producing.client import ProducerClosedError as ProducerClosedError
from freedom.kafka.producing.delivery import Delivered as Delivered
from freedom.kafka.producing.delivery import RecordTooLargeError as RecordTooLargeError
from freedom.kafka.producing.msg import Msg as Msg
from freedom.kafka.producing.msg import new_key as new_key
from freedom.kafka.producing.producer import Producer as Producer

__all__ = [
    "DEFAULT_MAX_BYTES",
    "BatchResult",
    "Delivered",
    "Msg",
    "PendingBatch",
    "Producer",
    "ProducerClient",
    "ProducerClosedError",
    "RecordTooLargeError",
    "new_key",
]
