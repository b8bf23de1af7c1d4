"""The machinery `freedom dlq replay` and `freedom dlq purge` share: a *job* walks the dead letters
of one topic from where it last stopped to the end offsets taken at its start, and records its
progress as the committed offsets of its own consumer group, exactly once.

- **Exactly once** (resumable, also after SIGKILL): the job's offsets are committed in a Kafka
  transaction (`send_offsets_to_transaction`) together with what the job produced for the records
  they pass (a replay's re-published records; a purge produces nothing, its transactions hold
  offsets only). A run killed midway leaves an open transaction, which the next run's
  `init_transactions` (same transactional id: the job's group name) aborts: neither its records
  nor its offsets count, and the next run does that part again, once.
- **Fenced**: two runs of one job cannot both go on: the later one's `init_transactions` fences
  the earlier, whose next transactional call fails (a one-line error).
- **Batched**: a transaction is committed after `BATCH_RECORDS` records or `BATCH_SECONDS`, and at
  the end of each partition; a rate (`Pacer`) never holds a transaction open while it waits.
- **Bounded**: the end offsets of the topic are taken at the start; what arrives during the run
  waits for the next one.
- **On the embedded broker** (Tansu 0.6, told by its cluster id: `Cluster.on_tansu`) the offsets
  sent in a transaction that produced no record are lost (but for a producer's first transaction),
  so a purge's progress (it never produces) and a replay's over records it did not re-publish
  (parked, not matching, purged) would not be kept. There each transaction is followed by a plain,
  synchronous offset commit of the same offsets from the job's group, read back: a read-back that
  differs stops the run (OpsError, one line). The transactions stay (they carry a replay's
  records, and their `init_transactions` still fences a second run). Tansu does not hide an
  aborted transaction's records from read_committed consumers either: a replay killed with a batch
  open has that batch delivered, and the next run re-publishes it; a replay there is at least
  once (freedom/ops/replay.py says so in its report).
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from freedom.config.librdkafka import PRODUCER_DEFAULTS, scrub
from freedom.ops.cluster import TP, Reader
from freedom.ops.dlq import FailTopic, snapshot
from freedom.ops.purged import stable_committed
from freedom.ops.records import DeadLetter, Filter
from freedom.ops.target import OpsError

BATCH_RECORDS = 200  # a transaction is committed after this many records ...
BATCH_SECONDS = 0.5  # ... or this long after it began
TRANSACTION_TIMEOUT_MS = 30000
PROGRESS_SECONDS = 2.0  # how often a long run reports where it is
KEPT_DETAILS = 1000  # records listed in a report (the counts are complete)

#: What a job does with one record: None, or the topic and headers to re-publish it with.
Produce = tuple[str, list[tuple[str, str | bytes | None]]]
#: (partition, first offset read, end offset at the start) of each partition a run read.
Ranges = tuple[tuple[int, int, int], ...]


def who() -> str:
    """The operator for the audit line: the login name and host."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): the environment, else unknown
        user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname()}"


class Pacer:
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


