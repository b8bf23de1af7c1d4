"""Environment variables that override (or replace) `app.toml` and `infra/kafka.toml`, the 12-factor way.

The naming rule: `FREEDOM_APP__` or `FREEDOM_KAFKA__`, then the key's path in the file, upper case,
one segment per table, joined with `__` (two underscores):

    FREEDOM_APP__LISTEN_ADDR=0.0.0.0:8000                      app.toml: listen_addr
    FREEDOM_KAFKA__CONSUMER__PROXY_ADDR=http://svc:8000        kafka.toml: [consumer] proxy_addr
    FREEDOM_KAFKA__CONSUMER_CLIENTS__0__GROUP_ID=orders        [[consumer_clients]] #0: group_id
    FREEDOM_KAFKA__PRODUCER_CLIENTS__NORTH__SERVERS=a:9092,b:9092   the producer client named "north"
    FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SETTINGS__LINGER_MS=5  settings "linger.ms" (`_` is `.`, `__` is `_`)
    FREEDOM_KAFKA__CONSUMER_CLIENTS__0__TOPICS__EVENT_SELL__MODE=concurrent   topics."event-sell"

A client entry is chosen by its index (0, 1, ...) or by its name (producer clients: `name`,
consumer clients: `group_id`; compared in upper case with every character other than a letter or
digit as `_`); an index one past the last entry, or a name no entry has, adds an entry. Values
are text: `true`/`false` (also 1/0, yes/no, on/off), numbers, `servers` comma-separated; a key
that holds a table or a list (`SETTINGS`, `TOPICS`, `CONSUMER_CLIENTS`, ...) may also be given
whole, as JSON. An environment variable wins over the file; for a secret it also replaces the
file's other form (`FREEDOM_KAFKA__CONSUMER__SECRET` replaces `secret_env`, and the reverse).

Why this overlay is hand-written rather than pydantic-settings (measured with pydantic-settings
2.16.3 on pydantic 2.14, a `BaseSettings` with `env_prefix="FREEDOM_KAFKA__"`,
`env_nested_delimiter="__"` and `extra="forbid"`, over models shaped like these):

- list entries cannot be addressed: `FREEDOM_KAFKA__CONSUMER_CLIENTS__0__SERVERS=a:9092` and
  `FREEDOM_KAFKA__CONSUMER_CLIENTS__ORDERS__SERVERS=a:9092` both failed validation with
  "consumer_clients: Input should be a valid list" (the input became `{"0": {...}}` and
  `{"orders": {...}}`); only the whole list as JSON (`FREEDOM_KAFKA__CONSUMER_CLIENTS=[...]`) works;
- a misspelt table, `FREEDOM_KAFKA__CONSUMR__OPEN=true`, and a misspelt prefix,
  `FREEDOM_KAFKAA__CONSUMER__OPEN=true`, were silently ignored (the defaults applied);
- a misspelt key in a known table, `FREEDOM_KAFKA__CONSUMER__OPNE=true`, failed as
  "consumer.opne: Extra inputs are not permitted": the key, not the variable, and no hint;
- its errors never name the variable, and it does not tell which source gave each key, which
  `freedom config` shows and every error message needs.

So the rule is applied here, on the file's data before validation, and the models stay the one
description of the keys (their fields are the variable names).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from freedom.config.schema import KeyPath, field_kind
from freedom.errors import ConfigError

Root = Literal["app", "kafka"]
PREFIXES: dict[Root, str] = {"app": "FREEDOM_APP__", "kafka": "FREEDOM_KAFKA__"}

#: FREEDOM_* variables freedom (or its test harness) reads that are not keys of the files.
NOT_KEYS = frozenset(
    {
        "FREEDOM_PROJECT_CONFIG",  # the config directory (find_config_dir)
        "FREEDOM_PROXY_SECRET",  # the usual `secret_env` target
        "FREEDOM_EMBEDDED_BOOTSTRAP",  # the embedded broker `freedom run --reload` keeps across restarts
        "FREEDOM_KAFKA_JARS",  # the test broker's jar directory (tests/kafka/broker.py)
    }
)

#: A secret key and the key naming its environment variable: one replaces the other.
ALTERNATES = {
    "secret": "secret_env",
    "sasl_password": "sasl_password_env",
    "ssl_key_password": "ssl_key_password_env",
}
ALTERNATES.update({v: k for k, v in list(ALTERNATES.items())})

#: The key naming a client entry, per list of clients.
IDENTITY = {"producer_clients": "name", "consumer_clients": "group_id", "subscriptions": "topic"}


@dataclass(frozen=True)
class Source:
    """Where a key's value came from: a file, an environment variable, or nowhere (the default)."""

    kind: Literal["file", "env", "default"]
    where: str = ""

    def __str__(self) -> str:
        return self.where if self.kind != "default" else "default"


