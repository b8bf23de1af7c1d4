"""Where a failed record goes: its retry or dead-letter topic, produced until the broker
acknowledges the copy (docs/consumer-proxy.md, "Retries and dead letters"). The proxy decides the
step (retry.py's RetryRouter.plan); this strategy carries it out: the reason headers, the smaller
copies a dead letter may need, a retry topic that can never take the record (dead-lettered now,
with the cause), and the partition going away meanwhile (the record stays uncommitted)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from freedom.kafka.consumer.delivery import DeliveryResult
from freedom.kafka.consumer.observer import ProxyObserver
from freedom.kafka.consumer.plan import TopicPlan, wait_event
from freedom.kafka.consumer.retry import Copy, Plan, ProduceRefused, RetryRouter
from freedom.observability.failures import log_with_traceback
from freedom.wire.headers import VALUE_OMITTED_HEADER

log = logging.getLogger("freedom.kafka.proxy")

#: The longest wait between two attempts to produce a copy the broker did not take.
MAX_BACKOFF_SEC = 10.0


class Forwarder:
    """Produces failed records of one consumer client to their retry or dead-letter topics."""

    def __init__(self, router: RetryRouter, observer: ProxyObserver, retry_count: int) -> None:
        self.router = router
        self.observer = observer
        self.retry_count = retry_count

    async def forward(
        self,
        record: Any,
        plan: TopicPlan,
        step: Plan,
        n: int,
        result: DeliveryResult,
        lost: asyncio.Event,
        where: str,
        *,
        note: str | None,
        replay: bool = False,
    ) -> bool:
        """Produce the failed record to its retry or dead-letter topic: True once the broker
        acknowledged it (or, the last resort, every copy was refused for good), False when the
        partition went away first (the record stays uncommitted and is delivered again).
        `replay`: its replay headers were checked (replays.py) and go with it."""
        assert step.topic is not None
        kind, topic = step.next, step.topic
        origin = self.router.origin(record, plan.source_topic)
        if kind == "dead-letter" and step.not_retried:
            note = _join(note, step.not_retried)
        # One line per failed attempt; the handler's traceback (held by freedom's event route in
        # this process) once per record, with the line about its dead letter.
        log_with_traceback(
            log,
            logging.WARNING,
            result.trace if kind == "dead-letter" else None,
            "delivery of %s to %s failed: %s; %s",
            where,
            plan.route.path,
            result.describe(),
            f"retry {n + 1} of {self.retry_count} via {topic}"
            if kind == "retry"
            else f"dead-lettered to {topic}",
            extra=self.observer.log_fields(record, kind.replace("-", "_")),
        )
        while True:
            headers = self.router.headers_for(
                record,
                plan.source_topic,
                n + 1 if kind == "retry" else n,
                result,
                origin=origin,
                note=note,
                replay=replay,
            )
            # A retry is the record itself or nothing; a dead letter may be a smaller copy.
            copies = (
                RetryRouter.copies(record, headers)
                if kind == "dead-letter"
                else [Copy(record.key(), record.value() or b"", headers)]
            )
            refused: ProduceRefused | None = None
            for copy in copies:
                outcome = await self._produce(topic, copy, lost, where)
                if outcome is True:
                    self.observer.forwarded(record, plan, kind, topic, result)
                    if copy.kind != "full":
                        log.error(
                            "%s: dead-lettered to %s as a copy without its %s (marked %s)",
                            where,
                            topic,
                            "value"
                            if copy.kind == "value-omitted"
                            else "value, key and own headers",
                            VALUE_OMITTED_HEADER,
                        )
                    return True
                if outcome is False:
                    return False
                refused = outcome
                log.error("%s: %s", where, refused)
            assert refused is not None
            if kind == "retry":
                # The retry topic can never take it: dead-letter it now, with the real cause.
                fail = self.router.fail_topic(plan.source_topic)
                assert (
                    fail is not None
                )  # config: retry_fail_prefix is required when retry_count > 0
                note = _join(note, f"not retried: {refused}")
                kind, topic = "dead-letter", fail
                log_with_traceback(
                    log,
                    logging.ERROR,
                    result.trace,
                    "%s: not retried, dead-lettering it to %s instead",
                    where,
                    fail,
                )
                continue
            # Not even the smallest copy fits: never hold the partition for good on a permanent error.
            log.error(
                "%s: %s refused every copy of the record, down to its reason headers (last: %s); committed "
                "without a copy, so this line is its only trace",
                where,
                topic,
                refused,
            )
            return True

    async def _produce(
        self, topic: str, copy: Copy, lost: asyncio.Event, where: str
    ) -> bool | ProduceRefused:
        """Produce to a retry or dead-letter topic until the broker acknowledges it (True), or the
        partition goes away (False: the record stays uncommitted and is delivered again), or the
        broker refuses it for good (the ProduceRefused: trying again cannot help)."""
        backoff = 0.5
        while True:
            try:
                with self.observer.sending(topic, copy):
                    await self.router.produce(topic, copy)
                return True
            except ProduceRefused as exc:
                if exc.permanent:
                    return exc
                log.error(
                    "%s: %s; the record stays uncommitted, trying again in %.1f s",
                    where,
                    exc,
                    backoff,
                )
            if await wait_event(lost, backoff):
                return False
            backoff = min(backoff * 2, MAX_BACKOFF_SEC)


def _join(note: str | None, more: str) -> str:
    return f"{note}; {more}" if note else more
