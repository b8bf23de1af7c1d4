"""`freedom proxy`: the consumer proxy alone, delivering to an HTTP service not written with freedom.

The endpoint is the standard library's http.server (HTTP/1.1, keep-alive), on 127.0.0.1; the proxy
runs as `freedom proxy --config DIR` in a subprocess, on Apache Kafka.
"""

from __future__ import annotations

import datetime
import http.server
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from freedom.testing import free_port, wait_until, write_config
from tests.services.asgi_parts import read_body, serve_lifespan
from tests.services.kafka_tools import (
    committed,
    create_topic,
    headers_of,
    produce,
    read_all,
    wait_drained,
)
from tests.services.plain_http import PlainService

SECRET = "s3cret-for-the-endpoint-0123"


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes


class Endpoint(PlainService):
    """A plain HTTP/1.1 service: records every POST; `/fail/...` answers 500, `/a/HOLD...` waits
    until released (a delivery in flight), everything else 200."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []

    def on_post(self, request: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        with self.lock:
            self.calls.append(
                Call(request.path, {k.lower(): v for k, v in request.headers.items()}, body)
            )
        if request.path.startswith("/a/HOLD"):
            self.release.wait(60)
        status, answer = (500, b"boom") if request.path.startswith("/fail/") else (200, b"")
        self.answer(request, status, body=answer)

    def of(self, prefix: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path.startswith(prefix)]


class Proxy:
    """`freedom proxy --config DIR --listen 127.0.0.1:PORT` in its own process group."""

    def __init__(self, config: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "freedom",
                "proxy",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{self.port}",
            ],
            env={**os.environ, **env},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"freedom proxy exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            return self.get("/readyz")[0] == 200

        wait_until(
            ready, timeout, interval=0.2, what=f"freedom proxy to be ready (log: {self.log})"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        self.proc.wait(30)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as e:
        yield e


def _config(
    tmp_path: Path, bootstrap: str, group: str, subscriptions: list[dict[str, Any]], **client: Any
) -> Path:
    return write_config(
        tmp_path / "conf",
        kafka={
            "consumer_clients": [
                {
                    "servers": [bootstrap],
                    "group_id": group,
                    "retry_group_id": f"r-{group}",
                    "settings": {"session.timeout.ms": 6000},
                    **client,
                }
            ],
            "subscriptions": subscriptions,
        },
    )


def test_delivers_to_a_plain_http_service_with_retries_dead_letters_and_the_secret(
    apache_kafka, new_topic, tmp_path, endpoint
):
    bootstrap = apache_kafka.bootstrap
    orders, payments = new_topic(bootstrap), new_topic(bootstrap)
    group = f"sp-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{endpoint.port}"
    config = _config(
        tmp_path,
        bootstrap,
        group,
        [
            {"topic": orders, "url": base + "/events/{key}?source=kafka", "secret": SECRET},
            {
                "topic": payments,
                "url": base + "/fail/{key}",
                "mode": "concurrent",
                "retry_count": 1,
                "retry_interval_sec": 0.5,
            },
        ],
        retry_count=0,
    )
    proxy = Proxy(config, tmp_path / "proxy.log")
    try:
        proxy.wait_ready()
        produce(
            bootstrap,
            orders,
            [{"key": b"order/7", "value": b'{"id": 7}', "headers": [("x-action", b"buy")]}],
        )
        produce(
            bootstrap,
            payments,
            [{"key": b"K-FAIL", "value": b"p", "headers": [("x-action", b"pay")]}],
        )
        # As a Go freedom service publishes: upper-hex key, its bus, raw UTF-8 headers, no content-type.
        go_key, go_bus = uuid.uuid1().hex.upper(), b'{"TRACE-ID":"%s"}' % uuid.uuid1().hex.encode()
        produce(
            bootstrap,
            orders,
            [
                {
                    "key": go_key.encode(),
                    "value": b'{"id": 8}',
                    "headers": [("x-freedom-bus", go_bus), ("x-action", "购买".encode())],
                }
            ],
        )
        call, go = wait_until(
            lambda: (c := endpoint.of("/events/")) and len(c) == 2 and c,
            30,
            what="the delivery of the two orders",
        )
        assert (
            call.path == "/events/order%2F7?source=kafka"
        )  # the URL template, the key percent-encoded
        assert call.body == b'{"id": 7}'
        h = call.headers
        assert (
            h["x-message-key"] == "order/7" and h["x-retry-count"] == "0" and h["x-action"] == "buy"
        )
        assert h["x-freedom-secret"] == SECRET and h["content-type"] == "application/json"
        assert h["host"] == f"127.0.0.1:{endpoint.port}"
        assert go.path == f"/events/{go_key}?source=kafka" and go.headers["x-message-key"] == go_key
        assert (
            go.headers["x-freedom-bus"].encode("latin-1") == go_bus
        )  # http.server reads headers as latin-1
        assert (
            go.headers["x-action"].encode("latin-1").decode() == "购买"
        )  # raw UTF-8, as the Go side sent it
        assert (
            "x-freedom-encoded" not in go.headers
            and go.headers["content-type"] == "application/json"
        )

        # Committed once its dead letter was acknowledged: every dead letter is there now.
        wait_drained(
            bootstrap,
            {group: [payments], f"r-{group}": [f"retry-{payments}"]},
            30,
            what="the failing payment settled",
        )
        dead = read_all(bootstrap, f"fail-{payments}")
        fails = endpoint.of("/fail/")
        assert [c.headers["x-retry-count"] for c in fails] == [
            "0",
            "1",
        ]  # the subscription's retry_count
        assert all(c.path == "/fail/K-FAIL" and "x-freedom-secret" not in c.headers for c in fails)
        assert len(dead) == 1 and dead[0].key() == b"K-FAIL" and dead[0].value() == b"p"
        d = headers_of(dead[0])
        assert d["x-freedom-original-topic"] == payments and d["x-freedom-status"] == "500"
        assert (
            d["x-freedom-error"].startswith("HTTP 500")
            and d["x-retry-count"] == "1"
            and d["x-action"] == "pay"
        )
        assert (
            "content-type" not in d
        )  # the record is the record; content-type is only on the delivery

        wait_until(
            lambda: committed(bootstrap, group, orders) == [2], 20, what="the orders' commit"
        )
        status, text = proxy.get("/metrics")
        assert status == 200 and f'messaging_destination_name="{orders}"' in text
        assert proxy.get("/livez")[0] == 200
        assert json.loads(proxy.get("/readyz")[1]) == {"status": "ready"}
        report = subprocess.run(
            [sys.executable, "-m", "freedom", "status", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert report.returncode == 0, report.stderr
        assert group in report.stdout and orders in report.stdout and payments in report.stdout
    finally:
        proxy.stop()
    assert proxy.proc.returncode == 0, proxy.log.read_text()
    assert "Traceback" not in proxy.log.read_text()


def test_status_shows_the_subscriptions_topics_and_a_subscriptions_retry_group_before_any_commit(
    apache_kafka, new_topic, tmp_path
):
    """`freedom status --config DIR` of a standalone proxy: its topics are the subscriptions', known
    before the proxy committed anything, and the retry group shows (with the records waiting in
    the retry topic) although only a subscription, not its client, sets retry_count."""
    from freedom.ops.status import status
    from freedom.ops.target import config_target

    bootstrap = apache_kafka.bootstrap
    orders, payments = new_topic(bootstrap), new_topic(bootstrap)
    retry = create_topic(bootstrap, f"retry-{payments}")
    produce(
        bootstrap, retry, [{"key": b"K-WAIT", "value": b"p", "headers": [("x-retry-count", b"1")]}]
    )
    group = f"st-{uuid.uuid4().hex[:8]}"
    config = _config(
        tmp_path,
        bootstrap,
        group,
        [
            {"topic": orders, "url": "http://127.0.0.1:9/o/{key}"},
            {
                "topic": payments,
                "url": "http://127.0.0.1:9/p/{key}",
                "retry_count": 2,
                "retry_interval_sec": 3600,
            },
        ],
        retry_count=0,
    )
    [client] = status(config_target(str(config))).clients
    assert client.topics == tuple(sorted([orders, payments]))
    main, retry_group = client.groups
    assert (main.kind, main.group, sorted({p.topic for p in main.partitions})) == (
        "main",
        group,
        sorted([orders, payments]),
    )
    assert (retry_group.kind, retry_group.group) == ("retry", f"r-{group}")
    [waiting] = retry_group.partitions  # only the subscription with retries has a retry topic
    assert (waiting.topic, waiting.committed, waiting.lag) == (retry, None, 1)
    due = datetime.datetime.fromisoformat(waiting.due_at.replace("Z", "+00:00")).timestamp()
    assert due > time.time() + 1800  # the subscription's hour-long retry interval, not the client's
    assert [(t.topic, t.original_topic, t.records) for t in client.retry_waiting] == [
        (retry, payments, 1)
    ]


def _members(bootstrap: str, group: str) -> list[set[int]]:
    """The partitions each member of `group` holds, once the group is stable."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(10)
    if str(desc.state).split(".")[-1] != "STABLE":
        return []
    return [{tp.partition for tp in m.assignment.topic_partitions} for m in desc.members]


