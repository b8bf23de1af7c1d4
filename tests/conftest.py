"""Shared broker fixtures: a real Apache Kafka and the embedded (Tansu) broker.

Both are session-scoped and started lazily, so a test that needs only one
broker never pays for the other.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from freedom.kafka.embedded import EmbeddedBroker  # noqa: E402
from tests.kafka.broker import ApacheKafka  # noqa: E402
from tests.services.kafka_tools import create_topic  # noqa: E402

# The database fixtures (db_url, postgres_server) for the domain-event and outbox tests.
pytest_plugins = ["tests.outbox.db"]

_STARTS: dict[str, float] = {}
_KEPT_LOGS: list[str] = []


@dataclass
class BrokerUnderTest:
    """What the parametrized ``broker`` fixture yields."""

    kind: str  # "apache" or "embedded"
    server: ApacheKafka | EmbeddedBroker = field(repr=False)

    @property
    def bootstrap(self) -> str:
        return self.server.bootstrap


@pytest.fixture(scope="session")
def apache_kafka(request: pytest.FixtureRequest) -> Iterator[ApacheKafka]:
    """A single-node Apache Kafka for the whole session; its log is kept if any test failed."""
    kafka = ApacheKafka()
    try:
        kafka.start()
    except Exception:
        kafka.close(keep_log=True)
        _KEPT_LOGS.append(f"apache kafka (failed start): {kafka.log_path}")
        raise
    _STARTS["apache"] = kafka.start_seconds or 0.0
    yield kafka
    failed = request.session.testsfailed > 0
    kafka.close(keep_log=failed)
    if failed:
        _KEPT_LOGS.append(f"apache kafka: {kafka.log_path}")


@pytest.fixture(scope="session")
def embedded_kafka(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """The embedded Tansu broker for the whole session; its log is kept if any test failed."""
    broker = EmbeddedBroker()
    broker.start()  # on failure the exception message carries the log tail
    _STARTS["embedded"] = broker.start_seconds or 0.0
    yield broker
    failed = request.session.testsfailed > 0
    broker.stop(keep_log=failed)
    if failed:
        _KEPT_LOGS.append(f"embedded broker: {broker.log_path}")


@pytest.fixture(params=["apache", "embedded"])
def broker(request: pytest.FixtureRequest) -> BrokerUnderTest:
    """Each test using this runs once per broker kind; only the needed broker is started."""
    kind: str = request.param
    fixture = "apache_kafka" if kind == "apache" else "embedded_kafka"
    return BrokerUnderTest(kind, request.getfixturevalue(fixture))


@pytest.fixture(params=["http", "inprocess"])
def delivery(request: pytest.FixtureRequest) -> str:
    """How the consumer proxy reaches the handlers: over HTTP, or calling the application in-process
    (`proxy_addr = "inprocess"`). The transport does not depend on the broker, so in-process runs on
    Apache Kafka only, to keep the suite short."""
    mode: str = request.param
    if mode == "inprocess" and "broker" in request.fixturenames:
        if request.getfixturevalue("broker").kind != "apache":
            pytest.skip("in-process delivery is tested on Apache Kafka only")
    return mode


@pytest.fixture
def new_topic() -> Iterator[Callable[..., str]]:
    """Factory ``new_topic(bootstrap, partitions=1) -> name``: create a unique topic, wait for it."""

    def make(bootstrap: str, partitions: int = 1, timeout: float = 30.0) -> str:
        return create_topic(bootstrap, f"test-{uuid.uuid4().hex[:12]}", partitions, timeout)

    yield make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report broker start times, and where the logs of a failed session are."""
    if _STARTS:
        terminalreporter.write_line(
            "broker start: " + ", ".join(f"{k} {v:.2f}s" for k, v in _STARTS.items())
        )
    for line in _KEPT_LOGS:
        terminalreporter.write_line(f"broker log kept: {line}", red=True)
