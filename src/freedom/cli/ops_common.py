"""What the operations subcommands share (freedom/cli/ops.py, freedom/cli/purge.py): the options
every one takes, the dead-letter filters, loading the target, and printing by the rule of
:func:`freedom.wire.encoding.printable` (every line through `escape_controls`, `--json` through
`printable_json`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from freedom.cli.loader import load_application
from freedom.ops.target import Target, application_target, config_target
from freedom.wire.encoding import escape_controls, printable_json

_CONFIG_HELP = "the config directory (default: $FREEDOM_PROJECT_CONFIG, ./conf, ./server/conf)"


def common(p: argparse.ArgumentParser, *, positional_app: bool = False) -> None:
    if positional_app:
        p.add_argument(
            "app",
            nargs="?",
            help="the application, as module:attribute (optional: its listened topics)",
        )
    p.add_argument(
        "--app",
        dest="app_option",
        metavar="MODULE:APP",
        help="load the application (its topics, its setting_config hooks) instead of only its config",
    )
    p.add_argument("--config", "--conf", dest="config", metavar="DIR", help=_CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def filters(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "topic",
        nargs="?",
        help="a dead-letter topic (or the main topic whose dead letters); default: all",
    )
    p.add_argument("--key", help="only the record with this key")
    p.add_argument(
        "--since",
        metavar="TIME",
        help="only those dead-lettered at or after TIME (ISO 8601, UTC by default)",
    )
    p.add_argument("--until", metavar="TIME", help="only those dead-lettered before TIME")
    p.add_argument(
        "--grep",
        metavar="TEXT",
        help="only those whose error contains TEXT (any case), or whose status is TEXT",
    )
    p.add_argument(
        "--partition", type=int, metavar="N", help="only partition N of the dead-letter topic"
    )
    p.add_argument(
        "--offsets",
        metavar="A-B",
        help="only offsets A to B (both included; A-, -B, N) of the dead-letter topic",
    )


def target(args: argparse.Namespace) -> Target:
    app = getattr(args, "app", None) or args.app_option
    return load_target(app, args.config)


def load_target(app: str | None, config: str | None) -> Target:
    """The consumer clients of `app` (module:attribute, loaded as `freedom run` does) or of the
    config directory `config`."""
    if not app:
        return config_target(config)
    loaded = load_application(app, config)
    loaded.setup()
    return application_target(loaded)


def filter_of(args: argparse.Namespace) -> Any:
    from freedom.ops.dlq import Filter, parse_offsets, parse_time

    return Filter(
        key=args.key,
        since=parse_time(args.since, "--since") if args.since else None,
        until=parse_time(args.until, "--until") if args.until else None,
        grep=args.grep or None,
        partition=args.partition,
        offsets=parse_offsets(args.offsets) if args.offsets else None,
    )


def print_json(value: Any) -> None:
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        return str(v)

    print(
        printable_json(
            dataclasses.asdict(value)
            if dataclasses.is_dataclass(value) and not isinstance(value, type)
            else value,
            default=plain,
            indent=2,
        )
    )


def print_lines(lines: list[str]) -> None:
    """Print the lines, each with the rule applied (what `printable` has not escaped already)."""
    print("\n".join(escape_controls(line) for line in lines))


def table(rows: list[list[str]], indent: str = "    ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent
        + "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) if i < 5 else c
            for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
