"""Where a consumer proxy gets its Kafka clients: the one seam between the proxy's rules and Kafka.

:class:`ProxyClients` is the port: a record source per consumer group (sources/), a producer
client for the retry and dead-letter copies (the producer adapter, kafka/producing/client.py), a reader of dead letters (replay checks) and topic
creation. :class:`KafkaClients` serves them from the cluster; freedom.testing's broker serves
them from memory. Everything else a proxy does (delivery, outcomes, retries, dead letters, commits,
metrics) is the same code on both.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from freedom.kafka.admin import ensure_topics
from freedom.kafka.consumer.copy_producer import new_producer
from freedom.kafka.consumer.replays import DeadLetterSource
from freedom.kafka.consumer.sources import RecordSource, ShareTerms
from freedom.kafka.producing.client import ProducerClient


class ProxyClients(Protocol):
    """The Kafka clients of one consumer proxy."""

    def source(
        self,
        group_id: str,
        settings: dict[str, Any],
        topics: list[str],
        *,
        initial_offset: str,
        drain_timeout: float,
        share: ShareTerms | None = None,
    ) -> RecordSource:
        """The group's source: a classic consumer group, or with `share` a share group."""
        ...

    def retry_producer(self, settings: dict[str, Any], name: str) -> ProducerClient:
        """The producer of the retry and dead-letter copies: the producer adapter, on the cluster's
        librdkafka producer or a stand-in for it."""
        ...

    def dead_letters(self, settings: dict[str, Any]) -> DeadLetterSource: ...

    async def create_topics(
        self, settings: dict[str, Any], topics: list[str], like: dict[str, str]
    ) -> None: ...


class KafkaClients:
    """The clients of a consumer proxy on a Kafka cluster."""

    def source(
        self,
        group_id: str,
        settings: dict[str, Any],
        topics: list[str],
        *,
        initial_offset: str,
        drain_timeout: float,
        share: ShareTerms | None = None,
    ) -> RecordSource:
        if share is not None:
            from freedom.kafka.consumer.sources.share import ShareSource

            return ShareSource(
                group_id,
                settings,
                topics,
                share,
                initial_offset=initial_offset,
                drain_timeout=drain_timeout,
            )
        from freedom.kafka.consumer.sources.kafka import KafkaSource

        return KafkaSource(
            group_id, settings, topics, initial_offset=initial_offset, drain_timeout=drain_timeout
        )

    def retry_producer(self, settings: dict[str, Any], name: str) -> ProducerClient:
        return new_producer(settings, name)

    def dead_letters(self, settings: dict[str, Any]) -> DeadLetterSource:
        from freedom.kafka.consumer.sources.kafka import KafkaDeadLetters

        return KafkaDeadLetters(settings)

    async def create_topics(
        self, settings: dict[str, Any], topics: list[str], like: dict[str, str]
    ) -> None:
        await asyncio.to_thread(ensure_topics, settings, topics, like=like)
