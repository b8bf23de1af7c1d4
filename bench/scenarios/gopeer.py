"""The Go peer (issue 14): freedom against a consumer proxy built the way the Go original works.

The Go peer is `bench/go_peer` (`gopeer`): a sarama consumer group, a pool of 500 delivery
goroutines, a keep-alive `net/http` client posting each record to a `net/http` handler in the same
process, offsets marked only after a record and every earlier one of its partition were delivered;
and a publish route (GET → sarama SyncProducer, answered once acknowledged). It is built once per
session with the `go` on PATH; without Go its cases are skipped, with the reason in the report.

The same workload for the Go peer and for every freedom delivery mode (HTTP/1.1, HTTP/2 and
in-process, each sequential and concurrent), within each run one after the other. In-process comes
two ways (issue 19): `freedom-inprocess-*` is the in-process ASGI call (`[consumer]
inprocess_dispatch = "asgi"`), `freedom-direct-*` the direct invoker (`inprocess_dispatch =
"direct"`: the handler called without the ASGI stack), concurrent only; where the measured code does
not accept the key the direct cases are skipped, with the reason in the report:

- `trivial`: N 100-byte records pre-loaded into 6 partitions (50,000; quick 10,000), the trivial
  JSON handler; records/s from the first handled record until the group committed all N, and CPU
  per record (`measure_throughput`). Also freedom's batch delivery (100 records per request).
- `50ms`: the handler sleeps 50 ms (`BENCH_SLOW_MS=50`): 20,000 records (quick 5,000); sequential
  modes, at most 6 records at a time, get 1,200 (quick 300). The concurrent modes are set to
  `max_in_flight = 500` (explicitly; it is also the default), the Go peer's 500 workers.
- `publish route`: GET → publish one 100-byte record → answer once acknowledged, 50 keep-alive
  clients (`gopeer load`, the same load generator for both) sending 30,000 requests (quick 5,000)
  after one warm-up each; requests/s, and the service's CPU per request.

The targets allow `freedom run --workers N` on the same cores, so HTTP/1.1 concurrent (trivial and
50 ms), in-process concurrent (ASGI and direct), batch and the publish route are also measured with
`--workers 2` (each worker with its own `max_in_flight`)
(`... workers 2`): the service is started on a new 6-partition topic, the group settles (both
workers hold partitions), then the same N records are produced at once, so the span measured is not
the second worker's join.

Ratios are freedom / Go within each run (see `ratios`), and the issues' targets (`targets` for
issue 14, `core_targets` for issue 19), each from the better of one process and `--workers 2`,
named in the report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..common import (
    ROOT,
    BenchError,
    Case,
    Consumer,
    Context,
    Skip,
    dispatch_unsupported,
    freedom_service,
    inprocess_unsupported,
    measure_throughput,
    new_group,
    spawn,
    tail,
)
from ..report import Ratio, Target, per_run_ratio

SCENARIO = "go"
PARTITIONS = 6
SLOW_MS = 50
#: in-flight deliveries of the concurrent modes with the 50 ms handler: the Go peer's 500 workers
MAX_IN_FLIGHT = 500
PUBLISH_CLIENTS = 50
#: freedom's delivery transports x the consumer proxy's modes (as the e2e scenario)
FREEDOM = [
    ("http1", "sequential"),
    ("http1", "concurrent"),
    ("http2", "sequential"),
    ("http2", "concurrent"),
    ("inprocess", "sequential"),
    ("inprocess", "concurrent"),
    ("direct", "concurrent"),
]
#: transport -> (in-process?, `[consumer] inprocess_dispatch`)
IN_PROCESS = {"inprocess": "asgi", "direct": "direct"}
SHORT_MODE = {"sequential": "seq", "concurrent": "conc"}
GO_PEER_SRC = ROOT / "bench" / "go_peer"
GO_PEER_BIN = ROOT / ".cache" / "go-peer" / "gopeer"

_built: tuple[Path | None, str] | None = None  # (binary, why not) once build_go_peer ran
_go_version = ""  # `go version` of the toolchain that built it


def describe() -> str | None:
    """The report's line on the Go peer: what built it and its settings (None: the scenario did not run)."""
    if _built is None:
        return None
    if _built[0] is None:
        return f"not measured: {_built[1]}"
    sarama = next(
        (
            line.split()[-1]
            for line in (GO_PEER_SRC / "go.mod").read_text().splitlines()
            if line.strip().startswith("github.com/IBM/sarama ")
        ),
        "?",
    )
    return (
        f"`bench/go_peer` built with {_go_version.removeprefix('go version ')}, IBM/sarama {sarama}; 500 delivery "
        "goroutines, one keep-alive net/http client (500 idle connections) and the net/http handler in one "
        "process; sarama tuned: auto-commit every 100 ms (default 1 s), fetch 4 MiB per partition (1 MiB), "
        "channel buffer 4,096 (256), max processing time 1 s (100 ms), go-metrics off; publish route: "
        "SyncProducer, acks=all, idempotent, lz4 (freedom's producer defaults)"
    )


