"""Backpressure from the endpoint and the head-of-line guard (issue 15.2 and 15.3), timed.

The Kafka test runs `freedom proxy` (a subprocess, Apache Kafka) against the standard library's
http.server on 127.0.0.1, with one subscription per behaviour so that one proxy start serves them
all: Retry-After, its per-record limit, a rate limit, a concurrency limit next to a fast
subscription, and an endpoint that never answers one record. A freedom service's per-topic table
is tested in-process on freedom.testing.TestBroker.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.server
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import Response

from freedom.kafka.consumer.backpressure import parse_retry_after
from freedom.kafka.consumer.delivery import result_of
from freedom.testing import TestBroker, wait_until, write_config
from tests.services.asgi_parts import serve_lifespan
from tests.services.event_app import Delivery, Journal, event_app
from tests.services.kafka_tools import committed, headers_of, produce, read_all, wait_drained
from tests.services.plain_http import PlainService
from tests.test_standalone_proxy import Proxy

pytestmark = pytest.mark.serial  # measures pauses and rates: run alone (scripts/test.sh)


@dataclass
class Call:
    path: str
    key: str
    retry: str
    at: float  # time.monotonic() when the request came
    done: float | None = None  # ... and when it was answered


class Endpoint(PlainService):
    """A plain HTTP/1.1 service whose answer is `behaviour(call, nth)`: (status, headers, seconds
    to wait first; None: never answer until the test ends)."""

    def __init__(
        self, behaviour: Callable[[Call, int], tuple[int, dict[str, str], float | None]]
    ) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.behaviour = behaviour

    def on_post(self, request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        call = Call(
            request.path,
            request.headers.get("x-message-key", ""),
            request.headers.get("x-retry-count", ""),
            time.monotonic(),
        )
        with self.lock:
            nth = sum(1 for c in self.calls if c.key == call.key)
            self.calls.append(call)
        status, headers, wait = self.behaviour(call, nth)
        if wait is None:
            self.release.wait(60)
            return
        if wait:
            time.sleep(wait)
        self.answer(request, status, headers)
        call.done = time.monotonic()

    def of(self, prefix: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path.startswith(prefix)]


def _behaviour(call: Call, nth: int) -> tuple[int, dict[str, str], float | None]:
    topic = call.path.split("/")[1]
    if topic == "bp":  # K: one 429 then 200; L: 429 until it comes from the retry topic
        if (call.key == "K" and nth == 0) or (call.key == "L" and call.retry == "0"):
            return 429, {"Retry-After": "1"}, 0
    if topic == "slow":
        return 200, {}, 1.0
    if topic == "hol" and call.key == "STUCK" and call.retry == "0":
        return 200, {}, None  # never answers
    return 200, {}, 0


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint(_behaviour) as e:
        yield e


def test_retry_after_rate_and_concurrency_limits_and_the_head_of_line_guard(
    apache_kafka, new_topic, tmp_path, endpoint
):
    bootstrap = apache_kafka.bootstrap
    bp, rate, slow, fast, hol = (new_topic(bootstrap) for _ in range(5))
    group = f"bp-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{endpoint.port}"
    config = write_config(
        tmp_path / "conf",
        kafka={
            "consumer_clients": [
                {
                    "servers": [bootstrap],
                    "group_id": group,
                    "retry_group_id": f"r-{group}",
                    "retry_count": 1,
                    "retry_interval_sec": 0.5,
                    "settings": {"session.timeout.ms": 6000},
                }
            ],
            "subscriptions": [
                {"topic": bp, "url": base + "/bp/{key}", "backpressure_max_sec": 1.5},
                {
                    "topic": rate,
                    "url": base + "/rate/{key}",
                    "mode": "concurrent",
                    "rate_limit_per_sec": 5,
                },
                {
                    "topic": slow,
                    "url": base + "/slow/{key}",
                    "mode": "concurrent",
                    "max_concurrency": 2,
                },
                {"topic": fast, "url": base + "/fast/{key}", "mode": "concurrent"},
                {"topic": hol, "url": base + "/hol/{key}", "head_of_line_timeout_sec": 2},
            ],
        },
    )
    proxy = Proxy(config, tmp_path / "proxy.log")
    try:
        proxy.wait_ready()
        produce(bootstrap, bp, [{"key": k, "value": b"v"} for k in (b"K", b"L")])
        produce(bootstrap, hol, [{"key": k, "value": b"v"} for k in (b"STUCK", b"H1", b"H2")])
        produce(bootstrap, slow, [{"key": f"S{i}".encode(), "value": b"v"} for i in range(6)])
        produce(bootstrap, fast, [{"key": f"F{i}".encode(), "value": b"v"} for i in range(5)])
        produce(bootstrap, rate, [{"key": f"R{i}".encode(), "value": b"v"} for i in range(8)])

        # Concurrency: the slow subscription has at most 2 calls at once; the fast one is not held up by it.
        wait_until(
            lambda: len(endpoint.of("/fast/")) == 5, 20, what="the fast subscription's five records"
        )
        slow_calls = wait_until(
            lambda: (c := endpoint.of("/slow/")) and len(c) == 6 and all(x.done for x in c) and c,
            30,
            what="the slow subscription's six records",
        )
        fast_done = max(c.at for c in endpoint.of("/fast/"))
        assert fast_done < sorted(c.at for c in slow_calls)[4], (
            "the fast records waited for the slow ones"
        )
        events = sorted([(c.at, 1) for c in slow_calls] + [(c.done or 0.0, -1) for c in slow_calls])
        running, most = 0, 0
        for _, step in events:
            running += step
            most = max(most, running)
        assert most == 2, f"max_concurrency = 2, but {most} slow calls ran at once"

        # Rate: 8 records at 5 per second start 0.2 s apart: 1.4 s from the first to the last (without
        # the limit they arrive within a few ms). Measured where they arrive: a first request that
        # is late (a new connection on a loaded machine; seen: 0.2 s) shortens the span, hence 1.0.
        rated = wait_until(
            lambda: (c := endpoint.of("/rate/")) and len(c) == 8 and c, 20, what="the rated records"
        )
        span = rated[-1].at - rated[0].at
        assert 1.0 <= span <= 4.5, f"8 deliveries at 5/s took {span:.2f} s"

        # Retry-After: K's second delivery comes after the pause, as the same attempt, not via retry-T.
        wait_until(
            lambda: len([c for c in endpoint.of("/bp/") if c.key == "L"]) == 3,
            30,
            what="L delivered three times (twice held, then from the retry topic)",
        )
        k_calls = [c for c in endpoint.of("/bp/") if c.key == "K"]
        assert [c.retry for c in k_calls] == ["0", "0"]
        gap = k_calls[1].at - k_calls[0].at
        assert 1.0 <= gap < 4.0, (
            f"K was delivered again {gap:.2f} s after its 429 with Retry-After: 1"
        )
        l_calls = [c for c in endpoint.of("/bp/") if c.key == "L"]
        assert [c.retry for c in l_calls] == [
            "0",
            "0",
            "1",
        ]  # held once; the second 429 passed the 1.5 s limit
        assert l_calls[0].at - k_calls[1].at < 2.0 and l_calls[1].at - l_calls[0].at >= 1.0
        # K and L committed: every retry record of theirs (acknowledged first) is there now.
        wait_drained(bootstrap, {group: [bp]}, 20, what="the backpressure topic committed")
        retried = read_all(bootstrap, f"retry-{bp}")
        assert [m.key() for m in retried] == [b"L"]  # K never went there
        h = headers_of(retried[0])
        assert h["x-retry-count"] == "1" and h["x-freedom-status"] == "429"

        # Head-of-line: the record that is never answered is moved to retry-T after 2 s; the rest commits.
        wait_drained(bootstrap, {group: [hol]}, 30, what="the head-of-line topic committed")
        moved = read_all(bootstrap, f"retry-{hol}")
        assert [m.key() for m in moved] == [b"STUCK"]
        h = headers_of(moved[0])
        assert h["x-freedom-error"].startswith(
            "HeadOfLineGuard: not settled 2 s after its first delivery started"
        )
        assert h["x-retry-count"] == "1" and "x-freedom-status" not in h
        hol_calls = wait_until(
            lambda: (c := endpoint.of("/hol/")) and len(c) == 4 and c,
            20,
            what="H1, H2 and STUCK's retry delivered",
        )
        assert sorted((c.key, c.retry) for c in hol_calls) == [
            ("H1", "0"),
            ("H2", "0"),
            ("STUCK", "0"),
            ("STUCK", "1"),
        ]
        assert hol_calls[0].key == "STUCK" and [c.key for c in hol_calls if c.key != "STUCK"] == [
            "H1",
            "H2",
        ]
        waited = next(c for c in hol_calls if c.key == "H1").at - hol_calls[0].at
        assert 2.0 <= waited < 6.0, f"the partition was held {waited:.2f} s by the stuck record"
        wait_until(
            lambda: committed(bootstrap, group, hol) == [3],
            20,
            what="the head-of-line topic's commit",
        )
        wait_until(
            lambda: committed(bootstrap, group, bp) == [2],
            20,
            what="the backpressure topic's commit",
        )
    finally:
        endpoint.release.set()
        proxy.stop()
    assert proxy.proc.returncode == 0, proxy.log.read_text()
    assert "Traceback" not in proxy.log.read_text()


# ---------------------------------------------------------------------------- a freedom service's topic


async def test_a_service_topic_table_honours_retry_after_in_process(tmp_path):
    """`[consumer_clients.topics."T"]` of a freedom service: a 503 with Retry-After holds the record
    (same x-retry-count, nothing on the retry topic); max_concurrency = 1 keeps one call at a time."""
    topic = "order-paid"
    journal = Journal()
    running: list[int] = [0, 0]  # now, most

    async def behave(call: Delivery) -> Response:
        running[0] += 1
        running[1] = max(running[1], running[0])
        await asyncio.sleep(0.05)
        running[0] -= 1
        if call.key == "P1" and call.nth == 0:
            return Response(status_code=503, headers={"Retry-After": "1"})
        return Response(status_code=200)

    write_config(
        tmp_path,
        kafka={
            "consumer": {"open": True},
            "producer": {"open": True},
            "consumer_clients": [
                {"retry_count": 2, "mode": "concurrent", "topics": {topic: {"max_concurrency": 1}}}
            ],
        },
    )
    async with TestBroker(event_app(tmp_path, journal, topic, behave)) as broker:
        for key in ("P1", "P2", "P3"):
            broker.publish(topic, b'{"id": 1}', key=key)
        await broker.settle(timeout=20)
        p1 = journal.of("event", "P1")
        assert [c.headers["x-retry-count"] for c in p1] == ["0", "0"]
        assert p1[1].at - p1[0].at >= 1.0
        # The other two waited for the pause too: the topic waits, not only the record.
        assert all(c.at - p1[0].at >= 1.0 for c in journal.of("event") if c.key != "P1")
        assert running[1] == 1
        assert broker.retries(topic) == [] and broker.dead_letters(topic) == []
        assert broker.committed(topic) == 3


async def test_with_retry_count_0_the_guard_dead_letters_a_stuck_or_always_failing_record(tmp_path):
    """retry_count = 0 holds a failing record in place, for ever without the guard: with it, a record
    whose handler never returns and one that fails every time go to the dead-letter topic after the
    guard's time, and the partition's later record is delivered and committed."""
    topic = "order-shipped"
    journal = Journal()
    never = asyncio.Event()

    async def behave(call: Delivery) -> int:
        if call.key == "STUCK":
            await never.wait()
        return 500 if call.key == "FAILS" else 200

    write_config(
        tmp_path,
        kafka={
            "consumer": {"open": True},
            "producer": {"open": True},
            "consumer_clients": [
                {"retry_count": 0, "topics": {topic: {"head_of_line_timeout_sec": 1}}}
            ],
        },
    )
    async with TestBroker(event_app(tmp_path, journal, topic, behave)) as broker:
        for key in ("STUCK", "FAILS", "OK"):
            broker.publish(topic, b'{"id": 1}', key=key)
        await broker.settle(timeout=20)
        dead = broker.dead_letters(topic)
        assert [d.key() for d in dead] == [b"STUCK", b"FAILS"]
        for d in dead:
            error = d.header("x-freedom-error")
            assert error.startswith(
                "HeadOfLineGuard: not settled 1 s after its first delivery started"
            ), error
            assert error.endswith("retry_count = 0: moved to the dead-letter topic by the guard"), (
                error
            )
        assert (
            len(journal.of("event", "STUCK")) == 1 and len(journal.of("event", "FAILS")) >= 2
        )  # delivered again in place
        ok = journal.of("event", "OK")
        assert (
            len(ok) == 1 and ok[0].at - journal.of("event", "STUCK")[0].at >= 2.0
        )  # two guards of 1 s before it
        assert broker.committed(topic) == 3


# ---------------------------------------------------------------------------- Retry-After and the keys


def test_retry_after_is_seconds_or_an_http_date_on_429_and_503_only():
    now = time.time()
    assert parse_retry_after("1") == 1.0 and parse_retry_after(b" 120 ") == 120.0
    assert abs(parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) - 30) < 1.5
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    asctime = time.strftime(
        "%a %b %d %H:%M:%S %Y", time.gmtime(now + 30)
    )  # RFC 9110's third form, GMT
    assert abs(parse_retry_after(asctime, now) - 30) < 1.5
    for bad in ("", "soon", "-1", "1.5", "1e3", "٣", "Wed, 99 Foo 2026 00:00:00 GMT", "x" * 100):
        assert parse_retry_after(bad) is None, bad
    assert parse_retry_after("9" * 40) == 2_147_483.0  # bounded
    assert result_of(429, None, None, None, b"2").retry_after == 2.0
    assert result_of(503, None, None, None, b"2").retry_after == 2.0
    assert result_of(500, None, None, None, b"2").retry_after is None
    assert result_of(429, None, None, None, None).retry_after is None


async def test_the_gate_gives_back_what_waiters_that_left_had_reserved():
    """A revoked partition's waiters leave the gate: their rate turns and concurrency places are
    given back, so the next deliveries do not wait for them."""
    from freedom.kafka.consumer.backpressure import Gate

    gate = Gate(rate_per_sec=10, max_concurrency=2)
    kept, lost = asyncio.Event(), asyncio.Event()
    assert await gate.enter(kept) and await gate.enter(
        kept
    )  # both places taken (the first two turns)
    waiting = [
        asyncio.ensure_future(gate.enter(lost)) for _ in range(20)
    ]  # would queue 2 s of turns
    await _until(lambda: gate.waiting == 20)  # all twenty queued for a place
    lost.set()
    assert await asyncio.gather(*waiting) == [False] * 20
    gate.leave()
    started = time.monotonic()
    assert await gate.enter(kept)  # one turn after the first two: ~0.1 s, not 2 s
    assert time.monotonic() - started < 0.5
    cancelled = asyncio.ensure_future(gate.enter(kept))  # no place left: waits ...
    await _until(lambda: gate.waiting == 1)
    cancelled.cancel()  # ... and is cancelled (the head-of-line guard)
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert gate.waiting == 0  # gone from the queue, holding nothing
    gate.leave()
    assert await asyncio.wait_for(gate.enter(kept), 1.0)
    assert gate.in_call == 2


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until `condition` holds (AssertionError after `timeout` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0)


def test_every_transport_reads_retry_after():
    """HTTP/1.1, h2c (granian serving both on one port) and in-process: the same result."""
    from freedom.kafka.consumer.delivery import EventRoute
    from freedom.kafka.transports.asgi import AsgiTransport
    from freedom.kafka.transports.http import HttpTransport
    from freedom.kafka.transports.http1 import Http1Transport
    from freedom.runner.server import serve_granian
    from freedom.testing import free_port

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await serve_lifespan(receive, send)
        await receive()
        status = int(scope["path"].rsplit("/", 1)[-1])
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"retry-after", b"7")]}
        )
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    base = f"http://127.0.0.1:{port}"

    async def main() -> list[float | None]:
        shutdown = asyncio.Event()
        serving = asyncio.ensure_future(serve_granian(app, "127.0.0.1", port, shutdown))  # type: ignore[arg-type]
        transports = [Http1Transport(base), HttpTransport(base), AsgiTransport(app)]
        seen: list[float | None] = []
        try:
            loop = asyncio.get_running_loop()
            assert await transports[0].wait_until_reachable(loop.time() + 30, asyncio.Event())
            for transport in transports:
                for status in (429, 503, 500):
                    result = await transport.deliver(
                        EventRoute("t", f"/s/{status}", None), "k", b"", [], 0
                    )
                    assert result.status == status, result
                    seen.append(result.retry_after)
        finally:
            for transport in transports:
                await transport.aclose()
            shutdown.set()
            await serving
        return seen

    assert asyncio.run(main()) == [7.0, 7.0, None] * 3


@pytest.mark.parametrize(
    "where, entry, expected",
    [
        (
            "sub",
            {"rate_limit_per_sec": 0},
            "subscriptions[0].rate_limit_per_sec: must be a number of deliveries per second",
        ),
        ("sub", {"max_concurrency": 0}, "subscriptions[0].max_concurrency: must be 1 or more"),
        (
            "sub",
            {"head_of_line_timeout_sec": 0},
            "subscriptions[0].head_of_line_timeout_sec: must be greater than 0",
        ),
        (
            "sub",
            {"backpressure_max_sec": -1},
            "subscriptions[0].backpressure_max_sec: must not be negative",
        ),
        (
            "sub",
            {"retry_after_max_sec": "1"},
            "subscriptions[0].retry_after_max_sec: must be a number",
        ),
        (
            "topic",
            {"max_concurrency": 0},
            'consumer_clients[0].topics."orders".max_concurrency: must be 1 or more',
        ),
        (
            "topic",
            {"rate_limit_per_sec": float("inf")},
            'topics."orders".rate_limit_per_sec: must be a number',
        ),
        (
            "client",
            {"retry_fail_prefix": "", "head_of_line_timeout_sec": 5},
            "consumer_clients[0].head_of_line_timeout_sec: the guard moves a stuck record to its retry or dead-letter topic",
        ),
        (
            "sub",
            {"head_of_line_timeout_sec": 5, "retry_count": 0, "_client": {"retry_fail_prefix": ""}},
            "subscriptions[0].head_of_line_timeout_sec: the guard moves a stuck record",
        ),
    ],
)
def test_a_wrong_backpressure_key_is_one_line_naming_it(
    tmp_path: Path, capsys, where, entry, expected
):
    from freedom.cli.main import main

    entry = dict(entry)
    client: dict[str, Any] = {"servers": ["127.0.0.1:9"], **entry.pop("_client", {})}
    sub: dict[str, Any] = {"topic": "orders", "url": "http://orders:8080/events/{key}"}
    if where == "sub":
        sub.update(entry)
    elif where == "topic":
        client["topics"] = {"orders": entry}
    else:
        client.update(entry)
    config = write_config(tmp_path, kafka={"consumer_clients": [client], "subscriptions": [sub]})
    assert main(["proxy", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
