"""`freedom dlq replay`: redrive dead letters back to each record's original topic, exactly once.

- **Where to**: the `x-freedom-original-topic` header the proxy wrote (trusted: the proxy drops
  outside copies of it on main topics). The record keeps its key, value and own headers (the
  trace context too, so the replay joins the first attempt's trace); the reason headers and
  `x-retry-count` are left out (the proxy writes them anew if it fails again), and it gains
  `x-freedom-replay-count` (n + 1) and `x-freedom-replay-of: <fail-topic>/<partition>/<offset>`.
- **Bounded**: the end offsets of the dead-letter topic are taken at the start; what fails again
  during the run lands after them and waits for the next run.
- **Exactly once** (resumable, also after SIGKILL): progress is the committed offset of the job's
  consumer group (`freedom-replay.<fail-topic>`, plus a hash of the filter when one is given), and
  it is committed in the same Kafka transaction as the re-published records
  (`send_offsets_to_transaction`). A run killed midway leaves an open transaction, which the next
  run's `init_transactions` (same transactional id: the job's group name) aborts: its records are
  never seen by the service's consumers (read_committed, librdkafka's default), and the offsets
  were not committed, so they are replayed once, by the next run. Acknowledged and committed are
  one step, so no window between them can double a record.
- **Capped**: a dead letter with `x-freedom-replay-count` >= the limit is parked (left where it
  is, reported), as is one that cannot be replayed as it was (its value was left out, no original
  topic, the original topic is gone). The job's offset moves past parked and non-matching records.
  The count is trusted because only the proxy writes dead letters and it copies a main-topic
  record's replay headers only when the dead letter `x-freedom-replay-of` names proves them (same
  key and value, from that topic, one replay fewer: freedom/kafka/consumer/replays.py); forged
  ones are dropped, so a record that was never replayed is replayed, not parked.
- **Purged ones left out**: a dead letter `freedom dlq purge` purged is passed over, counted
  (`already purged`), never re-published (freedom/ops/purged.py).
- **Audited**: each run logs one line (who, when, topic, filter, counts) to `freedom.ops.audit`.
- **At least once on the embedded broker** (Tansu 0.6): it does not hide the records of an aborted
  transaction, so a run killed between re-publishing a batch and committing it has that batch
  delivered, and the next run re-publishes it. The report says so (`note`, :data:`AT_LEAST_ONCE`,
  and the audit line); the job's offsets are committed plainly there too, after each transaction,
  and read back (freedom/ops/jobs.py).

The job machinery (transactions, batches, the rate) is shared with the purge: freedom/ops/jobs.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from freedom.kafka.topics import check_topic
from freedom.ops.common import JOB_PREFIX, iso
from freedom.ops.dlq import FailTopic, fail_topics
from freedom.ops.jobs import KEPT_DETAILS, Pacer, Produce, run_job
from freedom.ops.jobs import TRANSACTION_TIMEOUT_MS as TRANSACTION_TIMEOUT_MS
from freedom.ops.jobs import who as who
from freedom.ops.purged import Purges, purges_of
from freedom.ops.records import DeadLetter, Filter, error_class
from freedom.ops.target import OpsError, Target
from freedom.wire.headers import (
    OMISSION_HEADERS,
    REASON_HEADERS,
    REPLAY_COUNT_HEADER,
    REPLAY_OF_HEADER,
    RETRY_COUNT_HEADER,
    header_key,
)

log = logging.getLogger("freedom.ops.replay")
audit_log = logging.getLogger("freedom.ops.audit")

DEFAULT_MAX_REPLAYS = 3
#: The report's note on the embedded broker (docs/operations.md, "On the embedded broker").
AT_LEAST_ONCE = (
    "on the embedded broker a replay is at least once, not exactly once: a run killed between "
    "re-publishing a batch and committing it has that batch delivered, and the next run "
    "re-publishes it (the broker does not hide the records of an aborted transaction)"
)
_DROPPED = frozenset(
    h.lower()
    for h in (
        *REASON_HEADERS,
        *OMISSION_HEADERS,
        RETRY_COUNT_HEADER,
        REPLAY_COUNT_HEADER,
        REPLAY_OF_HEADER,
    )
)


def parse_rate(value: str) -> float:
    """`N/s` or `N` (records per second, more than 0); OpsError otherwise."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*s)?\s*", value)
    if not m or float(m.group(1)) <= 0:
        raise OpsError(f"--rate: expected records per second, e.g. 50/s, got {value!r}")
    return float(m.group(1))


