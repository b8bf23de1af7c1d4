"""The ceiling: a bare confluent-kafka consume loop, no framework. Decodes each record's JSON,
counts it, commits every `$BENCH_COMMIT_EVERY` records (asynchronously) and once more at the end.

Run as `python bare_consumer.py` with `$BENCH_BOOTSTRAP`, `$BENCH_TOPIC`, `$BENCH_GROUP`; stops on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import time

import confluent_kafka
from bench_probe import PROBE

SLOW = os.environ.get("BENCH_HANDLER", "trivial") == "slow"
COMMIT_EVERY = int(os.environ.get("BENCH_COMMIT_EVERY", "1000"))


def main() -> None:
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": os.environ["BENCH_BOOTSTRAP"],
            "group.id": os.environ["BENCH_GROUP"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([os.environ["BENCH_TOPIC"]])
    since_commit = 0
    while not stop:
        records = consumer.consume(500, 0.1)
        for record in records:
            if record.error() is not None:
                continue
            data = json.loads(record.value())
            if SLOW:
                time.sleep(0.005)
            PROBE.hit(data)
            since_commit += 1
            if since_commit >= COMMIT_EVERY or PROBE.count == PROBE.expect:
                consumer.commit(asynchronous=PROBE.count != PROBE.expect)
                since_commit = 0
        if not records and since_commit:
            consumer.commit(asynchronous=True)
            since_commit = 0
    consumer.close()


if __name__ == "__main__":
    main()
