"""`freedom broker`: the embedded broker (Tansu) on its own, for local development with several
services and for `freedom proxy` (README.md, "The embedded broker"; docs/operations.md).

It prints `freedom: broker listening on 127.0.0.1:PORT` on stdout (one line, flushed), records
itself in its data directory and in each config directory it is given (kafka/broker_state.py),
and runs until SIGINT or SIGTERM, when it stops the broker and removes the records. Services of
those config directories that have no `servers` run on it instead of starting their own broker,
and the operations commands reach it; elsewhere it is named by $FREEDOM_EMBEDDED_BOOTSTRAP or by
`servers`. The data survives restarts of the services (the broker outlives them), not a restart of
the broker itself, unless `--storage-url` names a store that keeps it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from freedom.errors import FreedomError

log = logging.getLogger("freedom.broker")

#: The broker's log, in its data directory.
LOG_FILE = "broker.log"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `broker` to the `freedom` command."""
    p = sub.add_parser(
        "broker",
        help="run the embedded broker on its own (local development with several services, "
        "freedom proxy)",
    )
    p.add_argument(
        "--port",
        type=int,
        metavar="PORT",
        help="listen on 127.0.0.1:PORT (default: a free port)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="holds the broker's log and its record (default: the config directory's .freedom)",
    )
    p.add_argument(
        "--config",
        "--conf",
        dest="config_dirs",
        action="append",
        metavar="DIR",
        help="a config directory whose services and operations commands use this broker "
        "(repeatable; default: $FREEDOM_PROJECT_CONFIG, ./conf or ./server/conf, if there is one)",
    )
    p.add_argument(
        "--storage-url",
        metavar="URL",
        help="where the broker keeps its data (Tansu's --storage-engine: s3://BUCKET/, or "
        "postgres://... with a Tansu built with it); default: in memory, lost when it stops",
    )


class _Stop(Exception):
    """SIGINT or SIGTERM."""


def _raise_stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def _config_dirs(given: list[str] | None) -> list[Path]:
    from freedom.cli.loader import check_config_option
    from freedom.config.loading import find_config_dir

    if given:
        for d in given:
            check_config_option(d)
        return [Path(d) for d in given]
    found = find_config_dir(None)
    return [found] if found is not None and found.is_dir() else []


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise FreedomError(f"--port {port}: must be between 1 and 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise FreedomError(
                f"--port {port}: 127.0.0.1:{port} cannot be listened on ({exc.strerror}): give "
                "another port, or leave --port out for a free one"
            ) from None


def command(args: argparse.Namespace) -> int:
    """Run `freedom broker` until SIGINT/SIGTERM; 0, or 1 when the broker process dies by itself."""
    from freedom.kafka.broker_state import (
        BROKER_COMMAND,
        STATE_DIR,
        STATE_FILE,
        probe,
        state_file,
    )
    from freedom.kafka.embedded import EmbeddedBroker, check_storage_url

    if args.storage_url:
        check_storage_url(args.storage_url)
    if args.port is not None:
        _check_port(args.port)
    config_dirs = _config_dirs(args.config_dirs)
    if args.data_dir:
        data_dir = Path(args.data_dir)
        if data_dir.exists() and not data_dir.is_dir():
            raise FreedomError(f"--data-dir {data_dir}: not a directory")
    elif config_dirs:
        data_dir = config_dirs[0] / STATE_DIR
    else:
        raise FreedomError(
            "no data directory: give --data-dir DIR (the broker's log and record), or --config "
            "DIR (a config directory: its .freedom directory), or run it where ./conf is"
        )
    # Its record in each config directory, and one in its data directory (the same file when the
    # data directory is a config directory's .freedom).
    paths = [*(state_file(d) for d in config_dirs), data_dir / STATE_FILE]
    records = list(dict.fromkeys(p.resolve() for p in paths))
    for path in records:
        found = probe(path)
        if found.record is not None:
            raise FreedomError(
                f"{path} names the embedded broker of {found.record.who} at "
                f"{found.record.bootstrap}, which is running: stop it first, or use it"
            )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FreedomError(f"--data-dir {data_dir}: cannot be made ({exc.strerror})") from None

    broker = EmbeddedBroker(
        port=args.port,
        log_path=data_dir / LOG_FILE,
        storage_url=args.storage_url,
        record_in=records,
        owner=BROKER_COMMAND,
    )
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            broker.start()
            print(f"freedom: broker listening on {broker.bootstrap}", flush=True)
            for path in broker.recorded:
                log.info("recorded in %s", path)
            for d in config_dirs:
                log.info(
                    "the services of %s without servers in kafka.toml run on it, and freedom "
                    "status, dlq, offsets and proxy reach it",
                    d,
                )
            log.info(
                "elsewhere, name it to a service with FREEDOM_EMBEDDED_BOOTSTRAP=%s, or servers = "
                '["%s"] in kafka.toml',
                broker.bootstrap,
                broker.bootstrap,
            )
            if broker.storage == "memory":
                log.warning(
                    "it keeps data in memory only: the data outlives restarts of the services, "
                    "not a restart of freedom broker (--storage-url keeps it)"
                )
            else:
                log.info("it keeps its data in %s storage", broker.storage)
            log.info("its log: %s", broker.log_path)
            rc = broker.wait()
        except _Stop:
            log.info("stopping the broker")
            return 0
        log.error("the broker process exited by itself (code %s); its log: %s", rc, broker.log_path)
        return 1
    finally:
        try:
            broker.stop()
        except _Stop:  # a second signal: the broker is being stopped anyway
            broker.stop(timeout=0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stdout.flush()