def test_two_instances_share_the_partitions_and_a_sigkill_redelivers_only_the_uncommitted(
    apache_kafka, new_topic, tmp_path, endpoint
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap, partitions=2)
    group = f"sp2-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{endpoint.port}"
    config = _config(tmp_path, bootstrap, group, [{"topic": topic, "url": base + "/b/{key}"}])
    # The same config; instance A delivers to /a/ (an environment override), so each call names its instance.
    a = Proxy(config, tmp_path / "a.log", FREEDOM_KAFKA__SUBSCRIPTIONS__0__URL=base + "/a/{key}")
    b = Proxy(config, tmp_path / "b.log")
    try:
        a.wait_ready()
        b.wait_ready()
        members = wait_until(
            lambda: (m := _members(bootstrap, group)) and len(m) == 2 and all(m) and m,
            30,
            what="both instances to hold a partition",
        )
        assert sorted(p for m in members for p in m) == [0, 1]
        keys = {p: [f"P{p}-{i}" if i != 2 else f"HOLD-{p}" for i in range(5)] for p in (0, 1)}
        produce(
            bootstrap,
            topic,
            [{"key": k.encode(), "value": b"v", "partition": p} for p in (0, 1) for k in keys[p]],
        )
        # A delivers its partition up to the held record; B delivers all of its own.
        wait_until(
            lambda: len(endpoint.of("/a/")) == 3 and len(endpoint.of("/b/")) == 5,
            30,
            what="A to hold its third record and B to deliver its five",
        )
        a_keys = [c.path.split("/")[2] for c in endpoint.of("/a/")]
        p_a = 0 if a_keys[0].startswith(("P0", "HOLD-0")) else 1
        assert a_keys == keys[p_a][:3]
        assert [c.path.split("/")[2] for c in endpoint.of("/b/")] == keys[1 - p_a]
        # The two records A finished are committed; the held one is not.
        wait_until(
            lambda: committed(bootstrap, group, topic, 2)[p_a] == 2,
            20,
            what="A's commit of its first two",
        )
        a.stop(signal.SIGKILL)
        # B takes A's partition over (after A's session times out) from the committed offset.
        wait_until(
            lambda: len(endpoint.of("/b/")) == 8, 45, what="B to deliver A's uncommitted records"
        )
        taken = [c.path.split("/")[2] for c in endpoint.of("/b/")[5:]]
        assert (
            taken == keys[p_a][2:]
        )  # the held record and the two behind it; none of the committed two
        wait_until(lambda: committed(bootstrap, group, topic, 2) == [5, 5], 20, what="B's commits")
    finally:
        endpoint.release.set()
        a.stop(signal.SIGKILL)
        b.stop()
    assert b.proc.returncode == 0, b.log.read_text()


