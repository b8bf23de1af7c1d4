"""Loading and validating `conf/app.toml` and `conf/infra/kafka.toml`, with the environment's overrides.

The keys, their types, defaults and checks are Pydantic models (:mod:`freedom.config.models`);
every key can also come from an environment variable (:mod:`freedom.config.env`, one naming
rule: `FREEDOM_APP__LISTEN_ADDR`, `FREEDOM_KAFKA__CONSUMER_CLIENTS__0__GROUP_ID`, ...). Every
problem is reported as one :class:`ConfigError` naming the file and the key, or the environment
variable, and what is wrong, so that start-up stops with one clear line instead of a traceback.
The result is the validated models themselves (:mod:`freedom.config.models`), which the rest of
freedom reads, with where each key came from (`entries`, `sources`, `listen_from`).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from freedom.config.app import LOG_LEVELS, AppConfig, ConfigEntry
from freedom.config.clients import TopicConsumeConfig
from freedom.config.env import (
    PREFIXES,
    Overlay,
    Root,
    Source,
    check_stray,
    env_error,
    env_name,
    file_sources,
    known_names,
    norm,
    one_line,
)
from freedom.config.librdkafka import is_secret
from freedom.config.models import KafkaConfig
from freedom.config.rules import (
    CONSUME_MODES,
    MAX_SECONDS,
    SECRET_FIELDS,
    Problem,
    check_listen_addr,
    check_seconds,
    type_name,
)
from freedom.config.schema import KeyPath, field_kind, field_order, model_at
from freedom.errors import ConfigError

__all__ = [
    "CONSUME_MODES",
    "LOG_LEVELS",
    "MAX_SECONDS",
    "ConfigError",
    "check_seconds",
    "find_config_dir",
    "load_app_config",
    "load_kafka_config",
    "check_topic_overrides",
]

CONFIG_ENV = "FREEDOM_PROJECT_CONFIG"


def find_config_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config directory: explicit, else `$FREEDOM_PROJECT_CONFIG`, else `./conf`, else `./server/conf`."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise ConfigError(env, None, f"${CONFIG_ENV} points to a directory that does not exist")
        return path
    for candidate in (Path("conf"), Path("server/conf")):
        if candidate.is_dir():
            return candidate
    return None


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), None, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the whole file as UTF-8 first
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            str(path),
            None,
            f"not valid TOML: not UTF-8 (byte 0x{exc.object[exc.start]:02x} "
            f"on line {line}); save the file as UTF-8",
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot be read: {exc.strerror}") from None


#: KafkaConfig.file when no kafka.toml exists: every key came from variables.
ENVIRONMENT = "the environment"


def dotted(path: KeyPath) -> str:
    """A key's path as error messages write it: `consumer_clients[0].topics."event-sell".mode`."""
    out = ""
    for i, seg in enumerate(path):
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif i and path[i - 1] == "topics":
            out += f'."{seg}"'
        else:
            out += f".{seg}" if out else seg
    return out


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "an array",
    "tuple_type": "an array",  # servers
    "frozen_set_type": "an array",  # dead_letter_statuses
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


class _Loaded:
    """One file's data with the environment applied, and where each key came from."""

    def __init__(
        self, root: Root, model: type[BaseModel], path: Path | None, environ: Mapping[str, str]
    ) -> None:
        self.root, self.model = root, model
        self.exists = path is not None and path.exists()
        self.file = str(path) if path is not None else f"{root}.toml"
        self.data: dict[str, Any] = _load(path) if path is not None and self.exists else {}
        self.sources: dict[KeyPath, Source] = file_sources(self.data, self.file)
        self.from_env = Overlay(root, model, self.data, self.sources).apply(environ)
        if not self.exists and self.from_env:
            self.file = ENVIRONMENT

    def source(self, path: KeyPath) -> Source:
        """The source of the key at `path`, or of the nearest table above it that was given whole."""
        for n in range(len(path), 0, -1):
            found = self.sources.get(path[:n])
            if found is not None and (n == len(path) or found.kind == "env"):
                return found
        return Source("default")

    def error(self, path: KeyPath, problem: str) -> ConfigError:
        """The one-line error about the key at `path`: naming the variable that gave it, else the file."""
        src = self.source(path)
        if src.kind == "env" or (src.kind == "default" and not self.exists):
            var = src.where if src.kind == "env" else env_name(self.root, path)
            if (
                src.kind == "env" and self.sources.get(path) != src
            ):  # a table given whole (JSON): which key in it
                problem = f"{dotted(path)}: {problem}"
            return env_error(var, problem, dotted(path))
        return ConfigError(self.file, one_line(dotted(path)) or None, one_line(problem))

    def validate(self) -> Any:
        try:
            return self.model.model_validate(self.data)
        except ValidationError as exc:
            raise self._translate(exc.errors()[0]) from None

    def _translate(self, err: Any) -> ConfigError:
        """Pydantic's error (several lines, with the input) as freedom's one line (never the input)."""
        loc: KeyPath = tuple(err["loc"])
        kind = err["type"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Problem):
            return self.error((*loc, *cause.key), cause.problem)
        if kind == "extra_forbidden":
            model = model_at(self.model, loc[:-1])
            names = list(model.model_fields) if model is not None else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
            hint = f'did you mean "{close[0]}"?' if close else "the keys here: " + ", ".join(names)
            return self.error(loc, f"unknown key ({hint}; see docs/configuration.md)")
        if kind in _EXPECTED:
            return self.error(loc, f"must be {_EXPECTED[kind]}, got {type_name(err['input'])}")
        return self.error(loc, str(err["msg"]))