def one_line(text: str) -> str:
    """`text` printable on one line whatever a value or name held (a newline, a lone surrogate)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def env_error(var: str, problem: str, key: str | None = None) -> ConfigError:
    """`environment VAR: problem` (the key, when known, stays in `.key` for callers)."""
    err = ConfigError(one_line(f"environment {var}"), None, one_line(problem))
    err.key = key
    return err


def norm(text: str) -> str:
    """How a name is compared with an environment variable's segment."""
    return re.sub(r"[^A-Z0-9]", "_", text.upper())


def env_name(root: Root, path: KeyPath) -> str:
    """The environment variable of the key at `path` (indices as numbers)."""
    parts: list[str] = []
    for i, seg in enumerate(path):
        parent = path[i - 1] if i else None
        if parent == "settings" and isinstance(seg, str):
            parts.append("__".join(p.replace(".", "_").upper() for p in seg.split("_")))
        elif parent == "topics" and isinstance(seg, str):
            parts.append(norm(seg))
        else:
            parts.append(str(seg).upper())
    return PREFIXES[root] + "__".join(parts)


# ----------------------------------------------------------------------------- the variables' names


def known_names(root: Root, model: type[BaseModel], path: KeyPath = ()) -> list[str]:
    """Every variable name of the schema, entries as index 0 (for spelling hints and the reference)."""
    out = []
    for name, info in model.model_fields.items():
        kind, sub = field_kind(info.annotation)
        p = (*path, name)
        if kind == "model":
            out += known_names(root, sub, p)
        elif kind == "model_list":
            out += known_names(root, sub, (*p, 0))
        else:
            out.append(env_name(root, p))
    return out


# ----------------------------------------------------------------------------- reading the environment


def _natural(name: str) -> list[Any]:
    """Sort key: `..__2__..` before `..__10__..`, so entries are added in order."""
    return [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in name.split("__")]


