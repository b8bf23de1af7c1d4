"""librdkafka's lines while a broker is down are folded: one line per client, broker and state, then
a count, through the `freedom.kafka.librdkafka` logger, for every client freedom makes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import confluent_kafka
import pytest

from freedom.kafka.client_logs import FOLD, FoldRepeats, fold_key
from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.kafka.broker import ApacheKafka
from tests.services.event_app import Journal, event_service

SERVICES = Path(__file__).parent / "services"
COUNT = re.compile(r"\(repeated (\d+) times? in [\d.]+ s\)$")


class Lines(logging.Handler):
    """Every line of `freedom.kafka.librdkafka`, as a user's log would show it, with its time."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))

    def between(self, start: float, end: float) -> list[str]:
        return [line for t, line in self.lines if start <= t <= end]


@pytest.fixture
def librdkafka_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("freedom.kafka.librdkafka")
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def test_a_service_against_an_unreachable_cluster_says_so_in_a_few_lines(tmp_path):
    port, closed = free_port(), free_port()
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(f"127.0.0.1:{closed}", port),
    )
    env = {**os.environ, "RECORD_FILE": str(tmp_path / "records.jsonl")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "kill_service:app",
            "--config",
            str(config),
        ],
        cwd=SERVICES,
        env=env,
        capture_output=True,
        timeout=120,
    )
    err = proc.stderr.decode(errors="replace").splitlines()
    assert proc.returncode == 2, err[-20:]
    assert err[-1].startswith("freedom: error: cannot reach Kafka at 127.0.0.1:"), err[-5:]
    # librdkafka tries to connect about 20 times a second (~290 raw lines in the 15 s the start-up
    # check waited before it stopped waiting for refused connections, ~10 in its half second now):
    # its first line, and the count before freedom's error.
    librdkafka = [line for line in err if "rdkafka#" in line]
    assert len(librdkafka) <= 4, "\n".join(librdkafka)
    assert all("freedom.kafka.librdkafka" in line for line in librdkafka), (
        librdkafka
    )  # not raw stderr
    counts = [int(m.group(1)) for line in librdkafka if (m := COUNT.search(line))]
    assert counts and sum(counts) >= 5, librdkafka  # the repeats are counted, not lost


@pytest.fixture
def own_kafka() -> Iterator[ApacheKafka]:
    """A broker of its own: this test stops it, which would disturb the others' session broker."""
    kafka = ApacheKafka().start()
    try:
        yield kafka
    finally:
        kafka.close()


def test_a_broker_outage_gives_a_few_lines_with_counts(own_kafka, tmp_path, librdkafka_lines):
    topic = f"outage-{uuid.uuid4().hex[:8]}"
    journal = Journal()
    # The first record fails once, so the retry producer is connected when the broker goes too.
    svc = event_service(
        tmp_path,
        own_kafka.bootstrap,
        journal,
        topic,
        lambda call: 500 if call.key == "before" and call.nth == 0 else 200,
        retry_count=1,
        retry_interval_sec=0,
    )
    producer = confluent_kafka.Producer({"bootstrap.servers": own_kafka.bootstrap, "log_level": 0})
    with svc:
        producer.produce(topic, key=b"before", value=b"{}")
        assert producer.flush(30) == 0
        wait_until(
            lambda: len(journal.of(key="before")) == 2,
            60,
            what="the record before the outage to be retried",
        )

        down = time.monotonic()
        own_kafka.kill()
        wait_until(
            lambda: librdkafka_lines.between(down, time.monotonic()),
            30,
            what="librdkafka to report the broker down",
        )
        time.sleep(5)  # the outage itself: librdkafka retries all along
        own_kafka.start()
        up = time.monotonic()
        producer.produce(topic, key=b"after", value=b"{}")
        assert producer.flush(60) == 0
        wait_until(
            lambda: journal.of(key="after"), 90, what="the record after the outage to be handled"
        )
        # The counts come at most FIRST_WINDOW (5 s) after the first repeat, or at the next state.
        wait_until(
            lambda: any(
                COUNT.search(line) for line in librdkafka_lines.between(down, time.monotonic())
            ),
            30,
            what="a count of the repeated lines",
        )
        end = time.monotonic()

    during = librdkafka_lines.between(down, end)
    states = {fold_key(COUNT.sub("", line).rstrip()) for line in during}
    counted = sum(int(m.group(1)) for line in during if (m := COUNT.search(line)))
    report = "\n".join(during)
    # Before: ~38 lines a second per service (~200 for this outage). Now each state's first line,
    # then its counts (5 s, 10 s, ... apart): a handful per broker and state.
    clients = {m.group() for line in during if (m := re.search(r"rdkafka#\w+-\d+", line))}
    # every client of the service: both consumer groups, the producer and the retry producer
    assert sum(c.startswith("rdkafka#producer") for c in clients) >= 2, report
    assert sum(c.startswith("rdkafka#consumer") for c in clients) >= 2, report
    assert len(during) <= 3 * len(states), report
    assert len(states) <= 6 * len(clients), report  # per client: its broker threads and states
    # More repeats folded than lines shown (how many librdkafka makes in the outage depends on its
    # reconnect backoff: 36 folded under 19 shown was seen on a loaded machine, ~100 on a quiet one).
    assert counted >= len(during), f"few repeats folded ({counted}):\n{report}"
    assert up - down >= 5