def _entries(loaded: _Loaded, model: BaseModel, path: KeyPath = ()) -> list[ConfigEntry]:
    """The keys of a validated model with their values and sources, secrets as `***` (a topic
    table: the keys it gives, not those it takes from its client)."""
    out: list[ConfigEntry] = []
    for name in field_order(type(model)):
        if isinstance(model, TopicConsumeConfig) and name not in model.given:
            continue
        info = type(model).model_fields[name]
        value, p = getattr(model, name), (*path, name)
        if isinstance(value, frozenset):  # dead_letter_statuses
            value = sorted(value)
        kind, _ = field_kind(info.annotation)
        if kind == "model":
            out += _entries(loaded, value, p)
        elif kind == "model_list":
            for i, item in enumerate(value):
                out += _entries(loaded, item, (*p, i))
        elif kind == "model_dict":
            for key, item in value.items():
                out += _entries(loaded, item, (*p, key))
        elif kind == "settings" and value:
            for key, v in value.items():
                shown = "***" if is_secret(key) else v
                out.append(
                    ConfigEntry(
                        dotted((*p, key)),
                        shown,
                        str(loaded.source((*p, key))),
                        env_name(loaded.root, (*p, key)),
                    )
                )
        elif value is not None:
            shown = "***" if name in SECRET_FIELDS else value
            out.append(
                ConfigEntry(dotted(p), shown, str(loaded.source(p)), env_name(loaded.root, p))
            )
    return out


# ----------------------------------------------------------------------------- app.toml


def load_app_config(config_dir: Path | None, *, listen_addr: str | None = None) -> AppConfig:
    """Read `app.toml` and the `FREEDOM_APP__*` variables; `listen_addr` (from `freedom run --listen`)
    overrides both."""
    environ = os.environ
    loaded = _Loaded("app", AppConfig, config_dir / "app.toml" if config_dir else None, environ)
    config: AppConfig = loaded.validate()
    src = loaded.source(("listen_addr",))
    listen_from: tuple[str, str | None] = {
        "env": (f"environment {src.where}", None),
        "file": (loaded.file, "listen_addr"),
    }.get(src.kind, (loaded.file, "listen_addr (not set: the default)"))
    entries = _entries(loaded, config)
    if listen_addr is not None:

        def error(p: str) -> ConfigError:
            return ConfigError("freedom run", "--listen", p)

        config.listen_addr = check_listen_addr(listen_addr, error)
        listen_from = ("freedom run", "--listen")
        entries = [
            replace(e, value=config.listen_addr, source="freedom run --listen")
            if e.key == "listen_addr"
            else e
            for e in entries
        ]
    config._listen_from = listen_from
    config._entries = tuple(entries)
    return config


# ----------------------------------------------------------------------------- kafka.toml


def load_kafka_config(config_dir: Path | None) -> KafkaConfig | None:
    """Read `infra/kafka.toml` and the `FREEDOM_KAFKA__*` variables; None when neither exists (Kafka is off).

    Also refuses a FREEDOM_* variable that looks meant for freedom but is none of its names. The
    variables a `*_env` key names are read when the file is loaded too.
    """
    environ = os.environ
    loaded = _Loaded(
        "kafka", KafkaConfig, config_dir / "infra" / "kafka.toml" if config_dir else None, environ
    )
    config: KafkaConfig | None = loaded.validate() if loaded.exists or loaded.from_env else None
    targets = set()
    if config is not None:  # variables named by a *_env key are the user's secrets, not typos
        clients: list[Any] = [
            config.consumer,
            *config.producer_clients,
            *config.consumer_clients,
            *config.subscriptions,
        ]
        targets = {
            v
            for c in clients
            for k in ("secret_env", "sasl_password_env", "ssl_key_password_env")
            if isinstance(v := getattr(c, k, None), str)
        }
    check_stray(
        environ, targets, [*known_names("app", AppConfig), *known_names("kafka", KafkaConfig)]
    )
    if config is None:
        return None
    config._file = loaded.file
    config._entries = tuple(_entries(loaded, config))
    config._sources = {dotted(k): v.where for k, v in loaded.sources.items()}
    return config


def check_topic_overrides(config: KafkaConfig, listened: Iterable[str]) -> None:
    """Refuse a `[consumer_clients.topics."T"]` table for a topic no event listens to (a typo, or a
    listener that moved): its settings would silently apply to nothing. Called once the event routes
    are known (Application.setup).

    A topic an environment variable names (`..._TOPICS__EVENT_SELL__MODE`) is matched to the listened
    topic it spells (`event-sell`): environment variable names cannot hold `-` or `.`.
    """
    topics = sorted(set(listened))
    for i, client in enumerate(config.consumer_clients):
        for topic in list(client.topics):
            if topic in topics:
                continue
            key = f'consumer_clients[{i}].topics."{topic}"'
            var = config.sources.get(key, "")
            if var.startswith(PREFIXES["kafka"]):
                spelled = [t for t in topics if norm(t) == norm(topic) and t not in client.topics]
                if (
                    len(spelled) == 1
                ):  # the dict is the config's own; it is re-keyed once, at set-up
                    client.topics[spelled[0]] = client.topics.pop(topic)
                    new = f'consumer_clients[{i}].topics."{spelled[0]}"'
                    config._entries = tuple(  # what `freedom config` shows follows
                        replace(e, key=new + e.key[len(key) :])
                        if e.key.startswith(key + ".")
                        else e
                        for e in config.entries
                    )
                    continue
            known = ", ".join(f'"{t}"' for t in topics) if topics else "none"
            problem = f"no event listens to this topic (the listened topics: {known})"
            if var.startswith(PREFIXES["kafka"]):
                raise env_error(var, problem, key)
            raise ConfigError(config.file, key, problem)
