"""Forged header names and forged control headers on Apache Kafka (issue 21, points 2 and 4).

- Point 2: record headers spelled with `_` are ruled as their `-` spelling. A WSGI server folds
  the two (`x_forwarded_for` becomes HTTP_X_FORWARDED_FOR), so through `freedom proxy` to a WSGI
  endpoint (the standard library's wsgiref) a record cannot spoof the caller's address or break
  the delivery secret; through a freedom service (http and in-process) the handler sees none of them.
- Point 4: `x-freedom-*` control headers on a main-topic record came from outside. They reach
  neither the handler nor the record's retry and dead-letter copies, so a record published with
  `x-freedom-replay-count: 3` is replayed by the first `freedom dlq replay`, not parked; a real
  replay keeps its count (checked against the dead letter it names), and the next replay counts on.
"""

from __future__ import annotations

import threading
import uuid
import wsgiref.simple_server
from collections.abc import Iterator
from typing import Any

import pytest

from freedom.config.loading import load_kafka_config
from freedom.ops.replay import replay
from freedom.ops.target import target_of
from freedom.testing import wait_until
from freedom.wire.headers import (
    CONTROL_HEADERS,
    REPLAY_COUNT_HEADER,
    REPLAY_OF_HEADER,
    check_message_headers,
)
from tests.services.event_app import Delivery, Journal, event_service, reads_of
from tests.services.kafka_tools import headers_of, produce, read_all, wait_drained
from tests.test_standalone_proxy import Proxy, _config

SECRET = "s3cret-for-the-wsgi-endpoint-01"

#: Names a WSGI server reads as a never-forwarded or proxy-set header.
SPELLED_WITH_UNDERSCORES = [
    ("x_forwarded_for", b"6.6.6.6"),
    ("X_Real_IP", b"6.6.6.6"),
    ("x_freedom_secret", b"forged"),
    ("x_message_key", b"forged"),
    ("x_retry_count", b"7"),
    ("x_freedom_encoded", b"x-action"),
]
#: Control headers only freedom writes, forged by a publisher (`_` spellings too).
FORGED_CONTROL = [
    ("x-freedom-value-omitted", b"5000000"),
    ("x-freedom-key-omitted", b"9"),
    ("x-freedom-outcome", b"drop"),
    ("x-freedom-reason", b"forged"),
    ("x-freedom-batch", b"3"),
    ("x-freedom-error", b"forged"),
    ("x-freedom-status", b"599"),
    ("x-freedom-original-topic", b"victim"),
    ("x_freedom_original_topic", b"victim"),
    ("x_freedom_replay_count", b"9"),
]


# ----------------------------------------------------------------------------- freedom proxy -> WSGI