# ---------------------------------------------------------------------------- h2c and HTTP/1.1 targets


def test_each_subscription_reaches_its_own_url_over_h2c_or_http1(tmp_path):
    """The seam without Kafka: SubscriptionTransport hands each topic's delivery to its subscription's
    transport; the server is granian (h2c and HTTP/1.1 on one port) with a bare ASGI app."""
    import asyncio

    from freedom.config.models import KafkaConfig, SubscriptionConfig
    from freedom.runner.server import serve_granian
    from freedom.standalone.proxy import SubscriptionTransport, make_target_transport, target_of

    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await serve_lifespan(receive, send)
        body = await read_body(receive)
        seen.append(
            {
                "version": scope["http_version"],
                "path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "body": body,
                "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            }
        )
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    subs = [
        SubscriptionConfig(
            topic="h2", url=f"http://127.0.0.1:{port}/h2/{{key}}?via=h2c", http2=True, secret=SECRET
        ),
        SubscriptionConfig(topic="h1", url=f"http://127.0.0.1:{port}/h1/{{key}}", timeout_sec=5),
    ]

    async def main() -> None:
        shutdown = asyncio.Event()
        serving = asyncio.ensure_future(serve_granian(app, "127.0.0.1", port, shutdown))  # type: ignore[arg-type]
        transport = SubscriptionTransport(
            {s.topic: make_target_transport(s, KafkaConfig()) for s in subs}
        )
        try:
            loop = asyncio.get_running_loop()
            assert await transport.wait_until_reachable(loop.time() + 30, asyncio.Event())
            for sub in subs:
                _, route = target_of(sub)
                result = await transport.deliver(
                    route,
                    "tenant/9",
                    b"body-" + sub.topic.encode(),
                    [("x-action", "购买".encode())],
                    0,
                )
                assert result.ok, result
        finally:
            await transport.aclose()
            shutdown.set()
            await serving

    asyncio.run(main())
    h2, h1 = seen
    assert (h2["version"], h2["path"], h2["query"], h2["body"]) == (
        "2",
        "/h2/tenant%2F9",
        "via=h2c",
        b"body-h2",
    )
    assert (
        h2["headers"]["x-freedom-secret"] == SECRET and h2["headers"]["x-message-key"] == "tenant/9"
    )
    assert (h1["version"], h1["path"], h1["body"]) == ("1.1", "/h1/tenant%2F9", b"body-h1")
    assert "x-freedom-secret" not in h1["headers"] and h1["headers"]["x-retry-count"] == "0"
    assert (
        h1["headers"]["x-action"] == "购买" and h2["headers"]["x-action"] == "购买"
    )  # raw UTF-8 bytes


# ---------------------------------------------------------------------------- configuration mistakes


@pytest.mark.parametrize(
    "entry, expected",
    [
        ({"url": "http://h/{id}"}, "subscriptions[0].url: the only placeholder is {key}"),
        ({"url": "ftp://h/x"}, 'subscriptions[0].url: must start with "http://" or "https://"'),
        (
            {"url": "http://{key}.svc/x"},
            "subscriptions[0].url: {key} goes in the path or the query, not the host",
        ),
        ({"url": "http://u:p@h/x"}, "subscriptions[0].url: must not hold credentials"),
        ({"url": "http://h:99999/x"}, "subscriptions[0].url: is not a valid URL"),
        ({"url": "http://h/ä"}, "subscriptions[0].url: must be printable ASCII"),
        (
            {"url": "https://h/x", "http2": True},
            "subscriptions[0].http2: h2c is HTTP/2 without TLS",
        ),
        ({"topic": "a b"}, "subscriptions[0].topic: must be a Kafka topic name"),
        (
            {"group_id": "other"},
            'subscriptions[0].group_id: "other" is not the group_id of a [[consumer_clients]] entry',
        ),
        ({"mode": "parallel"}, "subscriptions[0].mode: must be one of"),
        ({"timeout_sec": 0}, "subscriptions[0].timeout_sec: must be greater than 0"),
        ({"secret": "short"}, "subscriptions[0].secret: the secret must be at least 16"),
        ({"retry_count": -1}, "subscriptions[0].retry_count: must be 0 (no retries) or more"),
        ({"urll": "http://h/x"}, 'subscriptions[0].urll: unknown key (did you mean "url"?'),
    ],
)
def test_a_wrong_subscription_is_one_line_naming_the_key(tmp_path, capsys, entry, expected):
    from freedom.cli.main import main

    sub = {"topic": "orders", "url": "http://orders:8080/events/{key}", **entry}
    config = write_config(
        tmp_path,
        kafka={
            "consumer_clients": [{"servers": ["127.0.0.1:9"], "group_id": "g"}],
            "subscriptions": [sub],
        },
    )
    assert main(["proxy", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert "short" not in err  # never the secret itself


@pytest.mark.parametrize(
    "kafka, expected",
    [
        (
            {"consumer_clients": [{"servers": ["127.0.0.1:9"]}]},
            "subscriptions: no [[subscriptions]] entry",
        ),
        (
            {"subscriptions": [{"topic": "t", "url": "http://h/x"}]},
            "consumer_clients: no [[consumer_clients]] entry",
        ),
        (
            {"consumer_clients": [{}], "subscriptions": [{"topic": "t", "url": "http://h/x"}]},
            "consumer_clients[0].servers: freedom proxy reads from a cluster",
        ),
        (
            {
                "consumer_clients": [{"servers": ["127.0.0.1:9"]}],
                "subscriptions": [
                    {"topic": "t", "url": "http://h/x"},
                    {"topic": "t", "url": "http://h/y"},
                ],
            },
            'subscriptions[1].topic: "t" is subscribed twice by the group "freedom"',
        ),
        (
            {
                "consumer_clients": [
                    {"servers": ["127.0.0.1:9"], "topics": {"other": {"mode": "concurrent"}}}
                ],
                "subscriptions": [{"topic": "t", "url": "http://h/x"}],
            },
            'consumer_clients[0].topics."other": no event listens to this topic (the listened topics: "t")',
        ),
    ],
)
def test_a_proxy_without_what_it_needs_is_one_line(tmp_path, capsys, kafka, expected):
    from freedom.cli.main import main

    assert main(["proxy", "--config", str(write_config(tmp_path, kafka=kafka))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err


def test_a_missing_config_directory_is_one_line(tmp_path, capsys):
    from freedom.cli.main import main

    assert main(["proxy", "--config", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_a_wrong_listen_address_is_one_line_naming_the_option(tmp_path, capsys):
    from freedom.cli.main import main

    config = write_config(
        tmp_path,
        kafka={
            "consumer_clients": [{"servers": ["127.0.0.1:9"]}],
            "subscriptions": [{"topic": "t", "url": "http://h/x"}],
        },
    )
    assert main(["proxy", "--config", str(config), "--listen", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("freedom: error: freedom proxy: --listen: must look like")
        and len(err.splitlines()) == 1
    ), err


def test_a_listen_address_in_use_is_one_line_before_kafka_is_reached(tmp_path, capsys):
    import socket

    from freedom.cli.main import main

    config = write_config(
        tmp_path,
        kafka={
            "consumer_clients": [{"servers": ["127.0.0.1:9"]}],
            "subscriptions": [{"topic": "t", "url": "http://h/x"}],
        },
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["proxy", "--config", str(config), "--listen", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--listen: cannot listen on 127.0.0.1:{port}" in err and "another process" in err, err
