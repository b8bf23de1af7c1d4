"""`TestBroker`: an application against an in-memory Kafka, with simulated time for the retries.

    async with TestBroker(app) as broker:           # no Kafka, no network
        await broker.client.get("/shop/1")          # a route that publishes
        await broker.settle()                       # every record delivered, retried or dead-lettered
        assert broker.dead_letters("event-sell") == []

    with TestBroker(app) as broker:                 # the same from synchronous code (a loop thread)
        broker.client.get("/shop/1"); broker.settle()

What it replaces is Kafka only: the librdkafka producer behind each producer client (and behind the
proxy's retry producer), the librdkafka consumer behind each consumer group, and the admin calls.
Everything above them is the code that runs on Kafka: `Msg` and `ProducerClient` (serialisation,
headers, keys, delivery reports), the consumer proxy (delivery request, outcome, retry and
dead-letter decisions, reason headers, the commit rule), the group loop's delivery modes, backlog
and offset tracking, and the in-process ASGI transport, so handlers get the request they get on
Kafka. The semantics tests (tests/semantics/) run the same assertions on Apache Kafka and here.

Time: each record is stamped with the broker's clock, `time.time()` plus what :meth:`advance`
added. A retry record is due at its stamp plus `retry_interval_sec`; :meth:`TestBroker.settle`
advances the clock to the next due retry whenever nothing else is left to do, so a 45-second retry
takes milliseconds. The clock does not reach the in-memory redelivery backoff of `retry_count = 0`
(0.5 s doubling, real time, as on Kafka) nor the reason header `x-freedom-first-failure-time`
(the wall clock).

One cluster: every producer and consumer client of kafka.toml reaches the same in-memory broker,
and each consumer group has one member (it owns every partition; no rebalances).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import confluent_kafka

from freedom.config.loading import CONFIG_ENV, find_config_dir
from freedom.config.models import (
    ConsumerClientConfig,
    ConsumerSection,
    KafkaConfig,
    ProducerClientConfig,
    ProducerSection,
)
from freedom.errors import FreedomError
from freedom.kafka.consumer.delivery import INPROCESS, EventRoute, Transport
from freedom.kafka.consumer.group import GroupLoop, wait_event
from freedom.kafka.consumer.proxy import ConsumerProxy
from freedom.kafka.consumer.replays import ReplayCheck
from freedom.kafka.consumer.retry import RETRY_PRODUCER_MAX_BYTES, RetryRouter, _Client
from freedom.kafka.producer import DEFAULT_MAX_BYTES, ProducerClient
from freedom.kafka.service import KafkaBackend

if TYPE_CHECKING:
    import httpx

    from freedom.web.application import Application

__all__ = ["TestBroker", "BlockingTestBroker", "MemoryRecord"]

log = logging.getLogger("freedom.testing")

#: A topic's max.message.bytes when not given (Apache Kafka's default message.max.bytes).
TOPIC_MAX_BYTES = 1_048_588

TP = tuple[str, int]
RawHeaders = list[tuple[str, bytes | None]]


def _module_dirs(module_name: str) -> list[Path]:
    """The directory of module `module_name`'s file, then each one above it up to the directory its
    top package is imported from (`a.b.c` in /r/a/b/c.py: /r/a/b, /r/a, /r); [] without a file."""
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if not file:
        return []
    path = Path(file).resolve()
    levels = 0 if module_name == "__main__" else module_name.count(".")
    levels += path.stem == "__init__"  # a package's own module: its directory is one more level
    dirs = [path.parent]
    for _ in range(levels):
        dirs.append(dirs[-1].parent)
    return dirs


def service_config_dir(app: Application) -> tuple[Path | None, str]:
    """The configuration directory of `app` as `freedom run` would find it from the directory of
    the app's module, whatever the working directory, and how it was found (for the log).

    In order: the application's `config_dir` (it must be a directory), `$FREEDOM_PROJECT_CONFIG`,
    `conf/` then `server/conf/` in the directory of the module the Application was made in (or
    in one above it, up to the directory its top package is imported from), else the working
    directory's `conf/`, `server/conf/`. None: no configuration, the test broker's defaults."""
    explicit = app._config_dir_arg
    if explicit is not None:
        if not Path(explicit).is_dir():
            raise FreedomError(
                f"TestBroker(app): the application's config_dir {explicit} is not a directory; "
                "give the directory holding app.toml and infra/kafka.toml, or leave config_dir out "
                "to use the conf/ next to the application's module"
            )
        return Path(explicit), "the application's config_dir"
    if os.environ.get(CONFIG_ENV):
        return find_config_dir(), f"${CONFIG_ENV}"
    dirs = _module_dirs(app.module_name)
    for base in dirs:
        for candidate in (base / "conf", base / "server" / "conf"):
            if candidate.is_dir():
                return candidate, f"next to module {app.module_name}"
    found = find_config_dir()
    if found is not None:
        return found.resolve(), "in the working directory"
    looked = ", ".join(str(d) for d in [*dirs, Path.cwd()])
    return None, f"no conf/ or server/conf/ in {looked}"


def _require_httpx(what: str) -> None:
    """FreedomError naming the fix when httpx (the `testing` extra), which `what` needs, is missing."""
    try:
        import httpx  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "httpx":
            raise  # httpx is there, but broken: its own error says what is wrong
        raise FreedomError(
            f"{what} needs httpx, which is not installed: pip install 'freedom-events[testing]'"
        ) from None


class MemoryRecord:
    """One record in the in-memory broker, read as a confluent-kafka `Message` (`key()`, `value()`,
    `headers()`, `topic()`, `partition()`, `offset()`, `timestamp()`), plus :meth:`header`,
    :meth:`headers_dict` and :meth:`json` for tests."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_headers", "_ms")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: RawHeaders,
        ms: int,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers, self._ms = key, value, headers, ms

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> RawHeaders | None:
        return list(self._headers) if self._headers else None

    def timestamp(self) -> tuple[int, int]:
        """(confluent_kafka.TIMESTAMP_CREATE_TIME, milliseconds of the broker's clock)."""
        return confluent_kafka.TIMESTAMP_CREATE_TIME, self._ms

    def error(self) -> None:
        return None

    def header(self, name: str) -> str | None:
        """The last value of header `name` (any case) as text, or None."""
        found = None
        for k, v in self._headers:
            if k.lower() == name.lower():
                found = (v or b"").decode("utf-8", "replace")
        return found

    def headers_dict(self) -> dict[str, str]:
        """Every header as text (the last value of a repeated name)."""
        return {k: (v or b"").decode("utf-8", "replace") for k, v in self._headers}

    def json(self) -> Any:
        return json.loads(self._value or b"")

    def __repr__(self) -> str:
        return (
            f"MemoryRecord({self._topic}[{self._partition}]@{self._offset}, key={self._key!r}, "
            f"value={self._value!r:.80})"
        )


