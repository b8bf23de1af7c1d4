"""The web console (docs/console.md) in a real browser: Debian's Chromium driven by Playwright, on
Apache Kafka. A service whose handler fails fills its dead-letter topic; the operator logs in with
the token, sees the groups and lag, the dead letters grouped by error with their records (hostile
keys, headers and values shown as text), previews a replay (which moves nothing), fixes the
handler and runs it: the handler gets every record once. Without the token: refused; without a
configured token: no console at all.

Set FREEDOM_CONSOLE_SCREENSHOTS=docs/img to refresh the screenshots docs/console.md shows.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from starlette.responses import Response

import freedom
from freedom.config.loading import load_app_config
from freedom.console import routes
from freedom.ops.dlq import Filter
from freedom.ops.replay import job_group
from freedom.testing import ServiceThread, free_port, wait_until, write_config
from freedom.wire.headers import REPLAY_COUNT_HEADER
from tests.services.event_app import Journal, event_service
from tests.services.kafka_tools import committed, create_topic, produce, topic_size
from tests.services.tools import require_module, require_tool

CHROMIUM = "/usr/bin/chromium"
TOKEN = "console-Token-for-tests-7f3a9c"
BASE = "/_freedom/console"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
HOSTILE_KEY = '<script>alert("key")</script>'
HOSTILE_HEADER = "<script>alert('header')</script>"
HOSTILE_ERROR = '<script>alert("error")</script>'
HOSTILE_VALUE = '<script>alert("value")</script><img src=x onerror=alert(1)>'

playwright = require_module(
    "playwright.sync_api", "playwright is in the test extra: bash scripts/setup.sh installs it"
)
require_tool(
    f"Chromium ({CHROMIUM})",
    os.path.exists(CHROMIUM),
    "bash scripts/chromium.sh installs Debian's chromium",
)


def replays(journal: Journal) -> list[Any]:
    return [c for c in journal.of() if REPLAY_COUNT_HEADER in c.headers]


def shots() -> Path | None:
    """Where to save the screenshots for the docs (FREEDOM_CONSOLE_SCREENSHOTS), if anywhere."""
    where = os.environ.get("FREEDOM_CONSOLE_SCREENSHOTS")
    if not where:
        return None
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


def snap(page: Any, name: str, full_page: bool = True) -> None:
    folder = shots()
    if folder is not None:
        page.screenshot(path=str(folder / f"console-{name}.png"), full_page=full_page)


def test_console_in_chromium_shows_groups_and_dead_letters_and_replays_them(
    apache_kafka, tmp_path, monkeypatch
):
    from playwright.sync_api import expect, sync_playwright

    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"console-{uuid.uuid4().hex[:8]}", partitions=2)
    fail = create_topic(bootstrap, f"fail-{topic}", partitions=2)
    monkeypatch.setenv(
        "FREEDOM_APP__CONSOLE_TOKEN", TOKEN
    )  # the token from the environment (the rule's name)
    journal = Journal()
    state = {"fail": True}

    def handler(call: Any) -> Any:
        if not state["fail"]:
            return 200
        if call.key == HOSTILE_KEY:  # a 422 dead-letters at once, its answer body in the error
            return Response(HOSTILE_ERROR, status_code=422, media_type="text/plain")
        return 500

    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        handler,
        retry_count=1,
        retry_interval_sec=0.2,
        initial_offset="earliest",
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id
    trace = [("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01".encode())]
    keys = ["A1", "B2", "C3", HOSTILE_KEY]
    records = [
        {"key": k.encode(), "value": f'{{"k": "{k}"}}'.encode(), "headers": trace} for k in keys[:3]
    ]
    records.append(
        {
            "key": HOSTILE_KEY.encode(),
            "value": HOSTILE_VALUE.encode(),
            "headers": [*trace, ("x-note", HOSTILE_HEADER.encode())],
        }
    )
    with svc:
        produce(bootstrap, topic, records)
        wait_until(
            lambda: topic_size(bootstrap, fail, 2) == 4, 60, what="every record dead-lettered"
        )
        base = svc.base_url + BASE

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                page = context.new_page()
                # Playwright's 5 s default is tight on a loaded 2-core CI machine (the page asks a
                # real broker); a wrong page still fails, within these bounds.
                page.set_default_timeout(30_000)
                expect.set_options(timeout=20_000)
                dialogs: list[str] = []
                page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

                # Without the token: the log-in form, with 401; a wrong token is refused.
                first = page.goto(f"{base}/dead-letters")
                assert first is not None and first.status == 401
                expect(page.locator("h1")).to_have_text("Log in")
                snap(page, "login")
                page.fill("input[name=token]", "not-the-token-at-all")
                page.click("button:has-text('Log in')")
                expect(page.locator(".error")).to_have_text("wrong token")
                assert context.cookies() == []

                # Log in: back to the page asked for; the groups and their lag.
                page.fill("input[name=token]", TOKEN)
                page.click("button:has-text('Log in')")
                expect(page.locator("h1")).to_have_text("Dead letters")
                assert page.url == f"{base}/dead-letters"
                [cookie] = context.cookies()
                assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
                    "freedom_console",
                    True,
                    "Strict",
                    BASE,
                )
                assert TOKEN not in cookie["value"]
                page.click("nav >> text=Groups and lag")
                main = page.locator("h3", has_text=f"Group {group}")
                expect(main).to_contain_text("main")
                expect(main).to_contain_text("lag 0")
                expect(page.locator("h3", has_text=f"Group r-{group}")).to_contain_text("retry")
                expect(page.locator("table.partitions").first.locator("tbody tr")).to_have_count(2)
                expect(page.locator("table.dead tbody tr")).to_have_text(f"{fail}{topic}44")
                snap(page, "groups")

                # Dead letters grouped by error class, then the records of each class.
                page.click("nav >> text=Dead letters")
                rows = page.locator("table.classes tbody tr")
                expect(rows).to_have_count(2)
                by_class = {
                    r.locator("span.err").inner_text(): r.locator("td").first.inner_text()
                    for r in rows.all()
                }
                [other] = set(by_class) - {"HTTP 500"}
                assert (by_class["HTTP 500"], by_class[other]) == ("3", "1"), by_class
                assert other.startswith("HTTP 422") and HOSTILE_ERROR in other, (
                    other
                )  # the answer's body, as text
                snap(page, "dead-letters")

                rows.filter(has_text="HTTP 500").locator("text=records").click()
                cards = page.locator("article.record")
                expect(cards).to_have_count(3)
                for card in cards.all():
                    expect(card).to_contain_text(TRACE_ID)
                    expect(card).to_contain_text(f"{topic}[")  # where it came from
                    expect(card.locator("table.headers")).to_contain_text(
                        "x-freedom-original-topic"
                    )
                # The card whose Key is A1 (not any card with "a1" somewhere: trace ids are random hex).
                a1 = cards.filter(has=page.locator("dd", has_text=re.compile(r"^A1$")))
                expect(a1.locator("pre.value")).to_have_text('{"k": "A1"}')
                snap(page, "records", full_page=False)

                page.go_back()
                rows.filter(has_text="HTTP 422").locator("text=records").click()
                expect(cards).to_have_count(1)
                text = cards.inner_text()
                for hostile in (HOSTILE_KEY, HOSTILE_HEADER, HOSTILE_VALUE, HOSTILE_ERROR):
                    assert hostile in text, hostile
                assert page.locator("script").count() == 0 and page.locator("main img").count() == 0
                assert dialogs == []  # no alert() ran

                # The dry run of every dead letter of the topic: what would move, and nothing moves.
                page.click("nav >> text=Dead letters")
                page.select_option("select[name=topic]", fail)
                page.click("text=Preview replay (dry run)")
                expect(page.locator("h1")).to_have_text("Replay preview")
                expect(page.locator("strong.moved")).to_have_text("4")
                expect(page.locator("table.moves tbody tr")).to_have_count(4)
                expect(page.locator("code.audit")).to_contain_text("dlq dry run by")
                snap(page, "preview")
                assert topic_size(bootstrap, topic, 2) == 4
                assert committed(bootstrap, job_group(fail, Filter()), fail, 2) == [-1001, -1001]
                assert replays(journal) == []

                # A form post without the session's CSRF token is refused, even with the cookie.
                jar = {cookie["name"]: cookie["value"]}
                forged = httpx.post(f"{base}/replay/run", cookies=jar, data={"topic": fail})
                assert forged.status_code == 403 and "CSRF" in forged.text
                cross = httpx.post(
                    f"{base}/replay/preview",
                    cookies=jar,
                    headers={"origin": "http://evil.example"},
                    data={"topic": fail},
                )
                assert cross.status_code == 403

                # The handler is fixed: run the previewed replay; every record reaches it once.
                state["fail"] = False
                page.click("text=Run this replay")
                expect(page.locator("h1")).to_have_text("Replay done")
                expect(page.locator("strong.moved")).to_have_text("4")
                expect(page.locator("code.audit")).to_contain_text("dlq replay by")
                expect(page.locator("code.audit")).to_contain_text("moved 4")
                snap(page, "replayed")
                wait_until(
                    lambda: len(replays(journal)) >= 4, 60, what="the four replays delivered"
                )
                assert Counter(c.key for c in replays(journal)) == Counter(keys)
                assert all(c.headers[REPLAY_COUNT_HEADER] == "1" for c in replays(journal))
                page.click("nav >> text=Groups and lag")
                expect(page.locator("table.dead tbody tr")).to_have_text(
                    f"{fail}{topic}40"
                )  # none left to replay

                # Logging out ends the session: the same cookie is refused afterwards.
                page.click("button:has-text('Log out')")
                expect(page.locator("h1")).to_have_text("Log in")
                assert httpx.get(base, cookies=jar).status_code == 401
            finally:
                browser.close()

        # Scripts: the JSON endpoints with the bearer token; without it, refused.
        assert httpx.get(f"{base}/api/status").status_code == 401
        assert (
            httpx.get(
                f"{base}/api/status", headers={"authorization": "Bearer wrong-token-0000000"}
            ).status_code
            == 403
        )
        bearer = {"authorization": f"Bearer {TOKEN}"}
        st = httpx.get(f"{base}/api/status", headers=bearer, timeout=30)
        assert st.status_code == 200, st.text
        [client] = st.json()["clients"]
        assert [g["group"] for g in client["groups"]] == [group, f"r-{group}"]
        assert client["dead_letters"][0]["records"] == 4
        again = httpx.post(f"{base}/api/replay", headers=bearer, json={"topic": fail}, timeout=30)
        assert again.status_code == 200, again.text
        assert (again.json()["dry_run"], again.json()["topics"][0]["moved"]) == (
            True,
            0,
        )  # the same job: done
        unpreviewed = httpx.post(f"{base}/replay/run", headers=bearer, data={"topic": fail})
        assert unpreviewed.status_code == 400 and "preview" in unpreviewed.text


def test_console_is_off_without_a_token_and_the_token_is_masked(tmp_path, monkeypatch):
    monkeypatch.delenv("FREEDOM_APP__CONSOLE_TOKEN", raising=False)
    port = free_port()
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"})
    with ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[])) as svc:
        for path in (BASE, f"{BASE}/login", f"{BASE}/api/status"):
            assert httpx.get(svc.base_url + path).status_code == 404, path

    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}", "console_token": TOKEN})
    config = load_app_config(tmp_path)
    shown = {e.key: e.value for e in config.entries}
    assert shown["console_token"] == "***" and shown["console_path"] == BASE
    assert TOKEN not in repr(config) and TOKEN not in json.dumps([str(e) for e in config.entries])


def as_(session: str) -> dict[str, str]:
    """The Cookie header of a session (a request that carries only this cookie)."""
    return {"cookie": f"freedom_console={session}"}


def test_console_refuses_forged_sessions_and_foreign_redirects(tmp_path, monkeypatch):
    """On a service without Kafka (the pages then say there is nothing to show): the token guards
    every page, a forged or logged-out session is refused, log-in never sends the browser elsewhere."""
    monkeypatch.delenv("FREEDOM_APP__CONSOLE_TOKEN", raising=False)
    port = free_port()
    write_config(
        tmp_path,
        app={
            "listen_addr": f"127.0.0.1:{port}",
            "console_token": TOKEN,
            "console_path": "/ops/console/",
        },
    )
    with ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[])) as svc:
        base = svc.base_url + "/ops/console"
        with httpx.Client(base_url=base) as http:
            refused = http.get("/dead-letters")
            assert refused.status_code == 401 and 'name="token"' in refused.text
            assert (
                "script-src" not in refused.headers["content-security-policy"]
            )  # default-src 'none': no script
            assert (
                refused.headers["x-frame-options"] == "DENY"
                and refused.headers["cache-control"] == "no-store"
            )
            assert http.get("/api/status").status_code == 401
            assert http.post("/replay/run", data={"topic": "x"}).status_code == 401

            for foreign in (
                "https://evil.example/",
                "//evil.example/ops/console",
                "/elsewhere",
                "/ops/console//x",
            ):
                done = http.post("/login", data={"token": TOKEN, "next": foreign})
                assert (done.status_code, done.headers["location"]) == (303, "/ops/console"), (
                    foreign
                )
            assert (
                http.post(
                    "/login", data={"token": TOKEN}, headers={"origin": "https://evil.example"}
                ).status_code
                == 403
            )
            wrong = http.post("/login", data={"token": TOKEN[:-1] + "x"})
            assert (
                wrong.status_code == 401
                and "wrong token" in wrong.text
                and "set-cookie" not in wrong.headers
            )

            http.cookies.clear()
            login = http.post("/login", data={"token": TOKEN, "next": "/ops/console/dead-letters"})
            assert (login.status_code, login.headers["location"]) == (
                303,
                "/ops/console/dead-letters",
            )
            session = login.cookies["freedom_console"]
            http.cookies.clear()  # from here on each request carries exactly the cookie it is given
            cookie = login.headers["set-cookie"].lower()
            assert (
                "httponly" in cookie
                and "samesite=strict" in cookie
                and "path=/ops/console" in cookie
            )
            page = http.get(base, headers=as_(session))
            assert (
                page.status_code == 400 and "no consumer clients configured" in page.text
            )  # in, and told why
            forged = session[:-1] + ("0" if session[-1] != "0" else "1")
            assert http.get(base, headers=as_(forged)).status_code == 401
            assert (
                http.post("/logout", headers=as_(session), data={"csrf": "0" * 64}).status_code
                == 403
            )  # wrong CSRF
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            out = http.post("/logout", headers=as_(session), data={"csrf": csrf})
            assert out.status_code == 303
            assert http.get(base, headers=as_(session)).status_code == 401  # revoked
            api = http.get("/api/status", headers={"authorization": f"Bearer {TOKEN}"})
            assert (
                api.status_code == 400 and "no consumer clients configured" in api.json()["error"]
            )

            # The Kafka work runs in a worker thread: while it is stuck, the event loop still serves.
            stuck, entered = threading.Event(), threading.Event()
            real = routes.app_target

            def slow_target(app: Any) -> Any:
                entered.set()
                stuck.wait(30)
                return real(app)

            monkeypatch.setattr(routes, "app_target", slow_target)
            bearer = {"authorization": f"Bearer {TOKEN}"}
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(httpx.get, f"{base}/api/status", headers=bearer, timeout=60)
                assert entered.wait(30)
                started = time.monotonic()
                assert (
                    http.get("/login", timeout=10).status_code == 200
                )  # answered by the same event loop
                assert time.monotonic() - started < 5
                assert not pending.done()
                stuck.set()
                assert pending.result(60).status_code == 400
