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

One cluster: every producer and consumer client of kafka.toml reaches the same in-memory broker.
A classic consumer group has one member (it owns every partition; no rebalances); a share group
(`share_group = true`) any number, sharing its records (memory_share.py, share_partitions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from freedom.kafka.consumer.proxy import ConsumerProxy
from freedom.kafka.producing.client import DEFAULT_MAX_BYTES, ProducerClient
from freedom.kafka.service import KafkaBackend
from freedom.testing.memory_clients import (
    MemoryClients,
    MemoryProducer,
    MemorySource,
    RawHeaders,
    raw_headers,
    size_of,
    too_large,
)
from freedom.testing.share_partitions import ShareGroup

if TYPE_CHECKING:
    import httpx

    from freedom.testing.memory_share import MemoryShareSource
    from freedom.web.application import Application

    Member = MemorySource | MemoryShareSource

__all__ = ["TestBroker", "BlockingTestBroker", "MemoryRecord"]

log = logging.getLogger("freedom.testing")

#: A topic's max.message.bytes when not given (Apache Kafka's default message.max.bytes).
TOPIC_MAX_BYTES = 1_048_588

TP = tuple[str, int]


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
    `headers()`, `topic()`, `partition()`, `offset()`, `timestamp()`, `delivery_count()`), plus
    :meth:`header`, :meth:`headers_dict` and :meth:`json` for tests."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_headers", "_ms", "_count")

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
        self._count: int | None = None

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

    def delivery_count(self) -> int | None:
        """How many times a share group acquired the record, this time included (1 the first);
        None when a classic group read it, as confluent-kafka's `Message.delivery_count()`."""
        return self._count

    def _delivered(self, count: int) -> MemoryRecord:
        """The record as a share group hands it out, acquired for the `count`th time."""
        copy = MemoryRecord(
            self._topic,
            self._partition,
            self._offset,
            self._key,
            self._value,
            self._headers,
            self._ms,
        )
        copy._count = count
        return copy

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
        self._groups: list[Member] = []
        self._share_groups: dict[str, ShareGroup] = {}
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
            clients = [
                cc.model_copy(update=self.consumer_overrides)
                for cc in infra.config.consumer_clients
            ]
            for i, cc in enumerate(clients):
                if cc.share_group:  # what validation does for a share group (not re-run by a copy)
                    try:
                        cc._check_share()
                    except ValueError as exc:
                        raise FreedomError(f"TestBroker: consumer_clients[{i}]: {exc}") from None
            infra.config = infra.config.model_copy(update={"consumer_clients": clients})
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
        return ProducerClient(name, settings, client=MemoryProducer(self, max_bytes))

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
        return ConsumerProxy(config, settings, routes, delivery, clients=MemoryClients(self))

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
            if size_of(key, value, headers) > self._max_bytes[topic]:
                return too_large("Broker: Message size too large"), MemoryRecord(
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
            raw_headers(headers),
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

    def _join(self, group: Member) -> None:
        with self._lock:
            if any(
                g.group_id == group.group_id and not (g.shared and group.shared)
                for g in self._groups
            ):
                raise FreedomError(
                    f"TestBroker: consumer group {group.group_id!r} is running already "
                    "(one member per classic group here; a share group has any number)"
                )
            self._groups.append(group)

    def share_group(self, group_id: str) -> ShareGroup:
        """Share group `group_id`: its configuration (set it before its members start), members
        and record states (made on first use)."""
        with self._lock:
            found = self._share_groups.get(group_id)
            if found is None:
                found = self._share_groups[group_id] = ShareGroup(self, group_id)
            return found

    def _leave(self, group: Member) -> None:
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

    @contextlib.asynccontextmanager
    async def replica(self, app: Application) -> AsyncIterator[Application]:
        """Run `app`, another instance of the service, on this broker inside the block, as a second
        replica beside the first: its consumer groups join those running (a share group's members
        share its records; a classic group has one member here)."""
        if not self._running:
            raise FreedomError("TestBroker.replica: start the broker first (async with TestBroker)")
        if app._started:
            raise FreedomError("TestBroker.replica: the application has started already")
        app.kafka_backend = self
        if not app._is_set_up:
            app._config_dir_arg = service_config_dir(app)[0]
        elif app.kafka is not None:
            app.kafka.use_backend(self)
        self._configure(app)
        await app.start()
        try:
            yield app
        finally:
            await app.stop()

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

    def share_group(self, group_id: str) -> ShareGroup:
        return self.broker.share_group(group_id)