def _raw_headers(
    headers: Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes] | None,
) -> RawHeaders:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in items]


def _size(key: bytes | None, value: bytes | None, headers: RawHeaders) -> int:
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(k.encode()) + len(v or b"") for k, v in headers)
    )


def _too_large(what: str) -> confluent_kafka.KafkaError:
    return confluent_kafka.KafkaError(confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, what)


class _MemoryProducer:
    """Stands in for a librdkafka `confluent_kafka.Producer`: `produce` appends to the broker and
    reports the delivery at once (the callers await the report as they would librdkafka's)."""

    def __init__(self, broker: TestBroker, max_bytes: int) -> None:
        self.broker = broker
        self.max_bytes = max_bytes

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        headers: Any = None,
        **_: Any,
    ) -> None:
        raw = _raw_headers(headers)
        if _size(key, value, raw) > self.max_bytes:  # librdkafka's local check (message.max.bytes)
            raise confluent_kafka.KafkaException(_too_large("Message size too large"))
        err, record = self.broker._append(topic, key, value, raw, partition)
        if on_delivery is not None:
            on_delivery(err, record)

    def poll(self, timeout: float = 0) -> int:
        if timeout:
            time.sleep(min(timeout, 0.1))
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def purge(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __len__(self) -> int:
        return 0


class _MemoryRetryClient(_Client):
    """The retry router's producer on the in-memory broker (no librdkafka handle, no poll thread)."""

    def __init__(self, producer: _MemoryProducer) -> None:  # noqa: D107 - _Client's would start librdkafka
        self.producer = cast(Any, producer)
        self.fatal = False

    def close(self, timeout: float) -> int:
        return 0


class _MemoryRetryRouter(RetryRouter):
    """RetryRouter producing to the in-memory broker: its decisions, headers, copies and its
    `send` (acknowledgement awaited, refusals read) are RetryRouter's own."""

    def __init__(
        self, broker: TestBroker, config: ConsumerClientConfig, settings: dict[str, Any]
    ) -> None:
        super().__init__(config, settings)
        self._memory = _MemoryRetryClient(_MemoryProducer(broker, RETRY_PRODUCER_MAX_BYTES))

    def _client(self, kind: str) -> _Client:
        return self._memory


class _MemoryGroup(GroupLoop):
    """A consumer group on the in-memory broker: GroupLoop's dispatch, delivery modes, backlog,
    offset tracking and drain, with the librdkafka consumer's part (fetch, pause/resume, commit)
    done against the broker on the event loop. One member: it owns every partition."""

    def __init__(self, broker: TestBroker, like: GroupLoop) -> None:
        super().__init__(
            like.group_id,
            {},
            like.plans,
            like.handle,
            initial_offset=like.initial_offset,
            delay_sec=like.delay_sec,
            drain_timeout=like.drain_timeout,
            fetch_batch=like.fetch_batch,
            sequential_backlog=like.sequential_backlog,
            poll_timeout=like.poll_timeout,
        )
        like._thread.shutdown(wait=False)  # never used: no consumer thread here
        self.broker = broker
        self._positions: dict[TP, int] = {}  # the next offset to fetch, per assigned partition
        self._paused: set[TP] = set()
        self._poke = asyncio.Event()  # records, a finished delivery, a clock change, stop
        self._tick = asyncio.Event()  # replaced at every clock change (see _clock_moved)
        self._pump_task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- the clock of the retry group
    def now(self) -> float:
        return self.broker.time()

    async def _wait_due(self, lost: asyncio.Event, seconds: float) -> None:
        waiters = {asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self._tick.wait())}
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _clock_moved(self) -> None:  # on the loop
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        self._poke.set()

    def _finished(self, task: asyncio.Task[bool]) -> None:
        super()._finished(task)
        self._poke.set()

    def wake(self, *, clock: bool = False) -> None:
        """From any thread: new records (or, `clock`, the clock moved)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._clock_moved if clock else self._poke.set)
        except RuntimeError:  # the loop closed meanwhile: nothing to wake
            pass

    # -- lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.broker._join(self)
        self._assign()
        self.assigned.set()
        self._pump_task = asyncio.create_task(
            self._run_pump(), name=f"freedom-memory-group-{self.group_id}"
        )

    async def stop(self) -> None:
        self._stopping = True
        self._poke.set()
        if self._pump_task is not None:
            await self._pump_task
        await self._release(list(self._parts))
        self._commit()
        self.broker._leave(self)
        self._thread.shutdown(wait=False)

    # -- what the consumer thread does on Kafka
    def _assign(self) -> None:
        """Take the partitions of the subscribed topics not assigned yet, from the committed offset
        (a new group: the end, or the start with initial_offset = "earliest", which is committed at
        once, as GroupLoop pins a new group's start)."""
        for tp in self.broker._partitions_of(self.plans):
            if tp in self._assigned:
                continue
            start = self.broker.committed(tp[0], tp[1], group=self.group_id)
            if start is None:
                start = self.broker._end(tp) if self.initial_offset == "latest" else 0
                self.broker._commit(self.group_id, tp, start)
            self._positions[tp] = start
            self._assigned.add(tp)

    def _commit(self) -> None:
        with self._lock:
            pending, self._to_commit = self._to_commit, {}
        for tp, offset in pending.items():
            self.broker._commit(self.group_id, tp, offset)

    async def _run_pump(self) -> None:
        while not self._stopping:
            self._poke.clear()
            self._assign()
            self._commit()
            with self._lock:
                pause, self._to_pause = self._to_pause, set()
                resume, self._to_resume = self._to_resume, set()
            self._paused = (self._paused | pause) - resume
            records = self._fetch(self._room_for())
            if records:
                self._handed += len(records)
                self._dispatch_all(records)
                await asyncio.sleep(0)
                continue
            await wait_event(self._poke, 0.05)

    def _fetch(self, n: int) -> list[Any]:
        out: list[Any] = []
        for tp in sorted(self._assigned):
            if len(out) >= n:
                break
            if tp in self._paused:
                continue
            got = self.broker._read(tp, self._positions[tp], n - len(out))
            self._positions[tp] += len(got)
            out.extend(got)
        return out

    # -- for TestBroker.settle
    def pending_work(self) -> tuple[str | None, float | None]:
        """(what is still to do now, or None; the earliest time a waiting retry record is due)."""
        if self._running or self._handed != self._dispatched:
            return f"group {self.group_id!r}: {self._running} deliveries running", None
        with self._lock:
            if self._to_commit:
                return f"group {self.group_id!r}: offsets to commit", None
        due: float | None = None
        for tp in self._assigned:
            if tp not in self._paused and self.broker._end(tp) > self._positions[tp]:
                return f"group {self.group_id!r}: records of {tp[0]}[{tp[1]}] to fetch", None
        now = self.now()
        for part in list(self._parts.values()):
            if not part.pending:
                continue
            at = self._due(part.pending[0]) if self.delay_sec is not None else now
            if at <= now:
                return (
                    f"group {self.group_id!r}: records of {part.tp[0]}[{part.tp[1]}] to deliver",
                    None,
                )
            due = at if due is None else min(due, at)
        return None, due


class _MemoryDeadLetters:
    """The dead letters a replay check reads (replays.DeadLetterSource), from the broker."""

    def __init__(self, broker: TestBroker) -> None:
        self._broker = broker

    def read(self, topic: str, partition: int, offset: int, count: int) -> list[MemoryRecord]:
        return self._broker.records(topic, partition)[offset : offset + count]

    def close(self) -> None:
        return None


class _MemoryConsumerProxy(ConsumerProxy):
    """ConsumerProxy (its record handling untouched) whose groups and retry producer use the broker."""

    def __init__(
        self,
        broker: TestBroker,
        config: ConsumerClientConfig,
        settings: dict[str, Any],
        routes: dict[str, EventRoute],
        delivery: Transport,
    ) -> None:
        super().__init__(config, settings, routes, delivery)
        self._broker = broker
        self.router = _MemoryRetryRouter(broker, config, settings)
        self.replays = ReplayCheck(_MemoryDeadLetters(broker))
        self.groups = [_MemoryGroup(broker, g) for g in self.groups]

    async def _create_topics(self, topics: list[str]) -> None:
        self._broker.create_topics(topics)


class TestBroker(KafkaBackend):
    """An in-memory Kafka for `app` (see the module docstring); `async with` or `with` it.

    `partitions`: of each topic the broker creates (the proxy's topics, a produce to a new topic);
    :meth:`create_topic` makes others. `consumer`: keys replacing those of every
    `[[consumer_clients]]` entry (`retry_count=3, retry_interval_sec=45, mode="concurrent"`, ...).
    An application without kafka.toml gets one producer and one consumer client (seed defaults).
    Its configuration is found as `freedom run` would find it from its module's directory, whatever
    the working directory (:func:`service_config_dir`); :attr:`config_dir` is the one used.
    """

    __test__ = False  # not a test class for pytest
    real = False

    def __init__(
        self,
        app: Application | None = None,
        *,
        partitions: int = 1,
        settle_timeout: float = 10.0,
        **consumer: Any,
    ) -> None:
        self._lock = threading.RLock()
        self._topics: dict[str, list[list[MemoryRecord]]] = {}
        self._max_bytes: dict[str, int] = {}
        self._committed: dict[tuple[str, str, int], int] = {}
        self._advanced = 0.0
        self._groups: list[_MemoryGroup] = []
        self._round_robin = itertools.count()
        self.partitions = partitions
        self.settle_timeout = settle_timeout
        self.consumer_overrides = consumer
        self.app: Application | None = None
        #: The configuration directory the application uses (None: none, the defaults).
        self.config_dir: Path | None = None
        self._running = False
        self._client: httpx.AsyncClient | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._blocking: BlockingTestBroker | None = None
        if app is not None:
            self.attach(app)

    # ------------------------------------------------------------------ the application

    def attach(self, app: Application) -> None:
        """Run `app`'s Kafka side on this broker (before it starts; best before its set-up)."""
        if app._started:
            raise FreedomError(
                "TestBroker(app): the application has started already; make the TestBroker first"
            )
        app.kafka_backend = self
        if not app._is_set_up:  # its configuration, wherever the tests run from
            self.config_dir, how = service_config_dir(app)
            app._config_dir_arg = self.config_dir
            log.info(
                "TestBroker: the configuration of the Application made in %s: %s (%s)",
                app.module_name,
                self.config_dir or "none, the test broker's defaults",
                how,
            )
        else:
            self.config_dir = app.config_dir
        if app._is_set_up:
            if app.kafka is None:
                raise FreedomError(
                    "TestBroker(app): the application was set up without Kafka (no kafka.toml); "
                    "make the TestBroker before anything sets the application up"
                )
            app.kafka.use_backend(self)
        self.app = app

    def _configure(self, app: Application) -> None:
        app.setup()
        infra = app.kafka
        if infra is None:
            raise FreedomError("TestBroker(app): the application has no Kafka side")
        if self.consumer_overrides:
            unknown = sorted(set(self.consumer_overrides) - set(ConsumerClientConfig.model_fields))
            if unknown:
                raise TypeError(f"TestBroker: not keys of a consumer client: {', '.join(unknown)}")
            infra.config = infra.config.model_copy(
                update={
                    "consumer_clients": [
                        cc.model_copy(update=self.consumer_overrides)
                        for cc in infra.config.consumer_clients
                    ]
                }
            )
            app.kafka_config = infra.config

    def default_config(self) -> KafkaConfig:
        # Built, not validated: the defaults need no check (proxy_addr stays not given, so it
        # follows the listen address as with a kafka.toml that leaves it out).
        config = KafkaConfig.model_construct(
            consumer=ConsumerSection.model_construct(open=True, proxy_addr=INPROCESS),
            producer=ProducerSection.model_construct(open=True),
            producer_clients=[ProducerClientConfig.model_construct()],
            consumer_clients=[ConsumerClientConfig.model_construct()],
        )
        config._file = "(no kafka.toml: freedom.testing.TestBroker's defaults)"
        return config

    # ------------------------------------------------------------------ KafkaBackend

    def proxy_addr(self, configured: str) -> str:
        return INPROCESS  # no network: deliveries call the application in-process

    def producer_client(self, name: str, settings: dict[str, Any]) -> ProducerClient:
        max_bytes = int(settings.get("message.max.bytes", DEFAULT_MAX_BYTES))
        return ProducerClient(name, settings, client=_MemoryProducer(self, max_bytes))

    async def check_reachable(self, settings: dict[str, Any], where: str) -> None:
        return None

    async def ensure_topics(self, settings: dict[str, Any], topics: list[str]) -> None:
        self.create_topics(topics)

    def consumer_proxy(
        self,
        config: ConsumerClientConfig,
        settings: dict[str, Any],
        routes: dict[str, EventRoute],
        delivery: Transport,
    ) -> ConsumerProxy:
        return _MemoryConsumerProxy(self, config, settings, routes, delivery)

    # ------------------------------------------------------------------ topics and records

    def create_topic(
        self, topic: str, partitions: int | None = None, *, max_message_bytes: int = TOPIC_MAX_BYTES
    ) -> None:
        """Create `topic` (nothing happens when it exists), with `partitions` (default: the broker's)."""
        with self._lock:
            if topic not in self._topics:
                self._topics[topic] = [[] for _ in range(partitions or self.partitions)]
                self._max_bytes[topic] = max_message_bytes

    def create_topics(self, topics: Iterable[str]) -> None:
        for t in topics:
            self.create_topic(t)

    def time(self) -> float:
        """The broker's clock: `time.time()` plus what :meth:`advance` and :meth:`settle` added."""
        return time.time() + self._advanced

    def _append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: RawHeaders,
        partition: int = -1,
    ) -> tuple[confluent_kafka.KafkaError | None, MemoryRecord]:
        with self._lock:
            self.create_topic(topic)
            parts = self._topics[topic]
            if partition is None or partition < 0:
                partition = (zlib.crc32(key) if key else next(self._round_robin)) % len(parts)
            if partition >= len(parts):
                err = confluent_kafka.KafkaError(
                    confluent_kafka.KafkaError._UNKNOWN_PARTITION,
                    f"{topic} has {len(parts)} partitions",
                )
                return err, MemoryRecord(topic, partition, -1, key, value, headers, 0)
            ms = int(self.time() * 1000)
            if _size(key, value, headers) > self._max_bytes[topic]:
                return _too_large("Broker: Message size too large"), MemoryRecord(
                    topic, partition, -1, key, value, headers, ms
                )
            log = parts[partition]
            record = MemoryRecord(topic, partition, len(log), key, value, headers, ms)
            log.append(record)
            groups = list(self._groups)
        for g in groups:
            g.wake()
        return None, record

    def publish(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes | None]] | None = None,
        partition: int | None = None,
    ) -> MemoryRecord:
        """Put a record on `topic` as another service would (raw bytes, your headers, no freedom
        defaults); then `settle()` to have it delivered."""
        err, record = self._append(
            topic,
            key.encode() if isinstance(key, str) else key,
            value.encode() if isinstance(value, str) else value,
            _raw_headers(headers),
            -1 if partition is None else partition,
        )
        if err is not None:
            raise FreedomError(f"cannot publish to {topic!r}: {err.str()}")
        return record

    def records(self, topic: str, partition: int | None = None) -> list[MemoryRecord]:
        """Every record of `topic` (of one partition, or of all in partition then offset order)."""
        with self._lock:
            parts = self._topics.get(topic, [])
            chosen = parts if partition is None else parts[partition : partition + 1]
            return [r for log in chosen for r in log]

    def published(self, topic: str) -> list[MemoryRecord]:
        """What was published to `topic` (by the application, or with :meth:`publish`)."""
        return self.records(topic)

    def _prefixes(self, kind: str) -> list[str]:
        clients = (
            self.app.kafka_config.consumer_clients if self.app and self.app.kafka_config else ()
        )
        attr = "retry_prefix" if kind == "retry" else "retry_fail_prefix"
        found = list(dict.fromkeys(getattr(cc, attr) for cc in clients if getattr(cc, attr)))
        return found or (["retry-"] if kind == "retry" else ["fail-"])

    def retries(self, topic: str) -> list[MemoryRecord]:
        """The records of `topic`'s retry topic (`{retry_prefix}topic`)."""
        return [r for p in self._prefixes("retry") for r in self.records(p + topic)]

    def dead_letters(self, topic: str) -> list[MemoryRecord]:
        """The records of `topic`'s dead-letter topic (`{retry_fail_prefix}topic`), reason headers included."""
        return [r for p in self._prefixes("fail") for r in self.records(p + topic)]

    def committed(self, topic: str, partition: int = 0, *, group: str | None = None) -> int | None:
        """The offset `group` (default: the first consumer client's group_id) committed on a partition."""
        if group is None:
            clients = (
                self.app.kafka_config.consumer_clients if self.app and self.app.kafka_config else ()
            )
            group = clients[0].group_id if clients else "freedom"
        with self._lock:
            return self._committed.get((group, topic, partition))

    def _commit(self, group: str, tp: TP, offset: int) -> None:
        with self._lock:
            self._committed[(group, tp[0], tp[1])] = offset

    def _end(self, tp: TP) -> int:
        with self._lock:
            parts = self._topics.get(tp[0])
            return len(parts[tp[1]]) if parts and tp[1] < len(parts) else 0

    def _read(self, tp: TP, start: int, n: int) -> list[MemoryRecord]:
        with self._lock:
            return self._topics[tp[0]][tp[1]][start : start + max(n, 0)]

    def _partitions_of(self, topics: Iterable[str]) -> list[TP]:
        with self._lock:
            return [
                (t, p) for t in topics if t in self._topics for p in range(len(self._topics[t]))
            ]

    def _join(self, group: _MemoryGroup) -> None:
        with self._lock:
            if any(g.group_id == group.group_id for g in self._groups):
                raise FreedomError(
                    f"TestBroker: consumer group {group.group_id!r} is running already "
                    "(one member per group here)"
                )
            self._groups.append(group)

    def _leave(self, group: _MemoryGroup) -> None:
        with self._lock:
            if group in self._groups:
                self._groups.remove(group)

    # ------------------------------------------------------------------ time and settling

    async def settle(self, timeout: float | None = None, *, advance: bool = True) -> None:
        """Wait until every record is handled: delivered, or on its retry or dead-letter topic with
        its offset committed, and the outbox has published its domain events. A retry waiting for its interval is brought forward by moving the
        clock (unless `advance=False`: then the waiting retries are left waiting). AssertionError
        naming what is left after `timeout` seconds (real time; default `settle_timeout`)."""
        loop = asyncio.get_running_loop()
        limit = self.settle_timeout if timeout is None else timeout
        deadline = loop.time() + limit
        quiet = 0
        while True:
            await asyncio.sleep(0.001)
            busy, due = self._state()
            if busy is None and quiet >= 2:
                busy = await self._outbox_pending()
            if busy is None:
                quiet += 1
                if quiet >= 3:  # a few loop turns with nothing to do: chained work has landed
                    if due is None or not advance:
                        return
                    self._move_clock(max(due - self.time(), 0.0) + 0.001)
                    quiet = 0
            else:
                quiet = 0
            if loop.time() > deadline:
                raise AssertionError(
                    f"TestBroker.settle: not settled within {limit:.1f} s: {busy or 'retries waiting'} "
                    "(a handler that keeps failing with retry_count = 0 is delivered again for "
                    "ever, as on Kafka)"
                )

    def _state(self) -> tuple[str | None, float | None]:
        with self._lock:
            groups = list(self._groups)
        due: float | None = None
        for g in groups:
            busy, at = g.pending_work()
            if busy is not None:
                return busy, None
            if at is not None:
                due = at if due is None else min(due, at)
        return None, due

    async def _outbox_pending(self) -> str | None:
        """Domain events committed to the outbox and not published yet (the relay is woken)."""
        database = self.app.database if self.app is not None else None
        if database is None or database.relay is None:
            return None
        pending = await database.pending_count()
        if not pending:
            return None
        database.wake_relay()
        return f"the outbox: {pending} domain event(s) not published yet"

    def _move_clock(self, seconds: float) -> None:
        with self._lock:
            self._advanced += seconds
            groups = list(self._groups)
        for g in groups:
            g.wake(clock=True)

    async def advance(self, seconds: float) -> None:
        """Move the clock `seconds` forward, then settle what became due (later retries keep waiting)."""
        if seconds < 0:
            raise ValueError("TestBroker.advance: the clock only moves forward")
        self._move_clock(seconds)
        await self.settle(advance=False)

    # ------------------------------------------------------------------ running it

    @property
    def client(self) -> httpx.AsyncClient:
        """An HTTP client calling the application in-process (no network), while it runs: an
        `httpx.AsyncClient`, made on first use (httpx is the `testing` extra)."""
        if not self._running or self.app is None:
            raise FreedomError(
                "TestBroker.client: the application runs only inside `async with TestBroker(app)`"
            )
        if self._client is None:
            _require_httpx("TestBroker.client")
            from freedom.testing.asgi_client import async_client

            self._client = async_client(self.app)
        return self._client

    async def start(self) -> None:
        if self.app is None:
            raise FreedomError("TestBroker: no application (TestBroker(app))")
        self._configure(self.app)
        await self.app.start()
        self._running = True

    async def stop(self) -> None:
        self._running = False
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        if self.app is not None:
            await self.app.stop()

    async def __aenter__(self) -> TestBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def __enter__(self) -> BlockingTestBroker:
        loop = asyncio.new_event_loop()
        self._thread_loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name="freedom-test-broker", daemon=True
        )
        self._thread.start()
        try:
            self._run(self.start())
        except BaseException:
            self._end_thread()
            raise
        self._blocking = BlockingTestBroker(self, loop)
        return self._blocking

    def __exit__(self, *exc: Any) -> None:
        try:
            if self._blocking is not None:
                self._blocking._close_client()
                self._blocking = None
            self._run(self.stop())
        finally:
            self._end_thread()

    def _run(self, coro: Any, timeout: float = 60.0) -> Any:
        assert self._thread_loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._thread_loop).result(timeout)

    def _end_thread(self) -> None:
        loop, thread = self._thread_loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        if not thread.is_alive():
            loop.close()
        self._thread_loop = self._thread = None


