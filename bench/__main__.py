"""The benchmark runner: `python -m bench [--quick] [--only SCENARIO ...] [--runs N] [--profile]`.

Starts its own Apache Kafka broker, runs every case of the selected scenarios once per run,
interleaved (freedom and its peers side by side in each run, so ratios hold on a noisy machine),
prints a table and writes BENCHMARKS.md (quick mode: bench/results/quick.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .common import (
    ROOT,
    BenchError,
    Case,
    Context,
    Kafka,
    Skip,
    machine,
    snapshot_source,
    start_broker,
)
from .report import (
    console_table,
    core_targets,
    ratio_cell,
    ratios,
    scenario_tables,
    skipped_by_reason,
    targets,
)
from .scenarios import SCENARIOS
from .write import write_markdown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="small record counts, a smoke check (a few minutes)"
    )
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs per case; figures are the median and spread (default 3)",
    )
    p.add_argument(
        "--case",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the cases whose name contains TEXT (repeatable)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile the freedom service under load with py-spy (see bench/profile.py)",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="where to write the markdown report "
        "(default BENCHMARKS.md; quick mode bench/results/quick.md)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    p.add_argument(
        "--source",
        choices=("worktree", "head"),
        default="worktree",
        help="the freedom code to measure, frozen for the session: a copy of src/ as it is now "
        "(default), or src/ of the HEAD commit",
    )
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be 1 or more")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_cases(ctx: Context, cases: list[Case]) -> None:
    """Each run: every case once, throughput before the latency cases that use it."""
    ordered = sorted(cases, key=lambda c: c.order)
    for r in range(ctx.runs):
        ctx.run_index = r
        print(f"\n== run {r + 1} of {ctx.runs}", flush=True)
        for case in ordered:
            if (case.scenario, case.name) in ctx.skipped:
                continue
            t0 = time.monotonic()
            try:
                metrics = case.run(ctx)
            except Skip as exc:
                ctx.skipped[(case.scenario, case.name)] = str(exc)
                print(f"  {case.scenario:8} {case.name:34} skipped: {exc}", flush=True)
                continue
            except (BenchError, Exception) as exc:  # noqa: BLE001 - one failed case must not lose the others
                print(f"  {case.scenario:8} {case.name:34} FAILED: {exc}", flush=True)
                traceback.print_exc(limit=3)
                ctx.notes.append(
                    f"run {r + 1}: {case.scenario} / {case.name} failed: {str(exc).splitlines()[0]}"
                )
                continue
            ctx.record(case.scenario, case.name, metrics)
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in metrics.items())
            print(
                f"  {case.scenario:8} {case.name:34} {shown}  [{time.monotonic() - t0:.0f} s]",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    given = argv if argv is not None else sys.argv[1:]
    command = os.environ.get("FREEDOM_BENCH_LAUNCHER", "python -m bench") + (
        " " + shlex.join(given) if given else ""
    )
    selected = args.only or list(SCENARIOS)
    load_at_start = machine()["load"]
    workdir = Path(tempfile.mkdtemp(prefix="freedom-bench-"))
    print(f"bench: work directory {workdir}", flush=True)
    # SIGTERM (and SIGINT, which a background job ignores) stop cleanly: consumers and broker too.
    signal.signal(signal.SIGTERM, _interrupt)
    source = snapshot_source(args.source, workdir)
    print(f"bench: measuring freedom from {source}", flush=True)
    broker = start_broker()
    print(
        f"bench: Apache Kafka at {broker.bootstrap} (started in {broker.start_seconds:.1f} s)",
        flush=True,
    )
    try:
        ctx = Context(Kafka(broker.bootstrap), quick=args.quick, runs=args.runs, workdir=workdir)
        cases = [c for name in selected for c in SCENARIOS[name].cases(ctx)]
        if args.case:
            cases = [c for c in cases if any(t in c.name for t in args.case)]
        run_cases(ctx, cases)
        profile_text = None
        if args.profile:
            from .profile import profile_freedom

            profile_text = profile_freedom(ctx)
    finally:
        broker.close()
    elapsed = datetime.datetime.now(datetime.UTC) - started

    print()
    for scenario, header, rows in scenario_tables(ctx):
        print(f"[{scenario}]  median (min–max) over runs")
        print(console_table(header, rows))
        print()
    rs = ratios(ctx)
    if rs:
        print(
            console_table(
                ["ratio", "median (min–max)"], [[r.label, ratio_cell(r.values)] for r in rs]
            )
        )
        print()
    print(
        console_table(
            ["target", "goal", "measured", "status"],
            [[t.what, t.goal, t.measured, t.status] for t in targets(ctx)],
        )
    )
    print("\nissue 19 (the consumer core):")
    print(
        console_table(
            ["target", "goal", "measured", "status"],
            [[t.what, t.goal, t.measured, t.status] for t in core_targets(ctx)],
        )
    )
    if ctx.skipped:
        print("\nskipped:")
        for why, names in skipped_by_reason(ctx).items():
            print(f"  {why}: {', '.join(names)}")
    for note in ctx.notes:
        print(f"note: {note}")

    output = args.output or (
        ROOT / "bench" / "results" / "quick.md" if args.quick else ROOT / "BENCHMARKS.md"
    )
    at_end = machine()
    at_end["load"] = f"{load_at_start} at the start, {at_end['load'].split(' (')[0]} at the end"
    write_markdown(
        output,
        ctx,
        machine=at_end,
        command=command,
        started=started,
        elapsed=elapsed,
        selected=selected,
        profile=profile_text,
        source=source,
    )
    print(f"\nbench: wrote {output}")
    if args.keep:
        print(f"bench: logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
