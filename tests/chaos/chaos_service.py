"""The service the chaos tests run as a real subprocess (`freedom run chaos_service:app`).

It listens on up to three topics, named by $CHAOS_SEQUENTIAL, $CHAOS_CONCURRENT and
$CHAOS_KEY_ORDERED (the test gives each its mode in kafka.toml). A record's value is its sequence
number. The handler appends a "start" line, waits a random 0-$MAX_LATENCY_MS ms, then appends an
"end" line to $RECORD_FILE (with $BUSY_MS, it first keeps the CPU busy that long, on the event loop), or a "dead" line and raises `freedom.DeadLetter` for every sequence
number n with n % $DEAD_EVERY == $DEAD_EVERY - 1 (0: never). Each line is one `os.write` on an
O_APPEND descriptor: it is in the file as soon as it is written, whatever happens to the process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time

import freedom

MAX_LATENCY = float(os.environ.get("MAX_LATENCY_MS", "10")) / 1000
DEAD_EVERY = int(os.environ.get("DEAD_EVERY", "0"))
BUSY = float(os.environ.get("BUSY_MS", "0")) / 1000
ROUTES = {  # route name -> the topic it listens on
    name: os.environ[var]
    for name, var in (
        ("sequential", "CHAOS_SEQUENTIAL"),
        ("concurrent", "CHAOS_CONCURRENT"),
        ("key_ordered", "CHAOS_KEY_ORDERED"),
    )
    if os.environ.get(var)
}
if os.environ.get("PROXY_DEBUG"):  # the commit requests and answers, for a failure's post-mortem
    logging.getLogger("freedom.kafka.proxy").setLevel(logging.DEBUG)
_fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_pid = os.getpid()


def _line(ev: str, route: str, key: str, seq: int) -> None:
    os.write(
        _fd,
        (
            json.dumps(
                {"ev": ev, "route": route, "key": key, "seq": seq, "t": time.time(), "pid": _pid}
            )
            + "\n"
        ).encode(),
    )


async def _handle(runtime: freedom.Runtime, route: str, key: str) -> str:
    seq = int(await runtime.request.body())
    _line("start", route, key, seq)
    if (
        BUSY
    ):  # CPU work on the event loop (parsing, computing): saturates the loop the proxy runs on
        until = time.perf_counter() + BUSY
        while time.perf_counter() < until:
            pass
    if MAX_LATENCY:
        await asyncio.sleep(random.uniform(0, MAX_LATENCY))
    if DEAD_EVERY and seq % DEAD_EVERY == DEAD_EVERY - 1:
        _line("dead", route, key, seq)
        raise freedom.DeadLetter(f"chaos: {seq} is a poison record")
    _line("end", route, key, seq)
    return "ok"


class ChaosController:
    runtime: freedom.Runtime

    async def post_sequential_by(self, event_id: str) -> str:
        return await _handle(self.runtime, "sequential", event_id)

    async def post_concurrent_by(self, event_id: str) -> str:
        return await _handle(self.runtime, "concurrent", event_id)

    async def post_key_ordered_by(self, event_id: str) -> str:
        return await _handle(self.runtime, "key_ordered", event_id)


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/chaos", ChaosController)
    for route, topic in ROUTES.items():
        initiator.listen_event(topic, f"ChaosController.post_{route}_by")


app = freedom.Application()
