"""The console's purge (docs/console.md, "Purge") in Chromium, on Apache Kafka: the purge form on
the dead-letters page runs a dry run first (which purges nothing); only the previewed purge runs,
from its preview's form (CSRF token and a signature that names the purge: a replay's preview does
not run a purge); the purged records then leave the dead-letter pages and the count of those
waiting, and a replay resends only the others. The JSON API does the same with the bearer token."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import httpx

from freedom.ops.dlq import Filter
from freedom.ops.purged import purge_group
from freedom.testing import wait_until
from tests.services.event_app import Journal, event_service
from tests.services.kafka_tools import committed, create_topic, produce, topic_size
from tests.test_console import BASE, CHROMIUM, TOKEN, replays

KEEP, DROP = ["keep-1", "keep-2"], ["drop-1", "drop-2"]


def hidden(page: Any, form: str, name: str) -> str:
    value = page.locator(f"{form} input[name={name}]").first.get_attribute("value")
    assert value is not None
    return str(value)


def test_console_purge_in_chromium_behind_its_preview_and_confirmation(
    apache_kafka, tmp_path, monkeypatch
):
    from playwright.sync_api import expect, sync_playwright

    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"cpurge-{uuid.uuid4().hex[:8]}", partitions=2)
    fail = create_topic(bootstrap, f"fail-{topic}", partitions=2)
    monkeypatch.setenv("FREEDOM_APP__CONSOLE_TOKEN", TOKEN)
    monkeypatch.delenv("FREEDOM_APP__CONSOLE_TOKEN_LABEL", raising=False)
    journal = Journal()
    state = {"fail": True}

    def handler(call: Any) -> int:
        if not state["fail"]:
            return 200
        return 503 if call.key.startswith("drop-") else 500

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
    job = purge_group(fail, Filter(grep="503"))
    console = 'console token "console" (session from 127.0.0.1) at '
    with svc:
        produce(
            bootstrap,
            topic,
            [{"key": k.encode(), "value": b"{}"} for k in ("keep-1", "drop-1", "keep-2", "drop-2")],
        )
        wait_until(lambda: topic_size(bootstrap, fail, 2) == 4, 60, what="4 dead letters")
        base = svc.base_url + BASE

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                page = context.new_page()
                page.set_default_timeout(30_000)
                expect.set_options(timeout=20_000)
                page.goto(f"{base}/dead-letters")
                page.fill("input[name=token]", TOKEN)
                page.click("button:has-text('Log in')")
                expect(page.locator("h1")).to_have_text("Dead letters")

                # The dry run: what would be purged, and nothing is.
                form = page.locator("form.purge")
                form.locator("select[name=topic]").select_option(fail)
                form.locator("input[name=grep]").fill("503")
                form.locator("text=Preview purge (dry run)").click()
                expect(page.locator("h1")).to_have_text("Purge preview")
                expect(page.locator("strong.purged")).to_have_text("2")
                rows = page.locator("table.purged tbody tr")
                expect(rows).to_have_count(2)
                assert sorted(r.locator("td").nth(2).inner_text() for r in rows.all()) == DROP
                expect(page.locator("code.audit")).to_contain_text(
                    f"dlq purge dry run by {console}"
                )
                expect(page.locator("code.audit")).to_contain_text(f"(job {job})")
                assert committed(bootstrap, job, fail, 2) == [-1001, -1001]

                # Only the previewed purge runs: without the CSRF token, or with a replay's
                # preview of the same filter, it is refused.
                jar = {c["name"]: c["value"] for c in context.cookies()}
                csrf = hidden(page, "form.run", "csrf")
                fields = {"topic": fail, "grep": "503", "csrf": csrf}
                no_csrf = httpx.post(f"{base}/purge/run", cookies=jar, data={"topic": fail})
                assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
                replay_preview = httpx.post(
                    f"{base}/replay/preview", cookies=jar, data=fields, timeout=60
                )
                assert replay_preview.status_code == 200, replay_preview.text
                signature = replay_preview.text.split('name="preview" value="')[1].split('"')[0]
                crossed = httpx.post(
                    f"{base}/purge/run", cookies=jar, data={**fields, "preview": signature}
                )
                assert crossed.status_code == 400 and "not previewed" in crossed.text
                changed = {**fields, "grep": "50", "preview": hidden(page, "form.run", "preview")}
                assert httpx.post(f"{base}/purge/run", cookies=jar, data=changed).status_code == 400
                assert committed(bootstrap, job, fail, 2) == [-1001, -1001]

                # Confirmed: the purge runs, named by the console token in its audit line.
                page.click("text=Run this purge")
                expect(page.locator("h1")).to_have_text("Purge done")
                expect(page.locator("strong.purged")).to_have_text("2")
                expect(page.locator("code.audit")).to_contain_text(f"dlq purge by {console}")
                expect(page.locator("code.audit")).to_contain_text("purged 2, already purged 0")

                # The purged records are no longer listed, nor counted as waiting.
                page.click("nav >> text=Dead letters")
                classes = page.locator("table.classes tbody tr")
                expect(classes).to_have_count(1)
                expect(classes.locator("span.err")).to_have_text("HTTP 500")
                expect(page.locator("h2", has_text=fail)).to_contain_text("(2 purged: not listed)")
                page.click("nav >> text=Groups and lag")
                expect(page.locator("table.summary-dead tbody tr td")).to_have_text(
                    [fail, topic, "4", "2"]
                )
                expect(page.locator(".attention.needs li").first).to_have_text(
                    f"2 dead letters not replayed in {fail}"
                )
            finally:
                browser.close()

        # The JSON API: the same purge is done (a dry run finds nothing left); a replay field is
        # not a purge's; the replay then resends only what was not purged.
        bearer = {"authorization": f"Bearer {TOKEN}"}
        again = httpx.post(
            f"{base}/api/purge", headers=bearer, json={"topic": fail, "grep": "503"}, timeout=60
        )
        assert again.status_code == 200, again.text
        assert (again.json()["dry_run"], again.json()["topics"][0]["purged"]) == (True, 0)
        assert again.json()["audit"].startswith(
            'dlq purge dry run by console token "console" (bearer'
        )
        rate = httpx.post(f"{base}/api/purge", headers=bearer, json={"topic": fail, "rate": "5"})
        assert rate.status_code == 400 and "unknown field 'rate'" in rate.json()["error"]
        assert httpx.post(f"{base}/api/purge", json={"topic": fail}).status_code == 401

        state["fail"] = False
        replayed = httpx.post(
            f"{base}/api/replay",
            headers=bearer,
            json={"topic": fail, "dry_run": False},
            timeout=60,
        )
        assert replayed.status_code == 200, replayed.text
        [done] = replayed.json()["topics"]
        assert (done["moved"], done["purged"]) == (2, 2), done
        assert "already purged 2" in replayed.json()["audit"]
        wait_until(lambda: len(replays(journal)) >= 2, 60, what="the two replays delivered")
        assert Counter(c.key for c in replays(journal)) == Counter(KEEP)
