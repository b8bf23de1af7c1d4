"""The configuration models as the environment's naming rule, the loader and the reference walk
them: what each field holds (a value, a table, a list or a dict of tables, librdkafka
`settings`), the order keys are listed in, and the model of the table at a key's path."""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

KeyPath = tuple[str | int, ...]  # a key's place in a file: ("consumer_clients", 0, "group_id")

Kind = Literal["leaf", "model", "model_list", "model_dict", "settings"]


def field_kind(annotation: Any) -> tuple[Kind, Any]:
    """What a model field holds, for the naming rule: (kind, the leaf type or the sub-model)."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    if origin is list and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "model_list", args[0]
    if origin in (list, tuple, frozenset):  # servers, dead_letter_statuses: comma-separated
        return "leaf", list
    if origin is dict:
        if isinstance(args[1], type) and issubclass(args[1], BaseModel):
            return "model_dict", args[1]
        return "settings", dict
    return "leaf", annotation


def field_order(model: type[BaseModel]) -> list[str]:
    """The model's keys as the docs and `freedom config` list them: `servers` first, then the model's
    own keys, then those of its base (the TLS/SASL keys and `settings` every client has)."""
    own = model.__dict__.get("__annotations__", {})
    names = list(model.model_fields)
    order = [n for n in names if n in own] + [n for n in names if n not in own]
    return sorted(order, key=lambda n: n != "servers")


def model_at(model: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    """The model class of the table at `path`, or None when `path` is not a table of the schema."""
    for i, seg in enumerate(path):
        if isinstance(seg, int):
            continue
        if i and path[i - 1] == "topics":
            continue
        info = model.model_fields.get(str(seg))
        if info is None:
            return None
        kind, sub = field_kind(info.annotation)
        if kind not in ("model", "model_list", "model_dict"):
            return None
        model = sub
    return model
