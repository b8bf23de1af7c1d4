"""What the console's forms and JSON bodies carry, parsed: the replay's and the purge's fields
(what `freedom dlq replay` and `freedom dlq purge` take as options), and the one-line refusal of a
request (an HTTP status and a message).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from freedom.console import pages
from freedom.ops.dlq import Filter, parse_offsets, parse_time
from freedom.ops.replay import DEFAULT_MAX_REPLAYS, parse_rate
from freedom.ops.target import OpsError

REPLAY_PARAMS = ("topic", *(name for name, _, _ in pages.REPLAY_FIELDS))
#: A purge takes the replay's filters, not its rate or limit.
PURGE_PARAMS = ("topic", *(name for name, _, _ in pages.FILTER_FIELDS))


class Refused(Exception):
    """A request the console answers with `status` and `message` (no traceback, one line)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclasses.dataclass(frozen=True)
class ReplayArgs:
    """A replay request, parsed: what `freedom dlq replay` takes as options."""

    params: dict[
        str, str
    ]  # the fields given (stripped, empty ones left out): what the preview signs
    topic: str | None
    flt: Filter
    rate: float | None
    max_replays: int


def replay_args(given: Mapping[str, str]) -> ReplayArgs:
    """The replay fields of a form or JSON body; OpsError (one line) for a value the CLI would refuse."""
    params = {k: given[k].strip() for k in REPLAY_PARAMS if given.get(k, "").strip()}
    partition = params.get("partition")
    if partition is not None and not (
        partition.isascii() and partition.isdigit() and len(partition) < 10
    ):
        raise OpsError(f"partition: expected a number, got {partition!r}")
    max_replays = params.get("max_replays", str(DEFAULT_MAX_REPLAYS))
    if (
        not (max_replays.isascii() and max_replays.isdigit() and len(max_replays) < 10)
        or int(max_replays) < 1
    ):
        raise OpsError(f"max replays: expected a number, 1 or more, got {max_replays!r}")
    flt = Filter(
        key=params.get("key"),
        since=parse_time(params["since"], "since") if "since" in params else None,
        until=parse_time(params["until"], "until") if "until" in params else None,
        grep=params.get("grep"),
        partition=int(partition) if partition is not None else None,
        offsets=parse_offsets(params["offsets"]) if "offsets" in params else None,
    )
    rate = parse_rate(params["rate"]) if "rate" in params else None
    return ReplayArgs(params, params.get("topic"), flt, rate, int(max_replays))


def purge_args(given: Mapping[str, str]) -> ReplayArgs:
    """The purge fields of a form or JSON body (the replay's filters; a rate or limit is ignored)."""
    return replay_args({k: v for k, v in given.items() if k in PURGE_PARAMS})


def json_fields(given: Any, allowed: tuple[str, ...]) -> tuple[dict[str, str], bool]:
    """The fields of a JSON request body (strings, or numbers) and its `dry_run` (true unless
    given false); Refused(400) for anything else."""
    if not isinstance(given, dict):
        raise Refused(400, "expected a JSON object")
    given = dict(given)
    dry_run = given.pop("dry_run", True)
    if not isinstance(dry_run, bool):
        raise Refused(400, '"dry_run" must be true or false')
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise Refused(400, f"unknown field {unknown[0]!r} (fields: {', '.join(allowed)}, dry_run)")
    if any(not isinstance(v, (str, int)) or isinstance(v, bool) for v in given.values()):
        raise Refused(400, "every field but dry_run is a string (or a number)")
    return {k: str(v) for k, v in given.items()}, dry_run
