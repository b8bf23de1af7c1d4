"""`freedom config module:app`: the effective configuration, with the source of each key.

Each key of app.toml and kafka.toml with its value and where it came from: `default`, the file's
path, or the environment variable that set it. Secrets are shown as `***`. Human-readable by
default, `--json` for tools. A config error is the same one line (and exit 2) as `freedom run`'s.
Values are the ones the service runs with: a `proxy_addr` not set follows the listen address
(`--listen` included, as for `freedom run`), and is shown so, "derived from" it.

A share group (`share_group = true`) also has configs on the broker's side, which the service sets
for the group at start-up (sources/share.py): `share.auto.offset.reset` from `initial_offset`
("earliest" when not given), and an acquisition lock `share.record.lock.duration.ms` of at least the
longest `delivery_timeout_sec` of the client's topics plus 5 s (raised when the group's is shorter).
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
        help='print JSON: {"app": {key: {value, source, env}}, "kafka": ..., "share_groups": [...]}',
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


def _share_groups(kafka: KafkaConfig, topics: list[str]) -> list[dict[str, Any]]:
    """Per share-group client: the group configs the service sets at start-up, with their sources."""
    from freedom.kafka.admin import SHARE_LOCK_MS, SHARE_RESET
    from freedom.kafka.consumer.sources import SHARE_LOCK_MARGIN_SEC

    sources = {e.key: e.source for e in kafka.entries}
    out = []
    for i, cc in enumerate(kafka.consumer_clients):
        if not cc.share_group:
            continue
        given = sources.get(f"consumer_clients[{i}].initial_offset", "default")
        reset_source = (
            "default for a share group (initial_offset not given)"
            if given == "default"
            else f"initial_offset ({given})"
        )
        configs: dict[str, dict[str, Any]] = {
            SHARE_RESET: {"value": cc.initial_offset, "source": reset_source}
        }
        timeouts = {t: cc.consume_config(t).delivery_timeout_sec for t in topics}
        if timeouts:
            longest = max(timeouts, key=lambda t: timeouts[t])
            seconds = timeouts[longest] + SHARE_LOCK_MARGIN_SEC
            configs[SHARE_LOCK_MS] = {
                "value": round(seconds * 1000),
                "source": (
                    f"at least: the longest delivery_timeout_sec ({timeouts[longest]:g} s, topic "
                    f"{longest}) + {SHARE_LOCK_MARGIN_SEC:g} s; raised at start-up when shorter"
                ),
            }
        out.append({"client": i, "group_id": cc.group_id, "configs": configs})
    return out


def _share_lines(groups: list[dict[str, Any]]) -> list[str]:
    out = []
    for g in groups:
        entries = tuple(
            ConfigEntry(key, c["value"], c["source"], "") for key, c in g["configs"].items()
        )
        title = (
            f"share group {json.dumps(g['group_id'])} (consumer_clients[{g['client']}]): "
            "group configs set at start-up"
        )
        out += _lines(title, entries)
    return out


def show(args: argparse.Namespace) -> None:
    """Load the application's configuration (as `freedom run` does) and print it."""
    from freedom.cli.loader import load_application

    app = load_application(args.app, args.config)
    if args.listen:
        app.listen_addr = args.listen  # as freedom run --listen: before setup
    app.setup()  # the same checks as freedom run, the topic tables included
    kafka = app.kafka_config
    kafka_entries = _derived(kafka, app.config.entries) if kafka else ()
    shares = _share_groups(kafka, sorted(app.event_routes)) if kafka else []
    if args.json:
        print(
            json.dumps(
                {
                    "config_dir": str(app.config_dir) if app.config_dir else None,
                    "app": _table(app.config.entries),
                    "kafka": _table(kafka_entries) if kafka else None,
                    "share_groups": shares,
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
        out += _share_lines(shares)
    print("\n".join(out))
