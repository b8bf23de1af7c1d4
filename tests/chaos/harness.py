"""What the chaos tests share: running `chaos_service` as a subprocess, killing it, and reading
back what its handlers wrote, to account for every record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent


def start_service(
    config_dir: Path, record_file: Path, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`freedom run chaos_service:app` in its own process group (so a kill takes all of it)."""
    environ = {**os.environ, "RECORD_FILE": str(record_file), **env}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freedom",
            "run",
            "chaos_service:app",
            "--config",
            str(config_dir),
        ],
        cwd=HERE,
        env=environ,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL the service's process group; returns the time of the kill (time.time())."""
    at = time.time()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(30)
    return at


def terminate(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (a graceful stop: drain, commit); SIGKILL when it does not stop in time."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
    return proc.returncode


def lines(path: Path) -> list[dict]:
    """Every complete line the handlers wrote (a line cut by a kill is left out)."""
    if not path.exists():
        return []
    out = []
    for raw in path.read_bytes().split(b"\n"):
        if raw.strip():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:  # the last line of a killed writer
                pass
    return out


def count(path: Path, ev: str) -> int:
    """How many `ev` lines ("start", "end", "dead") the handlers wrote: cheap enough to poll."""
    return path.read_bytes().count(f'"ev": "{ev}"'.encode()) if path.exists() else 0


@dataclass
class KillReport:
    """What one SIGKILL left behind, per route: how many records will be delivered again and why."""

    at: float
    again: int = 0  # started before the kill, at or above the committed offset: delivered again
    in_flight: int = 0  # of those: not finished at the kill
    held: int = 0  # finished, but behind a record of its partition that was not finished
    lagging: int = 0  # finished with every record before it, not yet committed (the commit lag)
    max_lag: float = 0.0  # the longest time one of those had been committable (s)
    unexplained: list[tuple[int, int]] = field(
        default_factory=list
    )  # (partition, offset) beyond the bound
    seqs: set[int] = field(default_factory=set)  # the records to deliver again, within the bound


def kill_report(
    at: float,
    events: list[dict],
    where: dict[int, tuple[int, int]],
    committed: list[int],
    *,
    lag_bound: float,
    started_from: list[int] | None = None,
) -> KillReport:
    """Account for a kill at `at` of one route's records.

    `events` are the route's handler lines of the run that was killed (one process), `where` maps a
    sequence number to its (partition, offset), `committed` is each partition's committed offset
    after the kill, `started_from` the offsets the run started at (the committed offsets before it).
    A record is delivered again when it started and its offset is at or above the committed one.
    The bound: such a record was in flight, or behind one in flight, or became committable (it and
    every record before it in its partition finished) less than `lag_bound` seconds before the kill.
    """
    start, finish = {}, {}
    # Every line of the killed run counts, also those stamped after `at`: `at` is taken just before
    # the SIGKILL, and a loaded machine lets the dying process start (and log) a record before the
    # signal lands. Dropping such a start made its redelivery look like one of a committed record.
    for e in events:
        if e["ev"] == "start":
            start.setdefault(e["seq"], e["t"])
        else:
            finish.setdefault(e["seq"], e["t"])
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for seq in start:
        p, o = where[seq]
        by_partition.setdefault(p, []).append((o, seq))
    report = KillReport(at)
    for p, items in by_partition.items():
        items.sort()
        base = started_from[p] if started_from else 0
        prefix_done: float | None = (
            0.0  # when every record from `base` to here had finished; None: not all
        )
        expected = base
        for o, seq in items:
            if (
                o != expected
            ):  # a record of the range was never started: nothing above it was committable
                prefix_done = None
            expected = o + 1
            if prefix_done is not None:
                prefix_done = max(prefix_done, finish[seq]) if seq in finish else None
            if o < committed[p]:
                continue
            report.again += 1
            report.seqs.add(seq)
            if seq not in finish:
                report.in_flight += 1
            elif prefix_done is None:
                report.held += 1
            else:
                report.lagging += 1
                lag = at - prefix_done
                report.max_lag = max(report.max_lag, lag)
                if lag > lag_bound:
                    report.unexplained.append((p, o))
                    report.seqs.discard(seq)
    return report


def committable_since(
    events: list[dict],
    where: dict[int, tuple[int, int]],
    started_from: dict[int, int] | None = None,
) -> dict[int, list[float]]:
    """Per partition, for each offset from where the run started: when that record and every
    record before it had finished (inf: not all of them ever did)."""
    finish: dict[int, float] = {}
    for e in events:
        if e["ev"] != "start":
            finish.setdefault(e["seq"], e["t"])
    offsets: dict[int, dict[int, float]] = {}
    for seq, (p, o) in where.items():
        offsets.setdefault(p, {})[o] = finish.get(seq, float("inf"))
    out: dict[int, list[float]] = {}
    for p, by_offset in offsets.items():
        base = (started_from or {}).get(p, 0)
        done, prefix = 0.0, []
        for o in range(base, max(by_offset) + 1):
            done = max(done, by_offset.get(o, float("inf")))
            prefix.append(done)
        out[p] = prefix
    return out


def sampled_lag(
    samples: list[tuple[float, list[int]]],
    since: dict[int, list[float]],
    started_from: dict[int, int] | None = None,
) -> float:
    """The longest time a record had been committable (it and every record before it finished)
    without being committed, over `samples` of (time before reading, committed offsets): what a
    SIGKILL at that moment would have delivered again beyond the in-flight records."""
    worst = 0.0
    for at, offsets in samples:
        for p, prefix in since.items():
            i = max(offsets[p], (started_from or {}).get(p, 0)) - (started_from or {}).get(p, 0)
            if i < len(prefix) and prefix[i] <= at:
                worst = max(worst, at - prefix[i])
    return worst
