"""`freedom run --reload`: a supervisor that restarts the service when its files change.

The supervisor runs the service as a child process (`freedom run` without `--reload`) and watches
the application's directory and its config directory with watchfiles. On a change it stops the
child as SIGTERM does (drain the consumer proxies, then the HTTP server), killing it after
`STOP_TIMEOUT_SEC`, and starts a new one.

When the service runs on the embedded broker, the supervisor starts that broker itself and names
it to each child in $FREEDOM_EMBEDDED_BOOTSTRAP, so topics, records and committed offsets survive
a reload (a server reloader that restarts the whole process, as `uvicorn --reload` does, restarts
the broker and loses them). Both the child and the broker get SIGKILL from the kernel when the
supervisor dies, however it dies (Linux, PR_SET_PDEATHSIG: see infra/kafka/embedded.py).

A child that fails (an edit that does not parse, a config error) is reported in one line, and the
supervisor waits for the next change.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from freedom.errors import FreedomError

if TYPE_CHECKING:
    from freedom.kafka.embedded import EmbeddedBroker, SharedBroker

log = logging.getLogger("freedom.runner.reload")

#: How long a reload waits for the old service to stop (drain, then the HTTP server) before killing it.
STOP_TIMEOUT_SEC = 20.0
#: Files whose change restarts the service (besides .py, .pyx, .pyd: watchfiles' PythonFilter).
EXTRA_EXTENSIONS = (".toml",)
#: The `freedom run` options that are the supervisor's own, not passed to the service.
_OWN = {"help", "reload", "reload_dirs"}


def child_arguments(run_parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The `freedom run` arguments of the service process: those given, less the reload options.

    Rebuilt from the parser's actions, so an option added to `run` later is passed on too.
    """
    out: list[str] = []
    for action in run_parser._actions:  # argparse has no public list of a parser's actions
        if action.dest in _OWN:
            continue
        value = getattr(args, action.dest, None)
        if not action.option_strings:  # the positional module:app
            out.append(str(value))
        elif value is None or value == action.default:
            continue
        elif action.nargs == 0:  # a flag (store_true)
            out.append(action.option_strings[0])
        elif isinstance(value, list):  # action="append"
            for item in value:
                out += [action.option_strings[0], str(item)]
        else:
            out += [action.option_strings[0], str(value)]
    return out


def module_dir(target: str) -> Path | None:
    """The directory of `module:app`'s top-level module (its package directory, or the directory
    holding the module file), found without importing it: the supervisor runs no user code."""
    top = target.partition(":")[0].split(".")[0]
    if not top:
        return None
    spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd(), *sys.path])
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    if spec.origin:
        return Path(spec.origin).resolve().parent
    return None


def watched_dirs(target: str, config: str | None, reload_dirs: Sequence[str]) -> list[Path]:
    """`--reload-dir`s when given, else the module's directory (or the working directory) and the
    config directory; a directory inside another is left out (the outer one is watched recursively)."""
    from freedom.config.loading import find_config_dir

    if reload_dirs:
        dirs = []
        for d in reload_dirs:
            if not Path(d).is_dir():
                raise FreedomError(f"--reload-dir {d}: not a directory")
            dirs.append(Path(d).resolve())
    else:
        dirs = [module_dir(target) or Path.cwd().resolve()]
        try:
            config_dir = find_config_dir(config)
        except FreedomError:
            config_dir = None  # the service reports it
        if config_dir is not None and config_dir.is_dir():
            dirs.append(config_dir.resolve())
    return [d for d in dirs if not any(o != d and d.is_relative_to(o) for o in dirs)]


def needs_embedded_broker(config: str | None, forced: bool) -> bool:
    """Whether the service will run on the embedded broker, read from its config files.

    A config that does not load gives False: the service reports the error itself, and the
    broker is started at a later restart once the config is fixed.
    """
    from freedom.config.loading import find_config_dir, load_kafka_config

    try:
        kafka = load_kafka_config(find_config_dir(config))
    except Exception:  # noqa: BLE001 - the child reports config errors, in their one-line form
        return False
    return kafka is not None and (forced or kafka.needs_embedded_broker)


