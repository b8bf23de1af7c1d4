"""Before/after CPU per record of two freedom sources, side by side in one run: `python -m bench.ab`.

A change to the hot path is judged by the CPU the service spends per record (process CPU time
over the measured span, less sensitive to the machine's load than records/s). This runs the Go
scenario's freedom cases (`bench/scenarios/gopeer.py`: 50,000 records pre-loaded into 6
partitions, the trivial handler, HTTP/1.1 concurrent, in-process ASGI and direct; the 50 ms handler over
HTTP/1.1; batch delivery, 100 records per request, and `--workers 2`, over HTTP/1.1; the GET → publish route with 50 keep-alive clients) once per source per run,
alternating the sources within each run, on one Apache Kafka broker, and prints the medians.

    python -m bench.ab --base <commit> [--runs 3] [--quick] [--case http1] [--profile]

`--base` is a commit whose `src/` is the "before"; the "after" is the working tree's `src/` as
it is when the run starts. `--profile` instead samples the after-source's service with py-spy
(the three paths) and prints the functions with the most samples (own time, then inclusive).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import common
from .common import ROOT, Context, Kafka, machine, start_broker

CASES = {
    "http1 concurrent trivial": ("http1", "concurrent", "trivial"),
    "inprocess concurrent trivial": ("inprocess", "concurrent", "trivial"),
    # the direct invoker (issue 19); a source without `inprocess_dispatch` shows it as FAILED (skip)
    "direct concurrent trivial": ("direct", "concurrent", "trivial"),
    "http1 concurrent 50ms": ("http1", "concurrent", "50ms"),
    "http1 concurrent trivial batch 100": ("http1", "concurrent", "trivial", 100),
    "http1 concurrent trivial workers 2": ("http1", "concurrent", "trivial", 0, 2),
    "publish route": None,
}


def snapshot(commit: str | None, dest: Path) -> Path:
    """`src/` of `commit` (None: the working tree) copied under `dest`; returns the src path."""
    dest.mkdir(parents=True, exist_ok=True)
    if commit is None:
        shutil.copytree(
            ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    else:
        archive = subprocess.run(
            ["git", "archive", commit, "src"], cwd=ROOT, stdout=subprocess.PIPE, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def runner(name: str) -> Callable[[Context], dict[str, float]]:
    from .scenarios import gopeer

    spec = CASES[name]
    if spec is None:
        return gopeer._publish("freedom")
    return gopeer._freedom_consume(*spec)


def _newest_child(after: set[int]) -> int | None:
    """The pid of a `python -m freedom run` process started since `after` was taken."""
    out = subprocess.run(
        ["pgrep", "-f", "-m freedom run"], stdout=subprocess.PIPE, text=True
    ).stdout.split()
    new = [int(p) for p in out if int(p) not in after]
    return max(new) if new else None


def profile(ctx: Context, name: str, seconds: float) -> None:
    """Run case `name` once while py-spy samples its service for `seconds`; print the top frames."""
    raw = ctx.workdir / f"profile-{name.replace(' ', '-')}.txt"
    before = set(
        int(p)
        for p in subprocess.run(
            ["pgrep", "-f", "-m freedom run"], stdout=subprocess.PIPE, text=True
        ).stdout.split()
    )
    done = threading.Event()

    def sample() -> None:
        pid = None
        while pid is None and not done.is_set():
            pid = _newest_child(before)
            time.sleep(0.2)
        if pid is None:
            return
        time.sleep(1.5)  # past start-up
        subprocess.run(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--duration",
                str(int(seconds)),
                "--nonblocking",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        print(f"{name}: {runner(name)(ctx)}", flush=True)
    finally:
        done.set()
        t.join(timeout=seconds + 30)
    if not raw.exists():
        print(f"{name}: no samples", flush=True)
        return
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"--- {name}: {total} samples; own time")
    for f, n in own.most_common(40):
        print(f"{n / total * 100:5.1f}%  {f}")
    print(f"--- {name}: inclusive (freedom frames)")
    for f, n in [(f, n) for f, n in incl.most_common(400) if "freedom/" in f][:40]:
        print(f"{n / total * 100:5.1f}%  {f}")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab")
    p.add_argument("--base", help="the commit measured as 'before' (its src/)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--case", action="append", default=[], help="only the cases whose name contains this"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample the working tree's service with py-spy instead",
    )
    args = p.parse_args()
    names = [n for n in CASES if not args.case or any(c in n for c in args.case)]
    workdir = Path(tempfile.mkdtemp(prefix="freedom-ab-"))
    after = snapshot(None, workdir / "after")
    before = snapshot(args.base, workdir / "before") if args.base and not args.profile else None
    sys.path.insert(0, str(after))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    load0 = machine()["load"]
    print(
        f"ab: HEAD {commit}; before = {args.base}; after = the working tree; load {load0}",
        flush=True,
    )
    broker = start_broker()
    try:
        ctx = Context(Kafka(broker.bootstrap), quick=args.quick, runs=args.runs, workdir=workdir)
        if args.profile:
            common._source = after
            for name in names:
                profile(ctx, name, 6 if not args.quick else 3)
            return 0
        sources = [("before", before), ("after", after)] if before else [("after", after)]
        results: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
        for r in range(args.runs):
            ctx.run_index = r
            order = sources if r % 2 == 0 else sources[::-1]
            for name in names:
                for label, src in order:
                    common._source = src
                    try:
                        metrics = runner(name)(ctx)
                    except Exception as exc:  # noqa: BLE001 - one failed case must not lose the others
                        print(
                            f"  run {r + 1} {label:6} {name:30} FAILED: {str(exc).splitlines()[0]}",
                            flush=True,
                        )
                        continue
                    for k, v in metrics.items():
                        results[(name, label, k)].append(v)
                    shown = ", ".join(f"{k} {v:,.1f}" for k, v in metrics.items())
                    print(f"  run {r + 1} {label:6} {name:30} {shown}", flush=True)
    finally:
        broker.close()
    load1 = machine()["load"]
    print(f"\nab: {machine()}\nload at the start {load0}; at the end {load1}")
    print(f"{'case':32} {'metric':16} {'before':>24} {'after':>24}")
    for name in names:
        for metric in sorted({k for (n, _, k) in results if n == name}):
            cells = []
            for label in ("before", "after"):
                vals = results.get((name, label, metric), [])
                cells.append(
                    f"{statistics.median(vals):,.1f} ({min(vals):,.0f}–{max(vals):,.0f})"
                    if vals
                    else "-"
                )
            print(f"{name:32} {metric:16} {cells[0]:>24} {cells[1]:>24}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