def job_group(fail_topic: str, flt: Filter) -> str:
    """The consumer group (and transactional id) of a replay job: one per dead-letter topic and filter,
    so that running the same command again resumes it."""
    if flt.empty:
        return f"{JOB_PREFIX}{fail_topic}"
    digest = hashlib.sha256(json.dumps(flt.describe(), sort_keys=True).encode()).hexdigest()[:10]
    return f"{JOB_PREFIX}{fail_topic}.{digest}"


@dataclass(frozen=True)
class Parked:
    """A dead letter this run did not replay, and why."""

    partition: int
    offset: int
    key: str | None
    reason: str


@dataclass(frozen=True)
class Move:
    """A dead letter replayed (or, in a dry run, that would be)."""

    partition: int
    offset: int
    key: str | None
    to_topic: str
    error_class: str
    replay_count: int  # the x-freedom-replay-count it is (would be) replayed with


@dataclass(frozen=True)
class TopicReplay:
    """One dead-letter topic's part of a run."""

    topic: str
    job: str  # the consumer group holding the progress
    ranges: tuple[
        tuple[int, int, int], ...
    ]  # (partition, first offset read, end offset at the start)
    moved: int
    skipped: int  # read but not matching the filter
    parked: tuple[Parked, ...]
    parked_count: int
    moves: tuple[Move, ...]  # the first KEPT_DETAILS moves
    destinations: dict[str, int] = field(
        default_factory=dict
    )  # original topic -> records moved there
    purged: int = 0  # matching, but purged by `freedom dlq purge`: left out


@dataclass(frozen=True)
class ReplayReport:
    """What a run did (or, with dry_run, would do)."""

    who: str
    at: str
    dry_run: bool
    filter: dict[str, Any]
    rate: float | None
    max_replays: int
    topics: tuple[TopicReplay, ...]
    seconds: float
    #: On the embedded broker: :data:`AT_LEAST_ONCE` (exactly once does not hold there).
    note: str | None = None

    @property
    def moved(self) -> int:
        return sum(t.moved for t in self.topics)

    @property
    def parked(self) -> int:
        return sum(t.parked_count for t in self.topics)

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.topics)

    @property
    def purged(self) -> int:
        return sum(t.purged for t in self.topics)


@dataclass(frozen=True)
class Progress:
    """Where a long run is (for a progress line)."""

    topic: str
    read: int
    total: int  # records between the job's offsets and the end offsets at the start
    moved: int
    parked: int


def audit_line(report: ReplayReport) -> str:
    """The one line a run leaves in the log: who, when, what, how many."""
    topics = ", ".join(f"{t.topic} (job {t.job})" for t in report.topics) or "none"
    what = "dry run" if report.dry_run else "replay"
    verb = "would move" if report.dry_run else "moved"
    return (
        f"dlq {what} by {report.who} at {report.at}: topics {topics}; "
        f"filter {json.dumps(report.filter, sort_keys=True, ensure_ascii=False)}; "
        f"{verb} {report.moved}, parked {report.parked}, not matching {report.skipped}"
        f"{f', already purged {report.purged}' if report.purged else ''}; "
        f"max replays {report.max_replays}, rate {f'{report.rate:g}/s' if report.rate else 'unlimited'}; "
        f"{report.seconds:.1f} s"
        f"{'; at least once (the embedded broker)' if report.note else ''}"
    )


def replay_headers(msg: Any, count: int, fail_topic: str) -> list[tuple[str, str | bytes | None]]:
    """The headers of a replayed record: its own, without the proxy's reason headers (in any
    spelling: `_` read as `-`), plus the replay count and the dead letter it is a replay of."""
    out: list[tuple[str, str | bytes | None]] = [
        (k, v if v is not None else b"")
        for k, v in msg.headers() or []
        if header_key(k) not in _DROPPED
    ]
    out.append((REPLAY_COUNT_HEADER, str(count).encode()))
    out.append((REPLAY_OF_HEADER, f"{fail_topic}/{msg.partition()}/{msg.offset()}".encode()))
    return out


def _decide(d: DeadLetter, existing: dict[str, int], max_replays: int) -> str | None:
    """Why `d` is parked, or None when it is replayed."""
    if d.original_topic == d.topic:
        return "its original topic is the dead-letter topic itself: replaying would loop"
    if d.replay_count >= max_replays:
        return f"replayed {d.replay_count} times already (limit {max_replays}, --max-replays)"
    if d.value_omitted:
        return "a copy without its value (too large for the dead-letter topic): cannot be replayed as it was"
    if not d.original_topic:
        return "no x-freedom-original-topic header: the original topic is not known"
    try:
        check_topic(d.original_topic)
    except ValueError as exc:
        return f"x-freedom-original-topic: {exc}"
    if d.original_topic not in existing:
        return f"the original topic {d.original_topic!r} does not exist"
    return None


