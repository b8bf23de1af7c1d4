"""freedom.testing.ServiceThread serves like `freedom run`: with `proxy_http2 = true` through hypercorn,
so the consumer proxy's h2c deliveries reach the handler in a test too."""

from __future__ import annotations

import uuid

from starlette.responses import Response

import freedom
from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.services.kafka_tools import produce


def test_service_thread_serves_h2c_when_proxy_http2_is_on(apache_kafka, new_topic, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = new_topic(bootstrap)
    seen: list[tuple[str, str]] = []

    class StoreController:
        runtime: freedom.Runtime

        async def post_event_by(self, event_id: str) -> Response:
            seen.append((event_id, self.runtime.request.scope["http_version"]))
            return Response(status_code=200)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(topic, "StoreController.post_event_by")

    port = free_port()
    kafka = kafka_config(bootstrap, port, group_id=f"g-{uuid.uuid4().hex[:8]}", settings={"session.timeout.ms": 6000})
    kafka["consumer"]["proxy_http2"] = True
    write_config(tmp_path, app={"listen_addr": f"127.0.0.1:{port}"}, kafka=kafka)
    with ServiceThread(freedom.Application(config_dir=tmp_path, prepare=[prepare])):
        produce(bootstrap, topic, [{"key": b"K-H2", "value": b"{}"}])
        wait_until(lambda: seen, 30, what="the delivery over h2c")
    assert seen == [("K-H2", "2")]
