"""Control and bidirectional characters from outside are shown escaped, never raw (issue 21,
point 3; docs/operations.md, "Control and bidirectional characters"), on Apache Kafka.

A record written to `fail-T` directly (its key, its `x-freedom-error`, `x-freedom-original-topic`,
`x-freedom-first-failure-time` and own headers carrying a clear-screen ESC sequence, an OSC 52
clipboard write and a right-to-left override) and a consumer group member whose `client.id`
carries them: `freedom dlq list`, `freedom dlq show`, `freedom status` (text and `--json`) and the
web console (pages and API) show them as `\\x1b`, `\\x07`, `\\u202e`; the service's log lines
about a record with such a key (text and JSON) too.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import Response

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from freedom.wire.headers import (
    ERROR_HEADER,
    FIRST_FAILURE_TIME_HEADER,
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_TOPIC_HEADER,
    STATUS_HEADER,
)
from tests.services.kafka_tools import create_topic, produce, wait_drained

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "console-Token-for-shown-text-tests"
BASE = "/_freedom/console"

CLEAR = "\x1b[2J"  # ESC [ 2 J: clears the screen
OSC52 = "\x1b]52;c;aGFja2Vk\x07"  # OSC 52: writes "hacked" to the clipboard
REORDERED = "order-\u202e1337\u202c"  # shows as "order-7331"
HOSTILE = f"{CLEAR}{OSC52}{REORDERED}\u2066"
#: What must never reach the output raw (ESC, BEL, RLO, PDF, LRI), and its escapes in text output.
RAW = ("\x1b", "\x07", "\u202e", "\u202c", "\u2066")
TEXT_ESCAPES = ("\\x1b[2J", "\\x1b]52;c;aGFja2Vk\\x07", "order-\\u202e1337\\u202c", "\\u2066")
#: In JSON: the same characters as JSON escapes.
JSON_ESCAPES = ("\\u001b[2J", "\\u001b]52;c;aGFja2Vk\\u0007", "order-\\u202e1337\\u202c")


def assert_shown(text: str, escapes: tuple[str, ...], what: str) -> None:
    raw = [repr(ch) for ch in RAW if ch in text]
    assert not raw, f"{what}: raw {', '.join(raw)} in:\n{text!r}"
    missing = [e for e in escapes if e not in text]
    assert not missing, f"{what}: {missing} not in:\n{text}"


def freedom_command(*args: str, cwd: Path) -> str:
    """Run `python -m freedom ...`; its stdout (it must succeed)."""
    run = subprocess.run(
        [sys.executable, "-m", "freedom", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert run.returncode == 0, run.stderr
    assert not [ch for ch in RAW if ch in run.stderr], run.stderr
    return run.stdout


def listening_app(conf: Path, topic: str, answer: Any) -> freedom.Application:
    """A service listening on `topic`; `answer(runtime, event_id)` is the handler."""

    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Response:
            return answer(self.runtime, event_id)  # type: ignore[no-any-return]

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")

    return freedom.Application(config_dir=conf, prepare=[prepare])


def test_dlq_status_their_json_and_the_console_show_hostile_text_escaped(
    apache_kafka, tmp_path, monkeypatch
):
    monkeypatch.delenv("FREEDOM_APP__CONSOLE_TOKEN", raising=False)
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"shown-{uuid.uuid4().hex[:8]}")
    fail = create_topic(bootstrap, f"fail-{topic}")
    other = create_topic(bootstrap, f"shown-other-{uuid.uuid4().hex[:8]}")
    # Written to the dead-letter topic directly, by anyone who may write there.
    produce(
        bootstrap,
        fail,
        [
            {
                "key": HOSTILE.encode(),
                "value": f"value {HOSTILE}".encode(),
                "headers": [
                    (ORIGINAL_TOPIC_HEADER, HOSTILE.encode()),
                    (ORIGINAL_PARTITION_HEADER, b"0"),
                    (ORIGINAL_OFFSET_HEADER, b"7"),
                    (FIRST_FAILURE_TIME_HEADER, HOSTILE.encode()),
                    (ERROR_HEADER, f"HTTP 500 {HOSTILE}".encode()),
                    (STATUS_HEADER, b"500"),
                    ("x-note", HOSTILE.encode()),
                ],
            }
        ],
    )
    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    conf = write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}", "console_token": TOKEN},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            retry_group_id=f"r-{group}",
            retry_count=1,
            settings={"session.timeout.ms": 6000},
        ),
    )

    # freedom dlq list / show, as text and as JSON (no service needed: the topic is named).
    listed = freedom_command("dlq", "list", fail, "--config", str(conf), cwd=tmp_path)
    assert listed.splitlines()[0] == f"{fail}: 1 dead letter", listed
    assert_shown(listed, ("\\x1b[", "\\x07", "\\u202e", "\\u2066"), "dlq list")
    shown = freedom_command("dlq", "show", fail, "--config", str(conf), cwd=tmp_path)
    assert_shown(shown, TEXT_ESCAPES, "dlq show")
    for line in (
        "error: HTTP 500 \\x1b[2J\\x1b]52;c;aGFja2Vk\\x07order-\\u202e1337\\u202c\\u2066 (status 500)",
        "from \\x1b[2J\\x1b]52;c;aGFja2Vk\\x07order-\\u202e1337\\u202c\\u2066[0]@7, first failure "
        "\\x1b[2J\\x1b]52;c;aGFja2Vk\\x07order-\\u202e1337\\u202c\\u2066, ",
        "header x-note: \\x1b[2J\\x1b]52;c;aGFja2Vk\\x07order-\\u202e1337\\u202c\\u2066",
    ):
        assert line in shown, f"{line!r} not in\n{shown}"
    assert f"{fail}[0]@0  key \\x1b[2J\\x1b]52;c;aGFja2Vk\\x07order-\\u202e1337\\u202c" in shown

    listed_json = freedom_command(
        "dlq", "list", fail, "--config", str(conf), "--json", cwd=tmp_path
    )
    assert_shown(listed_json, JSON_ESCAPES, "dlq list --json")
    [cls] = json.loads(listed_json)[0]["classes"]
    assert (cls["original_topic"], cls["example"]) == (HOSTILE, f"HTTP 500 {HOSTILE}")  # as written
    shown_json = freedom_command("dlq", "show", fail, "--config", str(conf), "--json", cwd=tmp_path)
    assert_shown(shown_json, JSON_ESCAPES, "dlq show --json")
    [record] = json.loads(shown_json)
    assert (record["error"], record["original_topic"], record["first_failure_time"]) == (
        f"HTTP 500 {HOSTILE}",
        HOSTILE,
        HOSTILE,
    )

    with ServiceThread(listening_app(conf, topic, lambda runtime, key: Response())) as svc:
        # A member of the service's consumer group whose client.id is hostile.
        from confluent_kafka import Consumer

        member = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": f"evil-{HOSTILE}",
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        try:
            member.subscribe([other])
            wait_until(
                lambda: (member.poll(0.1), member.assignment())[1],
                60,
                what="the hostile member to join the group",
            )

            status = freedom_command("status", "--config", str(conf), cwd=tmp_path)
            assert f"group {group} (main, STABLE, 2 members: " in status, status
            assert_shown(status, TEXT_ESCAPES, "status")
            assert "evil-\\x1b[2J" in status, status
            status_json = freedom_command("status", "--config", str(conf), "--json", cwd=tmp_path)
            assert_shown(status_json, JSON_ESCAPES, "status --json")
            [client] = json.loads(status_json)["clients"]
            assert f"evil-{HOSTILE}" in [m["client_id"] for m in client["groups"][0]["members"]]

            # The console: the pages and the JSON API.
            bearer = {"authorization": f"Bearer {TOKEN}"}
            with httpx.Client(headers=bearer, timeout=60) as http:
                base = svc.base_url + BASE
                for path, escapes in [
                    ("", TEXT_ESCAPES),
                    (f"/dead-letters?topic={fail}", ("\\x1b[", "\\x07", "\\u202e", "\\u2066")),
                    (f"/dead-letters/records?topic={fail}", TEXT_ESCAPES),
                    ("/api/status", JSON_ESCAPES),
                    (f"/api/dead-letters?topic={fail}", JSON_ESCAPES),
                    (f"/api/dead-letters/records?topic={fail}", JSON_ESCAPES),
                ]:
                    page = http.get(base + path)
                    assert page.status_code == 200, (path, page.text)
                    assert_shown(page.text, escapes, f"console {path or '/'}")
                records = http.get(f"{base}/api/dead-letters/records?topic={fail}").json()[
                    "records"
                ]
                assert records[0]["error"] == f"HTTP 500 {HOSTILE}"
        finally:
            member.close()


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """A plain stderr-like handler on the root logger with the standard library's own formatter
    (as a service under another ASGI server, or with a logging set-up of its own, has)."""
    root = logging.getLogger()
    saved = [(h, h.formatter) for h in root.handlers]
    level = root.level
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for h, formatter in saved:
            h.setFormatter(formatter)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_log_shows_a_hostile_key_and_header_escaped(
    apache_kafka, tmp_path, log_output, log_format
):
    """A record whose key reorders itself, with a header that drives the terminal, is delivered to
    a failing handler, which logs both: no log line has those characters raw, the proxy's line
    about the record shows the key escaped. With JSON logs the handler raises instead (in-process
    delivery), naming both: its traceback is in the line, escaped too."""
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"shown-log-{uuid.uuid4().hex[:8]}")
    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    conf = write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}", "log_format": log_format},
        kafka=kafka_config(
            bootstrap,
            port,
            group_id=group,
            retry_group_id=f"r-{group}",
            retry_count=1,
            retry_interval_sec=0.2,
            delivery="inprocess" if log_format == "json" else "http",
            settings={"session.timeout.ms": 6000},
        ),
    )

    def answer(runtime: freedom.Runtime, event_id: str) -> Response:
        note = runtime.request.headers.get("x-note")
        runtime.logger.info("handling %s, note %s", event_id, note)
        if log_format == "json":
            raise RuntimeError(f"cannot handle {event_id}: {note}")
        return Response(status_code=503)

    with ServiceThread(listening_app(conf, topic, answer)):
        produce(
            bootstrap,
            topic,
            [
                {
                    "key": REORDERED.encode(),
                    "value": b"{}",
                    "headers": [("x-note", HOSTILE.encode())],
                }
            ],
        )
        wait_drained(
            bootstrap,
            {group: [topic], f"r-{group}": [f"retry-{topic}"]},
            60,
            what="the record dead-lettered",
        )
    text = log_output.getvalue()
    about = f"{topic}[0]@0 (key order-\\u202e1337\\u202c) to /store/event/"
    handling = "handling order-\\u202e1337\\u202c, note \\x1b[2J\\x1b]52;c;aGFja2Vk\\x07order-"
    if log_format == "text":
        assert_shown(text, TEXT_ESCAPES, "text log")
        assert about in text and handling in text, text
    else:
        assert_shown(text, JSON_ESCAPES, "JSON log")
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert any(about in r["message"] for r in lines), text
        assert any(handling in r["message"] for r in lines), text
        assert any(
            f"cannot handle {REORDERED}: {HOSTILE}" in r.get("exception", "") for r in lines
        ), text


def test_the_rule_itself():
    """The one rule (freedom.wire.encoding): every character of the set escaped, nothing else;
    composed text not escaped twice; JSON escapes that read back; freedom's log arguments."""
    from freedom.wire.encoding import escape_controls, printable, printable_json

    every = (
        [chr(c) for c in range(0x20)]
        + [chr(c) for c in range(0x7F, 0xA0)]
        + ["\u061c", "\u200e", "\u200f", "\u2028", "\u2029"]
        + [chr(c) for c in range(0x202A, 0x202F)]
        + [chr(c) for c in range(0x2066, 0x206A)]
    )
    for ch in every:
        shown = printable(f"a{ch}b")
        assert shown.isascii() and shown.isprintable() and ch not in shown, repr(ch)
        assert escape_controls(f"a{ch}b") == shown  # no backslash in it: the same
        assert ch not in printable_json({"v": ch}) and json.loads(printable_json(ch)) == ch
    assert printable(HOSTILE + "\\") == (
        "\\x1b[2J\\x1b]52;c;aGFja2Vk\\x07order-\\u202e1337\\u202c\\u2066\\\\"
    )
    assert printable("a\tb\r\n") == "a\\tb\\r\\n"
    assert printable("购买 \u200b ok") == "购买 \u200b ok"  # anything else is kept
    line = f"key {printable(HOSTILE)} error {HOSTILE}"
    assert escape_controls(line) == f"key {printable(HOSTILE)} error {printable(HOSTILE)}"
    text = printable_json({"v": [HOSTILE, "购买"]}, indent=2)
    assert json.loads(text) == {"v": [HOSTILE, "购买"]} and "\\u202e" in text and "购买" in text

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    mine, other = logging.getLogger("freedom.test.shown"), logging.getLogger("elsewhere.shown")
    for logger in (mine, other):
        logger.addHandler(handler)
    try:
        mine.warning("key %s, %r: %s", HOSTILE, HOSTILE, ValueError(HOSTILE))
        other.warning("key %s", HOSTILE)  # not freedom's: left to its own formatter
    finally:
        for logger in (mine, other):
            logger.removeHandler(handler)
    assert stream.getvalue() == (
        f"key {printable(HOSTILE)}, {repr(printable(HOSTILE))}: {printable(HOSTILE)}\n"
        f"key {HOSTILE}\n"
    )
