"""Log lines a person reads: no control or bidirectional character of a record reaches them raw.

The rule is :mod:`freedom.wire.encoding`'s (:func:`~freedom.wire.encoding.printable`, docs/operations.md,
"Control and bidirectional characters"). Lines about a record describe it with that rule already
(`where`, `DeliveryResult.describe`); this module is the net under every line of freedom's loggers:

- :func:`escape_log_arguments` (installed when `freedom` is imported) escapes the arguments of every
  log record of the `freedom` loggers (`freedom`, `freedom.*`; a handler's `runtime.logger` is one)
  when the record is made, whatever handler formats it: text arguments, and the text of exception
  arguments. The format string (the code's own text) is kept.
- :class:`TextFormatter` (`freedom run`'s text log lines) escapes each line it writes, every
  logger's, the traceback of a logged exception included (its line breaks kept);
  :class:`~freedom.observability.json_logs.JsonFormatter` writes those characters as JSON escapes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from freedom.wire.encoding import escape_controls

__all__ = ["TextFormatter", "escape_log_arguments", "escape_lines"]

_PREFIX = "freedom."


def escape_lines(text: str) -> str:
    """`text` with the rule applied to each of its lines (the line breaks kept)."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


class _Shown:
    """An exception given as a log argument: shown (`%s`, `%r`) with the rule applied."""

    __slots__ = ("value",)

    def __init__(self, value: BaseException) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape_controls(str(self.value))

    def __repr__(self) -> str:
        return escape_controls(repr(self.value))


def _shown(value: Any) -> Any:
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, BaseException):
        return _Shown(value)
    return value


def _escape(record: logging.LogRecord) -> None:
    args = record.args
    if isinstance(args, tuple):
        record.args = tuple(_shown(a) for a in args)
    elif isinstance(args, Mapping):
        record.args = {k: _shown(v) for k, v in args.items()}
    if isinstance(record.msg, BaseException):
        record.msg = _Shown(record.msg)


class _Factory:
    """The log record factory: the one it wraps, then the rule on the arguments of `freedom`'s."""

    def __init__(self, wrapped: Callable[..., logging.LogRecord]) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.wrapped(*args, **kwargs)
        name = record.name
        if name == "freedom" or name.startswith(_PREFIX):
            _escape(record)
        return record


def escape_log_arguments() -> None:
    """Escape the arguments of the `freedom` loggers' records, by wrapping the log record factory
    (once; a factory set later that calls the one before it keeps this)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _Factory):
        logging.setLogRecordFactory(_Factory(current))


class TextFormatter(logging.Formatter):
    """A `logging.Formatter` whose lines have the rule applied (line breaks kept, so a traceback
    stays readable): what `freedom run` writes in text format."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_lines(super().format(record))
