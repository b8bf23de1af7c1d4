"""What an awaited publish reports: its duration (messaging_client_operation_duration_seconds)
and, when a tracer records spans, its `send` span, whose context the record carries."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from freedom.errors import PublishError
from freedom.kafka.producing.delivery import produce_for_loop
from freedom.observability import metrics, spans
from freedom.wire.headers import EVENT_ID_HEADER

if TYPE_CHECKING:
    from freedom.kafka.producing.client import ProducerClient
    from freedom.kafka.producing.delivery import Delivered
    from freedom.kafka.producing.msg import Msg


async def observed_publish(msg: Msg, client: ProducerClient) -> Delivered:
    """Send `msg` through `client` and wait for the broker's answer (an awaited `msg.publish()`),
    timed (messaging_client_operation_duration_seconds), in its `send` span when a tracer records
    (the record then carries the span's context)."""
    send = None
    if spans.tracer() is not None:
        send = spans.send_span(
            msg.topic,
            msg.key,
            msg.headers,
            parent=msg.runtime.trace.otel if msg.runtime is not None else None,
            message_id=(msg.headers.get(EVENT_ID_HEADER) or b"").decode("utf-8", "replace") or None,
        )
        if send is not None:
            msg.context_headers = {
                **msg.context_headers,
                **{k: v.encode() for k, v in send.headers().items()},
            }
    started = time.perf_counter()
    try:
        delivered = await produce_for_loop(client, msg, asyncio.get_running_loop())
    except PublishError as exc:
        metrics.observe_send(msg.topic, time.perf_counter() - started, type(exc).__name__)
        if send is not None:
            send.end(type(exc).__name__)
        raise
    metrics.observe_send(msg.topic, time.perf_counter() - started)
    if send is not None:
        send.end("", delivered.partition, delivered.offset)
    return delivered
