"""`freedom run --workers N`: N service processes on one listening socket, to use every core.

The parent binds the listen address once (app.toml's `listen_addr`, or `--listen`) and starts N
workers, each `freedom run module:app` as without `--workers`: a whole service, HTTP server and
consumer proxy, so each is a member of every consumer group of the service and the partitions are
split between them. The workers inherit the parent's socket (its descriptor in $FREEDOM_LISTEN_FD)
and accept on it, so the kernel shares the connections out; a worker that stops accepting leaves
the connections to the others (uvicorn's multiprocess supervisor works the same way).

Delivery: in-process delivery (`proxy_addr = "inprocess"`) calls the worker's own application.
With HTTP delivery each worker's proxy posts to the shared port, so a delivery may be served by any
worker: the handlers' work is spread over every worker, whichever holds the partition.

The parent runs no user code. When the service runs on the embedded broker the parent starts it
once and names it to every worker in $FREEDOM_EMBEDDED_BOOTSTRAP (as `--reload` does), so all
workers share one broker. Workers get SIGKILL from the kernel when the parent dies, however it dies
(PR_SET_PDEATHSIG), so none is left behind.

Stopping: SIGINT or SIGTERM to the parent sends SIGTERM to every worker, which drains its consumer
proxies (in-flight deliveries finish and are committed), then stops its HTTP server; a worker not
stopped within `STOP_TIMEOUT_SEC`, or a second signal, is killed. The parent exits 0 when every
worker stopped cleanly, else 1.

A worker that dies while the service runs is reported in one line and started again (after 1 s,
doubling up to 30 s while it keeps dying within `HEALTHY_AFTER_SEC` of its start); its partitions
go to the other workers meanwhile (the group rebalances), and what it had not committed is
delivered again. A worker that exits with code 2 (a user mistake: config, module) is not started
again: the parent stops the others and exits 2.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from freedom.errors import FreedomError
from freedom.runner.reload import exit_text
from freedom.runner.server import LISTEN_FD_ENV

if TYPE_CHECKING:
    from pathlib import Path

    from freedom.kafka.embedded import EmbeddedBroker, SharedBroker

log = logging.getLogger("freedom.runner.workers")

#: The file descriptor of the listening socket a worker inherits from its parent.
#: A worker's number (1..N), for its logs and its health checks.
WORKER_ENV = "FREEDOM_WORKER"
#: How long a stop waits for the workers (drain, then the HTTP server's graceful stop) before killing them.
STOP_TIMEOUT_SEC = 40.0
#: A worker that ran this long before dying is started again at once (1 s); sooner, with a growing delay.
HEALTHY_AFTER_SEC = 30.0
MAX_RESTART_DELAY_SEC = 30.0
#: The most workers `--workers` takes.
MAX_WORKERS = 256
#: The listen backlog of the shared socket.
BACKLOG = 2048
#: The exit code of a user mistake (cli.py): a worker exiting with it is not started again.
USAGE_EXIT = 2


def check_workers(value: int, *, reload: bool) -> None:
    """A FreedomError (one line, exit 2) for a `--workers` value `freedom run` cannot take."""
    if not 1 <= value <= MAX_WORKERS:
        raise FreedomError(f"--workers: must be from 1 to {MAX_WORKERS}, got {value}")
    if reload and value > 1:
        raise FreedomError(
            "--workers and --reload cannot be combined (--reload runs one service, for development)"
        )


def without_options(args: Sequence[str], options: dict[str, bool]) -> list[str]:
    """`args` less the given options (name -> whether it takes a value), in both spellings."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = options[name] and "=" not in arg
            continue
        out.append(arg)
    return out


@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # when a dead worker is started again
    delay: float = 1.0
    reported: bool = False  # its exit was logged already


