"""The console's overview (docs/console.md, "Groups and lag") of a share-group service, in Chromium on
Apache Kafka: the share group where the consumer groups are (kind "share", its state, its members,
its configs, its partitions with the share-partition start offset and the lag), and another share
group of the cluster listed with its id escaped (a control and a bidirectional character in it).

The service's handler holds one record until the test ends: the group's lag on its partition is
that record, acquired and not acknowledged.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from typing import Any

import confluent_kafka

from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.services.event_app import Journal, event_app
from tests.services.kafka_tools import create_topic, produce
from tests.test_console import BASE, CHROMIUM, TOKEN


def test_overview_lists_the_share_group_and_the_other_share_groups_escaped(
    apache_kafka, tmp_path, monkeypatch
):
    from playwright.sync_api import expect, sync_playwright

    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"console-share-{uuid.uuid4().hex[:8]}", partitions=2)
    group = f"share-{uuid.uuid4().hex[:8]}"
    other = f"other\x1b[31m-{uuid.uuid4().hex[:6]}\u202e"
    monkeypatch.setenv("FREEDOM_APP__CONSOLE_TOKEN", TOKEN)
    release = threading.Event()
    journal = Journal()

    def handler(call: Any) -> Any:
        if call.key == "held":  # answers when the test ends: acquired, not acknowledged
            return asyncio.get_running_loop().run_in_executor(None, lambda: release.wait() and 200)
        return 200

    port = free_port()
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(
            bootstrap, port, group_id=group, share_group=True, delivery_timeout_sec=50
        ),
    )
    svc = ServiceThread(event_app(tmp_path, journal, topic, handler))
    other_member = confluent_kafka.ShareConsumer(
        {"bootstrap.servers": bootstrap, "group.id": other, "log_level": 3}
    )
    with svc:
        try:
            other_member.subscribe([topic])
            other_member.poll(0.5)  # joins: the other group exists
            produce(
                bootstrap,
                topic,
                [{"key": b"held", "value": b"{}", "partition": 0}]
                + [{"key": f"ok-{i}".encode(), "value": b"{}", "partition": 1} for i in range(3)],
            )
            wait_until(lambda: len(journal.of()) == 4, 60, what="the 4 records delivered")
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

                    # The share group where the groups are: kind, state, its member, its configs.
                    heading = page.locator("h3.share").filter(
                        has=page.locator("code", has_text=re.compile(f"^{re.escape(group)}$"))
                    )
                    expect(heading.locator("small")).to_have_text("share, STABLE")
                    expect(heading.locator(".lag")).to_have_text("lag 1")
                    members = heading.locator("xpath=following-sibling::p[1]")
                    # The instance's two fetchers (sources/share.py), each a member.
                    member = r"rdkafka on 127\.0\.0\.1 \([12] partitions\)"
                    expect(members).to_have_text(
                        re.compile(rf"^Members \(2\): {member}; {member}$")
                    )
                    expect(page.locator("p.configs").first).to_contain_text(
                        "share.auto.offset.reset = earliest"
                    )
                    # Partition 0 holds the record the handler holds; partition 1 is done (folded).
                    lagging = page.locator("table.partitions.lagging.share tbody tr")
                    expect(lagging).to_have_count(1)
                    expect(lagging.locator("td")).to_have_text(
                        [topic, "0", "0", "1", re.compile(r"^(-|0)$"), re.compile(r"^~?1$")]
                    )
                    idle = page.locator("details.idle").filter(has_text="with no lag").first
                    idle.locator("summary").click()
                    idle_row = idle.locator("table.share tbody tr")
                    expect(idle_row.locator("td")).to_have_text(
                        [topic, "1", "0", "3", re.compile(r"^[0-3]$"), re.compile(r"^~?0$")]
                    )

                    # The summary counts the share group's lag like any group's.
                    summary_row = page.locator("table.summary-lag tbody tr").filter(
                        has=page.locator("code", has_text=re.compile(f"^{re.escape(group)}$"))
                    )
                    expect(summary_row.locator("td")).to_have_text([group, "share", "0", "1", ""])

                    # The other share group of the cluster, its id escaped, not raw.
                    shown = other.replace("\x1b", "\\x1b").replace("\u202e", "\\u202e")
                    row = page.locator("table.other-share tbody tr").filter(has_text=shown)
                    expect(row.locator("td")).to_have_text(
                        [shown, "share", re.compile("^(EMPTY|STABLE)$")]
                    )
                    text = page.locator("main").inner_text()
                    assert "\x1b" not in text and "\u202e" not in text
                finally:
                    browser.close()
        finally:
            release.set()
            other_member.close()