# ----------------------------------------------------------------------------- the filter itself


def fold_lines(messages: list[str], **windows: float) -> tuple[FoldRepeats, list[str]]:
    logger = logging.Logger(f"fold-{uuid.uuid4().hex[:6]}")  # outside the hierarchy
    fold = FoldRepeats(logger, **windows)
    logger.addFilter(fold)
    shown = Lines()
    logger.addHandler(shown)
    for m in messages:
        logger.log(logging.ERROR, "%s", m)
    return fold, [line for _, line in shown.lines]


FAIL = "FAIL [rdkafka#consumer-1] [thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after {}ms in state CONNECT{})"


def test_repeats_are_counted_and_shown_at_the_next_state():
    repeats = [
        FAIL.format(i % 7, f", {i} identical error(s) suppressed" if i % 3 else "")
        for i in range(50)
    ]
    other_broker = FAIL.replace("9092", "9093").format(0, "")
    down = "ERROR [rdkafka#consumer-1] [thrd:127.0.0.1:9092/bootstrap]: 127.0.0.1:9092/bootstrap: Disconnected (after 12ms in state UP)"
    fold, shown = fold_lines([*repeats, other_broker, other_broker, down], first_window=60)
    assert shown[0].endswith("(after 0ms in state CONNECT)")
    assert shown[1] == other_broker  # another broker: its own line
    assert re.search(
        r"CONNECT, 49 identical error\(s\) suppressed\) \(repeated 49 times in [\d.]+ s\)$",
        shown[2],
    ), shown
    assert shown[3] == down and len(shown) == 4
    fold.flush()


def test_a_long_outage_is_counted_at_growing_intervals():
    fold, _ = fold_lines([FAIL.format(0, "")], first_window=0.2, max_window=0.4)
    logger, repeats = fold.logger, 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        logger.log(logging.ERROR, "%s", FAIL.format(0, ""))
        repeats += 1
        time.sleep(0.01)
    fold.flush()
    lines = [line for _, line in logger.handlers[0].lines]  # type: ignore[attr-defined]
    counts = [int(m.group(1)) for line in lines if (m := COUNT.search(line))]
    assert len(lines) == 1 + len(counts), lines
    assert 2 <= len(counts) <= 6, lines  # after 0.2 s, then every 0.4 s: not a line per attempt
    assert sum(counts) == repeats  # nothing lost


def test_a_client_made_from_client_settings_folds_its_lines(librdkafka_lines):
    from freedom.kafka.settings import client_settings

    settings = client_settings((f"127.0.0.1:{free_port()}",), "producer", "default", {}, {})
    producer = confluent_kafka.Producer(settings)
    start = time.monotonic()
    try:
        deadline = start + 3
        while time.monotonic() < deadline:
            producer.poll(0.1)  # librdkafka hands its lines over on poll
    finally:
        producer.flush(0)
    lines = librdkafka_lines.between(start, time.monotonic())
    assert 1 <= len(lines) <= 2, lines
    FOLD.flush()  # the count, now rather than at exit
