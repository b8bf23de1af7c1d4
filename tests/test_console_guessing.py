"""Guessing the console token (docs/console.md#security), over real HTTP: wrong tokens of an address,
bearer and log-in alike, are answered at once for the first few, then no sooner than the rule's
spacing after the previous one; a right token is answered at once; a flood of concurrent wrong
tokens is refused (429, its tokens unchecked) instead of waiting without bound; /metrics counts
the wrong tokens and the refusals."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest

import freedom
from freedom.console.throttle import (
    FREE_FAILURES,
    MAX_WAITING_PER_ADDRESS,
    SPACING_SEC,
    GuessThrottle,
    address_key,
)
from freedom.testing import ServiceThread, free_port, write_config
from tests.services.scrape import scrape, value

TOKEN = "console-Token-for-guessing-tests-5d1e"
BASE = "/_freedom/console"
WRONG = {"authorization": "Bearer wrong-token-000000000000"}
RIGHT = {"authorization": f"Bearer {TOKEN}"}
FAILURES = "freedom_console_auth_failures_total"
THROTTLED = "freedom_console_auth_throttled_total"


@pytest.fixture
def console(tmp_path, monkeypatch) -> Iterator[ServiceThread]:
    """A service with the console and no Kafka (its API answers 400 "no consumer clients
    configured" once the token is accepted: no broker call in what is timed)."""
    monkeypatch.delenv("FREEDOM_APP__CONSOLE_TOKEN", raising=False)
    port = free_port()
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}", "console_token": TOKEN})
    with ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[])) as svc:
        yield svc


def counts(svc: ServiceThread) -> dict[str, float]:
    samples = scrape(svc.base_url)
    return {
        f"{name}:{kind}": value(samples, metric, kind=kind)
        for name, metric in (("failures", FAILURES), ("throttled", THROTTLED))
        for kind in ("bearer", "login")
    }


@pytest.mark.serial  # "a right token at once" is timed (under SPACING_SEC)
def test_wrong_tokens_are_slowed_and_counted_a_right_one_is_not(console):
    before = counts(console)
    with httpx.Client(base_url=console.base_url + BASE, timeout=30) as http:
        started = time.monotonic()
        for _ in range(20):
            answer = http.get("/api/status", headers=WRONG)
            assert answer.status_code == 403, answer.text
        # The first FREE_FAILURES at once, then each no sooner than SPACING_SEC after the previous.
        twenty = time.monotonic() - started
        assert twenty >= (20 - FREE_FAILURES) * SPACING_SEC, twenty

        # The right token right after: answered at once (the API is in: no Kafka configured).
        right_started = time.monotonic()
        answer = http.get("/api/status", headers=RIGHT)
        assert time.monotonic() - right_started < SPACING_SEC
        assert answer.status_code == 400 and "no consumer clients" in answer.json()["error"]

        # The log-in form follows the same rule, for the same address: a wrong token there is the
        # 21st failure; a right one logs in at once.
        wrong = http.post("/login", data={"token": "wrong-token-000000000000"})
        assert wrong.status_code == 401 and "wrong token" in wrong.text
        assert time.monotonic() - started >= (21 - FREE_FAILURES) * SPACING_SEC
        login_started = time.monotonic()
        login = http.post("/login", data={"token": TOKEN})
        assert time.monotonic() - login_started < SPACING_SEC
        assert login.status_code == 303 and "freedom_console" in login.cookies

    after = counts(console)
    assert after["failures:bearer"] - before["failures:bearer"] == 20
    assert after["failures:login"] - before["failures:login"] == 1
    assert after["throttled:bearer"] == before["throttled:bearer"]  # one at a time: none refused


def test_a_flood_of_wrong_tokens_is_refused_not_queued(console):
    """40 wrong tokens at once from one address: the free ones and MAX_WAITING_PER_ADDRESS more are
    checked (answered 403, the waiting ones SPACING_SEC apart); the rest are refused at once (429,
    with Retry-After), their tokens unchecked, so no more tokens are checked than the rule allows."""
    before = counts(console)
    url = f"{console.base_url}{BASE}/api/status"
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: httpx.get(url, headers=WRONG, timeout=60), range(40)))
    took = time.monotonic() - started
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {403, 429}, statuses
    checked, refused = statuses.count(403), statuses.count(429)
    # Checked: the free ones, those waiting at any time, and one per SPACING_SEC answered meanwhile.
    assert checked <= FREE_FAILURES + MAX_WAITING_PER_ADDRESS + took / SPACING_SEC + 1, (
        took,
        checked,
    )
    assert refused >= 1, statuses
    for answer in answers:
        if answer.status_code == 429:
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.json()["error"].startswith("too many wrong console tokens")
    after = counts(console)
    assert after["failures:bearer"] - before["failures:bearer"] == checked
    assert after["throttled:bearer"] - before["throttled:bearer"] == refused


def test_the_state_is_bounded_and_ipv6_counts_by_its_64():
    """The rule's memory: at most max_addresses entries (and the shared one), whatever the number
    of addresses; an IPv6 host's addresses count as one (its /64)."""
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    throttle = GuessThrottle(free=1000, max_addresses=3, clock=lambda: 0.0)  # no waits

    async def fail(address: str) -> bool:
        return await throttle.check(address, lambda: False)

    for i in range(100):
        assert asyncio.run(fail(f"10.0.0.{i}")) is False
    assert len(throttle) == 4  # three addresses of their own, the other 97 in the shared entry
