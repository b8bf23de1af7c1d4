"""The public API (docs/api.md): what `freedom`, `freedom.infra.kafka` and `freedom.testing`
export, that it imports, that the facade's objects are the root's, and that the page lists it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import freedom
import freedom.infra.kafka
import freedom.testing

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"

PUBLIC = {
    "freedom": freedom,
    "freedom.infra.kafka": freedom.infra.kafka,
    "freedom.testing": freedom.testing,
}


def _documented() -> dict[str, set[str]]:
    """The names in the first column of docs/api.md's tables, by how they are spelled there:
    `freedom.X` under "freedom", `kafka.X` under "freedom.infra.kafka", a bare `X` under "bare"."""
    found: dict[str, set[str]] = {"freedom": set(), "freedom.infra.kafka": set(), "bare": set()}
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([A-Za-z_][\w.]*)`", first):
            prefix, _, short = name.rpartition(".")
            where = {"freedom": "freedom", "kafka": "freedom.infra.kafka", "": "bare"}.get(prefix)
            assert where is not None, f"docs/api.md: unexpected name {name!r} in a first column"
            found[where].add(short)
    return found


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_exported_name_imports(module: str) -> None:
    mod = PUBLIC[module]
    assert mod.__all__, f"{module} has an empty __all__"
    assert len(set(mod.__all__)) == len(mod.__all__), f"{module}.__all__ repeats a name"
    for name in mod.__all__:
        assert getattr(mod, name, None) is not None, f"{module}.{name} is in __all__ but missing"
    namespace: dict[str, object] = {}
    exec(f"from {module} import *", namespace)
    assert set(mod.__all__) <= set(namespace)


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_each_public_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    """No import cycle, whichever public module a program imports first."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_the_facade_holds_the_same_objects_as_the_root() -> None:
    kafka = freedom.infra.kafka
    assert kafka.Producer is freedom.Producer
    for name in set(kafka.__all__) & set(freedom.__all__):
        assert getattr(kafka, name) is getattr(freedom, name), name
    from freedom.infra import kafka as seed_spelling

    assert seed_spelling.Producer is freedom.Producer
    assert seed_spelling.Msg is freedom.Msg


def test_event_route_is_internal_but_still_importable() -> None:
    for module, mod in PUBLIC.items():
        assert "EventRoute" not in mod.__all__, f"EventRoute in {module}.__all__"
    from freedom.infra.kafka import EventRoute
    from freedom.kafka.consumer.delivery import EventRoute as internal

    assert EventRoute is internal


def test_the_direct_delivery_names_are_public_and_the_kafka_side_s_are_not() -> None:
    """Event middleware gets a `freedom.EventDelivery` and gives a `freedom.DeliveryResult`; the
    Kafka side's own types of direct delivery stay internal."""
    from freedom.kafka.consumer.delivery import DeliveryResult
    from freedom.web.event_middleware import EventDelivery

    assert freedom.EventDelivery is EventDelivery and freedom.DeliveryResult is DeliveryResult
    assert {"EventDelivery", "DeliveryResult"} <= set(freedom.__all__)
    for internal in ("DirectDelivery", "DirectRoutes", "DirectTransport", "RouteCall"):
        assert internal not in freedom.__all__, internal


def test_get_runtime_is_importable_but_not_public() -> None:
    from freedom import get_runtime
    from freedom.web.runtime import get_runtime as internal

    assert get_runtime is internal
    assert "get_runtime" not in freedom.__all__


def test_the_errors_are_freedom_errors() -> None:
    for name in (
        "StartupError",
        "ConfigError",
        "RouteError",
        "UnknownClientError",
        "PublishError",
        "ProducerClosedError",
        "RecordTooLargeError",
        "DomainEventError",
        "EventNameError",
    ):
        assert issubclass(getattr(freedom, name), freedom.FreedomError), name
    assert issubclass(freedom.ProducerClosedError, freedom.PublishError)
    assert issubclass(freedom.RecordTooLargeError, freedom.PublishError)


def test_docs_api_lists_every_public_name() -> None:
    documented = _documented()
    assert set(freedom.__all__) <= documented["freedom"], (
        "docs/api.md does not list freedom."
        + ", freedom.".join(sorted(set(freedom.__all__) - documented["freedom"]))
    )
    kafka = freedom.infra.kafka.__all__
    assert set(kafka) <= documented["freedom.infra.kafka"], (
        set(kafka) - documented["freedom.infra.kafka"]
    )
    assert set(freedom.testing.__all__) <= documented["bare"], (
        set(freedom.testing.__all__) - documented["bare"]
    )


def test_docs_api_lists_only_public_names() -> None:
    documented = _documented()
    assert documented["freedom"] <= set(freedom.__all__), documented["freedom"] - set(
        freedom.__all__
    )
    assert documented["freedom.infra.kafka"] <= set(freedom.infra.kafka.__all__)
    assert documented["bare"] <= set(freedom.testing.__all__)


def test_docs_index_links_the_api_and_the_contract() -> None:
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert "(api.md)" in index
    assert "(contract.md)" in index