class Job:
    """The transactional producer and the job group's consumer of one dead-letter topic."""

    def __init__(self, fail: FailTopic, group: str, timeout: float, what: str = "replay") -> None:
        self.fail, self.group, self.timeout, self.what = fail, group, timeout, what
        #: The embedded broker: each transaction's offsets are committed again plainly, and read back.
        self.plain = fail.cluster.on_tansu()
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
                    f"another run of {self.what} job {self.group!r} took over (this one was "
                    "fenced); let that one finish"
                ) from None
            text = err.str() if isinstance(err, confluent_kafka.KafkaError) else str(err)
            raise OpsError(
                f"{self.what} of {self.fail.topic!r}: {scrub(text, self.fail.cluster.settings)}; "
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
            raise OpsError(f"{self.what} of {self.fail.topic!r}: {self.errors[0]}")
        if self.plain and offsets:
            self.commit_plain(offsets)

    def commit_plain(self, offsets: list[TopicPartition]) -> None:
        """Commit `offsets` for the job's group with a plain, synchronous offset commit (outside any
        transaction) and read them back; OpsError (one line) when the broker refuses them or does
        not keep them. For the embedded broker, which loses the offsets of most transactions that
        produced nothing (the module's docstring)."""
        servers = self.fail.cluster.settings.get("bootstrap.servers")
        again = (
            "the next run starts at the offsets the broker kept (and re-publishes what this one "
            "re-published after them)"
            if self.what == "replay"
            else "run the same command again to go on"
        )
        try:
            done = self.reader.consumer.commit(offsets=offsets, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            text = err.str() if isinstance(err, confluent_kafka.KafkaError) else str(err)
            raise OpsError(
                f"{self.what} of {self.fail.topic!r}: the broker at {servers} refused the progress "
                f"of job {self.group!r}: {scrub(text, self.fail.cluster.settings)}; stopped: {again}"
            ) from None
        for tp in done or []:
            if tp.error is not None:
                raise OpsError(
                    f"{self.what} of {self.fail.topic!r}: the broker at {servers} refused the "
                    f"progress of job {self.group!r} on {tp.topic}[{tp.partition}]: "
                    f"{scrub(tp.error.str(), self.fail.cluster.settings)}; stopped: {again}"
                )
        kept = stable_committed(
            self.fail.cluster, self.group, [(t.topic, t.partition) for t in offsets]
        )
        for tp in offsets:
            back = kept.get((tp.topic, tp.partition))
            if back != tp.offset:
                raise OpsError(
                    f"{self.what} of {self.fail.topic!r}: the broker at {servers} did not keep the "
                    f"progress of job {self.group!r} on {tp.topic}[{tp.partition}] (committed "
                    f"{tp.offset}, reads back {'none' if back is None else back}): stopped: {again}"
                )

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


def run_job(
    fail: FailTopic,
    group: str,
    flt: Filter,
    act: Callable[[Any, DeadLetter], Produce | None],
    *,
    dry_run: bool,
    timeout: float,
    what: str,
    prepare: Callable[[], None] | None = None,
    pacer: Pacer | None = None,
    tick: Callable[[int, int], None] | None = None,
    verify: bool = False,
) -> Ranges:
    """Walk the dead letters of `fail` for the job `group`: each partition from the job's committed
    offset (or where `flt` starts) to the end offset taken now, calling `act` with every record
    read (matching `flt` or not: `act` decides and counts). What `act` returns is re-published in
    the job's transaction, which also commits how far the job has come; a dry run (`dry_run`)
    commits nothing. `prepare` runs once the job's transactions are set up (a killed run's
    aborted), before anything is read; `tick(read, total)` every few seconds of a long run.
    `verify`: read the job's offsets back at the end, and fail (OpsError) when the broker did not
    keep them (on the embedded broker every commit is read back already: :meth:`Job.commit_plain`)."""
    # The job's producer first: its init_transactions aborts what a killed run left open (records
    # and offsets), so the offsets read next are the last ones committed for good.
    job = None if dry_run else Job(fail, group, timeout, what)
    try:
        ends = snapshot(fail)
        committed = stable_committed(fail.cluster, group, sorted(ends))
        if prepare is not None:
            prepare()
    except BaseException:
        if job is not None:
            job.close()
        raise
    checked = job is not None and job.plain  # each commit was read back already
    ranges = []
    for (t, p), (low, end) in sorted(ends.items()):
        start, stop = flt.bounds(p, low, end)
        start = max(start, committed.get((t, p), start))
        ranges.append((p, start, max(start, stop)))
    total = sum(stop - start for _, start, stop in ranges)
    pacer = pacer if pacer is not None else Pacer(None)
    read = 0
    reader = job.reader if job is not None else Reader(fail.cluster)
    last_tick = time.monotonic()
    sent: dict[TP, int] = {}
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
                out = act(msg, DeadLetter.of(msg))
                if job is not None:
                    if out is not None:
                        if job.in_txn and pacer.delay() > BATCH_SECONDS:
                            job.commit(positions)  # never hold a transaction open while waiting
                            in_batch = 0
                        pacer.wait()
                    if not job.in_txn:
                        job.begin()
                        began = time.monotonic()
                    if out is not None:
                        job.produce(out[0], msg, out[1])
                positions[tp] = offset + 1
                in_batch += 1
                if job is not None and (
                    in_batch >= BATCH_RECORDS or time.monotonic() - began >= BATCH_SECONDS
                ):
                    job.commit(positions)
                    in_batch = 0
                if tick is not None and time.monotonic() - last_tick >= PROGRESS_SECONDS:
                    last_tick = time.monotonic()
                    tick(read, total)
            if job is not None:
                positions[tp] = stop  # past transaction markers, up to the end taken at the start
                job.begin()
                job.commit(positions)
                sent[tp] = stop
    finally:
        if job is not None:
            job.close()
        else:
            reader.close()
    if verify and sent and not checked:
        kept = stable_committed(fail.cluster, group, sorted(sent))
        for (t, p), offset in sorted(sent.items()):
            if kept.get((t, p), -1) < offset:
                raise OpsError(
                    f"the broker at {fail.cluster.settings.get('bootstrap.servers')} did not keep "
                    f"the progress of {what} job {group!r} on {t}[{p}] (committed {offset}, "
                    f"reads back {kept.get((t, p), 'none')}): it does not keep the offsets of a "
                    f"producer's later transactions, so the {what} is only partly recorded: run "
                    "it on Apache Kafka"
                )
    return tuple(ranges)
