"""freedom.testing.ServiceThread serves like `freedom run`: with `proxy_http2 = true` through granian,
so the consumer proxy's h2c deliveries reach the handler in a test too."""

from __future__ import annotations

import importlib.util
import uuid

import pytest
from starlette.responses import Response

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import produce


def _h2c_config(tmp_path, bootstrap: str) -> None:
    port = free_port()
    kafka = kafka_config(
        bootstrap, port, group_id=f"g-{uuid.uuid4().hex[:8]}", settings={"session.timeout.ms": 6000}
    )
    kafka["consumer"]["proxy_http2"] = True
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)


def test_service_thread_serves_h2c_when_proxy_http2_is_on(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    seen: list[tuple[str, str, str]] = []

    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Response:
            request = self.runtime.request
            seen.append((event_id, request.scope["http_version"], request.headers["x-retry-count"]))
            return Response(status_code=200)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")

    _h2c_config(tmp_path, bootstrap)
    # Many deliveries on the multiplexed connection, none failed (each arrives once, as a first try);
    # the handler does not read the body, so some answers go out before the body has arrived.
    keys = [f"K-H2-{i}" for i in range(1_200)]
    with ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[prepare])):
        produce(bootstrap, topic, [{"key": k.encode(), "value": b"{}"} for k in keys])
        wait_until(lambda: len(seen) >= len(keys), 60, what="every delivery over h2c")
    assert sorted(seen) == sorted((k, "2", "0") for k in keys)


def test_without_granian_h2c_stops_before_start_up_with_the_fix(
    apache_kafka, tmp_path, monkeypatch
):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "granian" else find_spec(name, *args),
    )
    _h2c_config(tmp_path, apache_kafka.bootstrap)
    service = ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[]))
    with pytest.raises(freedom.FreedomError) as info:
        service.start()
    assert (
        str(info.value)
        == "proxy_http2 = true needs granian to serve HTTP/2 cleartext: pip install 'freedom-events[http2]'"
    )
