"""Shared broker fixtures: a real Apache Kafka and the embedded (Tansu) broker.

Both are session-scoped and started lazily, so a test that needs only one
broker never pays for the other.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "src", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from freedom.infra.kafka.embedded import EmbeddedBroker  # noqa: E402
from tests.kafka.broker import ApacheKafka  # noqa: E402

_STARTS: dict[str, float] = {}
_KEPT_LOGS: list[str] = []


@dataclass
class BrokerUnderTest:
    """What the parametrized ``broker`` fixture yields."""

    kind: str  # "apache" or "embedded"
    server: Union[ApacheKafka, EmbeddedBroker] = field(repr=False)

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


@pytest.fixture
def new_topic() -> Iterator[Callable[..., str]]:
    """Factory ``new_topic(bootstrap, partitions=1) -> name``: create a unique topic, wait for it."""
    admins: dict[str, AdminClient] = {}

    def make(bootstrap: str, partitions: int = 1, timeout: float = 30.0) -> str:
        admin = admins.get(bootstrap)
        if admin is None:
            admin = admins[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
        name = f"test-{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout)
        deadline = time.monotonic() + timeout
        while True:
            md = admin.list_topics(name, timeout=5).topics.get(name)
            if (md is not None and md.error is None and len(md.partitions) == partitions
                    and all(p.leader >= 0 for p in md.partitions.values())):
                return name
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} not ready after {timeout}s: {md}")
            time.sleep(0.05)

    yield make


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report broker start times, and where the logs of a failed session are."""
    if _STARTS:
        terminalreporter.write_line(
            "broker start: " + ", ".join(f"{k} {v:.2f}s" for k, v in _STARTS.items()))
    for line in _KEPT_LOGS:
        terminalreporter.write_line(f"broker log kept: {line}", red=True)