def _replay_topic(
    fail: FailTopic,
    flt: Filter,
    *,
    dry_run: bool,
    max_replays: int,
    pacer: Pacer,
    progress: Callable[[Progress], None] | None,
    timeout: float,
) -> TopicReplay:
    group = job_group(fail.topic, flt)
    moved = skipped = parked_count = purged = 0
    parked: list[Parked] = []
    moves: list[Move] = []
    destinations: dict[str, int] = {}
    existing: dict[str, int] = {}
    purges = Purges(fail.topic)

    def prepare() -> None:
        nonlocal existing, purges
        existing = fail.cluster.topics(refresh=True)
        purges = purges_of(fail.cluster, fail.topic)

    def act(msg: Any, d: DeadLetter) -> Produce | None:
        nonlocal moved, skipped, parked_count, purged
        if not flt.matches(d):
            skipped += 1
            return None
        if purges.covers(d):
            purged += 1
            return None
        why = _decide(d, existing, max_replays)
        if why is not None:
            parked_count += 1
            if len(parked) < KEPT_DETAILS:
                parked.append(Parked(d.partition, d.offset, d.key, why))
            return None
        assert d.original_topic is not None
        moved += 1
        destinations[d.original_topic] = destinations.get(d.original_topic, 0) + 1
        if len(moves) < KEPT_DETAILS:
            moves.append(
                Move(
                    d.partition,
                    d.offset,
                    d.key,
                    d.original_topic,
                    error_class(d.error),
                    d.replay_count + 1,
                )
            )
        return d.original_topic, replay_headers(msg, d.replay_count + 1, fail.topic)

    def tick(read: int, total: int) -> None:
        if progress is not None:
            progress(Progress(fail.topic, read, total, moved, parked_count))

    ranges = run_job(
        fail,
        group,
        flt,
        act,
        dry_run=dry_run,
        timeout=timeout,
        what="replay",
        prepare=prepare,
        pacer=pacer,
        tick=tick,
    )
    return TopicReplay(
        fail.topic,
        group,
        ranges,
        moved,
        skipped,
        tuple(parked),
        parked_count,
        tuple(moves),
        destinations,
        purged,
    )


def replay(
    target: Target,
    topic: str | None = None,
    flt: Filter | None = None,
    *,
    dry_run: bool = False,
    rate: float | None = None,
    max_replays: int = DEFAULT_MAX_REPLAYS,
    progress: Callable[[Progress], None] | None = None,
    timeout: float = 30.0,
    operator: str | None = None,
) -> ReplayReport:
    """Replay the dead letters of `topic` (a dead-letter topic, or the main topic whose dead letters;
    None: every dead-letter topic of the service) that match `flt`. See the module's docstring.
    `operator` is who the audit line names (the web console's token label); None: :func:`who`."""
    flt = flt if flt is not None else Filter()
    if max_replays < 1:
        raise OpsError("--max-replays must be 1 or more")
    if rate is not None and rate <= 0:
        raise OpsError("--rate must be more than 0 records per second")
    started = time.monotonic()
    at = iso(time.time())
    fails = fail_topics(target, topic)
    for f in fails:
        level = str(f.client.config.settings.get("isolation.level", "")).lower()
        if level == "read_uncommitted":
            log.warning(
                "%s sets isolation.level = read_uncommitted: its service may see records of a replay "
                "run that was killed and aborted (delivered twice); use read_committed",
                f.client.where,
            )
    note = AT_LEAST_ONCE if any(f.cluster.on_tansu() for f in fails) else None
    pacer = Pacer(rate)
    done = []
    try:
        for f in fails:
            done.append(
                _replay_topic(
                    f,
                    flt,
                    dry_run=dry_run,
                    max_replays=max_replays,
                    pacer=pacer,
                    progress=progress,
                    timeout=timeout,
                )
            )
    finally:
        report = ReplayReport(
            operator if operator is not None else who(),
            at,
            dry_run,
            flt.describe(),
            rate,
            max_replays,
            tuple(done),
            time.monotonic() - started,
            note,
        )
        audit_log.info(
            "%s%s", audit_line(report), "" if len(done) == len(fails) else " (stopped early)"
        )
    return report