def _quote(text: str) -> str:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return (
        json.dumps(shown, ensure_ascii=False)
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _convert(var: str, text: str, kind: Any, secret: bool) -> Any:
    """An environment variable's text as the key's type."""
    shown = "***" if secret else _quote(text)
    if kind is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise env_error(var, f"must be true or false, got {shown}")
    if kind is int:
        if re.fullmatch(r"\s*[-+]?[0-9]+\s*", text):
            return int(text)
        raise env_error(var, f"must be an integer, got {shown}")
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise env_error(var, f"must be a number, got {shown}") from None
    if kind is list:  # servers: "a:9092, b:9092"
        return [s.strip() for s in text.split(",") if s.strip()]
    return text


def _json(var: str, text: str, want: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise env_error(
            var,
            f"a table or list is given as JSON: not valid JSON ({exc.msg} at column {exc.colno})",
        ) from None
    if not isinstance(value, want):
        raise env_error(var, f"must be a JSON {'object' if want is dict else 'array'}")
    return value


class Overlay:
    """Applies the `FREEDOM_<ROOT>__*` variables to a file's data, recording each key's source."""

    def __init__(
        self,
        root: Root,
        model: type[BaseModel],
        data: dict[str, Any],
        sources: dict[KeyPath, Source],
    ) -> None:
        self.root, self.model, self.data, self.sources = root, model, data, sources

    def apply(self, environ: Mapping[str, str]) -> bool:
        """Apply every variable of this root; True when there was one."""
        prefix = PREFIXES[self.root]
        names = sorted((n for n in environ if n.startswith(prefix)), key=_natural)
        for var in names:
            try:
                environ[var].encode("utf-8")
            except (
                UnicodeEncodeError
            ):  # bytes that are not UTF-8 (Python keeps them as lone surrogates)
                raise env_error(var, "is not valid UTF-8 text") from None
            segs = var[len(prefix) :].split("__")
            if not all(segs):
                raise env_error(
                    var,
                    f"unknown variable: an empty segment (the rule: {prefix}KEY__KEY..., "
                    "segments joined by two underscores)",
                )
            self._set(var, environ[var], self.model, self.data, segs, ())
        return bool(names)

    def _unknown(
        self, var: str, model: type[BaseModel], segs: list[str], path: KeyPath
    ) -> ConfigError:
        where = "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in path).lstrip(".")
        table = f"[{where}]" if where else f"the top level of {self.root}.toml"
        seg = segs[0]
        close = difflib.get_close_matches(seg.lower(), list(model.model_fields), n=1, cutoff=0.6)
        hint = ""
        if close:
            done = var[: len(var) - len("__".join(segs))]  # the segments before this one
            hint = f" (did you mean {'__'.join([done + close[0].upper(), *segs[1:]])}?)"
        return env_error(var, f'unknown variable: {table} has no key "{seg.lower()}"{hint}')

    def _set(
        self,
        var: str,
        text: str,
        model: type[BaseModel],
        node: dict[str, Any],
        segs: list[str],
        path: KeyPath,
    ) -> None:
        name, rest = segs[0].lower(), segs[1:]
        info = model.model_fields.get(name)
        if info is None:
            raise self._unknown(var, model, segs, path)
        kind, sub = field_kind(info.annotation)
        p: KeyPath = (*path, name)
        if kind == "leaf":
            if rest:
                raise env_error(
                    var, f"unknown variable: {name} is a single value, with no keys under it"
                )
            node[name] = _convert(
                var, text, sub, secret=name in ALTERNATES and not name.endswith("_env")
            )
            self._given(p, var)
            other = ALTERNATES.get(name)
            if (
                other
                and other in node
                and self.sources.get((*path, other), Source("default")).kind == "file"
            ):
                del node[other]  # the environment's secret replaces the file's other form of it
            return
        if not rest:  # the whole table or list, as JSON
            node[name] = _json(var, text, list if kind == "model_list" else dict)
            self._given(p, var)
            return
        if kind == "model_list":  # an entry by index or by name
            entries = node.setdefault(name, [])
            if not isinstance(entries, list):
                raise env_error(var, f"{name} is not a list in the file")
            index = self._entry(var, entries, rest[0], name, p)
            if not rest[1:]:
                raise env_error(
                    var, f"unknown variable: name a key of the entry, like {var}__SERVERS"
                )
            self._set(var, text, sub, entries[index], rest[1:], (*p, index))
            return
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise env_error(var, f"{name} is not a table in the file")
        if kind == "model":
            self._set(var, text, sub, child, rest, p)
        elif kind == "settings":  # LINGER_MS -> linger.ms, LOG__LEVEL -> log_level
            prop = "_".join(s.lower().replace("_", ".") for s in rest)
            child[prop] = text
            self._given((*p, prop), var)
        elif (
            kind == "model_dict"
        ):  # topics: matched by name, else a new one (matched to a topic at set-up)
            topic = next((t for t in child if norm(t) == rest[0].upper()), rest[0].lower())
            entry = child.setdefault(topic, {})
            if not isinstance(entry, dict):
                raise env_error(var, f'{name}."{topic}" is not a table in the file')
            self._given((*p, topic), var, only_new=True)
            if rest[1:]:
                self._set(var, text, sub, entry, rest[1:], (*p, topic))
            else:
                raise env_error(var, f"unknown variable: name a key of the topic, like {var}__MODE")

    def _entry(self, var: str, entries: list[Any], seg: str, name: str, path: KeyPath) -> int:
        if seg.isdigit():
            index = int(seg)
            if index > len(entries):
                raise env_error(
                    var,
                    f"there is no {name}[{index - 1}]: number new entries from "
                    f"{len(entries)} without gaps (or choose an entry by its {IDENTITY[name]})",
                )
            if index == len(entries):
                entries.append({})
        else:
            identity = IDENTITY[name]
            default = {"name": "", "group_id": "freedom"}.get(identity, "")
            found = [
                i
                for i, e in enumerate(entries)
                if isinstance(e, dict) and norm(str(e.get(identity, default))) == seg
            ]
            if found:
                index = found[0]
            else:
                entries.append({identity: seg.lower()})
                index = len(entries) - 1
                self._given((*path, index, identity), var)
        if not isinstance(entries[index], dict):
            raise env_error(var, f"{name}[{index}] is not a table in the file")
        return index

    def _given(self, path: KeyPath, var: str, *, only_new: bool = False) -> None:
        if only_new and path in self.sources:
            return
        self.sources[path] = Source("env", var)


def file_sources(
    data: Any, file: str, path: KeyPath = (), out: dict[KeyPath, Source] | None = None
) -> dict[KeyPath, Source]:
    """Every key the file gives, with the file as its source."""
    out = {} if out is None else out
    if path:
        out[path] = Source("file", file)
    if isinstance(data, dict):
        for k, v in data.items():
            file_sources(v, file, (*path, k), out)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            if isinstance(v, dict):
                file_sources(v, file, (*path, i), out)
    return out


def check_stray(environ: Mapping[str, str], known: set[str], names: list[str]) -> None:
    """Refuse a FREEDOM_* variable that looks meant for freedom but is none of its names.

    Flagged: a name that starts with FREEDOM_APP or FREEDOM_KAFKA (without the `__`), or has a
    `__`, or is a typo away from one of freedom's names. Left alone: the names freedom reads
    (:data:`NOT_KEYS`), those named by a `*_env` key (`known`), and other FREEDOM_* names (yours).
    """
    for var in sorted(environ):
        if not var.startswith("FREEDOM_") or var in NOT_KEYS or var in known:
            continue
        if any(var.startswith(p) for p in PREFIXES.values()):
            continue  # applied by the overlay (which refuses an unknown one)
        close = difflib.get_close_matches(var, [*names, *NOT_KEYS], n=1, cutoff=0.85)
        if close or "__" in var or var.startswith(("FREEDOM_APP", "FREEDOM_KAFKA")):
            hint = (
                f"did you mean {close[0]}?"
                if close
                else "the rule: FREEDOM_APP__<KEY> or FREEDOM_KAFKA__<TABLE>__<KEY>, see docs/configuration.md"
            )
            raise env_error(var, f"unknown variable ({hint})")
