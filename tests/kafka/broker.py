"""A real single-node Apache Kafka broker (KRaft, broker+controller) for tests.

Runs the Maven Central jars (see ``tests/kafka/pom.xml``) in a child JVM on
free loopback ports, with its data and log in a temporary directory, so the
test suite checks behaviour against the reference broker without Docker.

Run ``python tests/kafka/broker.py`` to start one by hand; it prints the
bootstrap address and runs until Ctrl-C.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).resolve().parent / "pom.xml"
DEFAULT_JAR_DIR = ROOT / ".cache" / "kafka-jars"

#: JVM flags; SerialGC + C1-only shave roughly a second off start-up on 2 cores.
DEFAULT_JVM_FLAGS: tuple[str, ...] = (
    "-Xmx512m",
    "-Xss1m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-Djava.awt.headless=true",
)

#: Console-only log4j2 config; stdout/stderr of the JVM go to ``log_path``.
LOG4J2_PROPERTIES = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


#: Share groups (KIP-932, on by default in 4.4: feature share.version=2) with test-friendly timing.
#: By default a new member gets its first records only after ~5 s (its first heartbeat interval,
#: min 5000) and a group may not set its acquisition lock below 15 s. The group configs
#: (share.heartbeat.interval.ms, share.session.timeout.ms, share.record.lock.duration.ms) must lie
#: within the broker's min/max, so the minimums are lowered too: a test may then set a group's
#: lock to a few seconds. Validators: every interval >= 1 ms, the lock minimum 1000..30000 ms.
SHARE_GROUP_PROPERTIES: dict[str, str] = {
    "group.share.heartbeat.interval.ms": "500",
    "group.share.min.heartbeat.interval.ms": "500",
    # Default and minimum 45 s; a member must still survive a busy two-core machine.
    "group.share.session.timeout.ms": "10000",
    "group.share.min.session.timeout.ms": "3000",
    "group.share.min.record.lock.duration.ms": "1000",
    # A group's lock by default (30 s): what a hung member's records wait for. A service raises
    # its group's lock to its delivery deadline plus a margin when that is longer.
    "group.share.record.lock.duration.ms": "10000",
    # Default 1 s between assignment updates: a joining member waits for it.
    "group.share.assignment.interval.ms": "100",
}


class KafkaBrokerError(RuntimeError):
    """The test broker could not be prepared or started."""


def jar_dir() -> Path:
    """Where the broker jars live (``$FREEDOM_KAFKA_JARS`` or ``.cache/kafka-jars``)."""
    env = os.environ.get("FREEDOM_KAFKA_JARS")
    return Path(env).resolve() if env else DEFAULT_JAR_DIR


def ensure_jars(directory: Path | None = None) -> Path:
    """Return the jar directory, fetching the jars with Maven if it is missing or empty."""
    directory = directory or jar_dir()
    if directory.is_dir() and any(directory.glob("kafka_2.13-*.jar")):
        return directory
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaBrokerError(f"no Kafka jars in {directory} and no 'mvn' on PATH to fetch them")
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={directory}",
        "-DincludeScope=runtime",
    ]
    print(
        f"[kafka] fetching broker jars into {directory} (one-off): {' '.join(cmd)}",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.monotonic()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0 or not any(directory.glob("kafka_2.13-*.jar")):
        raise KafkaBrokerError(f"mvn failed (rc={result.returncode}):\n{result.stdout[-4000:]}")
    print(f"[kafka] jars ready in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return directory


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def random_cluster_id() -> str:
    """A KRaft cluster id like ``StorageTool random-uuid`` prints (saves a JVM start)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a text file, or '' if it is unreadable."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _die_with_parent() -> None:
    """preexec_fn: ask Linux to SIGKILL the broker when the spawning thread dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, non-Linux just skips it
        pass


class ApacheKafka:
    """Single-node Apache Kafka in a child JVM; context manager.

    ``extra_listeners`` maps a listener name to its security protocol (e.g.
    ``{"SASL_PLAINTEXT": "SASL_PLAINTEXT"}``); each gets its own free port, see
    ``address(name)``. ``extra_properties`` are added to / override
    server.properties (e.g. SASL/TLS settings per listener). ``features`` are feature levels
    the storage is formatted with (``StorageTool format --feature name=level``), e.g.
    ``{"share.version": 0}`` for a broker without share groups.
    """

    def __init__(
        self,
        *,
        extra_properties: Mapping[str, str] | None = None,
        extra_listeners: Mapping[str, str] | None = None,
        features: Mapping[str, int] | None = None,
        jvm_flags: Sequence[str] = DEFAULT_JVM_FLAGS,
        start_timeout: float = 60.0,
        work_dir: Path | None = None,
        jars: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.extra_properties = dict(extra_properties or {})
        self.extra_listeners = dict(extra_listeners or {})
        self.features = dict(features or {})
        self.jvm_flags = list(jvm_flags)
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self._jars = jars
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="freedom-kafka-")).resolve()
        self.data_dir = self.work_dir / "data"
        self.log_path = self.work_dir / "broker.log"
        # Ports are fixed for the object's life, so restart() keeps the bootstrap address.
        self.ports: dict[str, int] = {
            name: free_port() for name in ("PLAINTEXT", "CONTROLLER", *self.extra_listeners)
        }
        self.cluster_id = random_cluster_id()
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._formatted = False
        atexit.register(self.stop)

    # -- addresses -----------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the PLAINTEXT listener."""
        return self.address("PLAINTEXT")

    def address(self, listener: str) -> str:
        """``127.0.0.1:PORT`` of a listener (PLAINTEXT, CONTROLLER or an extra one)."""
        return f"127.0.0.1:{self.ports[listener]}"

    @property
    def pid(self) -> int | None:
        """Process id of the running JVM, if any."""
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    # -- config --------------------------------------------------------
    def server_properties(self) -> dict[str, str]:
        """The full server.properties this broker runs with."""
        names = list(self.ports)
        protocols = {"PLAINTEXT": "PLAINTEXT", "CONTROLLER": "PLAINTEXT", **self.extra_listeners}
        listeners = ",".join(f"{n}://127.0.0.1:{self.ports[n]}" for n in names)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": self.address("CONTROLLER"),
            "listeners": listeners,
            "advertised.listeners": listeners,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in protocols.items()),
            "log.dirs": str(self.data_dir),
            "auto.create.topics.enable": "true",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",  # 4 partitions: first group join ~3 s slower
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            **SHARE_GROUP_PROPERTIES,
            # Default 9 s: after kill() the restarted broker waits for its old session to expire.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        props.update(self.extra_properties)
        return props

    def _write_config(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        (self.work_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        return path

    def _java(self, main: str, *args: str, flags: Sequence[str] = ()) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaBrokerError("no 'java' on PATH: install a Java 17+ runtime")
        jars = ensure_jars(self._jars)
        return [java, *flags, "-cp", f"{jars}/*", main, *args]

    # -- lifecycle -----------------------------------------------------
    def start(self) -> ApacheKafka:
        """Format storage (first time only), start the JVM and wait until it answers."""
        if self.pid is not None:
            return self
        t0 = time.monotonic()
        config = self._write_config()
        if not self._formatted:
            fmt = subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    self.cluster_id,
                    "-c",
                    str(config),
                    "--standalone",
                    "--ignore-formatted",
                    *(a for n, v in self.features.items() for a in ("--feature", f"{n}={v}")),
                    flags=("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"),
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            if fmt.returncode != 0:
                raise KafkaBrokerError(f"StorageTool format failed:\n{fmt.stdout[-4000:]}")
            self._formatted = True
        cmd = self._java(
            "kafka.Kafka",
            str(config),
            flags=(
                *self.jvm_flags,
                f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.work_dir}",
            ),
        )
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== starting {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._wait_ready(time.monotonic() + self.start_timeout)
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        admin: AdminClient | None = None
        last = "not started"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise KafkaBrokerError(
                    f"Kafka exited with rc={self._proc.returncode} during start-up; "
                    f"log {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.ports["PLAINTEXT"]), timeout=0.5):
                    pass
                if admin is None:
                    admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                admin.list_topics(timeout=1.0)
                # Creates __consumer_offsets now; otherwise the first consumer group of a
                # session waits ~3 s in librdkafka's FindCoordinator back-off.
                admin.describe_consumer_groups(["_warmup"], request_timeout=5)["_warmup"].result(6)
                return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = repr(exc)
                time.sleep(0.05)
        self.stop()
        raise KafkaBrokerError(
            f"Kafka not ready within {self.start_timeout}s ({last}); log {self.log_path}:\n"
            f"{tail(self.log_path)}"
        )

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop: SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            proc.wait(10)
        self._proc = None

    def kill(self) -> None:
        """Crash the broker (SIGKILL), e.g. to test clients against a dead broker."""
        if self._proc is not None:
            self._signal(signal.SIGKILL)
            self._proc.wait(10)
            self._proc = None

    def restart(self, *, hard: bool = False) -> ApacheKafka:
        """Stop (or kill if ``hard``) and start again on the same ports and data."""
        self.kill() if hard else self.stop()
        return self.start()

    def close(self, *, keep_log: bool = False) -> None:
        """Stop and delete the work dir; with ``keep_log`` only the data is deleted."""
        self.stop()
        atexit.unregister(self.stop)
        if not self._own_dir:
            return
        if keep_log:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(keep_log=exc is not None)


def main() -> None:
    """Start a broker, print its bootstrap address, run until Ctrl-C or SIGTERM.

    With --fetch-only, only make sure the jars are there (the test command's first step).
    """
    if "--fetch-only" in sys.argv[1:]:
        print(f"[kafka] jars ready in {ensure_jars()}", file=sys.stderr)
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with ApacheKafka() as kafka:
        print(kafka.bootstrap, flush=True)
        print(
            f"[kafka] started in {kafka.start_seconds:.1f}s, pid {kafka.pid}, "
            f"log {kafka.log_path}; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        try:
            while kafka.pid is not None:
                time.sleep(0.5)
            print(f"[kafka] broker exited:\n{tail(kafka.log_path)}", file=sys.stderr)
        except KeyboardInterrupt:
            print("[kafka] stopping", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
