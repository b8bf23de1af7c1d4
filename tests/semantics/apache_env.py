"""The semantics service on Apache Kafka ("apache"), and with its main group a share group
("apache-share"): harness.py's verbs, answered by the broker.

A share group has no committed offset. What the broker says of it is read with the requests of
freedom's `ShareWire` (DescribeShareGroupOffsets): per partition the share-partition start offset
(every record before it is acknowledged) and the lag (records from it on not acknowledged yet).

Apache Kafka persists a share partition's state, which DescribeShareGroupOffsets reads, with each
acknowledgement, but moves the start offset only once that write succeeded: the start offset it
reports stays one write behind (two records acknowledged, it says start 0 and lag 0; a third
acknowledged, start 2 and lag 0) until the next acknowledgement. A lag of 0 says what that start
offset does not yet: every record of the partition is acknowledged. So `finished` is the start
offset, or the partition's end when the lag is 0; `acknowledged` is the records of a topic less
its lag; and `settle` waits until every partition's lag is 0.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer, TopicPartition

from freedom.kafka.share_wire import ShareOffset, ShareWire
from freedom.testing import ServiceThread, wait_until
from tests.semantics.harness import SCENARIOS, Env, Journal, Rec, _config, semantics_app
from tests.services.kafka_tools import committed as kafka_committed
from tests.services.kafka_tools import (
    create_topic,
    partitions_of,
    produce,
    read_partition,
    wait_drained,
)
from tests.services.scrape import samples_of, value

TP = tuple[str, int]


class ApacheEnv(Env):
    """The service on Apache Kafka (ServiceThread, in-process delivery), records through
    confluent-kafka; with `share` its main group is a share group ("apache-share")."""

    def __init__(
        self, bootstrap: str, config_dir: Path, interval: float, *, share: bool = False
    ) -> None:
        self.kind = "apache-share" if share else "apache"
        self.share = share
        self.bootstrap, self.interval = bootstrap, interval
        suffix = uuid.uuid4().hex[:8]
        self.topics = {
            s: create_topic(bootstrap, f"sem-{s}-{suffix}", n) for s, n in SCENARIOS.items()
        }
        self.partitions = {self.topics[s]: n for s, n in SCENARIOS.items()}
        self.journal = Journal()
        self._wire = ShareWire({"bootstrap.servers": bootstrap}, timeout=10)
        self._ends: Any = None  # a consumer that only reads watermarks, made when first needed
        _config(config_dir, bootstrap, self.topics, interval, share=share)
        self.app = semantics_app(config_dir, self.journal, self.topics, time.time)
        self.service = ServiceThread(self.app).start()

    def clock(self) -> float:
        return time.time()

    def produce(self, scenario: str, records: list[dict[str, Any]]) -> None:
        """One producer, flushed once: the records go out as one batch (linger.ms), so a share
        group's member gets them in one fetch, as on the test broker."""
        produce(self.bootstrap, self.topics[scenario], records)

    def settle(self, done: Callable[[], object], what: str) -> None:
        wait_until(done, 60, what=what)
        # Every record of every scenario topic and retry topic finished: no delivery, retry or
        # dead letter of what was produced can still come (a record is committed, or a share
        # group's acknowledged, once finished). The main group first: its retries come after.
        retries = {self.group(True): [self.retry_topic(s) for s in self.topics]}
        if self.share:
            left: dict[TP, tuple[ShareOffset | None, int]] = {}
            try:
                wait_until(
                    lambda: self._share_drained(left),
                    60,
                    interval=0.2,
                    what=f"{what}, and every record acknowledged",
                )
            except AssertionError as exc:
                raise AssertionError(
                    f"{exc}; not acknowledged yet (topic, partition) -> (the broker's share "
                    f"state, end): {left}"
                ) from None
        else:
            retries = {self.group(): list(self.topics.values()), **retries}
        wait_drained(self.bootstrap, retries, 60, what=f"{what}, and every record committed")

    def records(self, topic: str) -> list[Rec]:
        out = []
        for p in range(partitions_of(self.bootstrap, topic)):
            for r in read_partition(self.bootstrap, topic, p):
                out.append(
                    Rec(
                        r.key(),
                        r.value() or b"",
                        {k: (v or b"").decode() for k, v in r.headers() or []},
                        r.partition(),
                        r.offset(),
                    )
                )
        return out

    def committed(self, topic: str, partition: int = 0, *, retry_group: bool = False) -> int | None:
        offset = kafka_committed(self.bootstrap, self.group(retry_group), topic, partition + 1)[
            partition
        ]
        return offset if offset >= 0 else None

    # ------------------------------------------------------------------ a share group's state

    def _watermarks(self, topic: str) -> list[tuple[int, int]]:
        """(log start, end) of each partition of `topic`."""
        if self._ends is None:
            self._ends = Consumer(
                {"bootstrap.servers": self.bootstrap, "group.id": f"ends-{uuid.uuid4().hex[:6]}"}
            )
        return [
            self._ends.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in range(self.partitions[topic])
        ]

    def _share_offsets(self) -> dict[TP, ShareOffset]:
        """The broker's share-partition state of the main group (DescribeShareGroupOffsets)."""
        offsets = self._wire.offsets(self.group())
        failed = {tp: o.error_code for tp, o in offsets.items() if o.error_code}
        assert not failed, f"DescribeShareGroupOffsets: error codes {failed}"
        return offsets

    def _finished(self, found: ShareOffset | None, low: int, end: int) -> int | None:
        """How far a partition (records `low` to `end`) is finished, from the broker's share
        state: its start offset, or its end when the lag is 0 (see the module's docstring)."""
        if found is None or found.start < 0:
            return None  # the group has no state on the partition
        assert found.lag is not None and found.lag >= 0, (
            f"the broker gives no lag (DescribeShareGroupOffsets v1): {found}"
        )
        return max(found.start, low, end) if found.lag == 0 else found.start

    def finished(self, topic: str, partition: int = 0) -> int | None:
        if not self.share:
            return self.committed(topic, partition)
        # The ends first: a record produced after them is in the lag, never counted as finished.
        low, end = self._watermarks(topic)[partition]
        return self._finished(self._share_offsets().get((topic, partition)), low, end)

    def acknowledged(self, topic: str) -> int:
        """Every record before a partition's start offset is acknowledged, and of those from it on
        all but the broker's lag: the records of the partition less its lag (a record archived at
        the delivery count limit would count too; none is in these cases)."""
        ends = self._watermarks(topic)  # before the lag: a record produced between is not counted
        offsets = self._share_offsets()
        total = 0
        for p, (low, end) in enumerate(ends):
            found = offsets.get((topic, p))
            if self._finished(found, low, end) is not None:
                assert found is not None and found.lag is not None
                total += end - low - found.lag
        return total

    def acknowledgements_sent(self) -> None:
        """Wait until the broker counts as acknowledged every record the service accepted so far
        (freedom_share_acknowledgements_total, counted when the source queues an ACCEPT; the
        ShareConsumer sends it within COMMIT_INTERVAL)."""
        answer = self.get("/metrics")
        assert answer.status_code == 200, answer.text
        samples = samples_of(answer.text)
        accepted = {
            t: int(
                value(
                    samples,
                    "freedom_share_acknowledgements_total",
                    messaging_consumer_group_name=self.group(),
                    messaging_destination_name=t,
                    type="accept",
                )
            )
            for t in self.topics.values()
        }
        seen: dict[str, int] = {}

        def sent() -> bool:
            for t, n in accepted.items():
                if n:
                    seen[t] = self.acknowledged(t)
                    if seen[t] < n:
                        return False
            return True

        try:
            wait_until(sent, 30, interval=0.1, what="the acknowledgements on the broker")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: accepted {accepted}, the broker's {seen}") from None

    def _share_drained(self, left: dict[TP, tuple[ShareOffset | None, int]]) -> bool:
        """Whether every record of the main group's topics is acknowledged (an empty partition has
        nothing to acknowledge); the partitions not there yet are put in `left`."""
        left.clear()
        # The ends first: a record produced after them is in the lag, and waited for.
        ends = {t: self._watermarks(t) for t in self.topics.values()}
        offsets = self._share_offsets()
        for t, marks in ends.items():
            for p, (low, end) in enumerate(marks):
                found = offsets.get((t, p))
                if end > low and (self._finished(found, low, end) or low) < end:
                    left[t, p] = (found, end)
        return not left

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.service.base_url + path, timeout=30, **kwargs)

    def close(self) -> None:
        self.service.stop()
        if self._ends is not None:
            self._ends.close()
