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
- **Audited**: each run logs one line (who, when, topic, filter, counts) to `freedom.ops.audit`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from freedom.config.librdkafka import PRODUCER_DEFAULTS, scrub
from freedom.kafka.topics import check_topic
from freedom.ops.cluster import TP, Reader
from freedom.ops.dlq import DeadLetter, FailTopic, Filter, error_class, fail_topics, snapshot
from freedom.ops.status import JOB_PREFIX, iso
from freedom.ops.target import OpsError, Target
from freedom.wire.headers import (
    OMISSION_HEADERS,
    REASON_HEADERS,
    REPLAY_COUNT_HEADER,
    REPLAY_OF_HEADER,
    RETRY_COUNT_HEADER,
)

log = logging.getLogger("freedom.ops.replay")
audit_log = logging.getLogger("freedom.ops.audit")

DEFAULT_MAX_REPLAYS = 3
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
_BATCH_RECORDS = 200  # a transaction is committed after this many records ...
_BATCH_SECONDS = 0.5  # ... or this long after it began
TRANSACTION_TIMEOUT_MS = 30000
_KEPT_DETAILS = 1000  # parked records / planned moves listed in a report (the counts are complete)


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


def who() -> str:
    """The operator for the audit line: the login name and host."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): the environment, else unknown
        user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname()}"


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
    moves: tuple[Move, ...]  # the first _KEPT_DETAILS moves
    destinations: dict[str, int] = field(
        default_factory=dict
    )  # original topic -> records moved there


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

    @property
    def moved(self) -> int:
        return sum(t.moved for t in self.topics)

    @property
    def parked(self) -> int:
        return sum(t.parked_count for t in self.topics)

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.topics)


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
        f"{verb} {report.moved}, parked {report.parked}, not matching {report.skipped}; "
        f"max replays {report.max_replays}, rate {f'{report.rate:g}/s' if report.rate else 'unlimited'}; "
        f"{report.seconds:.1f} s"
    )


def replay_headers(msg: Any, count: int, fail_topic: str) -> list[tuple[str, str | bytes | None]]:
    """The headers of a replayed record: its own, without the proxy's reason headers, plus the
    replay count and the dead letter it is a replay of."""
    out: list[tuple[str, str | bytes | None]] = [
        (k, v if v is not None else b"")
        for k, v in msg.headers() or []
        if k.lower() not in _DROPPED
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


class _Pacer:
    """At most `rate` records per second."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next = time.monotonic()

    def delay(self) -> float:
        """Seconds until the next record may go."""
        return max(0.0, self.next - time.monotonic()) if self.interval else 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next > now:
            time.sleep(self.next - now)
        self.next = max(self.next, now) + self.interval


class _Job:
    """The transactional producer and the job group's consumer of one dead-letter topic."""

    def __init__(self, fail: FailTopic, group: str, timeout: float) -> None:
        self.fail, self.group, self.timeout = fail, group, timeout
        settings = fail.cluster.settings
        self.producer = confluent_kafka.Producer(
            {
                **settings,
                **PRODUCER_DEFAULTS,
                "transactional.id": group,
                "enable.idempotence": True,
                # A killed run's open transaction holds back the read_committed consumers of the
                # partitions it wrote to until it is aborted: by the next run, else after this long.
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
            }
        )
        self.reader = Reader(fail.cluster, group)  # its group metadata goes into each transaction
        self.errors: list[str] = []
        self.in_txn = False
        self._call(self.producer.init_transactions, timeout)  # aborts what a killed run left open

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, confluent_kafka.KafkaError) and err.code() in (
                confluent_kafka.KafkaError._FENCED,
                confluent_kafka.KafkaError.PRODUCER_FENCED,
                confluent_kafka.KafkaError.INVALID_PRODUCER_EPOCH,
            ):
                raise OpsError(
                    f"another run of replay job {self.group!r} took over (this one was fenced); "
                    "let that one finish"
                ) from None
            text = err.str() if isinstance(err, confluent_kafka.KafkaError) else str(err)
            raise OpsError(
                f"replay of {self.fail.topic!r}: {scrub(text, self.fail.cluster.settings)}; "
                "nothing of the unfinished batch was committed: run the same command again"
            ) from None

    def begin(self) -> None:
        if not self.in_txn:
            self._call(self.producer.begin_transaction)
            self.in_txn = True

    def produce(self, topic: str, msg: Any, headers: list[tuple[str, str | bytes | None]]) -> None:
        def report(err: Any, _m: Any) -> None:
            if err is not None:
                self.errors.append(f"{topic}: {err.str()}")

        while True:
            try:
                self.producer.produce(
                    topic, key=msg.key(), value=msg.value(), headers=headers, on_delivery=report
                )
                self.producer.poll(0)
                return
            except BufferError:
                self.producer.poll(0.05)

    def commit(self, positions: dict[TP, int]) -> None:
        """Commit the open transaction: the records produced in it and the job's offsets, or neither."""
        if not self.in_txn:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]
        try:
            if offsets:
                self._call(
                    self.producer.send_offsets_to_transaction,
                    offsets,
                    self.reader.consumer.consumer_group_metadata(),
                    self.timeout,
                )
            self._call(self.producer.commit_transaction, self.timeout)
        except OpsError:
            self.abort()
            raise
        self.in_txn = False
        if self.errors:  # commit_transaction fails when a record was not acknowledged; never here
            raise OpsError(f"replay of {self.fail.topic!r}: {self.errors[0]}")

    def abort(self) -> None:
        if self.in_txn:
            try:
                self.producer.abort_transaction(self.timeout)
            except confluent_kafka.KafkaException:
                pass  # the next run's init_transactions aborts it
            self.in_txn = False

    def close(self) -> None:
        self.abort()
        self.reader.close()


