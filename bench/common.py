"""Shared helpers of the benchmark: the broker, topics, pre-loading, consumer processes, waiting, stats.

Every consumer under test (the freedom service, the FastStream app, the bare loop) runs as its own
subprocess, so its CPU time and memory are its own, and reports through `services/bench_probe.py`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
import psutil
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
SERVICES = Path(__file__).resolve().parent / "services"
for _p in (ROOT / "src", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from tests.kafka.broker import ApacheKafka, jar_dir  # noqa: E402

#: The record value pre-loaded for the throughput scenarios: 100 bytes of JSON.
PAD = "x" * 80


def value(i: int) -> bytes:
    """A 100-byte JSON record value (padded), distinct per `i`."""
    body = json.dumps({"i": i, "pad": PAD}).encode()
    return body + b" " * max(0, 100 - len(body))


class BenchError(RuntimeError):
    """A benchmark run could not complete (a consumer never finished, a process died)."""


# ----------------------------------------------------------------------------- the broker


def start_broker() -> ApacheKafka:
    """A fresh single-node Apache Kafka (the one the tests use), with a bigger heap for the backlogs."""
    flags = (
        "-Xmx1g",
        "-Xss1m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true",
    )
    return ApacheKafka(jvm_flags=flags).start()


def kafka_version() -> str:
    """The broker version, from the jar name in the jar cache (kafka_2.13-X.Y.Z.jar)."""
    for jar in sorted(jar_dir().glob("kafka_2.13-*.jar")):
        return jar.stem.removeprefix("kafka_2.13-")
    return "unknown"


def machine() -> dict[str, str]:
    """Cores, memory, OS, Python, library and broker versions, for the report's header."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": str(psutil.cpu_count(logical=True)),
        "cpu": cpu,
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)",
        "kafka": f"Apache Kafka {kafka_version()} (single node, KRaft, same machine)",
        "libraries": ", ".join(
            f"{n} {ver(n)}"
            for n in (
                "confluent-kafka",
                "faststream",
                "fastapi",
                "uvicorn",
                "httptools",
                "uvloop",
                "granian",
                "pyreqwest",
            )
        ),
    }


# ----------------------------------------------------------------------------- topics and records


class Kafka:
    """Admin and producer clients of the benchmark's broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._committed: dict[str, confluent_kafka.Consumer] = {}
        self._partitions: dict[str, int] = {}  # topic -> its partition count (committed())

    def new_topic(self, prefix: str, partitions: int = 1, timeout: float = 30.0) -> str:
        """Create a uniquely named topic and wait until it has leaders."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout)
        deadline = time.monotonic() + timeout
        while True:
            md = self.admin.list_topics(name, timeout=5).topics.get(name)
            if (
                md is not None
                and md.error is None
                and len(md.partitions) == partitions
                and all(p.leader >= 0 for p in md.partitions.values())
            ):
                return name
            if time.monotonic() > deadline:
                raise BenchError(f"topic {name} not ready after {timeout}s")
            time.sleep(0.05)

    def preload(self, topic: str, n: int, *, keyed: bool = True) -> float:
        """Produce `n` 100-byte records (keys `k0`..`k<n-1>`) with a bare producer; returns seconds taken."""
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "linger.ms": 20,
                "batch.num.messages": 10000,
                "compression.type": "lz4",
            }
        )
        t0 = time.perf_counter()
        for i in range(n):
            while True:
                try:
                    producer.produce(topic, value(i), key=f"k{i}".encode() if keyed else None)
                    break
                except BufferError:
                    producer.poll(0.01)
            if i % 10000 == 0:
                producer.poll(0)
        left = producer.flush(120)
        if left:
            raise BenchError(f"pre-loading {topic}: {left} records not acknowledged")
        return time.perf_counter() - t0

    def committed(self, group: str, topic: str, partitions: int | None = None) -> int:
        """The sum of the group's committed offsets on `topic` (0 where nothing is committed), over
        its `partitions` first partitions (default: all of them)."""
        consumer = self._committed.get(group)
        if consumer is None:
            consumer = self._committed[group] = confluent_kafka.Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": group,
                    "enable.auto.commit": False,
                    "log_level": 4,
                }
            )
        try:
            if partitions is None:
                partitions = self._partitions.get(topic)
                if partitions is None:
                    partitions = (
                        len(consumer.list_topics(topic, timeout=5).topics[topic].partitions) or 1
                    )
                    self._partitions[topic] = partitions
            tps = consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=5
            )
        except confluent_kafka.KafkaException:
            return 0
        return sum(max(tp.offset, 0) for tp in tps)

    def forget(self, group: str) -> None:
        consumer = self._committed.pop(group, None)
        if consumer is not None:
            consumer.close()