class BlockingTestBroker:
    """What `with TestBroker(app)` gives: the same broker for synchronous tests. The application
    runs on a loop in a background thread; `settle` and `advance` block; `client` is an
    `httpx.Client` calling the application in-process."""

    def __init__(self, broker: TestBroker, loop: asyncio.AbstractEventLoop) -> None:
        self.broker = broker
        self.app = broker.app
        self.loop = loop
        self._client: httpx.Client | None = None
        self._closed = False

    @property
    def client(self) -> httpx.Client:
        """An `httpx.Client` calling the application in-process (each request on the broker's
        loop thread), made on first use (httpx is the `testing` extra)."""
        if self._closed:
            raise FreedomError(
                "TestBroker.client: the application runs only inside `with TestBroker(app)`"
            )
        if self._client is None:
            _require_httpx("TestBroker.client")
            from freedom.testing.asgi_client import blocking_client

            self._client = blocking_client(self.app, self.loop)
        return self._client

    def _close_client(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def settle(self, timeout: float | None = None, *, advance: bool = True) -> None:
        self.broker._run(
            self.broker.settle(timeout, advance=advance),
            (timeout or self.broker.settle_timeout) + 30,
        )

    def advance(self, seconds: float) -> None:
        self.broker._run(self.broker.advance(seconds))

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the application's loop (e.g. `app.producer.new_msg(...).publish()`)."""
        return self.broker._run(coro, timeout)

    def publish(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes | None]] | None = None,
        partition: int | None = None,
    ) -> MemoryRecord:
        return self.broker.publish(topic, value, key=key, headers=headers, partition=partition)

    def records(self, topic: str, partition: int | None = None) -> list[MemoryRecord]:
        return self.broker.records(topic, partition)

    def published(self, topic: str) -> list[MemoryRecord]:
        return self.broker.published(topic)

    def retries(self, topic: str) -> list[MemoryRecord]:
        return self.broker.retries(topic)

    def dead_letters(self, topic: str) -> list[MemoryRecord]:
        return self.broker.dead_letters(topic)

    def committed(self, topic: str, partition: int = 0, *, group: str | None = None) -> int | None:
        return self.broker.committed(topic, partition, group=group)

    def create_topic(
        self, topic: str, partitions: int | None = None, *, max_message_bytes: int = TOPIC_MAX_BYTES
    ) -> None:
        self.broker.create_topic(topic, partitions, max_message_bytes=max_message_bytes)

    def time(self) -> float:
        return self.broker.time()
