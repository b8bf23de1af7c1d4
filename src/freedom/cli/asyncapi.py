"""`freedom asyncapi module:app`: write the application's AsyncAPI 3.0 document
(freedom.web.asyncapi builds it; docs/asyncapi.md)."""

from __future__ import annotations

import argparse
import json
import sys

from freedom.cli.loader import load_application
from freedom.errors import FreedomError
from freedom.web.asyncapi import document


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `asyncapi` subcommand of the `freedom` command."""
    p = sub.add_parser(
        "asyncapi",
        help="write the AsyncAPI 3.0 document of module:app (its topics, payloads, headers)",
    )
    p.add_argument("app", help="the application, as module:attribute (e.g. example:app)")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write it to FILE (default: standard output)"
    )
    p.add_argument(
        "--config",
        help="the config directory (default: $FREEDOM_PROJECT_CONFIG, ./conf, ./server/conf)",
    )


def command(args: argparse.Namespace) -> None:
    """Load the application (as `freedom run` does, starting nothing) and write its document."""
    app = load_application(args.app, args.config)
    text = json.dumps(document(app), indent=2, ensure_ascii=False) + "\n"
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            raise FreedomError(f"-o {args.output}: cannot write it: {exc.strerror}") from None
    else:
        sys.stdout.write(text)
