"""Writing the markdown report (BENCHMARKS.md): machine, command, results, ratios, targets, notes."""

from __future__ import annotations

import datetime
from pathlib import Path

from .common import ROOT, Context
from .report import (
    core_targets,
    markdown_table,
    ratio_cell,
    ratios,
    scenario_tables,
    skipped_by_reason,
    targets,
)
from .scenarios import gopeer

NOTES = ROOT / "bench" / "notes.md"

SCENARIO_TITLES = {
    "e2e": "End-to-end throughput (publish → handler completion, with commits)",
    "latency": "Latency at half the measured maximum rate (publish → handler)",
    "publish": "Publish throughput (100-byte records, every one acknowledged)",
    "retry": "Retry path: 10% of the records fail once (retry_count = 1, retry_interval_sec = 0)",
    "memory": "Memory: peak resident set size with a backlog and a 5 ms handler",
    "metrics": "Metrics on vs off (trivial handler, concurrent; the hot-path hooks as no-ops for off)",
    "go": "Against the Go peer (bench/go_peer: sarama, 500 workers, net/http; 6 partitions; publish route with 50 clients)",
    "share": "Share groups: 3 instances vs 1 on one partition (20 ms handler, max_in_flight 20 each)",
    "scaling": "Scaling: --workers 1 vs 2, and batch delivery (100 per request) vs per record (6 partitions, trivial, concurrent)",
}


def write_markdown(
    path: Path,
    ctx: Context,
    *,
    machine: dict[str, str],
    command: str,
    started: datetime.datetime,
    elapsed: datetime.timedelta,
    selected: list[str],
    profile: str | None,
    source: str,
) -> None:
    mode = (
        "quick (small record counts: a smoke check, not figures to quote)" if ctx.quick else "full"
    )
    lines = [
        "# Benchmarks",
        "",
        "Written by the benchmark suite (`bench/`); do not edit by hand: the hand-written part comes from "
        "`bench/notes.md`.",
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {started:%Y-%m-%d %H:%M} UTC, took {elapsed.total_seconds() / 60:.0f} min",
        f"- **Mode:** {mode}; {ctx.runs} runs per case, interleaved (every case once per run, freedom and its "
        "peers side by side); each figure is the **median (min–max)** over the runs",
        f"- **Scenarios:** {', '.join(selected)}",
        f"- **Code measured:** freedom from {source}",
        f"- **Machine:** {machine['cores']} cores ({machine['cpu']}), {machine['memory']} memory, {machine['os']}; "
        f"load average {machine['load']}",
        f"- **Python:** {machine['python']}; {machine['libraries']}",
        f"- **Kafka:** {machine['kafka']}",
        *([f"- **Go peer:** {go}"] if (go := gopeer.describe()) else []),
        "",
        f"Caveat: the broker, the producer and the consumer under test share the machine's {machine['cores']} cores "
        "(and the machine may be shared with other work: its load average is above). Absolute "
        "figures are noisy; the ratios within one run are the more reliable numbers.",
        "",
    ]
    for scenario, header, rows in scenario_tables(ctx):
        lines += [
            f"## {SCENARIO_TITLES.get(scenario, scenario)}",
            "",
            markdown_table(header, rows),
            "",
        ]
    rs = ratios(ctx)
    if rs:
        lines += [
            "## Ratios (per run, then the median over runs)",
            "",
            markdown_table(
                ["ratio", "median (min–max)"], [[r.label, ratio_cell(r.values)] for r in rs]
            ),
            "",
        ]
    lines += [
        "## Targets (issues 6 and 14)",
        "",
        markdown_table(
            ["target", "goal", "measured", "status"],
            [[t.what, t.goal, t.measured, t.status] for t in targets(ctx)],
        ),
        "",
        "## Targets (issue 19: the consumer core)",
        "",
        "Against the Go peer in the same run (medians of the per-run ratios); each row from the "
        "better of one process and `--workers 2`, the case named (the 50 ms row: one process, at "
        "the Go peer's 500 in flight). `freedom-direct-*` is the direct invoker "
        '(`[consumer] inprocess_dispatch = "direct"`), `freedom-inprocess-*` the in-process ASGI '
        'call (`inprocess_dispatch = "asgi"`).',
        "",
        markdown_table(
            ["target", "goal", "measured", "status"],
            [[t.what, t.goal, t.measured, t.status] for t in core_targets(ctx)],
        ),
        "",
    ]
    if ctx.skipped:
        lines += ["## Skipped", ""]
        lines += [f"- {why}: {', '.join(names)}" for why, names in skipped_by_reason(ctx).items()]
        lines.append("")
    if ctx.notes:
        lines += ["## Failures during this run", ""] + [f"- {n}" for n in ctx.notes] + [""]
    if profile:
        lines += ["## Profile of the freedom service under load (this run)", "", profile, ""]
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
