"""The freedom publish path under benchmark (issue 14), run as `freedom run freedom_publish_app:app`.

One route, GET /bench/publish: publishes one 100-byte record to `$BENCH_TOPIC` with
`await msg.publish()` and answers once the broker acknowledged it, as the Go peer's route does
(bench/go_peer, `gopeer publish`). The config has the producer open and no consumer.
"""

from __future__ import annotations

import os

import freedom
from freedom.infra import kafka

TOPIC = os.environ["BENCH_TOPIC"]
VALUE = (
    b'{"pad":"' + b"x" * 90 + b'"}'
)  # 100 bytes, as bench/services/publisher.py and the Go peer send
assert len(VALUE) == 100


class PublishController:
    producer: kafka.Producer

    async def get_publish(self) -> str:
        await self.producer.new_msg(TOPIC, VALUE).publish()
        return "ok"


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/bench", PublishController)


app = freedom.Application()
