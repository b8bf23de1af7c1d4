"""Share groups (KIP-932): three instances of a service in one share group against one instance
alone, on a one-partition topic: `python -m bench.share_groups [--records N] [--runs N]`.

The service is tests/services/share_service.py (`freedom run`, HTTP delivery, logging at WARNING):
a handler that sleeps `--handler-ms` (20 ms) per record. `max_in_flight` (20) bounds each
instance's concurrency, the same in both cases, so that one instance is bound by it (20 records
per 20 ms: at most 1000 records/s) and three can go about three times as far. Each case gets a new
topic and group; its instances are started and members of the group before the records are
published (in record batches of at most max_in_flight: the broker hands a share consumer whole
batches). The figure is records/s from the first handler call to the last one's end; the goal is
three instances at least 2x one. Starts its own Apache Kafka (the tests' broker, share groups on).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.services.kafka_tools import create_topic
from tests.services.share_fleet import Instance, ended, keys, lines, publish, start

from .common import start_broker

GOAL = 2.0


def run_case(bootstrap: str, n_instances: int, args: argparse.Namespace, work: Path) -> dict:
    """One case: `n_instances` in a new share group; returns records/s and the spread."""
    tag = uuid.uuid4().hex[:8]
    topic = create_topic(bootstrap, f"bench-share-{tag}")
    group = f"bench-share-{tag}"
    work.mkdir(parents=True)
    fleet: list[Instance] = []
    try:
        client = {"max_in_flight": args.max_in_flight}
        instances, record_file = start(
            fleet,
            n_instances,
            bootstrap,
            topic,
            group,
            work,
            client,
            app={"log_level": "WARNING"},
            HANDLER_MS=str(args.handler_ms),
        )
        publish(bootstrap, topic, keys(args.records), batch=args.batch or args.max_in_flight)
        deadline = time.monotonic() + 60 + args.records * args.handler_ms / 1000
        while len(ended(record_file)) < args.records:
            for instance in instances:
                if instance.proc.poll() is not None:
                    raise RuntimeError(
                        f"instance {instance.name} died:\n{instance.output()[-2000:]}"
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{len(ended(record_file))} of {args.records} records handled in time"
                )
            time.sleep(0.1)
        log = lines(record_file)
        first = min(x["t"] for x in log if x["ev"] == "start")
        last = max(x["t"] for x in log if x["ev"] == "end")
        spread = {i.name: 0 for i in instances}
        for entries in ended(record_file).values():
            spread[entries[0]["inst"]] += 1
        return {"rate": args.records / (last - first), "seconds": last - first, "spread": spread}
    finally:
        for instance in fleet:
            instance.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.share_groups", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--records", type=int, default=3000)
    p.add_argument("--handler-ms", type=int, default=20)
    p.add_argument("--max-in-flight", type=int, default=20)
    p.add_argument(
        "--batch",
        type=int,
        default=0,
        help="records per producer batch (default: max_in_flight; the broker hands out whole batches)",
    )
    p.add_argument("--runs", type=int, default=1, help="runs of both cases, interleaved (medians)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, records)")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="freedom-bench-share-"))
    kafka = start_broker()
    print(
        f"[bench] Apache Kafka started in {kafka.start_seconds:.1f} s; work dir {work}", flush=True
    )
    rates: dict[int, list[float]] = {1: [], 3: []}
    try:
        for run in range(args.runs):
            for n in (1, 3):
                result = run_case(kafka.bootstrap, n, args, work / f"run{run}-x{n}")
                rates[n].append(result["rate"])
                print(
                    f"[bench] run {run + 1}: {n} instance(s): {args.records} records in "
                    f"{result['seconds']:.2f} s = {result['rate']:.0f} records/s; "
                    f"by instance {result['spread']}",
                    flush=True,
                )
    finally:
        kafka.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    one, three = statistics.median(rates[1]), statistics.median(rates[3])
    ratio = three / one
    ceiling = args.max_in_flight * 1000 / args.handler_ms
    print(
        f"\nshare groups, one partition, {args.records} records, {args.handler_ms} ms handler, "
        f"max_in_flight {args.max_in_flight} (one instance's ceiling {ceiling:.0f} records/s)\n"
        f"  1 instance : {one:8.0f} records/s\n"
        f"  3 instances: {three:8.0f} records/s\n"
        f"  ratio      : {ratio:8.2f}x (goal >= {GOAL:.1f}x: {'met' if ratio >= GOAL else 'NOT met'})"
    )
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
