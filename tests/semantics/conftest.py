"""The `env` fixture: the semantics service on Apache Kafka and on freedom's TestBroker (harness.py),
there also with its main group a share group ("memory-share")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.semantics.harness import ApacheEnv, Env, MemoryEnv

#: retry_interval_sec on each side: short on Apache Kafka (real time), the seed's 45 s on the test
#: broker (simulated: settle() brings each retry forward).
INTERVALS = {"apache": 1.0, "memory": 45.0, "memory-share": 45.0}


@pytest.fixture(scope="module", params=["apache", "memory", "memory-share"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kind: str = request.param
    config_dir = tmp_path_factory.mktemp(f"semantics-{kind}")
    made: Env
    if kind == "apache":
        made = ApacheEnv(
            request.getfixturevalue("apache_kafka").bootstrap, config_dir, INTERVALS[kind]
        )
    else:
        made = MemoryEnv(config_dir, INTERVALS[kind], share=kind == "memory-share")
    try:
        yield made
    finally:
        made.close()
