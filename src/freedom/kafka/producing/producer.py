"""`Producer`: the publishing side of a service, injected into controllers annotated
`producer: kafka.Producer`; it holds the producer clients of kafka.toml by name.

`Producer.new_msg(...)` builds a `Msg`, which is sent one of three ways.

- `await msg.publish()` in async code: returns once the broker has acknowledged the record
  (acks from all in-sync replicas, idempotent producer, so librdkafka's own retries neither lose
  nor duplicate it), raises :class:`PublishError` when it cannot be delivered within the client's
  `delivery_timeout_sec`.
- `msg.publish_sync()` in synchronous code (a plain `def` handler, a script): the same, blocking.
- `await producer.publish_batch(msgs)` (or `producer.accept_batch(msgs)` then `.result()`) for
  many records: all are queued at once and pipelined by librdkafka, and each gets its own outcome.

A record accepted by any of these is flushed when the service stops; whatever the broker did not
acknowledge by then is reported (to its waiter and in the log), never dropped silently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from freedom.errors import PublishError, UnknownClientError
from freedom.kafka.producing.batch import BatchResult, PendingBatch
from freedom.kafka.producing.client import ProducerClient, ProducerClosedError
from freedom.kafka.producing.delivery import Delivered, queue
from freedom.kafka.producing.msg import Msg
from freedom.kafka.producing.send_observer import observed_publish
from freedom.kafka.topics import check_topic

_GOOD_TOPICS_KEPT = (
    10_000  # topic names a Producer remembers as checked (bounded for generated names)
)


class Producer:
    """The publishing side, injected into controllers annotated `producer: kafka.Producer`."""

    def __init__(
        self,
        clients: Mapping[str, ProducerClient] | None = None,
        default: str | None = None,
        disabled_reason: str | None = None,
    ) -> None:
        self._clients = dict(clients or {})
        self._default = default if default is not None else next(iter(self._clients), None)
        self._disabled_reason = disabled_reason
        self._good_topics: set[str] = (
            set()
        )  # names check_topic accepted: checked once, not per message

    @property
    def client_names(self) -> list[str]:
        return list(self._clients)

    def new_msg(self, topic: str, content: object, client: str | None = None) -> Msg:
        """A message to `topic` carrying `content`; `client` names a `[[producer_clients]]` entry.

        `content` is bytes or str (the value as it is, no content-type added), or an object sent as
        JSON with `content-type: application/json`: a Pydantic model, a dataclass, a dict or list
        (see freedom.wire.payloads). Anything that cannot be serialised is a TypeError naming its type.
        """
        if topic.__class__ is not str or topic not in self._good_topics:
            check_topic(topic)
            if len(self._good_topics) < _GOOD_TOPICS_KEPT:
                self._good_topics.add(topic)
        msg = Msg(self, topic, content)
        if client is not None:
            msg.select_client(client)
        return msg

    def client(self, name: str | None) -> ProducerClient:
        """The client called `name` (None: the default one); raises UnknownClientError naming the known ones."""
        if self._disabled_reason:
            raise ProducerClosedError(self._disabled_reason)
        key = self._default if name is None else name
        if key is None or key not in self._clients:
            known = ", ".join(repr(n) for n in self._clients) or "none"
            raise UnknownClientError(
                f"no producer client named {name!r} in kafka.toml (known: {known})"
            )
        return self._clients[key]

    async def send(self, msg: Msg) -> Delivered:
        """Publish one message and wait for the broker's acknowledgement (used by `msg.publish()`),
        in its `send` span, timed (observer.py)."""
        return await observed_publish(msg, self.client(msg.client))

    def accept_batch(self, msgs: Iterable[Msg]) -> PendingBatch:
        """Queue every message now (from any thread) and return at once.

        Once this returns, the records are the producer's responsibility: they are delivered even
        if the service stops right away. A message that cannot even be queued (too large, closed
        producer) gets its error in the batch result instead of stopping the others.
        """
        msgs = list(msgs)
        for msg in msgs:
            if not isinstance(msg, Msg):
                raise TypeError(
                    f"publish_batch takes Msg objects (from producer.new_msg), got {type(msg).__name__}"
                )
        batch = PendingBatch(msgs)
        clients: dict[str | None, tuple[ProducerClient, Callable[[int, Any, Any], None]]] = {}
        for i, msg in enumerate(msgs):
            try:
                if msg.client not in clients:
                    client = self.client(msg.client)
                    clients[msg.client] = (client, batch._reporter(client))
                client, report = clients[msg.client]
                queue(client, msg, functools.partial(report, i))
            except UnknownClientError:
                raise
            except PublishError as exc:
                batch._settle(i, exc)
        return batch

    async def publish_batch(self, msgs: Iterable[Msg]) -> BatchResult:
        """Publish many messages pipelined; returns each one's outcome (see BatchResult.failed)."""
        return await self.accept_batch(msgs).wait()

    def close(self, timeout: float = 10.0) -> list[tuple[str, str, str]]:
        """Flush and close every client; returns `(topic, key, error)` of records not delivered."""
        failures: list[tuple[str, str, str]] = []
        for client in self._clients.values():
            failures += client.close(timeout)
        return failures
