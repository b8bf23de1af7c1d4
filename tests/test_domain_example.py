"""The shop example's domain event, run as the user runs it (`freedom run example:app`), on Apache Kafka."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from freedom.testing import free_port, kafka_config, wait_until, write_config
from tests.outbox.db import outbox_rows

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shop"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_example_goods_shopping_is_saved_published_and_logged_by_the_store(
    apache_kafka, db_url, tmp_path
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path / "conf",
        app={"listen_addr": f"127.0.0.1:{port}", "service_name": "shop"},
        kafka=kafka_config(
            apache_kafka.bootstrap,
            port,
            group_id=f"shop-{uuid.uuid4().hex[:8]}",
            initial_offset="latest",
            settings={"session.timeout.ms": 6000},
        ),
    )
    log = tmp_path / "service.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "freedom", "run", "example:app", "--config", str(config)],
        cwd=EXAMPLE,
        env={**os.environ, "SHOP_DATABASE_URL": db_url},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def serving() -> bool:
            try:
                return httpx.get(f"{base}/docs", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is not None

        wait_until(serving, 90, what=f"the example to serve (log: {log})")
        assert proc.poll() is None, log.read_text()
        for _ in range(2):
            r = httpx.get(
                f"{base}/shop/shopping/1",
                timeout=30,
                headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
            )
            assert r.status_code == 200 and r.text == "ok"
        wait_until(
            lambda: len(re.findall(r"Goods:Shopping 商品ID:1", log.read_text())) >= 2,
            60,
            what=f"the store to log both events (log: {log})",
        )
        # The seed's own route still works beside it.
        httpx.get(f"{base}/shop/2", timeout=30).raise_for_status()
        wait_until(
            lambda: "消耗商品ID:2, 10件, 行为:购买" in log.read_text(),
            60,
            what="the event-sell line",
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    lines = re.findall(r"\[trace (\w+)\] Goods:Shopping 商品ID:1, 剩余(\d+)件, 消息key:1", text)
    assert lines == [(TRACE, "9"), (TRACE, "8")], text[-3000:]
    assert all(row.published_at is not None for row in outbox_rows(db_url))
