"""The `env` fixture: the semantics service on Apache Kafka (apache_env.py) and on freedom's
TestBroker (harness.py), on each also with its main group a share group ("apache-share",
"memory-share")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.semantics.apache_env import ApacheEnv
from tests.semantics.harness import Env, MemoryEnv

#: retry_interval_sec on each side: short on Apache Kafka (real time), the seed's 45 s on the test
#: broker (simulated: settle() brings each retry forward).
INTERVALS = {"apache": 1.0, "apache-share": 1.0, "memory": 45.0, "memory-share": 45.0}


@pytest.fixture(scope="module", params=["apache", "apache-share", "memory", "memory-share"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kind: str = request.param
    config_dir = tmp_path_factory.mktemp(f"semantics-{kind}")
    made: Env
    if kind.startswith("apache"):
        made = ApacheEnv(
            request.getfixturevalue("apache_kafka").bootstrap,
            config_dir,
            INTERVALS[kind],
            share=kind == "apache-share",
        )
    else:
        made = MemoryEnv(config_dir, INTERVALS[kind], share=kind == "memory-share")
    try:
        yield made
    finally:
        made.close()