def _replay_topic(
    fail: FailTopic,
    flt: Filter,
    *,
    dry_run: bool,
    max_replays: int,
    pacer: _Pacer,
    progress: Callable[[Progress], None] | None,
    timeout: float,
) -> TopicReplay:
    group = job_group(fail.topic, flt)
    # The job's producer first: its init_transactions aborts what a killed run left open (records
    # and offsets), so the offsets read next are the last ones committed for good.
    job = None if dry_run else _Job(fail, group, timeout)
    try:
        ends = snapshot(fail)
        committed = fail.cluster.committed(group)
        existing = fail.cluster.topics(refresh=True)
    except BaseException:
        if job is not None:
            job.close()
        raise
    ranges = []
    for (t, p), (low, end) in sorted(ends.items()):
        start, stop = flt.bounds(p, low, end)
        start = max(start, committed.get((t, p), start))
        ranges.append((p, start, max(start, stop)))
    total = sum(stop - start for _, start, stop in ranges)
    moved = skipped = parked_count = read = 0
    parked: list[Parked] = []
    moves: list[Move] = []
    destinations: dict[str, int] = {}
    reader = job.reader if job is not None else Reader(fail.cluster)
    last_progress = time.monotonic()
    try:
        for p, start, stop in ranges:
            if start >= stop:
                continue
            tp = (fail.topic, p)
            positions: dict[TP, int] = {}
            began = time.monotonic()
            in_batch = 0
            for msg in reader.read(fail.topic, p, start, stop):
                read += 1
                offset = int(msg.offset() or 0)
                d = DeadLetter.of(msg)
                why: str | None = None
                matching = flt.matches(d)
                if not matching:
                    skipped += 1
                elif (why := _decide(d, existing, max_replays)) is not None:
                    parked_count += 1
                    if len(parked) < _KEPT_DETAILS:
                        parked.append(Parked(p, offset, d.key, why))
                moving = matching and why is None
                if job is not None:
                    if moving:
                        if job.in_txn and pacer.delay() > _BATCH_SECONDS:
                            job.commit(positions)  # never hold a transaction open while waiting
                            in_batch = 0
                        pacer.wait()
                    if not job.in_txn:
                        job.begin()
                        began = time.monotonic()
                if moving:
                    assert d.original_topic is not None
                    if job is not None:
                        job.produce(
                            d.original_topic,
                            msg,
                            replay_headers(msg, d.replay_count + 1, fail.topic),
                        )
                    moved += 1
                    destinations[d.original_topic] = destinations.get(d.original_topic, 0) + 1
                    if len(moves) < _KEPT_DETAILS:
                        moves.append(
                            Move(
                                p,
                                offset,
                                d.key,
                                d.original_topic,
                                error_class(d.error),
                                d.replay_count + 1,
                            )
                        )
                positions[tp] = offset + 1
                in_batch += 1
                if job is not None and (
                    in_batch >= _BATCH_RECORDS or time.monotonic() - began >= _BATCH_SECONDS
                ):
                    job.commit(positions)
                    in_batch = 0
                if progress is not None and time.monotonic() - last_progress >= 2.0:
                    last_progress = time.monotonic()
                    progress(Progress(fail.topic, read, total, moved, parked_count))
            if job is not None:
                positions[tp] = stop  # past transaction markers, up to the end taken at the start
                job.begin()
                job.commit(positions)
    finally:
        if job is not None:
            job.close()
        else:
            reader.close()
    return TopicReplay(
        fail.topic,
        group,
        tuple(ranges),
        moved,
        skipped,
        tuple(parked),
        parked_count,
        tuple(moves),
        destinations,
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
) -> ReplayReport:
    """Replay the dead letters of `topic` (a dead-letter topic, or the main topic whose dead letters;
    None: every dead-letter topic of the service) that match `flt`. See the module's docstring."""
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
    pacer = _Pacer(rate)
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
            who(),
            at,
            dry_run,
            flt.describe(),
            rate,
            max_replays,
            tuple(done),
            time.monotonic() - started,
        )
        audit_log.info(
            "%s%s", audit_line(report), "" if len(done) == len(fails) else " (stopped early)"
        )
    return report
