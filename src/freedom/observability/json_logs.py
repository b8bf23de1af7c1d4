"""JSON logs (`log_format = "json"` in app.toml): one JSON object per line, for log collectors.

Every line has `time` (UTC, ISO 8601), `level`, `logger` and `message`; `trace_id` when the line
is about a request or a record (a handler's `runtime.logger`, the consumer proxy's lines; a
record's is tracing.record_trace_id's: its `traceparent`, else a Go service's TRACE-ID); the
consumer proxy's lines about a record add `topic`, `partition`, `offset` and `outcome`; any other
`extra=` field of the call is kept; an exception is in `exception` (its traceback as text).
Control and bidirectional characters are written as JSON escapes (`\\u001b`, `\\u202e`: the rule of
docs/operations.md, "Control and bidirectional characters").
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from freedom.wire.encoding import printable_json

__all__ = ["JsonFormatter", "use_log_format"]

#: The attributes every LogRecord has: not copied as fields (the useful ones are, under their own names).
#: (uvicorn's `color_message` is its message again with terminal colour codes.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and value is not None:
                out[name] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return printable_json(out)


#: Handlers whose formatter freedom sets: the standard library's own (a test framework's capture
#: handlers, which subclass them, keep theirs).
_PLAIN_HANDLERS = (logging.StreamHandler, logging.FileHandler)


def use_log_format(log_format: str) -> None:
    """Apply app.toml's `log_format`: for "json", every plain handler of the root logger formats
    JSON (a stderr handler is added when there is none); "text" leaves the logging setup alone."""
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if type(handler) in _PLAIN_HANDLERS and not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(JsonFormatter())