def exit_text(code: int) -> str:
    """How a child process ended, for a log line (`Popen.returncode`: negative is a signal)."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _describe(changes: Iterable[tuple[object, str]]) -> str:
    paths = sorted({os.path.relpath(path) for _, path in changes})
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return ", ".join(paths[:3]) + more


class Supervisor:
    """Runs the service as a child process, restarting it on file changes; owns the embedded broker."""

    def __init__(
        self,
        child_args: Sequence[str],
        dirs: Sequence[Path],
        *,
        broker_needed: Callable[[], bool],
        stop_timeout: float = STOP_TIMEOUT_SEC,
        config_dir: Path | None = None,
    ) -> None:
        self.child_args = list(child_args)
        self.dirs = list(dirs)
        self.broker_needed = broker_needed
        self.stop_timeout = stop_timeout
        self.config_dir = config_dir  # where the broker is recorded (kafka/broker_state.py)
        self.child: subprocess.Popen[bytes] | None = None
        self.broker: EmbeddedBroker | SharedBroker | None = None
        self._stopping = threading.Event()  # SIGINT/SIGTERM: watchfiles checks it every step
        self._kill_now = False  # a second signal: do not wait for the drain
        self._reported = False  # the current child's exit was logged

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stopping.is_set():
            self._kill_now = True
            return
        log.info(
            "stopping the service%s (signal again to stop at once)",
            " and the embedded broker" if self.broker is not None else "",
        )
        self._stopping.set()

    # ------------------------------------------------------------------ broker

    def _ensure_broker(self) -> None:
        """Start the embedded broker if the config now needs it and it is not running (or use the
        one `freedom broker` runs for the config directory)."""
        from freedom.kafka.embedded import EmbeddedBroker, broker_for

        if self.broker is not None and self.broker.running:
            return
        if not self.broker_needed():
            return
        if self.broker is not None:
            log.warning(
                "the embedded Kafka broker had exited; starting a new one (its data is lost)"
            )
        broker = broker_for(self.config_dir, owner="freedom run --reload")
        broker.start()
        self.broker = broker
        if not isinstance(broker, EmbeddedBroker):
            log.warning(
                "using the embedded Kafka broker at %s: %s", broker.bootstrap, broker.lifetime
            )
            return
        log.warning(
            "embedded Kafka broker at %s (pid %s), kept running across reloads: in memory only, "
            "everything is lost when freedom run stops",
            broker.bootstrap,
            broker.pid,
        )

    def _stop_broker(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    # ------------------------------------------------------------------ child

    def _start_child(self) -> None:
        from freedom.kafka.embedded import BOOTSTRAP_ENV, spawn_dying_with_parent

        self._ensure_broker()
        env = dict(os.environ)
        env.pop(BOOTSTRAP_ENV, None)  # only the broker this supervisor runs
        if self.broker is not None:
            env[BOOTSTRAP_ENV] = self.broker.bootstrap
        cmd = [sys.executable, "-m", "freedom", "run", *self.child_args]
        # A session of its own: a Ctrl-C on the terminal reaches the supervisor only, which stops
        # the child with one SIGTERM (a second signal to the child would skip its drain).
        self.child = spawn_dying_with_parent(
            cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self._reported = False

    def _stop_child(self) -> None:
        """SIGTERM the child (it drains, then stops); SIGKILL it after `stop_timeout` or a second signal."""
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while not self._kill_now and time.monotonic() < deadline:
            try:
                child.wait(0.1)
                return
            except subprocess.TimeoutExpired:
                pass
        if not self._kill_now:
            log.warning("the service did not stop within %.0f s: killing it", self.stop_timeout)
        child.kill()
        child.wait()

    def _check_child(self) -> None:
        """Report, once, a child that exited by itself; the next change starts a new one."""
        if self.child is not None and not self._reported and self.child.poll() is not None:
            self._reported = True
            log.error(
                "the service %s; waiting for a change to restart it",
                exit_text(self.child.returncode),
            )

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM; returns the exit code (0)."""
        try:
            import watchfiles
        except ImportError:
            raise FreedomError("--reload needs watchfiles: pip install watchfiles") from None
        logging.getLogger("watchfiles").setLevel(
            logging.WARNING
        )  # its "1 change detected" repeats ours
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            log.info("watching %s for changes (--reload)", ", ".join(str(d) for d in self.dirs))
            self._start_child()
            watch = watchfiles.watch(
                *self.dirs,
                watch_filter=watchfiles.PythonFilter(extra_extensions=EXTRA_EXTENSIONS),
                stop_event=self._stopping,
                rust_timeout=200,
                yield_on_timeout=True,
                raise_interrupt=False,
            )
            for changes in watch:
                if self._stopping.is_set():
                    break
                if changes:
                    log.info("changes in %s: restarting the service", _describe(changes))
                    self._stop_child()
                    if self._stopping.is_set():
                        break
                    self._start_child()
                else:
                    self._check_child()
        finally:
            try:
                self._stop_child()
            finally:
                self._stop_broker()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return 0


def supervise(
    target: str,
    child_args: Sequence[str],
    *,
    config: str | None,
    embedded_broker: bool,
    reload_dirs: Sequence[str] = (),
) -> int:
    """`freedom run --reload`: run `freedom run child_args...` under a `Supervisor`."""
    from freedom.config.loading import find_config_dir

    dirs = watched_dirs(target, config, reload_dirs)
    try:
        config_dir = find_config_dir(config)
    except FreedomError:
        config_dir = None  # the service reports it
    return Supervisor(
        child_args,
        dirs,
        broker_needed=lambda: needs_embedded_broker(config, embedded_broker),
        config_dir=config_dir,
    ).run()
