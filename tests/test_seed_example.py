"""The seed's example end to end on a real broker: GET /shop/1 leads to one POST to the store."""

from __future__ import annotations

import uuid

import httpx
from confluent_kafka import Consumer, TopicPartition

from freedom.testing import ServiceThread, free_port, kafka_config, wait_until, write_config
from tests.apps import Recorder, shop_app


def _service(tmp_path, bootstrap, recorder, topic, **consumer):
    port = free_port()
    group = f"g-{uuid.uuid4().hex[:8]}"
    write_config(
        tmp_path,
        app={"listen_addr": f"127.0.0.1:{port}"},
        kafka=kafka_config(bootstrap, port, group_id=group, **consumer),
    )
    return ServiceThread(shop_app(tmp_path, recorder, topic)), group


def _committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return [
            tp.offset
            for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        ]
    finally:
        c.close()


def test_get_shop_leads_to_one_post_to_the_store(broker, new_topic, tmp_path, delivery):
    topic = new_topic(broker.bootstrap)
    recorder = Recorder()
    svc, _ = _service(tmp_path, broker.bootstrap, recorder, topic, delivery=delivery)
    with svc:
        r = httpx.get(
            f"{svc.base_url}/shop/1",
            params={"tenant": "acme"},
            headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
            timeout=30,
        )
        assert r.status_code == 200 and r.text == "ok"
        calls = wait_until(recorder.snapshot, 30, what="the store handler to be called")
        # Exactly one: give a duplicate every chance to arrive before checking.
        svc.stop()
    calls = recorder.snapshot()
    assert len(calls) == 1, calls
    call = calls[0]
    assert call.body == {"ID": 1, "Amount": 10}
    assert call.headers["x-action"] == "购买"
    assert call.headers["x-retry-count"] == "0"
    assert call.headers["x-message-key"] == call.event_id
    assert len(call.event_id) == 32 and call.event_id == call.event_id.upper()
    int(call.event_id, 16)
    assert call.bus == {"tenant": "acme"}
    assert call.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    # The record on the topic carries the same key the handler got.
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    record = wait_until(lambda: c.poll(0.5), 20, what="the record on the topic")
    c.close()
    assert record.key().decode() == call.event_id


def test_failed_delivery_is_retried_and_committed_only_after_success(
    broker, new_topic, tmp_path, delivery
):
    topic = new_topic(broker.bootstrap)
    recorder = Recorder(statuses=[500, 500])
    svc, group = _service(tmp_path, broker.bootstrap, recorder, topic, delivery=delivery)
    with svc:
        before = _committed(broker.bootstrap, group, topic)[0]
        httpx.get(f"{svc.base_url}/shop/7", timeout=30).raise_for_status()
        wait_until(lambda: len(recorder.snapshot()) >= 2, 30, what="two failed deliveries")
        # Between the failures and the success the offset must not move past the record.
        assert _committed(broker.bootstrap, group, topic)[0] == before
        wait_until(lambda: len(recorder.snapshot()) >= 3, 30, what="the third delivery")
        wait_until(
            lambda: _committed(broker.bootstrap, group, topic)[0] == before + 1,
            20,
            what="the offset to be committed after the 200",
        )
    calls = recorder.snapshot()
    assert len(calls) == 3
    assert len({c.event_id for c in calls}) == 1
    assert [c.body["ID"] for c in calls] == [7, 7, 7]


def test_a_key_with_slashes_reaches_the_handler(apache_kafka, new_topic, tmp_path, delivery):
    """The key goes in the path percent-encoded; one with '/' in it must still reach its route, not 404."""
    from tests.services.kafka_tools import produce

    topic = new_topic(apache_kafka.bootstrap)
    recorder = Recorder()
    svc, _ = _service(tmp_path, apache_kafka.bootstrap, recorder, topic, delivery=delivery)
    keys = ["tenant/7", "/lead", "a b/ü/", "plain"]
    with svc:
        produce(
            apache_kafka.bootstrap,
            topic,
            [{"key": k.encode(), "value": b'{"ID": 1}'} for k in keys],
        )
        wait_until(
            lambda: len(recorder.snapshot()) >= len(keys), 30, what="every record at the handler"
        )
    calls = recorder.snapshot()
    assert sorted(c.event_id for c in calls) == sorted(keys)
    assert all(
        c.headers["x-message-key"] == c.event_id and c.headers["x-retry-count"] == "0"
        for c in calls
    )
