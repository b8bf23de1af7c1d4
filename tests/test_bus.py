"""The `x-freedom-bus` header is hostile input: whatever a client sends, the handler runs (200) with an
empty bus and one warning; a good bus reaches `runtime.bus` and can be sent on again (`to_header`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import freedom
from freedom.testing import ServiceThread, free_port, write_config
from freedom.wire.context import MAX_BUS_BYTES, MAX_BUS_DEPTH, MAX_INT_DIGITS, Bus


def nested(levels: int) -> bytes:
    """`{"a": [[...]]}`: `levels` levels of nesting, the top-level object included."""
    return b'{"a":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


MALFORMED: dict[str, tuple[bytes, str]] = {
    # class: (header value, what the warning says)
    "deep arrays (8 KB)": (b"[" * MAX_BUS_BYTES, f"nested deeper than {MAX_BUS_DEPTH} levels"),
    "deep inside an object": (b'{"a":' + b"[" * 4000 + b"]" * 4000 + b"}", "nested deeper"),
    "deep objects": (b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested deeper"),
    "one level too deep": (nested(MAX_BUS_DEPTH + 1), "nested deeper"),
    "deep and unterminated": (b'{"a":[' + b"[" * 3000, "nested deeper"),
    "over the size limit": (
        json.dumps({"blob": "x" * MAX_BUS_BYTES}).encode(),
        f"over the {MAX_BUS_BYTES}-byte limit",
    ),
    "not JSON": (b'{"tenant":', "not valid JSON"),
    "unterminated string": (b'{"a":"[[[[', "not valid JSON"),
    "not an object": (b'["a", "b"]', "not a JSON object"),
    "a float too large for a double": (b'{"a":1e999999}', "too large"),
    "a negative float too large": (b'{"a":-1e400}', "too large"),
    "an int of 5000 digits": (b'{"a":' + b"9" * 5000 + b"}", f"more than {MAX_INT_DIGITS} digits"),
    "NaN": (b'{"a":NaN}', "NaN is not JSON"),
    "Infinity": (b'{"a":Infinity}', "Infinity is not JSON"),
    "-Infinity": (b'{"a":[-Infinity]}', "-Infinity is not JSON"),
    "duplicate key": (b'{"tenant":"a","tenant":"b"}', 'duplicate key "tenant"'),
    "duplicate nested key": (b'{"x":{"k":1,"k":1}}', 'duplicate key "k"'),
    "unpaired surrogate": (b'{"a":"\\ud800"}', "unpaired surrogate"),
}
NOT_UTF8 = (b'{"a":"\xff\xfe"}', "not UTF-8")

GOOD: dict[str, tuple[bytes, dict[str, Any]]] = {
    "plain": (b'{"tenant":"acme","n":2}', {"tenant": "acme", "n": 2}),
    "nested to the limit": (nested(MAX_BUS_DEPTH), json.loads(nested(MAX_BUS_DEPTH))),
    "brackets inside strings do not count": (b'{"a":"' + b"[" * 100 + b'"}', {"a": "[" * 100}),
    "escaped quote before brackets": (b'{"a":"\\"[[[[","b":[1]}', {"a": '"[[[[', "b": [1]}),
    "UTF-8 and a surrogate pair": (
        '{"name":"Zoë","e":"\\ud83d\\ude00"}'.encode(),
        {"name": "Zoë", "e": "\U0001f600"},
    ),
    "UTF-8 beyond latin-1": ('{"user":"张三"}'.encode(), {"user": "张三"}),
    "numbers": (
        b'{"i":-12345678901234567890,"f":1.5e300,"small":1e-400,"z":0}',
        {"i": -12345678901234567890, "f": 1.5e300, "small": 0.0, "z": 0},
    ),
    "a 64-digit int": (b'{"i":' + b"9" * MAX_INT_DIGITS + b"}", {"i": int("9" * MAX_INT_DIGITS)}),
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real service (uvicorn on 127.0.0.1) whose handler reads `runtime.bus` and re-encodes it."""

    class BusController:
        runtime: freedom.Runtime

        async def post_bus(self) -> dict[str, Any]:
            bus = self.runtime.bus
            return {
                "bus": dict(bus),
                "header": bus.to_header().decode(),
            }  # what set_runtime sends on

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/x", BusController)

    port = free_port()
    config_dir = write_config(
        tmp_path_factory.mktemp("bus"), app={"listen_addr": f"127.0.0.1:{port}"}
    )
    with ServiceThread(
        freedom.Application(config_dir=config_dir, prepare=[prepare]), port=port
    ) as svc:
        yield svc.base_url


