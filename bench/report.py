"""Rendering the results: the console table, the ratios, the targets of issues 6 and 14 (`targets`)
and of issue 19, the consumer core (`core_targets`), and BENCHMARKS.md."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .common import Context, fmt

#: metric -> unit hint for formatting
UNITS = {
    "p50 ms": "ms",
    "p99 ms": "ms",
    "peak RSS MB": "",
    "records/s": "",
    "offered/s": "",
    "CPU µs/record": "",
    "committed": "",
}


def cell(values: list[float], metric: str) -> str:
    if not values:
        return "–"
    unit = UNITS.get(metric, "")
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med, unit)
    return f"{fmt(med, unit)} ({fmt(min(values), unit)}–{fmt(max(values), unit)})"


def scenario_tables(ctx: Context) -> list[tuple[str, list[str], list[list[str]]]]:
    """(scenario, header, rows) for each scenario with results, cases in the order they ran."""
    out = []
    scenarios: dict[str, dict[str, list[str]]] = {}
    for scenario, case, metric in ctx.results:
        metrics = scenarios.setdefault(scenario, {}).setdefault(case, [])
        if metric not in metrics:
            metrics.append(metric)
    for scenario, case_metrics in scenarios.items():
        metrics: list[str] = []
        for ms in case_metrics.values():
            metrics += [m for m in ms if m not in metrics]
        header = ["case", *metrics, "runs"]
        rows = []
        for case in case_metrics:
            runs = max(len(ctx.values(scenario, case, m)) for m in metrics)
            rows.append(
                [case, *(cell(ctx.values(scenario, case, m), m) for m in metrics), str(runs)]
            )
        out.append((scenario, header, rows))
    return out


def per_run_ratio(ctx: Context, a: tuple[str, str, str], b: tuple[str, str, str]) -> list[float]:
    """a/b within each run where both were measured (interleaved, so the machine load is shared)."""
    va, vb = ctx.results.get(a, []), ctx.results.get(b, [])
    return [x / y for x, y in zip(va, vb) if x is not None and y]


@dataclass
class Ratio:
    label: str
    values: list[float]


def ratios(ctx: Context) -> list[Ratio]:
    out: list[Ratio] = []
    rs = "records/s"
    cases = {(s, c) for (s, c, m) in ctx.results if m == rs}
    for scenario, case in sorted(cases):
        if scenario == "e2e" and case.startswith("freedom-"):
            handler = case.split()[-1]
            out.append(
                Ratio(
                    f"e2e {case} / faststream {handler}",
                    per_run_ratio(ctx, ("e2e", case, rs), ("e2e", f"faststream {handler}", rs)),
                )
            )
            if handler == "trivial":
                out.append(
                    Ratio(
                        f"e2e {case} / bare trivial (ceiling)",
                        per_run_ratio(ctx, ("e2e", case, rs), ("e2e", "bare trivial", rs)),
                    )
                )
        if scenario == "metrics" and case.endswith(" metrics on"):
            off = case.replace(" metrics on", " metrics off")
            out.append(
                Ratio(
                    f"metrics {case} / {off}",
                    per_run_ratio(ctx, ("metrics", case, rs), ("metrics", off, rs)),
                )
            )
        if scenario == "scaling" and not case.endswith(" workers 1"):
            one = (
                case.rsplit(" ", 2)[0] + " workers 1"
            )  # the same transport, per record, one process
            out.append(
                Ratio(
                    f"scaling {case} / {one}",
                    per_run_ratio(ctx, ("scaling", case, rs), ("scaling", one, rs)),
                )
            )
        if scenario == "retry":
            base = case.replace(" 10% fail once", " trivial")
            out.append(
                Ratio(
                    f"retry {case} / e2e {base}",
                    per_run_ratio(ctx, ("retry", case, rs), ("e2e", base, rs)),
                )
            )
    pub = {"awaited x1000", "publish_batch"}
    for form in sorted(pub):
        out.append(
            Ratio(
                f"publish freedom {form} / faststream {form}",
                per_run_ratio(
                    ctx, ("publish", f"freedom {form}", rs), ("publish", f"faststream {form}", rs)
                ),
            )
        )
        out.append(
            Ratio(
                f"publish freedom {form} / bare (ceiling)",
                per_run_ratio(
                    ctx, ("publish", f"freedom {form}", rs), ("publish", "bare produce+flush", rs)
                ),
            )
        )
    from .scenarios import share  # issue 23: three members of a share group against one

    out.append(
        Ratio(
            f"share {share.THREE} / {share.ONE}",
            per_run_ratio(ctx, ("share", share.THREE, rs), ("share", share.ONE, rs)),
        )
    )
    mem = "peak RSS MB"
    for case in ("freedom-http1-seq slow", "freedom-http1-conc slow"):
        out.append(
            Ratio(
                f"memory {case} / faststream slow",
                per_run_ratio(ctx, ("memory", case, mem), ("memory", "faststream slow", mem)),
            )
        )
    from .scenarios import gopeer  # freedom / the Go peer (issue 14)

    out += gopeer.ratios(ctx)
    return [r for r in out if r.values]


@dataclass
class Target:
    what: str
    goal: str
    measured: str
    status: str  # "met", "missed (by ...)", "not measured (...)"


def _med(ctx: Context, s: str, c: str, m: str) -> float | None:
    return ctx.median(s, c, m)


def targets(ctx: Context) -> list[Target]:
    out: list[Target] = []
    rs = "records/s"

    def at_least(what: str, value: float | None, goal: float, unit: str, why_missing: str) -> None:
        if value is None:
            out.append(Target(what, f"≥ {goal:,.0f} {unit}", "–", f"not measured ({why_missing})"))
            return
        status = (
            "met"
            if value >= goal
            else f"missed by {(goal - value) / goal:.0%} ({goal / value:.1f}x short)"
        )
        out.append(Target(what, f"≥ {goal:,.0f} {unit}", f"{value:,.0f} {unit}", status))

    def skipped(case: str) -> str:
        return ctx.skipped.get(("e2e", case), "not run (see --only)")

    # In-process delivery.
    inproc = [
        c
        for c in ("freedom-inprocess-seq trivial", "freedom-inprocess-conc trivial")
        if _med(ctx, "e2e", c, rs)
    ]
    best_in = max((_med(ctx, "e2e", c, rs) or 0 for c in inproc), default=None)
    fs = _med(ctx, "e2e", "faststream trivial", rs)
    at_least(
        "in-process delivery, trivial handler",
        best_in,
        10_000,
        "records/s",
        skipped("freedom-inprocess-seq trivial"),
    )
    if best_in and fs:
        ratio = best_in / fs
        out.append(
            Target(
                "in-process vs FastStream (same run)",
                "≥ 1.5x",
                f"{ratio:.2f}x",
                "met" if ratio >= 1.5 else f"missed by {(1.5 - ratio) / 1.5:.0%}",
            )
        )
    else:
        out.append(
            Target(
                "in-process vs FastStream (same run)",
                "≥ 1.5x",
                "–",
                f"not measured ({skipped('freedom-inprocess-seq trivial')})",
            )
        )
    # HTTP/1.1 and HTTP/2.
    h1 = {
        c: _med(ctx, "e2e", c, rs)
        for c in ("freedom-http1-seq trivial", "freedom-http1-conc trivial")
    }
    h1_best = max((v for v in h1.values() if v), default=None)
    at_least(
        "HTTP/1.1 delivery, trivial handler (best proxy mode)",
        h1_best,
        4_000,
        "records/s",
        skipped("freedom-http1-seq trivial"),
    )
    h2 = {
        c: _med(ctx, "e2e", c, rs)
        for c in ("freedom-http2-seq trivial", "freedom-http2-conc trivial")
    }
    h2_best = max((v for v in h2.values() if v), default=None)
    if h2_best and h1_best:
        out.append(
            Target(
                "HTTP/2 at least as fast as HTTP/1.1",
                "≥ 1.0x HTTP/1.1",
                f"{h2_best / h1_best:.2f}x",
                "met" if h2_best >= h1_best else f"missed by {(h1_best - h2_best) / h1_best:.0%}",
            )
        )
    else:
        out.append(
            Target(
                "HTTP/2 at least as fast as HTTP/1.1",
                "≥ 1.0x HTTP/1.1",
                "–",
                f"not measured ({skipped('freedom-http2-seq trivial')})",
            )
        )
    # Publishing.
    at_least(
        "batch publish, 100-byte records",
        _med(ctx, "publish", "freedom publish_batch", rs),
        100_000,
        "records/s",
        ctx.skipped.get(("publish", "freedom publish_batch"), "not run"),
    )
    at_least(
        "awaited publish, 1,000 in flight",
        _med(ctx, "publish", "freedom awaited x1000", rs),
        20_000,
        "records/s",
        ctx.skipped.get(("publish", "freedom awaited x1000"), "not run"),
    )
    # Latency in every mode.
    lat_cases = sorted(
        {c for (s, c, m) in ctx.results if s == "latency" and c.startswith("freedom-")}
    )
    for case in lat_cases:
        p99 = _med(ctx, "latency", case, "p99 ms")
        if p99 is None:
            continue
        out.append(
            Target(
                f"p99 latency at half the max rate, {case}",
                "< 50 ms",
                f"{p99:.1f} ms",
                "met" if p99 < 50 else f"missed by {(p99 - 50) / 50:.0%}",
            )
        )
    if not lat_cases:
        out.append(
            Target(
                "p99 latency at half the max rate",
                "< 50 ms",
                "–",
                "not measured (run the latency scenario)",
            )
        )
    # Memory.
    for case in ("freedom-http1-seq slow", "freedom-http1-conc slow"):
        rss = _med(ctx, "memory", case, "peak RSS MB")
        if rss is None:
            continue
        backlog = "100,000 (quick mode)" if ctx.quick else "1,000,000"
        out.append(
            Target(
                f"resident memory, backlog {backlog}, {case}",
                "< 300 MB",
                f"{rss:.0f} MB",
                "met" if rss < 300 else f"missed by {(rss - 300) / 300:.0%}",
            )
        )
    if any(s == "go" for (s, _c, _m) in ctx.results):
        from .scenarios import gopeer  # issue 14: against the Go peer

        out += gopeer.targets(ctx)
    return out


def _missed_by(value: float, goal: float, higher_is_better: bool = True) -> str:
    if higher_is_better:
        return "met" if value >= goal else f"missed by {(goal - value) / goal:.0%}"
    return "met" if value <= goal else f"missed by {(value - goal) / goal:.0%}"


def core_targets(ctx: Context) -> list[Target]:
    """Issue 19's targets (the consumer core): against the Go peer in the same run (the medians of
    the per-run ratios, each from the better of one process and `--workers 2`, named), the direct
    path's CPU per record, p99 latency (the latency scenario) and RSS with a backlog (memory)."""
    from .scenarios import e2e, gopeer

    out: list[Target] = []
    direct = "freedom-direct-conc trivial"

    def vs_go(what: str, goal: float, cases: list[str], peer: str, note: str = "") -> None:
        found = gopeer.best_ratio(ctx, cases, peer)
        goal_text = f"≥ {goal:.1f}x Go{note}"
        if found is None:
            why = gopeer.why_not_measured(ctx, cases, peer)
            out.append(Target(what, goal_text, "–", f"not measured ({why})"))
            return
        value, case = found
        out.append(Target(what, goal_text, f"{value:.2f}x ({case})", _missed_by(value, goal)))

    vs_go(
        "vs Go: direct in-process, trivial, concurrent",
        2.0,
        gopeer.shapes(direct),
        "go trivial",
    )
    vs_go(
        "vs Go: batch delivery over HTTP/1.1 (100 per request)",
        3.0,
        gopeer.shapes(gopeer.BATCH_CASE),
        "go trivial",
    )
    vs_go(
        "vs Go: per-record HTTP/1.1, concurrent, trivial",
        1.0,
        gopeer.shapes("freedom-http1-conc trivial"),
        "go trivial",
    )
    # At the Go peer's concurrency: 500 in flight, so one process (`--workers 2` holds up to 1,000:
    # its 50 ms case is in the ratios, not here).
    vs_go(
        "vs Go: 50 ms handler, max_in_flight 500 (best mode, one process)",
        1.0,
        [
            gopeer.freedom_case(t, "concurrent", "50ms")
            for t, m in gopeer.FREEDOM
            if m == "concurrent"
        ],
        "go 50ms",
    )
    # CPU per record of the direct path (the lower of one process and --workers 2).
    cpu = "CPU µs/record"
    found_cpu = [
        (v, c)
        for c in gopeer.shapes(direct)
        if (v := ctx.median(gopeer.SCENARIO, c, cpu)) is not None
    ]
    if found_cpu:
        value, case = min(found_cpu)
        out.append(
            Target(
                "CPU per record, direct path (trivial, concurrent)",
                "≤ 25 µs",
                f"{value:.0f} µs ({case})",
                _missed_by(value, 25, higher_is_better=False),
            )
        )
    else:
        why = gopeer.why_not_measured(ctx, gopeer.shapes(direct))
        out.append(
            Target(
                "CPU per record, direct path (trivial, concurrent)",
                "≤ 25 µs",
                "–",
                f"not measured ({why})",
            )
        )
    # p99 latency at half the maximum rate: the direct cases, then the worst of every case.
    p99s = {
        c: v
        for (s, c, m) in ctx.results
        if s == "latency" and m == "p99 ms" and c.startswith("freedom-")
        if (v := ctx.median("latency", c, "p99 ms")) is not None
    }
    for handler in ("trivial", "slow"):
        case = e2e.case_name("freedom-direct", handler, "concurrent")
        what = f"p99 latency at half the max rate, {case}"
        if case in p99s:
            out.append(Target(what, "< 50 ms", f"{p99s[case]:.1f} ms", _p99_status(p99s[case])))
        else:
            why = ctx.skipped.get(("latency", case)) or "not run (see --only latency)"
            out.append(Target(what, "< 50 ms", "–", f"not measured ({why})"))
    if p99s:
        worst = max(p99s, key=lambda c: p99s[c])
        out.append(
            Target(
                f"p99 latency at half the max rate, every case ({len(p99s)}; the worst)",
                "< 50 ms",
                f"{p99s[worst]:.1f} ms ({worst})",
                _p99_status(p99s[worst]),
            )
        )
    # Resident memory with a backlog (the memory scenario; its backlog is 100,000 in quick mode).
    rss = {
        c: v
        for (s, c, m) in ctx.results
        if s == "memory" and m == "peak RSS MB" and c.startswith("freedom-")
        if (v := ctx.median("memory", c, "peak RSS MB")) is not None
    }
    what = "RSS with a 1,000,000-record backlog (every freedom case; the largest)"
    if rss:
        worst = max(rss, key=lambda c: rss[c])
        status = "met" if rss[worst] < 300 else f"missed by {(rss[worst] - 300) / 300:.0%}"
        if ctx.quick:
            what = "RSS with a backlog: 100,000 records in quick mode (every freedom case; the largest)"
            status += " at a 100,000-record backlog (quick mode; the target's is 1,000,000)"
        out.append(Target(what, "< 300 MB", f"{rss[worst]:.0f} MB ({worst})", status))
    else:
        out.append(Target(what, "< 300 MB", "–", "not measured (see --only memory)"))
    return out


def _p99_status(p99: float) -> str:
    return "met" if p99 < 50 else f"missed by {(p99 - 50) / 50:.0%}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def console_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def ratio_cell(values: list[float]) -> str:
    med = statistics.median(values)

    def x(v: float) -> str:
        return f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"

    return f"{x(med)}x" if len(values) == 1 else f"{x(med)}x ({x(min(values))}–{x(max(values))})"


def skipped_by_reason(ctx: Context) -> dict[str, list[str]]:
    """Why -> the `scenario / case` names skipped for that reason."""
    out: dict[str, list[str]] = {}
    for (scenario, case), why in ctx.skipped.items():
        out.setdefault(why, []).append(f"{scenario} / {case}")
    return out
