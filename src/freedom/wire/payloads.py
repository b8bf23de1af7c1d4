"""Message payloads: how an object becomes a record value (and back), and which `content-type` it carries.

The one rule, used by `Producer.new_msg`, `Entity.domain_event` and the consumer proxy alike
(docs/typed-events.md):

* **bytes** (`bytes`, `bytearray`, `memoryview`) and **str** are the content itself: the value is
  those bytes (a str as UTF-8), and freedom adds no `content-type` (as the seed and Go freedom
  services publish). Set one with `msg.set_headers({"content-type": ...})` when it matters.
* **Everything else** is serialised as JSON with Pydantic and labelled `application/json`: a
  Pydantic model (its own serializer, the fast path), a dataclass, a dict or list, and whatever
  else Pydantic serialises (numbers, dates, UUIDs, enums, nested models ...). `None`, and objects
  Pydantic cannot serialise, are a :class:`TypeError` naming the type.
* A `content-type` the user set on the message wins over the one freedom chose.
* On a delivery, the record's own `content-type` is passed on; a record without one (or with an
  empty one) is delivered as :data:`DEFAULT_CONTENT_TYPE`, `application/json`, so that records
  of Go freedom services (JSON bodies, no content-type) reach typed handlers parsed. A body that
  is not JSON still reaches a handler that reads the raw bytes (`await request.body()`).

This module is a leaf (Pydantic only), so that every layer can use it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

T = TypeVar("T")

#: The header name (records and requests alike, lower case as freedom writes every header name).
CONTENT_TYPE = "content-type"
JSON = "application/json"
#: What a delivery of a record without a content-type (or with an empty one) says its body is.
DEFAULT_CONTENT_TYPE = JSON

_ANY: TypeAdapter[Any] = TypeAdapter(Any)
_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}  # one per dataclass (or type asked for by decode)
_ADAPTERS_MAX = 1024  # bounded: types may be made at run time
_ADAPTERS_LOCK = threading.Lock()


class PayloadError(ValueError):
    """A body that does not parse as the type asked for (decode)."""


def adapter(tp: Any) -> TypeAdapter[Any]:
    """The Pydantic TypeAdapter of `tp`, made once per type (building one costs milliseconds)."""
    found = _ADAPTERS.get(tp)
    if found is None:
        found = TypeAdapter(tp)
        with _ADAPTERS_LOCK:
            if len(_ADAPTERS) >= _ADAPTERS_MAX:
                _ADAPTERS.clear()
            _ADAPTERS[tp] = found
    return found


def _dataclass_adapter(cls: type) -> TypeAdapter[Any]:
    """The adapter serialising dataclass `cls` by its field types; by value (as `Any`) when a field
    type has no Pydantic schema (an arbitrary class)."""
    found = _ADAPTERS.get(cls)
    if found is not None:
        return found
    try:
        return adapter(cls)
    except Exception:  # noqa: BLE001 - PydanticSchemaGenerationError and the like: remembered, not retried
        with _ADAPTERS_LOCK:
            _ADAPTERS[cls] = _ANY
        return _ANY


def type_name(obj: object) -> str:
    """`obj`'s type as error messages name it: `int`, `myapp.orders.Order`."""
    cls = type(obj)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


class Unserialisable(TypeError):
    """An object Pydantic cannot serialise as JSON (or None); `why` says what is wrong."""

    def __init__(self, obj: object, why: str) -> None:
        super().__init__(f"cannot serialise a value of type {type_name(obj)} as JSON: {why}")
        self.type_name = type_name(obj)
        self.why = why


def to_json(obj: object) -> bytes:
    """`obj` as compact UTF-8 JSON, serialised by Pydantic (a str becomes a JSON string).

    Raises :class:`Unserialisable` (a TypeError naming the type) for None and what Pydantic
    cannot serialise.
    """
    if obj is None:
        raise Unserialisable(
            obj, 'None is no content (publish b"" for an empty value, or b"null" for JSON null)'
        )
    try:
        if isinstance(obj, BaseModel):
            return obj.__pydantic_serializer__.to_json(
                obj
            )  # what model_dump_json does, without the str round trip
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return _dataclass_adapter(type(obj)).dump_json(obj)
        return _ANY.dump_json(obj)
    except PydanticSerializationError as exc:
        raise Unserialisable(obj, str(exc)) from None


def encode(payload: object) -> tuple[bytes, str | None]:
    """A message's value and the content-type freedom labels it with (None: none added).

    bytes-like and str are the content itself (no content-type); every other object is JSON
    (`application/json`). Raises a TypeError naming the type when it cannot be serialised.
    """
    cls = payload.__class__
    if cls is bytes:
        return payload, None  # type: ignore[return-value] # the hot path: checked by class
    if cls is str:
        return payload.encode(), None  # type: ignore[attr-defined]
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), None
    if isinstance(payload, str):
        return str(payload).encode(), None
    try:
        return to_json(payload), JSON
    except Unserialisable as exc:
        raise TypeError(
            f"cannot serialise a value of type {exc.type_name} as a message: {exc.why} (a message "
            "takes a Pydantic model, a dataclass, a dict or list (sent as JSON), str or bytes)"
        ) from None


def is_json(content_type: str | None) -> bool:
    """True for `application/json` and `application/*+json` (parameters and case ignored); None
    is read as :data:`DEFAULT_CONTENT_TYPE`."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def decode(body: bytes, content_type: str | None = None, tp: Any = Any) -> Any:
    """A record value as the type `tp`, by its content-type (None: :data:`DEFAULT_CONTENT_TYPE`).

    JSON content is parsed and validated as `tp` (`Any`: plain JSON data); with `tp` `bytes` the
    body is returned as it is, with `str` as UTF-8 text (when the content is not JSON). Other
    content types give the bytes (or text for `text/*`) when `tp` is `Any`. Raises
    :class:`PayloadError` when the body does not parse or validate.
    """
    if tp is bytes:
        return bytes(body)
    json_body = is_json(content_type)
    if tp is str and not json_body:
        return _text(body)
    if not json_body:
        if tp is Any:
            media = (content_type or "").split(";", 1)[0].strip().lower()
            return _text(body) if media.startswith("text/") else bytes(body)
        raise PayloadError(
            f"the body is {content_type!r}, not JSON, so it cannot be read as {_name(tp)}"
        )
    try:
        if tp is Any:
            return json.loads(body)
        return adapter(tp).validate_json(body)
    except ValidationError as exc:
        raise PayloadError(
            f"the body is not a valid {_name(tp)}: {exc.errors()[0].get('msg', exc)}"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"the body is not valid JSON: {exc}") from None


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"the body is not UTF-8 text: {exc}") from None


def _name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)
