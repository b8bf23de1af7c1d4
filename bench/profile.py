"""Where the freedom service spends its CPU while delivering: py-spy samples of every thread.

`python -m bench --profile` (or `--only e2e --profile`) starts the freedom service on a
pre-loaded backlog (trivial handler; HTTP/1.1 in sequential and concurrent proxy modes, h2c and
in-process in concurrent mode), attaches `py-spy record` to it for a while, and sums the sampled
stacks into the stages of the delivery path: fetch (librdkafka consume), dispatch
(group/proxy/offset bookkeeping), the HTTP call (client side: freedom's HTTP/1.1 connections or
pyreqwest for h2c; server side: uvicorn, or granian for h2c), the web layer (Starlette/FastAPI
and freedom's controllers), the handler, commit, publish, and the bare event loop. A sample is
charged to the nearest frame, walking from the innermost outwards, that belongs to a stage;
library frames shared by both sides (asyncio, json, ...) are skipped in that walk. Percentages
are of the samples in which a Python thread was running (py-spy leaves out idle threads, and
threads without Python frames, such as the Rust runtimes of pyreqwest and granian, are not
sampled at all); "other" is samples with no Python frame py-spy could attribute.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import time
from pathlib import Path

from .common import Context, freedom_service, inprocess_unsupported, new_group

#: (stage, path fragment, function names or None for any), checked in order for each frame
STAGES: list[tuple[str, str, tuple[str, ...] | None]] = [
    ("handler (the benchmark's own code)", "/freedom_app.py", None),
    ("handler (the benchmark's own code)", "/bench_probe.py", None),
    ("commit", "freedom/kafka/consumer/sources/kafka.py", ("_commit", "_on_commit")),
    ("commit", "freedom/kafka/consumer/ledger.py", None),
    (
        "fetch (consume, pause/resume)",
        "freedom/kafka/consumer/sources/kafka.py",
        ("_round", "_pump", "_call"),
    ),
    ("dispatch (group/proxy/offsets)", "freedom/kafka/consumer/group.py", None),
    ("dispatch (group/proxy/offsets)", "freedom/kafka/consumer/lanes.py", None),
    ("dispatch (group/proxy/offsets)", "freedom/kafka/consumer/slots.py", None),
    ("dispatch (group/proxy/offsets)", "freedom/kafka/consumer/proxy.py", None),
    ("dispatch (group/proxy/offsets)", "freedom/kafka/consumer/batch_path.py", None),
    ("dispatch (group/proxy/offsets)", "freedom/kafka/consumer/retry.py", None),
    ("dispatch (group/proxy/offsets)", "freedom/kafka/consumer/copy_producer.py", None),
    ("in-process call (freedom direct invoker)", "freedom/kafka/transports/direct.py", None),
    ("in-process call (freedom direct invoker)", "freedom/web/direct.py", None),
    ("publish (producer)", "freedom/kafka/producer.py", None),
    ("publish (producer)", "freedom/kafka/producing/", None),
    ("HTTP client (freedom delivery.py)", "freedom/kafka/consumer/delivery.py", None),
    ("in-process call (freedom transports/asgi.py)", "freedom/kafka/transports/asgi.py", None),
    ("HTTP client (freedom transports)", "freedom/kafka/transports/", None),
    ("HTTP client (pyreqwest, h2c)", "/pyreqwest/", None),
    ("HTTP client (httpx/httpcore)", "/httpx/", None),
    ("HTTP client (httpx/httpcore)", "/httpcore/", None),
    ("HTTP server (uvicorn)", "/uvicorn/", None),
    ("HTTP server (granian/hypercorn, h2c)", "/granian/", None),
    ("HTTP server (granian/hypercorn, h2c)", "/hypercorn/", None),
    ("web layer (Starlette/FastAPI/pydantic)", "/starlette/", None),
    ("web layer (Starlette/FastAPI/pydantic)", "/fastapi/", None),
    ("web layer (Starlette/FastAPI/pydantic)", "/pydantic", None),
    ("web layer (freedom controllers/runtime)", "/freedom/", None),
    ("logging", "/logging/", None),
    ("imports at run time (importlib)", "<frozen importlib", None),
    ("imports at run time (importlib)", "/_distutils_hack/", None),
]
#: frames that say nothing about the stage: the process's roots (anywhere in the path) ...
SKIP_ANYWHERE = ("/freedom/runner/server.py", "/freedom/cli/main.py", "<frozen runpy>")
#: ... and shared libraries and the loop machinery (py-spy shows these paths package-relative)
SKIP_PREFIXES = (
    "/h11/",
    "/h2/",
    "/hpack/",
    "/anyio/",
    "/sniffio/",
    "/asyncio/",
    "/concurrent/",
    "/threading.py",
    "/selectors.py",
    "/json/",
    "/contextlib.py",
    "/typing.py",
    "/functools.py",
    "/enum.py",
    "/socket.py",
    "/ssl.py",
    "/email/",
    "/urllib/",
    "/re/",
    "/http/",
    "/dataclasses.py",
    "/queue.py",
)


def _frame_parts(frame: str) -> tuple[str, str]:
    """'func (path:line)' -> (func, path); path with a leading '/' (py-spy shortens library paths)."""
    func, _, rest = frame.partition(" (")
    return func, "/" + rest.rsplit(":", 1)[0].lstrip("/")


def stage_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        func, path = _frame_parts(frame)
        if (
            path.startswith(SKIP_PREFIXES)
            or any(skip in path for skip in SKIP_ANYWHERE)
            or func == "Application.run"
        ):
            continue
        for stage, fragment, funcs in STAGES:
            if fragment in path and (funcs is None or func.rsplit(".", 1)[-1] in funcs):
                return stage
    for frame in reversed(stack):
        _, path = _frame_parts(frame)
        if "/asyncio/" in path or "/selectors.py" in path:
            return "event loop (asyncio scheduling, select)"
    return "other"


def short(frame: str) -> str:
    func, path = _frame_parts(frame)
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path.lstrip('/')})"


def summarise(raw: Path, top: int = 15) -> tuple[str, int]:
    """Markdown: samples per stage, top functions by own time and by inclusive time."""
    stages: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = idle_workers = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        stack = [f for f in stack_text.split(";") if " (" in f]
        if not stack:
            continue
        func, path = _frame_parts(stack[-1])
        if func == "_worker" and path.endswith("/concurrent/futures/thread.py"):
            idle_workers += (
                count  # a pool thread waiting for work: idle, though py-spy sees it running
            )
            continue
        total += count
        stages[stage_of(stack)] += count
        own[short(stack[-1])] += count
        for frame in {short(f) for f in stack}:
            inclusive[frame] += count
    if not total:
        return "(no samples)", 0

    def table(
        counter: collections.Counter[str], header: str, n: int, skip_generic: bool = False
    ) -> list[str]:
        rows = [f"| {header} | share |", "|---|---|"]
        shown = 0
        for name, c in counter.most_common():
            if skip_generic and any(
                g in name
                for g in (
                    "asyncio/",
                    "threading.py",
                    "concurrent/",
                    "<module>",
                    "run (",
                    "_run_once",
                    "run_forever",
                    "run_until_complete",
                    "_bootstrap",
                    "main (",
                    "serve (",
                    "_worker (",
                    "__init__ (uvicorn",
                    "cli.py",
                )
            ):
                continue
            rows.append(f"| `{name}` | {c / total:.1%} |")
            shown += 1
            if shown >= n:
                break
        return rows

    lines = [
        f"{total:,} samples of running threads ({idle_workers:,} more of idle thread-pool workers waiting "
        "for work left out).",
        "",
        "| stage | share |",
        "|---|---|",
    ]
    lines += [f"| {s} | {c / total:.1%} |" for s, c in stages.most_common()]
    lines += [
        "",
        "Top functions by own time (the innermost Python frame; C code such as librdkafka or "
        "the socket calls is charged to the Python function that called it):",
        "",
    ]
    lines += table(own, "function", top)
    lines += [
        "",
        "Top functions by inclusive time (the stack below them included; the loop's "
        "generic frames left out; py-spy often cannot unwind a resumed coroutine to its callers, "
        "so these undercount, the stage shares above do not depend on it):",
        "",
    ]
    lines += table(inclusive, "function", top + 5, skip_generic=True)
    return "\n".join(lines), total


def profile_freedom(ctx: Context) -> str:
    """Profile the freedom service (trivial handler): HTTP/1.1 in both proxy modes, h2c and in-process
    delivery (when the measured code has it) in concurrent mode; markdown text."""
    pyspy = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return "Not profiled: py-spy is not installed (`pip install py-spy`, part of the `bench` extra)."
    seconds = ctx.size(20, 8)
    out = [__doc__.split("\n\n", 1)[1].replace("\n", " ").strip(), ""]
    variants = [("HTTP/1.1", "sequential"), ("HTTP/1.1", "concurrent"), ("HTTP/2", "concurrent")]
    if inprocess_unsupported() is None:
        variants.append(("in-process", "concurrent"))
    for transport, mode in variants:
        inprocess, http2 = transport == "in-process", transport == "HTTP/2"
        n = ctx.size(200_000, 50_000) if inprocess else ctx.size(60_000, 20_000)
        topic = ctx.preloaded("profile", n)
        group = new_group("profile")
        name = f"profile-{'inprocess-' if inprocess else 'h2-' if http2 else ''}{mode}"
        service = freedom_service(
            ctx,
            name,
            topic,
            group,
            handler="trivial",
            mode=mode,
            expect=n,
            inprocess=inprocess,
            http2=http2,
        )
        raw = ctx.workdir / f"{name}.pyspy.txt"
        try:
            service.wait_probe(lambda s: s.get("count", 0) >= 1, 120, "the first record")
            time.sleep(1.0)  # past the start-up burst
            before = ctx.kafka.committed(group, topic)
            t0 = time.monotonic()
            rec = subprocess.run(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(service.proc.pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=seconds + 60,
            )
            elapsed = time.monotonic() - t0
            rate = (ctx.kafka.committed(group, topic) - before) / elapsed
        finally:
            service.stop()
        if rec.returncode != 0 or not raw.exists():
            out += [
                f"### {transport} {mode}: py-spy failed (rc={rec.returncode}): {rec.stdout[-500:]}",
                "",
            ]
            continue
        text, _ = summarise(raw)
        out += [
            f'### {transport}, `mode = "{mode}"`, trivial handler: ~{rate:,.0f} records/s while sampled '
            f"({seconds} s)",
            "",
            text,
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":  # python -m bench.profile RAW...: summarise py-spy raw files
    import sys

    for arg in sys.argv[1:]:
        print(f"### {arg}\n\n{summarise(Path(arg))[0]}\n")
