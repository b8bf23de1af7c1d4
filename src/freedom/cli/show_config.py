"""`freedom config module:app`: the effective configuration, with the source of each key.

Each key of app.toml and kafka.toml with its value and where it came from: `default`, the file's
path, or the environment variable that set it. Secrets are shown as `***`. Human-readable by
default, `--json` for tools. A config error is the same one line (and exit 2) as `freedom run`'s.
Values are the ones the service runs with: a `proxy_addr` not set follows the listen address
(`--listen` included, as for `freedom run`), and is shown so, "derived from" it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from freedom.config.models import ConfigEntry, KafkaConfig


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `config` subcommand of the `freedom` command."""
    p = sub.add_parser(
        "config", help="print the effective configuration of module:app, with each key's source"
    )
    p.add_argument("app", help="the application, as module:attribute (e.g. example:app)")
    p.add_argument(
        "--config",
        help="the config directory (default: $FREEDOM_PROJECT_CONFIG, ./conf, ./server/conf)",
    )
    p.add_argument(
        "--listen", help="host:port, as `freedom run --listen` (shows what that run would use)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"app": {key: {value, source, env}}, "kafka": ...}',
    )


def _table(entries: tuple[ConfigEntry, ...]) -> dict[str, dict[str, Any]]:
    return {e.key: {"value": e.value, "source": e.source, "env": e.env} for e in entries}


def _lines(title: str, entries: tuple[ConfigEntry, ...]) -> list[str]:
    rows = [(f"{e.key} = {json.dumps(e.value, ensure_ascii=False)}", e.source) for e in entries]
    width = max((len(r[0]) for r in rows), default=0)
    return [title, *(f"  {k.ljust(width)}  # {src}" for k, src in rows)]


def _derived(kafka: KafkaConfig, app_entries: tuple[ConfigEntry, ...]) -> tuple[ConfigEntry, ...]:
    """kafka.toml's entries with a `consumer.proxy_addr` not set explicitly shown as the value the
    service uses (it follows the listen address), its source naming where that address came from."""
    if kafka.consumer.proxy_addr_explicit:
        return kafka.entries
    listen = next((e for e in app_entries if e.key == "listen_addr"), None)
    origin = "app.listen_addr" + (f" ({listen.source})" if listen is not None else "")
    if listen is not None and listen.source == "freedom run --listen":
        origin = "--listen"
    return tuple(
        replace(e, value=kafka.consumer.proxy_addr, source=f"derived from {origin}")
        if e.key == "consumer.proxy_addr"
        else e
        for e in kafka.entries
    )


def show(args: argparse.Namespace) -> None:
    """Load the application's configuration (as `freedom run` does) and print it."""
    from freedom.cli.loader import load_application

    app = load_application(args.app, args.config)
    if args.listen:
        app.listen_addr = args.listen  # as freedom run --listen: before setup
    app.setup()  # the same checks as freedom run, the topic tables included
    kafka = app.kafka_config
    kafka_entries = _derived(kafka, app.config.entries) if kafka else ()
    if args.json:
        print(
            json.dumps(
                {
                    "config_dir": str(app.config_dir) if app.config_dir else None,
                    "app": _table(app.config.entries),
                    "kafka": _table(kafka_entries) if kafka else None,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    out = [
        f"config directory: {app.config_dir or '(none)'}",
        *_lines("app.toml", app.config.entries),
    ]
    if kafka is None:
        out.append(
            "kafka.toml: not configured (no infra/kafka.toml and no FREEDOM_KAFKA__* variable): Kafka is off"
        )
    else:
        out += _lines(f"kafka.toml ({kafka.file})", kafka_entries)
    print("\n".join(out))
