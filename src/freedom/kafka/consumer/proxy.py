"""The consumer proxy of one `[[consumer_clients]]` entry: its main group, its retry group, and
what happens to each record (docs/contract.md: "The answer", "Retries and dead letters", "The
commit rule").

- The main group (`group_id`) reads every listened topic T; the retry group (`retry_group_id`,
  earliest offset when new, only when `retry_count > 0`) reads `{retry_prefix}T` and delivers a
  record no earlier than its timestamp + `retry_interval_sec`. Both deliver to T's route.
- A delivery that fails goes to the retry topic with `x-retry-count` n + 1, or, after
  `retry_count` retries (or when the handler asks, or when it can never succeed:
  DeliveryResult.permanent), to the dead-letter topic `{retry_fail_prefix}T` (see retry.py).
  With `retry_count = 0` a failure is delivered again in memory, with backoff, holding its
  partition, so nothing is lost.
- The commit rule: an offset is committed only after its record succeeded, or was acknowledged
  by the broker on its retry or dead-letter topic. A produce that failed for a fault of the moment
  is retried with backoff; the record stays uncommitted meanwhile. A produce refused for the
  record itself (too large, ...) is not retried: the record goes to the dead-letter topic instead,
  as a smaller copy when it must (RetryRouter.copies), so that every record settles
  (docs/contract.md, "Every record settles").

- Backpressure (backpressure.py): every delivery of a topic passes its Gate (a Retry-After pause,
  `rate_limit_per_sec`, `max_concurrency`). A 429/503 answer with `Retry-After` pauses the topic
  and the record is delivered again after the pause, not counted as a failed attempt, until its
  pauses add up to more than `backpressure_max_sec`.
- The head-of-line guard (`head_of_line_timeout_sec`): a record not settled that long after its
  first delivery started has its delivery cancelled and goes to its retry topic (with
  `retry_count = 0`: its dead-letter topic), like a failure whose error names the guard; the
  commit passes it once that copy is acknowledged.

Fetching, the delivery modes, flow control and commits are group.py's; the call to the service is
the transport's (delivery.py, transports/). A batch topic's records come by chunks to
`_handle_batch` (batch_path.py): prepared as here, delivered in one call of the Batcher, and those
whose answer is not plainly done go on alone through `_attempts` and the forwarder (forward.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

from freedom.config.librdkafka import CONSUMER_DEFAULTS
from freedom.config.models import ConsumerClientConfig
from freedom.kafka.consumer import batch_path
from freedom.kafka.consumer.backpressure import Gate
from freedom.kafka.consumer.batching import Batcher
from freedom.kafka.consumer.clients import KafkaClients, ProxyClients
from freedom.kafka.consumer.delivery import DeliveryResult, EventRoute, Transport
from freedom.kafka.consumer.forward import MAX_BACKOFF_SEC, Forwarder
from freedom.kafka.consumer.group import ConsumerGroup, TopicPlan, wait_event
from freedom.kafka.consumer.keys import EventId, record_key
from freedom.kafka.consumer.keys import where as _where
from freedom.kafka.consumer.observer import ProxyObserver
from freedom.kafka.consumer.replays import Claim, ReplayCheck, claim_of
from freedom.kafka.consumer.retry import (
    Plan,
    RetryRouter,
    header_value,
    retry_count_of,
)
from freedom.kafka.consumer.share_rules import ShareRules, share_terms
from freedom.kafka.consumer.sources import ShareTerms
from freedom.observability.failures import log_with_traceback
from freedom.wire.headers import RETRY_COUNT_HEADER

log = logging.getLogger("freedom.kafka.proxy")

__all__ = ["CONSUMER_DEFAULTS", "ConsumerProxy", "record_key"]

SERVICE_WAIT_SEC = 60.0
#: The step of a delivery answered with a Retry-After the record may wait for (metrics: "redeliver").
_HELD = Plan("redeliver")
#: What a retry or dead-letter record's `x-freedom-error` starts with when the head-of-line guard moved it.
HEAD_OF_LINE_ERROR = "HeadOfLineGuard"


class ConsumerProxy:
    """The main and retry consumer groups of one cluster, delivering records of the listened topics."""

    def __init__(
        self,
        config: ConsumerClientConfig,
        settings: dict[str, Any],
        routes: dict[str, EventRoute],
        delivery: Transport,
        *,
        clients: ProxyClients | None = None,
        fetch_batch: int = 500,
    ) -> None:
        self.config = config
        self.routes = routes
        self.delivery = delivery
        self.settings = settings
        self.clients = clients if clients is not None else KafkaClients()
        self.router = RetryRouter(config, settings, self.clients.retry_producer)
        # Replay headers on main-topic records are kept only when their dead letter proves them.
        self.replays = ReplayCheck(self.clients.dead_letters(settings))
        # Per topic (batch topics aside, batching.py): its backpressure gate and its head-of-line guard.
        self.gates: dict[str, Gate] = {}
        self._guards: dict[str, float] = {}
        for t, route in routes.items():
            c = config.consume_config(t)
            if route.batch is None:
                self.gates[t] = Gate(
                    rate_per_sec=c.rate_limit_per_sec,
                    max_concurrency=c.max_concurrency,
                    retry_after_max_sec=c.retry_after_max_sec,
                    backpressure_max_sec=c.backpressure_max_sec,
                )
                if c.head_of_line_timeout_sec is not None:
                    self._guards[t] = c.head_of_line_timeout_sec
        self.observer = ProxyObserver(config)  # metrics, spans and log fields (observer.py)
        #: Failed records to their retry or dead-letter topic (forward.py).
        self.forwarder = Forwarder(self.router, self.observer, config.retry_count)
        self.batcher = Batcher(delivery)  # topics bound with listen_event(..., batch=): batching.py
        main_plans = {
            t: self._plan(t, route, shared=config.share_group) for t, route in routes.items()
        }
        share = share_terms(main_plans, fetch_batch) if config.share_group else None
        self.groups = [
            self._group(
                config.group_id, main_plans, config.initial_offset, None, fetch_batch, share
            )
        ]
        if config.retry_count > 0:
            retry_plans = {
                self.router.retry_topic(t): self._plan(t, route) for t, route in routes.items()
            }
            self.groups.append(
                self._group(
                    config.retry_group_id,
                    retry_plans,
                    "earliest",
                    config.retry_interval_sec,
                    fetch_batch,
                )
            )
        #: A share group's rules (share_rules.py): the lock before a start, a failure's release.
        self.share = ShareRules(config.group_id, self.groups[0].source, self.observer)
        self.assigned = asyncio.Event()  # set once every group got its first assignment
        self._service_up = asyncio.Event()  # set once the service accepts connections
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _group(
        self,
        group_id: str,
        plans: dict[str, TopicPlan],
        initial_offset: str,
        delay_sec: float | None,
        fetch_batch: int,
        share: ShareTerms | None = None,
    ) -> ConsumerGroup:
        """One consumer group of this proxy: its source from the clients, its handler in the
        observer's chain (a `process` span around each record when spans are recorded), and its
        batch handler (none when spans are recorded: each record keeps its span)."""
        source = self.clients.source(
            group_id,
            self.observer.consumer_settings(group_id, self.settings),
            list(plans),
            initial_offset=initial_offset,
            drain_timeout=self.config.drain_timeout_sec,
            share=share,
        )
        return ConsumerGroup(
            group_id,
            source,
            plans,
            self.observer.around(self._handle, group_id),
            handle_batch=self.observer.around_batch(self._handle_batch),
            delay_sec=delay_sec,
            drain_timeout=self.config.drain_timeout_sec,
            fetch_batch=fetch_batch,
        )

    def _plan(self, topic: str, route: EventRoute, *, shared: bool = False) -> TopicPlan:
        c = self.config.consume_config(topic)
        return TopicPlan(
            # The route carries the topic's deadline to the transport (x-freedom-timeout-ms).
            route=replace(route, timeout_sec=c.delivery_timeout_sec),
            source_topic=topic,
            mode=c.mode,
            max_in_flight=c.max_in_flight,
            shared=shared,
        )

    # ------------------------------------------------------------------ lifecycle

    async def _create_topics(self, topics: list[str]) -> None:
        """Create the retry and dead-letter topics the routes need, each with as many partitions as
        its main topic, so that retries run as much in parallel as first deliveries (the test
        broker makes its own)."""
        if topics:
            like = {made: t for t in self.routes for made in self.router.topics_to_create([t])}
            await self.clients.create_topics(self.settings, topics, like)

    async def start(self) -> None:
        await self._create_topics(self.router.topics_to_create(list(self.routes)))
        started: list[ConsumerGroup] = []
        try:
            for group in self.groups:
                await group.start()
                started.append(group)
        except BaseException:
            for group in started:
                await group.stop()
            raise
        self._tasks = [
            asyncio.create_task(self._wait_for_service()),
            asyncio.create_task(self._wait_assigned()),
        ]

    async def stop(self) -> None:
        """Stop every group (drain, commit), then flush the retry producer."""
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*(g.stop() for g in self.groups), return_exceptions=True)
        for group, result in zip(self.groups, results):
            if isinstance(result, BaseException):
                log.error("stopping consumer group %r failed: %r", group.group_id, result)
        await asyncio.to_thread(self.router.close)
        await asyncio.to_thread(self.replays.close)

    async def _wait_assigned(self) -> None:
        await asyncio.gather(*(g.assigned.wait() for g in self.groups))
        self.assigned.set()

    async def _wait_for_service(self) -> None:
        """Hold deliveries until the service listens (it starts after the proxy), at most 60 s."""
        deadline = asyncio.get_running_loop().time() + SERVICE_WAIT_SEC
        if (
            not await self.delivery.wait_until_reachable(deadline, self._stop)
            and not self._stop.is_set()
        ):
            log.error(
                "the service at %s did not accept connections within %.0f s; delivering anyway",
                self.delivery.proxy_addr,
                SERVICE_WAIT_SEC,
            )
        self._service_up.set()

    # ------------------------------------------------------------------ one record

    async def _handle(self, record: Any, plan: TopicPlan, lost: asyncio.Event) -> bool:
        """Deliver one record and settle it; True when it may be committed, False when given up."""
        if not self._service_up.is_set() and not await self._service_ready(lost):
            return False
        if plan.shared and not self.share.lock_covers(record, plan):
            return False  # released: another member (or this one) gets it with a fresh lock
        n, note, key, headers, claim = self._prepare(record, plan)
        if claim is not None:
            key.verified_replay = await self.replays.verified(record, claim, plan.source_topic)
        guard = self._guards.get(plan.source_topic)
        if guard is None:
            attempt = await self._attempts(record, plan, lost, key, headers, n)
        else:
            attempt = await self._guarded(record, plan, lost, key, headers, n, guard)
        if isinstance(attempt, bool):
            return attempt
        result, step, where = attempt
        return await self.forwarder.forward(
            record, plan, step, n, result, lost, where, note=note, replay=key.verified_replay
        )

    async def _handle_batch(
        self, records: list[Any], plan: TopicPlan, lost: asyncio.Event
    ) -> list[bool | Awaitable[bool]]:
        """Deliver a chunk of a batch topic's records (batch_path.py): for each, whether its
        answer finished it, or the rest of its way."""
        return await batch_path.handle_batch(self, records, plan, lost)

    async def _service_ready(self, lost: asyncio.Event) -> bool:
        """Wait until the service is up (True) or the partition goes away (False)."""
        waiter = asyncio.ensure_future(self._service_up.wait())
        lost_waiter = asyncio.ensure_future(lost.wait())
        await asyncio.wait({waiter, lost_waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        lost_waiter.cancel()
        return not lost.is_set()

    def _prepare(
        self, record: Any, plan: TopicPlan
    ) -> tuple[int, str | None, EventId, Any, Claim | None]:
        """What a delivery of `record` needs: its retry count (and a note when its header is
        malformed), its key, its headers, and the replay claim to verify (main topics only)."""
        from_retry_topic = record.topic() != plan.source_topic
        n, note = self._retry_count(record) if from_retry_topic else (0, None)
        key = record_key(record, from_retry_topic, dead_letter_prefix=self.config.retry_fail_prefix)
        if plan.shared:
            key.delivery_count = record.delivery_count()
        headers = record.headers() or []
        claim = None
        if not key.proxy_written:  # a main topic's: its replay headers count only when proven
            claim = claim_of(headers, self.router.fail_topic(plan.source_topic))
        return n, note, key, headers, claim

    async def _attempts(
        self,
        record: Any,
        plan: TopicPlan,
        lost: asyncio.Event,
        key: str,
        headers: Any,
        n: int,
        timer: asyncio.Timeout | None = None,
        guard: float = 0.0,
        first: tuple[DeliveryResult, Plan] | None = None,
    ) -> bool | tuple[DeliveryResult, Plan, str]:
        """Deliver `record` until it is done (True), given up (False: its partition went away), or
        goes to its retry or dead-letter topic: then the last result, the step and the record's name.
        `timer`: the head-of-line guard's, started (`guard` seconds) when the first delivery starts.
        `first`: the result and step of a first delivery made already (and observed): a batch's."""
        gate = self.gates.get(plan.source_topic)
        held = 0.0  # the Retry-After pauses this record's own answers asked for
        backoff = 0.5
        traced = False  # a handler's traceback was logged (redelivered in place: the first only)
        while True:
            if first is not None:  # a batch's answer for this record, observed there
                (result, step), first = first, None
            else:
                if gate is not None and not gate.free() and not await gate.enter(lost):
                    return False
                if timer is not None and timer.when() is None:
                    timer.reschedule(asyncio.get_running_loop().time() + guard)
                started = time.perf_counter()
                if gate is not None:
                    try:
                        result = await self.delivery.deliver(
                            plan.route, key, record.value() or b"", headers, n
                        )
                    finally:
                        gate.leave()
                    if (
                        result.retry_after is not None
                        and result.outcome is None
                        and gate.backpressure_max_sec > 0
                    ):
                        wait = gate.pause(
                            result.retry_after
                        )  # the whole topic waits, whatever this record does next
                        if held + wait <= gate.backpressure_max_sec:
                            held += wait
                            self.observer.delivered(
                                record, plan, result, _HELD, time.perf_counter() - started
                            )
                            log.info(
                                "%s answered %s with Retry-After: %s waits %.1f s, then it is delivered again "
                                "(not a failed attempt; %.0f of backpressure_max_sec = %g s used)",
                                plan.route.path,
                                result.describe(),
                                plan.source_topic,
                                wait,
                                held,
                                gate.backpressure_max_sec,
                                extra=self.observer.log_fields(record, "backpressure"),
                            )
                            continue
                else:  # a batch topic's record: in its topic's next batch; it settles on its own all the same
                    result = await self.batcher.deliver(record, plan, key, headers, n)
                step = self.router.plan(plan.source_topic, n, result)
                self.observer.delivered(record, plan, result, step, time.perf_counter() - started)
            where = _where(record, key) if step.next != "done" or result.outcome == "drop" else ""
            if step.next == "done":
                if result.outcome == "drop":
                    log.warning(
                        "dropped %s at the handler's request: %s",
                        where,
                        result.describe(),
                        extra=self.observer.log_fields(record, "dropped"),
                    )
                return True
            if step.next == "redeliver" and plan.shared:
                released = await self.share.release_failed(record, plan, lost, result, key)
                if released is not None:
                    return released
                step = Plan(
                    "dead-letter",
                    self.router.fail_topic(plan.source_topic),
                    not_retried=f"delivered {record.delivery_count()} times, the share group's limit "
                    "(share.delivery.count.limit)",
                )
                return result, step, where or _where(record, key)
            if step.next == "redeliver":
                if lost.is_set():
                    return False
                # No dead letter may ever come (retry_count = 0): the handler's traceback goes
                # with the first failed attempt that has one, never again for this record.
                trace = None if traced else result.trace
                traced = traced or trace is not None
                log_with_traceback(
                    log,
                    logging.WARNING,
                    trace,
                    "delivery of %s to %s failed: %s; delivering again in %.1f s",
                    where,
                    plan.route.path,
                    result.describe(),
                    backoff,
                    extra=self.observer.log_fields(record, "redeliver"),
                )
                if await wait_event(lost, backoff):
                    return False
                backoff = min(backoff * 2, MAX_BACKOFF_SEC)
                continue
            return result, step, where

    async def _guarded(
        self,
        record: Any,
        plan: TopicPlan,
        lost: asyncio.Event,
        key: str,
        headers: Any,
        n: int,
        guard: float,
    ) -> bool | tuple[DeliveryResult, Plan, str]:
        """:meth:`_attempts` under the head-of-line guard: when the record is not settled `guard`
        seconds after its first delivery started, the delivery is cancelled and the record goes the
        retry path as a failure naming the guard (with `retry_count = 0`: to its dead-letter topic;
        never held for good, never lost: the commit passes it only once that copy is acknowledged)."""
        began = time.perf_counter()
        timer = asyncio.timeout(None)
        try:
            async with timer:
                return await self._attempts(record, plan, lost, key, headers, n, timer, guard)
        except TimeoutError:
            if not timer.expired():
                raise
        if lost.is_set():
            return False
        result = DeliveryResult(
            error=f"{HEAD_OF_LINE_ERROR}: not settled {guard:g} s after its first delivery "
            "started (head_of_line_timeout_sec); the delivery was cancelled so that its "
            "partition's commit can pass it"
        )
        step = self.router.plan(plan.source_topic, n, result)
        if step.next == "redeliver":  # retry_count = 0: no retry topic
            fail = self.router.fail_topic(plan.source_topic)
            if (
                fail is None
            ):  # config refuses this; should it happen, hold the record rather than lose it
                log.error(
                    "%s: the head-of-line guard has no retry or dead-letter topic to move it to; "
                    "delivering it again, holding its partition",
                    _where(record, key),
                )
                return await self._attempts(record, plan, lost, key, headers, n)
            step = Plan(
                "dead-letter",
                fail,
                not_retried="retry_count = 0: moved to the dead-letter topic by the guard",
            )
        self.observer.delivered(record, plan, result, step, time.perf_counter() - began)
        return result, step, _where(record, key)

    def _retry_count(self, record: Any) -> tuple[int, str | None]:
        """The retry count of a record on a retry topic, and a note for its reason when malformed.

        A missing or malformed `x-retry-count` (not 1 to 9 ASCII digits) is read as `retry_count`,
        the last retry: the record is delivered once more and dead-lettered if that fails, so a
        broken header can neither loop nor burn retries it never had.
        """
        n = retry_count_of(record)
        if n is not None:
            return n, None
        raw = header_value(record, RETRY_COUNT_HEADER)
        shown = "absent" if raw is None else repr(raw[:40])
        note = f"{RETRY_COUNT_HEADER} {shown} is not a retry count: read as {self.config.retry_count}, the last retry"
        log.warning("%s[%d]@%d: %s", record.topic(), record.partition(), record.offset(), note)
        return self.config.retry_count, note
