"""`freedom dlq purge`: move past chosen dead letters without re-publishing them.

A purge is a job like a replay (freedom/ops/jobs.py): the same filters, a dry run, one audit line,
progress committed exactly once in Kafka transactions (offsets only: nothing is produced; on the
embedded broker, which loses the offsets of such transactions, by a plain offset commit after each,
read back), resumed by running the same command again, fenced against a second run of itself. Its consumer group names
its filter (`freedom-replay.<fail-topic>.purge[.<filter>]`, freedom/ops/purged.py), so every command
that decides what still waits (`dlq list`, `dlq show`, `dlq replay`, `status`, the console) can
tell which records it purged: those its committed offsets have passed that its filter matches. The
records it passes over (not matching) stay for the others, as a filtered replay job's do.

Nothing is deleted: Kafka keeps the records until retention removes them. A record another purge
purged already is counted apart (`already purged`), not again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from freedom.ops.common import iso
from freedom.ops.dlq import FailTopic, fail_topics
from freedom.ops.jobs import KEPT_DETAILS, Produce, run_job, who
from freedom.ops.purged import Purges, purge_group, purges_of
from freedom.ops.records import DeadLetter, Filter
from freedom.ops.target import Target

audit_log = logging.getLogger("freedom.ops.audit")


@dataclass(frozen=True)
class PurgedRecord:
    """A dead letter purged (or, in a dry run, that would be)."""

    partition: int
    offset: int
    key: str | None
    original_topic: str | None
    error_class: str


@dataclass(frozen=True)
class TopicPurge:
    """One dead-letter topic's part of a purge."""

    topic: str
    job: str  # the consumer group holding the progress
    ranges: tuple[tuple[int, int, int], ...]  # (partition, first offset read, end offset at start)
    purged: int
    already: int  # matching, but purged by another purge before
    skipped: int  # read but not matching the filter
    records: tuple[PurgedRecord, ...]  # the first KEPT_DETAILS purged


@dataclass(frozen=True)
class PurgeReport:
    """What a purge did (or, with dry_run, would do)."""

    who: str
    at: str
    dry_run: bool
    filter: dict[str, Any]
    topics: tuple[TopicPurge, ...]
    seconds: float

    @property
    def purged(self) -> int:
        return sum(t.purged for t in self.topics)

    @property
    def already(self) -> int:
        return sum(t.already for t in self.topics)

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.topics)


@dataclass(frozen=True)
class PurgeProgress:
    """Where a long purge is (for a progress line)."""

    topic: str
    read: int
    total: int  # records between the job's offsets and the end offsets at the start
    purged: int


def audit_line(report: PurgeReport) -> str:
    """The one line a purge leaves in the log: who, when, what, how many."""
    topics = ", ".join(f"{t.topic} (job {t.job})" for t in report.topics) or "none"
    what = "purge dry run" if report.dry_run else "purge"
    verb = "would purge" if report.dry_run else "purged"
    return (
        f"dlq {what} by {report.who} at {report.at}: topics {topics}; "
        f"filter {json.dumps(report.filter, sort_keys=True, ensure_ascii=False)}; "
        f"{verb} {report.purged}, already purged {report.already}, not matching {report.skipped}; "
        f"{report.seconds:.1f} s"
    )


def _purge_topic(
    fail: FailTopic,
    flt: Filter,
    *,
    dry_run: bool,
    progress: Callable[[PurgeProgress], None] | None,
    timeout: float,
) -> TopicPurge:
    group = purge_group(fail.topic, flt)
    purged = already = skipped = 0
    records: list[PurgedRecord] = []
    before = Purges(fail.topic)

    def prepare() -> None:
        nonlocal before
        before = purges_of(fail.cluster, fail.topic)

    def act(_msg: Any, d: DeadLetter) -> Produce | None:
        nonlocal purged, already, skipped
        if not flt.matches(d):
            skipped += 1
        elif before.covers(d):
            already += 1
        else:
            purged += 1
            if len(records) < KEPT_DETAILS:
                records.append(
                    PurgedRecord(d.partition, d.offset, d.key, d.original_topic, d.error_class)
                )
        return None  # nothing is re-published: the job's offsets move past the record

    def tick(read: int, total: int) -> None:
        if progress is not None:
            progress(PurgeProgress(fail.topic, read, total, purged))

    ranges = run_job(
        fail,
        group,
        flt,
        act,
        dry_run=dry_run,
        timeout=timeout,
        what="purge",
        prepare=prepare,
        tick=tick,
        verify=True,
    )
    return TopicPurge(fail.topic, group, ranges, purged, already, skipped, tuple(records))


def purge(
    target: Target,
    topic: str | None = None,
    flt: Filter | None = None,
    *,
    dry_run: bool = False,
    progress: Callable[[PurgeProgress], None] | None = None,
    timeout: float = 30.0,
    operator: str | None = None,
) -> PurgeReport:
    """Purge the dead letters of `topic` (a dead-letter topic, or the main topic whose dead letters;
    None: every dead-letter topic of the service) that match `flt`. See the module's docstring.
    `operator` is who the audit line names (the web console's token label); None: :func:`who`."""
    flt = flt if flt is not None else Filter()
    started = time.monotonic()
    at = iso(time.time())
    fails = fail_topics(target, topic)
    for f in fails:
        purge_group(f.topic, flt)  # a filter too long for a job's name: refused before anything
    done = []
    try:
        for f in fails:
            done.append(_purge_topic(f, flt, dry_run=dry_run, progress=progress, timeout=timeout))
    finally:
        report = PurgeReport(
            operator if operator is not None else who(),
            at,
            dry_run,
            flt.describe(),
            tuple(done),
            time.monotonic() - started,
        )
        audit_log.info(
            "%s%s", audit_line(report), "" if len(done) == len(fails) else " (stopped early)"
        )
    return report
