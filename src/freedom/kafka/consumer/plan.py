"""What a consumer group is told about each subscribed topic, and the calls it makes per record
(and per chunk of a batch topic's records)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from freedom.kafka.consumer.delivery import EventRoute


@dataclass(frozen=True)
class TopicPlan:
    """How the records of one subscribed topic are delivered."""

    route: EventRoute
    source_topic: str  # the listened topic T (for a retry topic: the topic it retries)
    mode: str = "sequential"
    max_in_flight: int = 500
    #: Read by a share group (sources/share.py): a failure redelivered in place is released to the
    #: group instead, and dead-lettered once the broker's delivery count reaches its limit.
    shared: bool = False


#: `handle(record, plan, lost)`: deliver one record and settle it; True once it is finished
#: (delivered, or acknowledged on its retry or dead-letter topic), False when it was given up
#: because its partition went away (`lost` is set then).
Handler = Callable[[Any, TopicPlan, asyncio.Event], Awaitable[bool]]

#: `handle_batch(records, plan, lost)`: as `Handler` for several records of one partition of a
#: batch topic at once (lanes.py); one bool per record, in order.
BatchHandler = Callable[
    [list[Any], TopicPlan, asyncio.Event], Awaitable[list[bool | Awaitable[bool]]]
]


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True when it was set."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
        return True
    except TimeoutError:
        return event.is_set()