def new_group(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- consumer processes


@dataclass
class Consumer:
    """A consumer under test running as a subprocess, with its probe file and log."""

    name: str
    proc: subprocess.Popen[bytes]
    probe_path: Path
    log_path: Path
    port: int = 0  # where a freedom service listens
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    def probe(self) -> dict[str, Any]:
        try:
            return json.loads(self.probe_path.read_text())
        except (OSError, ValueError):
            return {}

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(
                f"{self.name} exited with rc={self.proc.returncode}; log {self.log_path}:\n"
                f"{tail(self.log_path)}"
            )

    def wait_probe(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.probe()
            if state and predicate(state):
                return state
            self.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{self.name}: timed out after {timeout:.0f} s waiting for {what} "
                    f"(probe { ({k: v for k, v in state.items() if k != 'latencies'}) }); "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            time.sleep(0.02)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its children so far."""
        total = 0.0
        try:
            for p in [self.ps, *self.ps.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
        return total

    def rss(self) -> int:
        """Resident set size of the process and its children, in bytes."""
        total = 0
        try:
            for p in [self.ps, *self.ps.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.Error:
            pass
        return total

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


#: The freedom source the measured processes import (see `snapshot_source`).
_source = ROOT / "src"


def snapshot_source(kind: str, workdir: Path) -> str:
    """Freeze the freedom source for the whole session, so that edits to the tree during a run
    (or a half-finished edit) do not change what is measured; returns a description for the report.

    `kind` "worktree": a copy of `src/` as it is now; "head": `src/` of the HEAD commit.
    """
    global _source
    dest = workdir / "source"
    dest.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if kind == "head":
        if not commit:
            raise BenchError("--source head needs a git checkout")
        archive = subprocess.run(
            ["git", "archive", "HEAD", "src"], cwd=ROOT, stdout=subprocess.PIPE, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        description = f"commit {commit} (HEAD)"
    else:
        shutil.copytree(
            ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        dirty = bool(git("status", "--porcelain", "--", "src"))
        description = (
            f"working tree at commit {commit}"
            + (" with uncommitted changes in src/" if dirty else "")
            if commit
            else "working tree"
        )
    _source = dest / "src"
    sys.path.insert(0, str(_source))
    return description


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a measured process: the frozen freedom source and the services first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SERVICES), str(_source)]), **extra}


def spawn(name: str, cmd: list[str], workdir: Path, env: dict[str, str]) -> Consumer:
    """Start `cmd` in `services/` with the probe file and log in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    probe_path = workdir / f"{name}.probe.json"
    log_path = workdir / f"{name}.log"
    probe_path.unlink(missing_ok=True)
    environ = child_env({"BENCH_PROBE": str(probe_path), **env})
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=SERVICES,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Consumer(name, proc, probe_path, log_path)


# ----------------------------------------------------------------------------- stats


def fmt(x: float, unit: str = "") -> str:
    if unit == "ms":
        return f"{x:.1f}"
    if unit == "x":
        return f"{x:.2f}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# ----------------------------------------------------------------------------- cases and the run context


class Skip(Exception):
    """A case that cannot run here (a feature not built yet); the message says why."""


@dataclass
class Case:
    """One measured thing: `run(ctx)` returns metric name -> value for one run."""

    scenario: str
    name: str
    run: Callable[[Context], dict[str, float]]
    order: int = 0  # within a run, lower first (throughput before the latency that uses it)


@dataclass
class Context:
    """What the scenarios share during one benchmark session."""

    kafka: Kafka
    quick: bool
    runs: int
    workdir: Path
    run_index: int = 0
    topics: dict[str, str] = field(default_factory=dict)  # cache: purpose -> pre-loaded topic
    results: dict[tuple[str, str, str], list[float | None]] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def preloaded(self, purpose: str, n: int, partitions: int = 1) -> str:
        """A topic holding `n` pre-loaded records, made once per session and shared by every case."""
        key = f"{purpose}:{n}:{partitions}"
        if key not in self.topics:
            topic = self.kafka.new_topic(f"bench-{purpose}", partitions)
            seconds = self.kafka.preload(topic, n)
            print(f"  [pre-loaded {n:,} records into {topic} in {seconds:.1f} s]", flush=True)
            self.topics[key] = topic
        return self.topics[key]

    def record(self, scenario: str, case: str, metrics: dict[str, float]) -> None:
        for metric, v in metrics.items():
            values = self.results.setdefault((scenario, case, metric), [None] * self.runs)
            values[self.run_index] = v

    def values(self, scenario: str, case: str, metric: str) -> list[float]:
        return [v for v in self.results.get((scenario, case, metric), []) if v is not None]

    def median(self, scenario: str, case: str, metric: str) -> float | None:
        vals = self.values(scenario, case, metric)
        return statistics.median(vals) if vals else None


# ----------------------------------------------------------------------------- the freedom service


#: `proxy_addr` value selecting in-process delivery (the proxy calls the application directly).
INPROCESS = "inprocess"
#: `[consumer]` key choosing how in-process deliveries reach the handler (issue 19): "direct" (the
#: direct invoker: the handler called without the ASGI stack; the default where the key exists) or
#: "asgi" (the in-process ASGI call). The bench's `freedom-inprocess-*` cases set "asgi", the
#: `freedom-direct-*` cases "direct".
DISPATCH_KEY = "inprocess_dispatch"
DISPATCHES = ("direct", "asgi")

_DISPATCH_CHECK = """
import sys, tempfile
from freedom.config.loading import load_kafka_config
from freedom.errors import ConfigError
from freedom.testing import kafka_config, write_config
try:
    from freedom.config.models import ConsumerSection
    known = "%s" in ConsumerSection.model_fields
except Exception:  # the model moved: let loading the file decide
    known = True
if not known:
    print("freedom.config.models.ConsumerSection has no field %s")
    sys.exit(0)
with tempfile.TemporaryDirectory() as tmp:
    kafka = kafka_config("127.0.0.1:9092", 8000)
    kafka["consumer"]["proxy_addr"] = "inprocess"
    kafka["consumer"]["%s"] = "direct"
    try:
        load_kafka_config(write_config(tmp, kafka=kafka))
    except ConfigError as exc:
        print(str(exc).splitlines()[0])
""" % ((DISPATCH_KEY,) * 3)

_dispatch_checked: dict[str, str | None] = {}  # measured source -> why not (None: supported)


def dispatch_unsupported() -> str | None:
    """None when the measured code accepts `[consumer] inprocess_dispatch = "direct"`, else why not.

    Checked once per measured source in a subprocess that imports that source (so that `bench.ab`,
    which alternates two sources in one process, gets the answer of each)."""
    key = str(_source)
    if key not in _dispatch_checked:
        done = subprocess.run(
            [sys.executable, "-c", _DISPATCH_CHECK],
            env=child_env({}),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            why: str | None = f"checking for it failed: {last}"
        else:
            why = done.stdout.strip() or None
        _dispatch_checked[key] = (
            None
            if why is None
            else f"the direct invoker is not in the measured code: kafka.toml's "
            f'`[consumer] {DISPATCH_KEY} = "direct"` is not accepted ({why})'
        )
    return _dispatch_checked[key]


def inprocess_unsupported() -> str | None:
    """None when kafka.toml accepts `proxy_addr = "inprocess"` in the measured code, else why not."""
    import tempfile

    from freedom.config.loading import load_kafka_config
    from freedom.errors import ConfigError
    from freedom.testing import kafka_config, write_config

    with tempfile.TemporaryDirectory() as tmp:
        kafka = kafka_config("127.0.0.1:9092", 8000)
        kafka["consumer"]["proxy_addr"] = INPROCESS
        try:
            load_kafka_config(write_config(tmp, kafka=kafka))
        except ConfigError as exc:
            return f"in-process delivery is not available in this build ({exc})"
    return None


#: what the service's start-up line (`consumer deliveries: ...`) says for each in-process dispatch
DELIVERY_PATH_MARK = {"direct": "in-process direct", "asgi": "through the ASGI application"}


def check_delivery_path(consumer: Consumer, state: dict[str, Any], dispatch: str) -> None:
    """Raise `BenchError` when the service said its deliveries take another path than `dispatch`
    (e.g. a "direct" case whose route fell back to the ASGI application). Nothing to check when the
    measured code has no such line (`delivery_path` not in the probe)."""
    line = state.get("delivery_path")
    if line and DELIVERY_PATH_MARK[dispatch] not in line:
        consumer.stop()
        raise BenchError(
            f'{consumer.name}: inprocess_dispatch = "{dispatch}", but the service says: {line}'
        )


def freedom_service(
    ctx: Context,
    name: str,
    topic: str,
    group: str,
    *,
    handler: str,
    mode: str,
    expect: int,
    http2: bool = False,
    inprocess: bool = False,
    dispatch: str = "asgi",
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> Consumer:
    """Start the benchmark's freedom service (`freedom run freedom_app:app`) in a subprocess.

    `mode` is the consumer proxy's delivery mode ("sequential" or "concurrent"); the group reads
    `topic` from the earliest offset; logging is at WARNING so no line is written per delivery. `extra`
    adds keys to the `[[consumer_clients]]` entry (retry settings, `max_in_flight`); `workers` > 1
    runs it as `freedom run --workers N` (the scaling scenario).

    With `inprocess`, `dispatch` is `[consumer] inprocess_dispatch`: "asgi" (the default here, so
    that every `freedom-inprocess-*` case stays the in-process ASGI call it always measured) or
    "direct" (the direct invoker; `Skip` when the measured code does not accept the key). Where the
    key does not exist yet, "asgi" leaves it out: the in-process call is then the ASGI one anyway.
    """
    from freedom.testing import free_port, kafka_config, write_config

    port = free_port()
    consumer: dict[str, Any] = {
        "initial_offset": "earliest",
        "mode": mode,
        "settings": {"session.timeout.ms": 6000},
        **(extra or {}),
    }
    kafka = kafka_config(ctx.kafka.bootstrap, port, group_id=group, **consumer)
    if http2:
        kafka["consumer"]["proxy_http2"] = True
    if inprocess:
        kafka["consumer"]["proxy_addr"] = INPROCESS
        if dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
        why_not = dispatch_unsupported()
        if why_not is None:
            kafka["consumer"][DISPATCH_KEY] = dispatch
        elif dispatch == "direct":
            raise Skip(why_not)
    workdir = ctx.workdir / name
    conf = write_config(
        workdir / "conf",
        app={"listen_addr": f"127.0.0.1:{port}", "log_level": "WARNING"},
        kafka=kafka,
    )
    cmd = [
        sys.executable,
        "-m",
        "freedom",
        "run",
        "freedom_app:app",
        "--config",
        str(conf),
    ]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    service = spawn(
        name,
        cmd,
        workdir,
        {
            "BENCH_TOPIC": topic,
            "BENCH_HANDLER": handler,
            "BENCH_EXPECT": str(expect),
            **(env or {}),
        },
    )
    service.port = port
    return service


def peer_process(
    ctx: Context, kind: str, name: str, topic: str, group: str, *, handler: str, expect: int
) -> Consumer:
    """Start the FastStream app (`kind="faststream"`) or the bare loop (`kind="bare"`) in a subprocess."""
    script = {"faststream": "faststream_app.py", "bare": "bare_consumer.py"}[kind]
    return spawn(
        name,
        [sys.executable, str(SERVICES / script)],
        ctx.workdir / name,
        {
            "BENCH_BOOTSTRAP": ctx.kafka.bootstrap,
            "BENCH_TOPIC": topic,
            "BENCH_GROUP": group,
            "BENCH_HANDLER": handler,
            "BENCH_EXPECT": str(expect),
        },
    )


def wait_committed(
    ctx: Context, group: str, topic: str, n: int, timeout: float, consumer: Consumer
) -> float:
    """Poll the group's committed offsets until they reach `n`; returns the (epoch) time it did."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            if ctx.kafka.committed(group, topic) >= n:
                return time.time()
            consumer.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{consumer.name}: group {group} committed {ctx.kafka.committed(group, topic)} "
                    f"of {n} within {timeout:.0f} s; log {consumer.log_path}:\n{tail(consumer.log_path)}"
                )
            time.sleep(0.02)
    finally:
        ctx.kafka.forget(group)


def measure_throughput(
    ctx: Context, consumer: Consumer, group: str, topic: str, n: int, *, dispatch: str = ""
) -> dict[str, float]:
    """Records/s from the first handled record until the group committed all `n`, and CPU per record.

    `dispatch` ("direct", "asgi"; in-process cases): the path the service must say it takes."""
    try:
        timeout = 120 + n / 20
        state = consumer.wait_probe(lambda s: s.get("count", 0) >= 1, 120, "the first record")
        if dispatch:
            check_delivery_path(consumer, state, dispatch)
        cpu0 = consumer.cpu_seconds()
        t_done = wait_committed(ctx, group, topic, n, timeout, consumer)
        cpu1 = consumer.cpu_seconds()
        seconds = t_done - state["t_first"]
        return {"records/s": n / seconds, "CPU µs/record": (cpu1 - cpu0) / n * 1e6}
    finally:
        consumer.stop()