def build_go_peer() -> tuple[Path | None, str]:
    """Build `bench/go_peer` (once per session) with the `go` on PATH: (binary, "") or (None, why not)."""
    global _built
    if _built is not None:
        return _built
    go = shutil.which("go")
    if go is None:
        _built = (None, "Go is not installed (no `go` on PATH): the Go peer was not built")
        print(
            f"bench: SKIPPING the Go peer: {_built[1]}; install Go >= 1.26 to measure it",
            flush=True,
        )
        return _built
    GO_PEER_BIN.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        global _go_version
        version = _go_version = subprocess.run(
            [go, "version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        # GOTOOLCHAIN=local: never download another toolchain; -mod=readonly: go.sum as committed.
        result = subprocess.run(
            [go, "build", "-mod=readonly", "-trimpath", "-o", str(GO_PEER_BIN), "."],
            cwd=GO_PEER_SRC,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _built = (None, f"building the Go peer failed ({type(exc).__name__}: {exc})")
    else:
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            _built = (None, f"building the Go peer (bench/go_peer) failed: {last}")
        else:
            _built = (GO_PEER_BIN, "")
            print(
                f"bench: built the Go peer (bench/go_peer, {version}) in {time.monotonic() - t0:.0f} s",
                flush=True,
            )
    if _built[0] is None:
        print(f"bench: SKIPPING the Go peer: {_built[1]}", flush=True)
    return _built


def go_binary() -> Path:
    binary, why = build_go_peer()
    if binary is None:
        raise Skip(why)
    return binary


def records(ctx: Context, handler: str, mode: str = "concurrent") -> int:
    if handler == "trivial":
        return ctx.size(50_000, 10_000)
    return ctx.size(20_000, 5_000) if mode == "concurrent" else ctx.size(1_200, 300)


def topic_for(ctx: Context, handler: str, mode: str = "concurrent") -> tuple[str, int]:
    n = records(ctx, handler, mode)
    return ctx.preloaded(f"go-{handler}", n, partitions=PARTITIONS), n


# ----------------------------------------------------------------------------- consuming


def _go_consume(handler: str) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        binary = go_binary()
        topic, n = topic_for(ctx, handler)
        group = new_group("gopeer")
        cmd = [
            str(binary),
            "consume",
            "-brokers",
            ctx.kafka.bootstrap,
            "-topic",
            topic,
            "-group",
            group,
            "-expect",
            str(n),
            "-workers",
            "500",
            "-slow-ms",
            str(SLOW_MS if handler == "50ms" else 0),
        ]
        peer = spawn(
            f"go-peer-{handler}-{ctx.run_index}",
            cmd,
            ctx.workdir / f"go-peer-{handler}-{ctx.run_index}",
            {},
        )
        return measure_throughput(ctx, peer, group, topic, n)

    return run


def _freedom_consume(
    transport: str, mode: str, handler: str, batch: int = 0, workers: int = 1
) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        if transport in IN_PROCESS and (reason := inprocess_unsupported()):
            raise Skip(reason)
        if transport == "direct" and (reason := dispatch_unsupported()):
            raise Skip(reason)
        if batch:
            import freedom

            if not hasattr(freedom, "BatchSettings"):
                raise Skip(
                    "batch delivery (freedom.BatchSettings) does not exist in the measured code"
                )
        group = new_group("freedom")
        if workers > 1:
            # The records are produced once every worker holds partitions, so the span measured is
            # not the rebalance the second worker's join causes (as the scaling scenario does).
            n = records(ctx, handler, mode)
            topic = ctx.kafka.new_topic(f"bench-go-{handler}-workers", PARTITIONS)
        else:
            topic, n = topic_for(ctx, handler, mode)
        env = {"BENCH_SLOW_MS": str(SLOW_MS)} if handler == "50ms" else {}
        # The concurrent modes hold up to 500 records at once (explicit, though it is the default):
        # the Go peer's 500 workers; with --workers 2 each worker has its own 500.
        extra = {"max_in_flight": MAX_IN_FLIGHT} if mode == "concurrent" else {}
        if batch:
            env["BENCH_BATCH"] = str(batch)
        name = (
            f"go-freedom-{transport}-{mode}-{handler}{'-batch' if batch else ''}"
            f"{f'-w{workers}' if workers > 1 else ''}-{ctx.run_index}"
        )
        service = freedom_service(
            ctx,
            name,
            topic,
            group,
            handler="slow" if handler == "50ms" else "trivial",
            mode=mode,
            expect=n,
            http2=transport == "http2",
            inprocess=transport in IN_PROCESS,
            dispatch=IN_PROCESS.get(transport, "asgi"),
            extra=extra,
            env=env,
            workers=workers,
        )
        if workers > 1:
            from .scaling import settle_then_produce

            settle_then_produce(ctx, service, group, workers, topic, n)
        if transport == "http2":
            from .e2e import http2_unsupported

            try:
                service.wait_probe(
                    lambda s: s.get("count", 0) >= 1, 20, "the first delivery over HTTP/2"
                )
            except BenchError:
                if service.proc.poll() is not None:
                    raise
                reason = http2_unsupported(f"http://127.0.0.1:{service.port}")
                service.stop()
                raise Skip(reason or "no delivery over HTTP/2 within 20 s") from None
        return measure_throughput(
            ctx, service, group, topic, n, dispatch=IN_PROCESS.get(transport, "")
        )

    return run


# ----------------------------------------------------------------------------- the publish path


def _wait_listening(server: Consumer, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"{server.name} is not listening on {port} after {timeout:.0f} s; log {server.log_path}:\n"
                f"{tail(server.log_path)}"
            )
        time.sleep(0.05)


def _publish(kind: str, workers: int = 1) -> Callable[[Context], dict[str, float]]:
    def run(ctx: Context) -> dict[str, float]:
        binary = go_binary()  # the load generator is the Go peer's, for both
        from freedom.testing import free_port, write_config

        n = ctx.size(30_000, 5_000)
        topic = ctx.kafka.new_topic("bench-go-publish")
        port = free_port()
        name = f"go-publish-{kind}{f'-w{workers}' if workers > 1 else ''}-{ctx.run_index}"
        workdir = ctx.workdir / name
        if kind == "go":
            cmd = [
                str(binary),
                "publish",
                "-brokers",
                ctx.kafka.bootstrap,
                "-topic",
                topic,
                "-addr",
                f"127.0.0.1:{port}",
            ]
        else:
            conf = write_config(
                workdir / "conf",
                app={"listen_addr": f"127.0.0.1:{port}", "log_level": "WARNING"},
                kafka={
                    "producer": {"open": True},
                    "producer_clients": [{"servers": [ctx.kafka.bootstrap]}],
                },
            )
            cmd = [
                sys.executable,
                "-m",
                "freedom",
                "run",
                "freedom_publish_app:app",
                "--config",
                str(conf),
            ]
            if workers > 1:
                cmd += ["--workers", str(workers)]
        server = spawn(name, cmd, workdir, {"BENCH_TOPIC": topic})
        try:
            _wait_listening(server, port)
            url = f"http://127.0.0.1:{port}/bench/publish"
            warm = subprocess.run(
                [str(binary), "load", "-url", url, "-clients", "1", "-requests", "1"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if warm.returncode != 0:
                raise BenchError(
                    f"{name}: the warm-up request failed: {warm.stderr.strip()}; log {server.log_path}:\n"
                    f"{tail(server.log_path)}"
                )
            cpu0 = server.cpu_seconds()
            result = subprocess.run(
                [
                    str(binary),
                    "load",
                    "-url",
                    url,
                    "-clients",
                    str(PUBLISH_CLIENTS),
                    "-requests",
                    str(n),
                ],
                capture_output=True,
                text=True,
                timeout=600,
            )
            cpu1 = server.cpu_seconds()
            server.check_alive()
            if result.returncode != 0:
                raise BenchError(
                    f"{name}: load failed: {result.stderr.strip()}; log {server.log_path}:\n"
                    f"{tail(server.log_path)}"
                )
            out = json.loads(result.stdout.strip().splitlines()[-1])
            return {
                "requests/s": out["requests"] / out["seconds"],
                "CPU µs/request": (cpu1 - cpu0) / max(1, out["requests"]) * 1e6,
            }
        finally:
            server.stop()

    return run


# ----------------------------------------------------------------------------- cases, ratios, targets


def freedom_case(transport: str, mode: str, handler: str) -> str:
    return f"freedom-{transport}-{SHORT_MODE[mode]} {handler}"


BATCH_CASE = "freedom-http1-conc trivial batch 100"
#: `freedom run --workers N` cases (the targets allow workers on the same cores): N service processes
WORKERS = 2
W = f" workers {WORKERS}"


def cases(ctx: Context) -> list[Case]:
    build_go_peer()  # the build (or the skip line) before the first run
    out: list[Case] = []
    for handler in ("trivial", "50ms"):
        out.append(Case(SCENARIO, f"go {handler}", _go_consume(handler)))
        out += [
            Case(SCENARIO, freedom_case(t, m, handler), _freedom_consume(t, m, handler))
            for t, m in FREEDOM
        ]
        out.append(
            Case(
                SCENARIO,
                freedom_case("http1", "concurrent", handler) + W,
                _freedom_consume("http1", "concurrent", handler, workers=WORKERS),
            )
        )
        if handler == "trivial":
            out += [
                Case(
                    SCENARIO,
                    freedom_case(t, "concurrent", handler) + W,
                    _freedom_consume(t, "concurrent", handler, workers=WORKERS),
                )
                for t in ("inprocess", "direct")
            ]
            out.append(
                Case(
                    SCENARIO,
                    BATCH_CASE,
                    _freedom_consume("http1", "concurrent", "trivial", batch=100),
                )
            )
            out.append(
                Case(
                    SCENARIO,
                    BATCH_CASE + W,
                    _freedom_consume("http1", "concurrent", "trivial", batch=100, workers=WORKERS),
                )
            )
    out.append(Case(SCENARIO, "go publish route", _publish("go")))
    out.append(Case(SCENARIO, "freedom publish route", _publish("freedom")))
    out.append(Case(SCENARIO, "freedom publish route" + W, _publish("freedom", workers=WORKERS)))
    return out


def ratios(ctx: Context) -> list[Ratio]:
    """freedom / Go, per run, for every freedom case of this scenario (the same handler)."""
    out: list[Ratio] = []
    rs = "records/s"
    for scenario, case, metric in ctx.results:
        if scenario != SCENARIO or metric != rs or not case.startswith("freedom-"):
            continue
        handler = case.split(" ")[1]
        out.append(
            Ratio(
                f"go-peer {case} / go {handler}",
                per_run_ratio(ctx, (SCENARIO, case, rs), (SCENARIO, f"go {handler}", rs)),
            )
        )
    req = "requests/s"
    for case in ("freedom publish route", "freedom publish route" + W):
        out.append(
            Ratio(
                f"go-peer {case} / go publish route",
                per_run_ratio(ctx, (SCENARIO, case, req), (SCENARIO, "go publish route", req)),
            )
        )
    return [r for r in out if r.values]


def median_ratio(ctx: Context, a: str, b: str, metric: str = "records/s") -> float | None:
    """The median over runs of case `a` / case `b` within each run (None: never both measured)."""
    import statistics

    vals = per_run_ratio(ctx, (SCENARIO, a, metric), (SCENARIO, b, metric))
    return statistics.median(vals) if vals else None


def best_ratio(
    ctx: Context, cases: list[str], peer: str, metric: str = "records/s"
) -> tuple[float, str] | None:
    """The best median ratio of `cases` against `peer`, and which case (one process or workers)."""
    found = [(r, c) for c in cases if (r := median_ratio(ctx, c, peer, metric)) is not None]
    return max(found) if found else None


def shapes(case: str) -> list[str]:
    """The case in one process and with `--workers 2`."""
    return [case, case + W]


def shape(case: str) -> str:
    return f"--workers {WORKERS}" if case.endswith(W) else "one process"


def why_not_measured(ctx: Context, cases: list[str], peer: str = "go trivial") -> str:
    """Why none of `cases` has a ratio: the Go peer's skip, a case's skip, or not run."""
    for case in (peer, *cases):
        if (why := ctx.skipped.get((SCENARIO, case))) is not None:
            return why
    return "not run (see --only go)"


def targets(ctx: Context) -> list[Target]:
    """Issue 14's targets against the Go peer, from the medians of the per-run ratios."""

    def best(cases: list[str], peer: str, metric: str = "records/s") -> tuple[float, str] | None:
        return best_ratio(ctx, cases, peer, metric)

    rows = [
        (
            "vs Go: HTTP/1.1 per record, concurrent, trivial",
            1.0,
            best(shapes("freedom-http1-conc trivial"), "go trivial"),
        ),
        (
            "vs Go: in-process delivery, trivial (best mode)",
            1.5,
            best(
                ["freedom-inprocess-seq trivial", *shapes("freedom-inprocess-conc trivial")],
                "go trivial",
            ),
        ),
        (
            "vs Go: batch delivery over HTTP/1.1 (100 per request)",
            3.0,
            best(shapes(BATCH_CASE), "go trivial"),
        ),
        (
            "vs Go: 50 ms handler, HTTP/1.1 concurrent",
            1.0,
            best(shapes("freedom-http1-conc 50ms"), "go 50ms"),
        ),
        (
            "vs Go: publish path (GET → publish, 50 clients)",
            1.0,
            best(shapes("freedom publish route"), "go publish route", "requests/s"),
        ),
    ]
    out: list[Target] = []
    for what, goal, found in rows:
        if found is None:
            why = ctx.skipped.get((SCENARIO, "go trivial")) or "not run (see --only go)"
            out.append(Target(what, f"≥ {goal:.1f}x Go", "–", f"not measured ({why})"))
        else:
            value, case = found
            status = "met" if value >= goal else f"missed by {(goal - value) / goal:.0%}"
            out.append(Target(what, f"≥ {goal:.1f}x Go", f"{value:.2f}x ({shape(case)})", status))
    return out