class WorkerSupervisor:
    """Runs N workers on one socket until SIGINT/SIGTERM; restarts those that die; owns the embedded broker."""

    def __init__(
        self,
        count: int,
        child_args: Sequence[str],
        sock: socket.socket,
        *,
        broker_needed: bool,
        stop_timeout: float = STOP_TIMEOUT_SEC,
        config_dir: Path | None = None,
    ) -> None:
        self.count = count
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # Every worker serves the address bound here (also when the config says port 0).
        self.child_args = [
            *without_options(child_args, {"--workers": True, "--listen": True}),
            "--listen",
            self.listen,
        ]
        self.broker_needed = broker_needed
        self.stop_timeout = stop_timeout
        self.broker: EmbeddedBroker | SharedBroker | None = None
        self.config_dir = config_dir  # where the broker is recorded (kafka/broker_state.py)
        self.workers = [_Worker(i + 1) for i in range(count)]
        self._stopping = threading.Event()
        self._kill_now = False
        self.exit_code = 0

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        if self._stopping.is_set():
            self._kill_now = True
            return
        log.info(
            "stopping %d workers: each drains its consumer proxies, then its HTTP server "
            "(signal again to stop at once)",
            self.count,
        )
        self._stopping.set()

    def _start_broker(self) -> None:
        from freedom.kafka.embedded import EmbeddedBroker, broker_for

        broker = broker_for(self.config_dir, owner="freedom run --workers")
        broker.start()
        self.broker = broker
        if not isinstance(broker, EmbeddedBroker):  # freedom broker's, for this config directory
            log.warning(
                "using the embedded Kafka broker at %s: %s", broker.bootstrap, broker.lifetime
            )
            return
        log.warning(
            "embedded Kafka broker at %s (pid %s), shared by the %d workers: in memory only, "
            "everything is lost when freedom run stops",
            broker.bootstrap,
            broker.pid,
            self.count,
        )

    def _start(self, worker: _Worker) -> None:
        from freedom.kafka.embedded import BOOTSTRAP_ENV, spawn_dying_with_parent

        env = dict(os.environ)
        env.pop(BOOTSTRAP_ENV, None)
        if self.broker is not None:
            env[BOOTSTRAP_ENV] = self.broker.bootstrap
        env[LISTEN_FD_ENV] = str(self.sock.fileno())
        env[WORKER_ENV] = str(worker.number)
        cmd = [sys.executable, "-m", "freedom", "run", *self.child_args]
        # A session of its own: a Ctrl-C on the terminal reaches the parent only, which stops each
        # worker with one SIGTERM (a second signal to a worker would skip its drain).
        worker.proc = spawn_dying_with_parent(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(self.sock.fileno(),),
        )
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.number, worker.proc.pid)

    def _check(self, worker: _Worker) -> None:
        """Report a worker that exited by itself, and start it again when its delay is over."""
        now = time.monotonic()
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                self._start(worker)
            return
        proc = worker.proc
        if proc is None or proc.poll() is None:
            return
        code = proc.returncode
        if code == USAGE_EXIT:
            worker.reported = True
            log.error(
                "worker %d (pid %d) exited with code 2 (see its error above): stopping the service",
                worker.number,
                proc.pid,
            )
            self.exit_code = USAGE_EXIT
            self._stopping.set()
            return
        ran = now - worker.started_at
        if ran >= HEALTHY_AFTER_SEC:
            worker.delay = 1.0
        delay, worker.delay = worker.delay, min(worker.delay * 2, MAX_RESTART_DELAY_SEC)
        log.error(
            "worker %d (pid %d) %s after %.0f s; its partitions go to the other workers, starting it again in %.0f s",
            worker.number,
            proc.pid,
            exit_text(code),
            ran,
            delay,
        )
        worker.restart_at = now + delay

    def _stop_all(self) -> None:
        """SIGTERM every worker (they drain and stop together); SIGKILL those left at the deadline."""
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while running and not self._kill_now and time.monotonic() < deadline:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.05)
        if running:
            if not self._kill_now:
                log.warning(
                    "%d workers did not stop within %.0f s: killing them",
                    len(running),
                    self.stop_timeout,
                )
            for proc in running:
                proc.kill()
        for w in self.workers:
            if w.proc is None:
                continue
            code = w.proc.wait()
            if code != 0 and self.exit_code == 0:
                self.exit_code = 1
            if code != 0 and w.restart_at is None and not w.reported:
                log.warning(
                    "worker %d (pid %d) %s at the stop", w.number, w.proc.pid, exit_text(code)
                )

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (or a worker's user mistake); the exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            if self.broker_needed:
                self._start_broker()
            log.info("serving on %s with %d workers", self.listen, self.count)
            for worker in self.workers:
                self._start(worker)
            while not self._stopping.wait(0.2):
                for worker in self.workers:
                    self._check(worker)
        finally:
            try:
                self._stop_all()
            finally:
                self.sock.close()
                if self.broker is not None:
                    self.broker.stop()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return self.exit_code


def supervise(
    count: int,
    child_args: Sequence[str],
    *,
    config: str | None,
    listen: str | None,
    embedded_broker: bool,
) -> int:
    """`freedom run --workers N`: bind the listen address, then run N workers on it."""
    from freedom.config.loading import find_config_dir, load_app_config, load_kafka_config
    from freedom.runner.reload import needs_embedded_broker
    from freedom.runner.server import bind_address

    config_dir = find_config_dir(config)
    app_config = load_app_config(config_dir, listen_addr=listen)
    kafka = load_kafka_config(config_dir)
    if kafka is not None and kafka.consumer.proxy_http2:
        raise FreedomError(
            f"--workers: proxy_http2 = true ({kafka.file}) serves with granian, which cannot share "
            "a listening socket; run one worker, or deliver over HTTP/1.1 or in-process"
        )
    file, key = app_config.listen_from
    sock = bind_address(app_config.host, app_config.port, file, key)
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return WorkerSupervisor(
        count,
        child_args,
        sock,
        broker_needed=needs_embedded_broker(config, embedded_broker),
        config_dir=config_dir,
    ).run()
