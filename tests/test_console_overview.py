"""The console's overview (docs/console.md, "Groups and lag") in Chromium, on Apache Kafka: the
summary at the top (the groups with lag, the dead letters by topic, whether anything needs
attention), the dead letters before the partitions without lag (folded, still reachable), the
refresh link and the auto-refresh (a meta refresh, no script, turned off by a link); and a replay
started from the console names the console token's label in its audit line, not the service's OS
user (the commands keep the OS user).

The service listens on a topic of two partitions: the records of partition 0 fail (500, one retry)
and are dead-lettered; partition 1 starts with a record whose handler does not answer until the
test ends, so the main group cannot commit past it: its lag is the 3 records of partition 1.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from typing import Any

import httpx
import pytest

from freedom.config.loading import ConfigError, load_app_config
from freedom.console import routes
from freedom.console.running import app_target
from freedom.ops.replay import replay, who
from freedom.testing import wait_until, write_config
from tests.services.event_app import Journal, event_service
from tests.services.kafka_tools import committed, create_topic, produce, topic_size
from tests.test_console import BASE, CHROMIUM, TOKEN

LABEL = "oncall-payments"


def test_overview_summary_order_refresh_and_the_console_replay_audit_names_the_token_label(
    apache_kafka, tmp_path, monkeypatch
):
    from playwright.sync_api import expect, sync_playwright

    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"overview-{uuid.uuid4().hex[:8]}", partitions=2)
    fail = create_topic(bootstrap, f"fail-{topic}", partitions=2)
    monkeypatch.setenv("FREEDOM_APP__CONSOLE_TOKEN", TOKEN)
    monkeypatch.setenv("FREEDOM_APP__CONSOLE_TOKEN_LABEL", LABEL)
    release = threading.Event()
    state = {"fail": True}

    def handler(call: Any) -> Any:
        if call.key == "held":  # answers when the test ends: the main group's commit waits here
            return asyncio.get_running_loop().run_in_executor(None, lambda: release.wait() and 200)
        if call.key.startswith("ok-") or not state["fail"]:
            return 200
        return 500

    svc = event_service(
        tmp_path,
        bootstrap,
        Journal(),
        topic,
        handler,
        retry_count=1,
        retry_interval_sec=0.2,
        initial_offset="earliest",
        delivery_timeout_sec=600,
    )
    group = svc.app.kafka_config.consumer_clients[0].group_id

    def dead_letter(key: str) -> None:
        produce(bootstrap, topic, [{"key": key.encode(), "value": b"{}", "partition": 0}])

    with svc:
        try:
            produce(
                bootstrap,
                topic,
                [
                    {"key": k.encode(), "value": b"{}", "partition": 1}
                    for k in ("held", "ok-1", "ok-2")
                ],
            )
            for k in ("d1", "d2", "d3"):
                dead_letter(k)
            wait_until(lambda: topic_size(bootstrap, fail, 2) == 3, 60, what="3 dead letters")
            wait_until(
                lambda: committed(bootstrap, group, topic, 2)[0] == 3,
                30,
                what="the main group to commit partition 0",
            )
            base = svc.base_url + BASE

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 860})
                    page.set_default_timeout(30_000)
                    expect.set_options(timeout=20_000)
                    page.goto(base)
                    page.fill("input[name=token]", TOKEN)
                    page.click("button:has-text('Log in')")
                    expect(page.locator("h1")).to_have_text("Groups and lag")

                    # The summary: the group with lag and its total, the dead-letter topic and its
                    # count, and what needs attention.
                    summary = page.locator("section.summary")
                    lag_row = summary.locator("table.summary-lag tbody tr").filter(
                        has=page.locator("code", has_text=re.compile(f"^{re.escape(group)}$"))
                    )
                    expect(lag_row.locator("td")).to_have_text([group, "main", "0", "3", ""])
                    dead_rows = summary.locator("table.summary-dead tbody tr")
                    expect(dead_rows).to_have_count(1)
                    expect(dead_rows.locator("td")).to_have_text([fail, topic, "3", "3"])
                    attention = summary.locator(".attention.needs li")
                    expect(attention).to_contain_text(
                        [
                            f"3 dead letters not replayed in {fail}",
                            f"group {group} (main) has lag 3",
                        ]
                    )

                    # Top to bottom: the summary, the client's dead letters, the partition with lag,
                    # then the partitions without lag, folded (and there when unfolded).
                    dead_table = page.locator("section:not(.summary) table.dead")
                    expect(dead_table.locator("tbody tr")).to_have_text(f"{fail}{topic}33")
                    lagging = page.locator("table.partitions.lagging tbody tr")
                    expect(lagging).to_have_count(1)
                    cells = lagging.locator("td")  # committed: nothing, or 0 (before "held")
                    expect(cells).to_have_text([topic, "1", re.compile("^(-|0)$"), "3", "3", ""])
                    idle = page.locator("details.idle").first
                    idle_row = idle.locator("table.idle tbody tr").filter(has_text=topic)
                    expect(idle_row).to_be_hidden()
                    idle.locator("summary").click()
                    expect(idle_row.locator("td")).to_have_text([topic, "0", "3", "3", "0", ""])

                    def top(locator: Any) -> float:
                        box = locator.bounding_box()
                        assert box is not None
                        return float(box["y"])

                    assert (
                        top(summary)
                        < top(dead_table)
                        < top(lagging.first)
                        < top(idle.locator("summary"))
                        < top(idle_row)
                    )
                    for row in page.locator("table.idle tbody tr").all():  # every lag-0 row below
                        assert top(row) > top(dead_table)

                    # Refresh: a dead letter that arrived after the page was loaded shows.
                    dead_letter("d4")
                    wait_until(lambda: topic_size(bootstrap, fail, 2) == 4, 60, what="a 4th")
                    expect(dead_rows.locator("td").nth(2)).to_have_text("3")  # not by itself
                    with page.expect_navigation():
                        page.click("a.refresh")
                    expect(dead_rows.locator("td")).to_have_text([fail, topic, "4", "4"])
                    expect(page.locator("meta[http-equiv=refresh]")).to_have_count(0)

                    # The auto-refresh: on by a link (30 s), its interval in the URL; the page then
                    # reloads by itself, under the same Content-Security-Policy (no script).
                    page.click("a.auto-on")
                    assert page.url == f"{base}?refresh=30"
                    expect(page.locator("meta[http-equiv=refresh]")).to_have_attribute(
                        "content", "30"
                    )
                    shown = page.goto(f"{base}?refresh=5")
                    assert shown is not None and shown.status == 200
                    assert (
                        shown.headers["content-security-policy"]
                        == routes.SECURITY_HEADERS["content-security-policy"]
                    )
                    expect(page.locator("span.auto-on")).to_have_text("Reloads every 5 s")
                    dead_letter("d5")
                    wait_until(lambda: topic_size(bootstrap, fail, 2) == 5, 60, what="a 5th")
                    expect(dead_rows.locator("td").nth(2)).to_have_text("5")  # reloaded itself
                    assert page.url == f"{base}?refresh=5"
                    page.click("a.auto-off")  # and off again
                    assert page.url == base
                    expect(page.locator("meta[http-equiv=refresh]")).to_have_count(0)
                    expect(page.locator("a.auto-on")).to_have_text("Auto-refresh every 30 s")
                    too_fast = page.goto(f"{base}?refresh=1")
                    assert too_fast is not None and too_fast.status == 400
                    expect(page.locator(".error")).to_contain_text("refresh: expected 5 to 3600")

                    # A replay from the console: its audit line names the token's label.
                    page.goto(f"{base}/dead-letters")
                    page.select_option("select[name=topic]", fail)
                    page.click("text=Preview replay (dry run)")
                    audit = page.locator("code.audit")
                    expect(audit).to_contain_text(
                        f'dlq dry run by console token "{LABEL}" (session from 127.0.0.1) at '
                    )
                    state["fail"] = False
                    page.click("text=Run this replay")
                    expect(page.locator("h1")).to_have_text("Replay done")
                    expect(audit).to_contain_text(
                        f'dlq replay by console token "{LABEL}" (session from 127.0.0.1) at '
                    )
                    expect(audit).to_contain_text("moved 5")
                    assert who() not in audit.inner_text()
                finally:
                    browser.close()

            # Scripts with the bearer token: named so too; the commands' function: the OS user.
            api = httpx.post(
                f"{base}/api/replay",
                headers={"authorization": f"Bearer {TOKEN}"},
                json={"topic": fail},
                timeout=60,
            )
            assert api.status_code == 200, api.text
            assert api.json()["audit"].startswith(
                f'dlq dry run by console token "{LABEL}" (bearer from 127.0.0.1) at '
            )
            assert replay(app_target(svc.app), fail, dry_run=True).who == who()
        finally:
            release.set()


def test_console_token_label_default_and_checks(tmp_path, monkeypatch):
    monkeypatch.delenv("FREEDOM_APP__CONSOLE_TOKEN", raising=False)
    monkeypatch.delenv("FREEDOM_APP__CONSOLE_TOKEN_LABEL", raising=False)
    write_config(tmp_path, app={"console_token": TOKEN})
    assert load_app_config(tmp_path).console_token_label == "console"
    write_config(tmp_path, app={"console_token": TOKEN, "console_token_label": "team-a"})
    config = load_app_config(tmp_path)
    assert config.console_token_label == "team-a"
    assert {e.key: e.value for e in config.entries}["console_token_label"] == "team-a"
    for bad in ("", " padded", "x" * 65, "evil\u202eliar", "two\nlines"):
        write_config(tmp_path, app={"console_token": TOKEN, "console_token_label": bad})
        with pytest.raises(ConfigError, match="console_token_label: must be 1 to 64 printable"):
            load_app_config(tmp_path)