class WsgiEndpoint:
    """A WSGI application on wsgiref.simple_server in a thread (127.0.0.1): keeps the HTTP_* keys
    of each POST's environ, and answers 401 unless HTTP_X_FREEDOM_SECRET is the secret, as a WSGI
    service checking the delivery secret does; 200 otherwise."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

        class Quiet(wsgiref.simple_server.WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                pass

        self.server = wsgiref.simple_server.make_server(
            "127.0.0.1", 0, self.app, handler_class=Quiet
        )
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        seen = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        with self.lock:
            self.calls.append((environ["PATH_INFO"], seen))
        ok = seen.get("HTTP_X_FREEDOM_SECRET") == self.secret
        start_response("200 OK" if ok else "401 Unauthorized", [("Content-Length", "0")])
        return [b""]

    def of(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [seen for p, seen in self.calls if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def wsgi() -> Iterator[WsgiEndpoint]:
    endpoint = WsgiEndpoint(SECRET)
    try:
        yield endpoint
    finally:
        endpoint.close()


def test_underscore_spellings_are_refused_through_freedom_proxy_to_a_wsgi_endpoint(
    apache_kafka, new_topic, tmp_path, wsgi
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    group = f"sp-{uuid.uuid4().hex[:8]}"
    config = _config(
        tmp_path,
        bootstrap,
        group,
        [
            {
                "topic": topic,
                "url": f"http://127.0.0.1:{wsgi.port}/events/{{key}}",
                "secret": SECRET,
            }
        ],
        retry_count=1,
        retry_interval_sec=0.2,
    )
    proxy = Proxy(config, tmp_path / "proxy.log")
    try:
        proxy.wait_ready()
        headers = [*SPELLED_WITH_UNDERSCORES, *FORGED_CONTROL, ("x_custom", b"kept")]
        produce(bootstrap, topic, [{"key": b"SPOOF", "value": b"{}", "headers": headers}])
        wait_drained(
            bootstrap,
            {group: [topic], f"r-{group}": [f"retry-{topic}"]},
            30,
            what="the record settled",
        )
        # Delivered once, with the real secret alone: the forged `x_freedom_secret` did not join it
        # (wsgiref would make it "forged,<secret>", a 401, and a dead letter).
        [seen] = wsgi.of("/events/SPOOF")
        assert read_all(bootstrap, f"fail-{topic}") == []
        assert seen["HTTP_X_FREEDOM_SECRET"] == SECRET
        assert "HTTP_X_FORWARDED_FOR" not in seen and "HTTP_X_REAL_IP" not in seen, seen
        assert seen["HTTP_X_MESSAGE_KEY"] == "SPOOF" and seen["HTTP_X_RETRY_COUNT"] == "0"
        assert "HTTP_X_FREEDOM_ENCODED" not in seen
        forged = {"HTTP_" + name.replace("-", "_").upper() for name, _ in FORGED_CONTROL}
        assert not forged & set(seen), forged & set(seen)
        assert seen["HTTP_X_CUSTOM"] == "kept"  # an ordinary name with `_` travels as it is
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- a freedom service

#: The reason headers the proxy writes itself on a retry record (a retry delivery carries them).
REASONS = {
    "x-freedom-original-topic",
    "x-freedom-original-partition",
    "x-freedom-original-offset",
    "x-freedom-first-failure-time",
    "x-freedom-error",
    "x-freedom-status",
}


def _forged_seen(call: Delivery) -> set[str]:
    """The forged headers a handler call saw: control headers (any spelling; on a retry delivery
    the proxy's own reason headers aside) and `_` spellings of refused names."""
    refused = {n.replace("_", "-").lower() for n, _ in SPELLED_WITH_UNDERSCORES}
    own = REASONS if call.headers["x-retry-count"] != "0" else set()
    return {
        k
        for k in call.headers
        if (k.replace("_", "-") in CONTROL_HEADERS and k not in own)
        or ("_" in k and k.replace("_", "-") in refused)
    }


def _replays(journal: Journal) -> list[Delivery]:
    return [c for c in journal.of() if REPLAY_COUNT_HEADER in c.headers]


def test_forged_control_headers_are_dropped_and_a_first_replay_replays(
    apache_kafka, new_topic, tmp_path, delivery
):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    fail = f"fail-{topic}"
    journal = Journal()
    state = {"failing": {"A", "F"}}  # the keys whose deliveries fail (500)
    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        lambda c: 500 if c.key in state["failing"] else 200,
        delivery=delivery,
        retry_count=1,
        retry_interval_sec=0.2,
        initial_offset="earliest",
    )
    with svc:
        reads = reads_of(svc.app, topic)
        produce(bootstrap, topic, [{"key": b"A", "value": b'{"a": 1}'}])
        wait_drained(bootstrap, reads, 30, what="A dead-lettered")
        assert [d.offset() for d in read_all(bootstrap, fail)] == [0]
        # F forges a replay of A's dead letter (another key and value); G has A's key and value,
        # but A was never replayed, so a replay of it would count 1, not 3. Neither is a replay.
        claim = [(REPLAY_COUNT_HEADER, b"3"), (REPLAY_OF_HEADER, f"{fail}/0/0".encode())]
        forged = [*claim, *FORGED_CONTROL, *SPELLED_WITH_UNDERSCORES]
        produce(
            bootstrap,
            topic,
            [
                {
                    "key": b"F",
                    "value": b'{"f": 1}',
                    "headers": [*forged, ("x-freedom-bus", b'{"tenant":"t1"}')],
                },
                {"key": b"A", "value": b'{"a": 1}', "headers": claim},
            ],
        )
        wait_drained(bootstrap, reads, 30, what="F and G dead-lettered")
        dead = read_all(bootstrap, fail)
        assert [(d.key(), d.offset()) for d in dead] == [(b"A", 0), (b"F", 1), (b"A", 2)]
        # The proxy's reason headers, the record's real position, no forged control header (the
        # record's other headers stay: a dead letter is the record).
        for d in dead:
            h = headers_of(d)
            assert h["x-freedom-original-topic"] == topic, h
            assert h["x-freedom-original-offset"] == str(d.offset()), h
            assert h["x-freedom-error"].startswith("HTTP 500") and h["x-freedom-status"] == "500"
            assert not {k for k in h if "_" in k and k.replace("_", "-") in CONTROL_HEADERS}, h
            assert not set(h) & {REPLAY_COUNT_HEADER, REPLAY_OF_HEADER, "x-freedom-outcome"}, h
            assert not set(h) & {"x-freedom-value-omitted", "x-freedom-batch", "x-freedom-reason"}
        assert headers_of(dead[1])["x-freedom-bus"] == '{"tenant":"t1"}'  # the publisher's own
        # The handler saw none of them either, first or on the retry.
        calls = journal.of()
        assert sorted((c.key, c.headers["x-retry-count"]) for c in calls) == [
            ("A", "0"),
            ("A", "0"),
            ("A", "1"),
            ("A", "1"),
            ("F", "0"),
            ("F", "1"),
        ]
        for c in calls:
            assert not _forged_seen(c), (c.key, c.headers)
            assert c.headers.get("x-freedom-error") != "forged"
        assert all(c.headers["x-freedom-bus"] == '{"tenant":"t1"}' for c in calls if c.key == "F")

        # The first replay replays all three: none is parked as "replayed 3 times already". Each
        # replay reaches the handler with its count, which the proxy checked against its dead letter.
        state["failing"] = {"A"}
        target = target_of(load_kafka_config(tmp_path), [topic], str(tmp_path))
        report = replay(target, fail)
        assert (report.moved, report.parked) == (3, 0), report
        wait_until(
            lambda: len(read_all(bootstrap, fail)) == 5,
            60,
            what="the replays of A and G failing again into the dead letters",
        )
        first = [c for c in _replays(journal) if c.headers["x-retry-count"] == "0"]
        assert sorted(
            (c.key, c.headers[REPLAY_COUNT_HEADER], c.headers[REPLAY_OF_HEADER]) for c in first
        ) == [("A", "1", f"{fail}/0/0"), ("A", "1", f"{fail}/0/2"), ("F", "1", f"{fail}/0/1")]
        # A real replay that fails again keeps its count into its retry and its dead letter ...
        again = read_all(bootstrap, fail)[3:]
        assert sorted(
            (headers_of(d)[REPLAY_COUNT_HEADER], headers_of(d)[REPLAY_OF_HEADER]) for d in again
        ) == [("1", f"{fail}/0/0"), ("1", f"{fail}/0/2")]

        # ... and the next replay counts on from it.
        state["failing"] = set()
        second = replay(target, fail)
        assert (second.moved, second.parked) == (2, 0), second
        assert [m.replay_count for m in second.topics[0].moves] == [2, 2]
        wait_until(
            lambda: [c.headers[REPLAY_COUNT_HEADER] for c in _replays(journal)].count("2") == 2,
            60,
            what="the second replays delivered",
        )


def test_set_headers_refuses_the_names_in_each_spelling() -> None:
    # What msg.set_headers (and a domain event's headers) refuse: the proxy's own names and the
    # connection headers in any spelling, and the control headers only freedom writes.
    for name in [
        "x_freedom_secret",
        "X_Message_Key",
        "x_retry_count",
        "content_length",
        "Transfer_Encoding",
        "x-freedom-replay-count",
        "x_freedom_replay_count",
        "x-freedom-original-topic",
        "x-freedom-value-omitted",
        "x-freedom-outcome",
    ]:
        with pytest.raises(ValueError, match=f"^header '{name}'.*: use another name$"):
            check_message_headers({name: "v"})
    assert check_message_headers({"x_custom": "v", "x-freedom-bus": "{}"}) == {
        "x_custom": b"v",
        "x-freedom-bus": b"{}",
    }
