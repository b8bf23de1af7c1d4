"""The `freedom` command: `freedom run module:app` serves an application.

It runs the HTTP server and the consumer proxy in one process and stops cleanly on
SIGINT/SIGTERM. A user mistake (bad config, unknown module) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from freedom.errors import FreedomError

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _log_level(value: str | None) -> str | None:
    """`--log-level`, upper-cased; a FreedomError (one line, exit 2) for a level logging has not."""
    from freedom.config.loading import LOG_LEVELS

    if value is None:
        return None
    if value.upper() not in LOG_LEVELS:
        raise FreedomError(f'--log-level: must be one of {", ".join(LOG_LEVELS)}, got "{value}"')
    return value.upper()


def _run(args: argparse.Namespace, run_parser: argparse.ArgumentParser) -> int:
    from freedom.cli.loader import load_application

    log_level = _log_level(args.log_level)
    if log_level:
        logging.getLogger().setLevel(log_level)  # before the import: its own lines follow it too
    from freedom.runner.workers import check_workers

    check_workers(args.workers, reload=args.reload)
    if args.workers > 1:  # N service processes on one listening socket (workers.py)
        from freedom.runner.reload import child_arguments
        from freedom.runner.workers import supervise as run_workers

        return run_workers(
            args.workers,
            child_arguments(run_parser, args),
            config=args.config,
            listen=args.listen,
            embedded_broker=args.embedded_broker,
        )
    if args.reload:
        from freedom.runner.reload import child_arguments, supervise

        return supervise(
            args.app,
            child_arguments(run_parser, args),
            config=args.config,
            embedded_broker=args.embedded_broker,
            reload_dirs=args.reload_dirs or (),
        )
    app = load_application(args.app, args.config)
    if args.embedded_broker:
        app.embedded_broker = True
    if args.listen:
        app.listen_addr = args.listen  # before setup, so every use of listen_addr sees it
    app.setup()
    logging.getLogger().setLevel(
        log_level or app.config.log_level
    )  # --log-level overrides app.toml
    app.run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="freedom", description="Run a freedom service.")
    from freedom._version import DISTRIBUTION, __version__

    parser.add_argument("--version", action="version", version=f"{DISTRIBUTION} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve module:app (HTTP server and consumer proxy)")
    run.add_argument("app", help="the application, as module:attribute (e.g. example:app)")
    run.add_argument(
        "--embedded-broker",
        action="store_true",
        help="run every Kafka client on an embedded broker (in memory) instead of kafka.toml's servers",
    )
    run.add_argument(
        "--config",
        help="the config directory (default: $FREEDOM_PROJECT_CONFIG, ./conf, ./server/conf)",
    )
    run.add_argument("--listen", help="host:port to serve on (default: listen_addr of app.toml)")
    run.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case; overrides log_level of app.toml)",
    )
    run.add_argument(
        "--reload",
        action="store_true",
        help="development: restart the service when its source or config changes (the embedded broker keeps running)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N service processes sharing the listen address, each a member of the consumer "
        "groups (default 1; docs/scaling.md)",
    )
    run.add_argument(
        "--reload-dir",
        dest="reload_dirs",
        action="append",
        metavar="DIR",
        help="with --reload: a directory to watch instead of the module's and the config's (repeatable)",
    )
    from freedom.cli.show_config import add_parser as add_config_parser
    from freedom.cli.show_config import show as show_config

    add_config_parser(sub)
    from freedom.cli.asyncapi import add_parser as add_asyncapi_parser
    from freedom.cli.asyncapi import command as asyncapi_command

    add_asyncapi_parser(sub)
    from freedom.cli.ops import COMMANDS as OPS_COMMANDS
    from freedom.cli.ops import add_parsers as add_ops_parsers
    from freedom.cli.ops import run as run_ops

    add_ops_parsers(sub)  # status, dlq list|show|replay, offsets reset (docs/operations.md)
    from freedom.standalone.proxy import add_parser as add_proxy_parser
    from freedom.standalone.proxy import command as proxy_command

    add_proxy_parser(sub)  # freedom proxy: the consumer proxy alone (docs/standalone-proxy.md)
    from freedom.cli.broker import add_parser as add_broker_parser
    from freedom.cli.broker import command as broker_command

    add_broker_parser(sub)  # freedom broker: the embedded broker alone (README.md)
    args = parser.parse_args(argv)
    from freedom.observability.log_text import TextFormatter, escape_lines

    handler = logging.StreamHandler()
    handler.setFormatter(TextFormatter(LOG_FORMAT))  # control characters escaped
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per delivery is noise
    try:
        from freedom.cli.loader import check_config_option

        check_config_option(getattr(args, "config", None))  # every command's --config
        if args.command == "run":
            return _run(args, run)
        if args.command == "config":
            show_config(args)
        if args.command == "asyncapi":
            asyncapi_command(args)
        if args.command in OPS_COMMANDS:
            return run_ops(args)
        if args.command == "proxy":
            return proxy_command(args)
        if args.command == "broker":
            return broker_command(args)
    except FreedomError as exc:
        print(escape_lines(f"freedom: error: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