def bus_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "freedom.wire.context" and r.levelno == logging.WARNING
    ]


@pytest.mark.parametrize("value, warning", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_bus_is_ignored_with_one_warning(service, caplog, value, warning):
    with caplog.at_level(logging.WARNING, logger="freedom.wire.context"):
        r = httpx.post(f"{service}/x/bus", headers=[(b"x-freedom-bus", value)], timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"bus": {}, "header": "{}"}
    lines = bus_warnings(caplog)
    assert len(lines) == 1, lines
    assert "ignoring x-freedom-bus header" in lines[0] and warning in lines[0], lines[0]


def test_a_bus_that_is_not_utf8_is_ignored_over_http(service, caplog):
    test_a_malformed_bus_is_ignored_with_one_warning(service, caplog, *NOT_UTF8)


@pytest.mark.parametrize("value, expected", GOOD.values(), ids=GOOD.keys())
def test_a_good_bus_reaches_the_handler_and_can_be_sent_on(service, caplog, value, expected):
    with caplog.at_level(logging.WARNING, logger="freedom.wire.context"):
        r = httpx.post(f"{service}/x/bus", headers=[(b"x-freedom-bus", value)], timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["bus"] == expected and json.loads(r.json()["header"]) == expected
    assert bus_warnings(caplog) == []


# ----------------------------------------------------------------------------- the parser itself


@pytest.mark.parametrize(
    "value, warning", [*MALFORMED.values(), NOT_UTF8], ids=[*MALFORMED, "not UTF-8"]
)
def test_the_parser_never_raises_and_warns_once(caplog, value, warning):
    for raw in (
        value,
        value.decode("utf-8", "surrogateescape"),
    ):  # bytes (Kafka) and text (HTTP) alike
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="freedom.wire.context"):
            assert Bus.from_header(raw) == {}
        assert len(bus_warnings(caplog)) == 1 and warning in bus_warnings(caplog)[0]


@pytest.mark.parametrize("value", [None, b"", ""])
def test_no_header_is_an_empty_bus_without_a_warning(caplog, value):
    assert Bus.from_header(value) == {} and bus_warnings(caplog) == []


def test_other_types_are_ignored_not_raised(caplog):
    with caplog.at_level(logging.WARNING, logger="freedom.wire.context"):
        assert Bus.from_header(12) == {}  # type: ignore[arg-type]
        assert Bus.from_header(bytearray(b'{"a":1}')) == {"a": 1}
    assert len(bus_warnings(caplog)) == 1


def test_a_bus_that_would_grow_over_the_limit_when_re_encoded_is_ignored(caplog):
    # 1E5 is three bytes on the wire and eight ("100000.0") once re-encoded.
    value = ("{" + ",".join(f'"{i:03}":1E5' for i in range(700)) + "}").encode()
    assert len(value) <= MAX_BUS_BYTES < len(json.dumps(json.loads(value), separators=(",", ":")))
    with caplog.at_level(logging.WARNING, logger="freedom.wire.context"):
        assert Bus.from_header(value) == {}
    assert "once re-encoded" in bus_warnings(caplog)[0]


def test_to_header_refuses_what_json_cannot_hold():
    with pytest.raises(ValueError):
        Bus(x=float("nan")).to_header()
