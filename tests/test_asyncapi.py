"""The AsyncAPI 3.0 document (freedom.web.asyncapi), validated by the official parser, @asyncapi/parser
(installed from the npm registry by scripts/npm-tools.sh, run with the machine's Node)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

import freedom
from freedom.cli.main import main as freedom_main
from freedom.infra import kafka
from freedom.testing import write_config
from freedom.web.asyncapi import document
from tests.services.tools import require_command, require_tool

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / "tests" / "asyncapi_validate.js"
PARSER = ROOT / ".cache" / "npm" / "node_modules" / "@asyncapi" / "parser" / "package.json"


@pytest.fixture(scope="module")
def diagnostics(tmp_path_factory) -> dict[str, list[dict]]:
    """The parser's diagnostics of the typed service's document and of the seed example's (written
    by `freedom asyncapi`), from one Node run; the parser is installed first when missing."""
    require_command("node", "install Node.js (apt-get install nodejs npm)")
    if not PARSER.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "npm-tools.sh")], check=True, timeout=300)
    require_tool(
        "the AsyncAPI parser (@asyncapi/parser)",
        PARSER.exists(),
        "bash scripts/npm-tools.sh installs it with npm into .cache/npm",
    )
    tmp = tmp_path_factory.mktemp("asyncapi")
    typed = tmp / "typed.json"
    typed.write_text(json.dumps(document(typed_app(_typed_config(tmp)))))
    seed = tmp / "shop.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("freedom")),
            "asyncapi",
            "example:app",
            "-o",
            str(seed),
        ],
        cwd=ROOT / "examples" / "shop",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    checked = subprocess.run(
        ["node", str(VALIDATOR), str(typed), str(seed)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode in (0, 1), checked.stderr
    found = json.loads(checked.stdout)
    return {
        "typed": found[str(typed)],
        "seed": found[str(seed)],
        "seed_doc": json.loads(seed.read_text()),
    }


def errors(diagnostics: list[dict]) -> list[dict]:
    return [d for d in diagnostics if d["severity"] in ("error", "warning")]


class Order(BaseModel):
    """An order placed in the shop."""

    id: int
    amount: int
    note: str | None = None


class Line(BaseModel):
    sku: str
    quantity: int


class Shipment(BaseModel):
    order: Order
    lines: list[Line]


@dataclasses.dataclass
class Refund:
    order_id: int
    cents: int


def typed_app(config_dir: Path) -> freedom.Application:
    class StoreController:
        runtime: freedom.Runtime
        producer: kafka.Producer

        async def post_order_by(self, event_id: str, order: Order) -> None:
            """Reserve the stock of an order."""

        async def post_raw_by(self, event_id: str) -> None:
            await self.runtime.request.body()

        async def post_orders(self, batch: freedom.Batch) -> dict:
            """Reserve the stock of many orders."""
            return batch.answer()

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event("order-created", "StoreController.post_order_by")
        initiator.listen_event("raw-lines", StoreController.post_raw_by)
        initiator.listen_event(
            "order-batches",
            "StoreController.post_orders",
            batch=freedom.BatchSettings(max_records=50, max_wait_ms=10, record_type=Order),
        )

        @initiator.fastapi.post("/ship/{event_id}")
        async def ship(event_id: str, shipment: Shipment) -> None:
            """Ship an order."""

        initiator.listen_event("Order:Shipped", ship)
        initiator.publishes("order-created", Order, description="A new order, from POST /orders.")
        initiator.publishes("refunds", Refund)
        initiator.publishes("audit-lines", list[Line])
        initiator.publishes("notes", str)

    return freedom.Application(config_dir=config_dir, prepare=[prepare])


def _typed_config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        app={"service_name": "orders"},
        kafka={
            "consumer": {"open": True, "proxy_addr": "inprocess"},
            "producer": {"open": True},
            "producer_clients": [{"servers": ["kafka-1:9092", "kafka-2:9092"]}],
            "consumer_clients": [
                {
                    "servers": ["kafka-1:9092", "kafka-2:9092"],
                    "group_id": "orders",
                    "retry_count": 3,
                    "retry_group_id": "orders-retry",
                    "retry_interval_sec": 30,
                }
            ],
        },
    )


def test_a_typed_service_document_passes_the_parser(tmp_path, diagnostics):
    assert errors(diagnostics["typed"]) == []
    doc = document(typed_app(_typed_config(tmp_path)))
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "orders"
    assert doc["servers"] == {
        "kafka": {
            "host": "kafka-1:9092",
            "protocol": "kafka",
            "description": (
                "Bootstrap servers: kafka-1:9092, kafka-2:9092. Used by: producer client (default); "
                "consumer groups orders, orders-retry."
            ),
        }
    }
    channels, ops, schemas = doc["channels"], doc["operations"], doc["components"]["schemas"]
    # A listened topic: the handler's model; the topic it also publishes: the declared model.
    created = channels["order-created"]
    assert created["messages"]["received"]["payload"] == {"$ref": "#/components/schemas/Order"}
    assert created["messages"]["published"]["payload"] == {"$ref": "#/components/schemas/Order"}
    assert set(schemas["Order"]["required"]) == {"id", "amount"}
    assert schemas["Order"]["properties"]["amount"]["type"] == "integer"
    receive = ops["receive_order-created"]
    assert receive["action"] == "receive" and receive["bindings"]["kafka"]["groupId"]["enum"] == [
        "orders"
    ]
    assert receive["x-freedom-delivery"] == {
        "method": "POST",
        "path": "/store/order/{event_id}",
        "handler": "StoreController.post_order_by",
    }
    assert receive["description"].startswith("Reserve the stock of an order.")
    # The proxy's topics: retry (sent by the proxy, read by the retry group) and dead letters.
    assert channels["retry-order-created"]["address"] == "retry-order-created"
    assert channels["retry-order-created"]["messages"]["retry"]["headers"] == {
        "$ref": "#/components/schemas/RetryRecordHeaders"
    }
    assert "30 s" in channels["retry-order-created"]["description"]
    assert ops["receive_retry-order-created"]["bindings"]["kafka"]["groupId"]["enum"] == [
        "orders-retry"
    ]
    assert ops["send_retry-order-created"]["action"] == "send"
    assert ops["send_fail-order-created"]["channel"] == {"$ref": "#/channels/fail-order-created"}
    dead_headers = schemas["DeadLetterHeaders"]["properties"]
    assert {
        "x-retry-count",
        "x-freedom-original-topic",
        "x-freedom-error",
        "x-freedom-status",
        "x-freedom-first-failure-time",
        "x-freedom-value-omitted",
    } <= set(dead_headers)
    assert {"x-message-key", "x-retry-count", "content-type"} <= set(
        schemas["DeliveryHeaders"]["properties"]
    )
    # A domain event name maps to its topic; a plain FastAPI route's nested model; the raw handler.
    shipped = channels["Order_Shipped"]
    assert shipped["address"] == "Order.Shipped"
    assert shipped["messages"]["received"]["payload"] == {"$ref": "#/components/schemas/Shipment"}
    assert schemas["Shipment"]["properties"]["lines"]["items"] == {
        "$ref": "#/components/schemas/Line"
    }
    assert "type" not in channels["raw-lines"]["messages"]["received"]["payload"]
    # Declared publishes: a dataclass, a list of models, text.
    assert channels["refunds"]["messages"]["published"]["payload"] == {
        "$ref": "#/components/schemas/Refund"
    }
    assert channels["audit-lines"]["messages"]["published"]["payload"]["items"] == {
        "$ref": "#/components/schemas/Line"
    }
    assert channels["notes"]["messages"]["published"]["contentType"] == "text/plain"
    assert ops["send_refunds"]["action"] == "send" and "receive_refunds" not in ops
    # A batch topic: its records' payload is one record's (record_type), in its retry and dead-letter
    # topics too; the delivery's body is the batch envelope, with that payload inside each record's value.
    batches = channels["order-batches"]["messages"]["received"]
    assert batches["payload"] == {"$ref": "#/components/schemas/Order"}
    assert channels["fail-order-batches"]["messages"]["dead-letter"]["payload"] == {
        "$ref": "#/components/schemas/Order"
    }
    how = ops["receive_order-batches"]["x-freedom-delivery"]
    assert how["batch"] == {
        "maxRecords": 50,
        "maxWaitMs": 10,
        "body": {"$ref": "#/components/schemas/order-batches_BatchEnvelope"},
        "answer": {"$ref": "#/components/schemas/BatchAnswer"},
    }
    envelope = schemas["order-batches_BatchEnvelope"]
    records = envelope["properties"]["records"]
    assert records["maxItems"] == 50 and envelope["properties"]["topic"]["enum"] == [
        "order-batches"
    ]
    value = records["items"]["properties"]["value"]
    assert (
        value["contentSchema"] == {"$ref": "#/components/schemas/Order"}
        and value["type"] == "string"
    )
    assert schemas["BatchAnswer"]["properties"]["statuses"]["items"]["properties"]["status"][
        "enum"
    ] == ["ok", "retry", "dead-letter", "drop"]


def test_the_seed_example_document_written_by_the_cli_passes_the_parser(diagnostics):
    assert errors(diagnostics["seed"]) == []
    doc = diagnostics["seed_doc"]
    assert doc["info"]["title"] == "shop"
    assert {"event-sell", "retry-event-sell", "fail-event-sell", "Goods_Shopping"} <= set(
        doc["channels"]
    )
    assert (
        doc["operations"]["receive_event-sell"]["x-freedom-delivery"]["path"]
        == "/store/sell/goods/{event_id}"
    )
    assert doc["operations"]["receive_retry-event-sell"]["bindings"]["kafka"]["groupId"][
        "enum"
    ] == ["retry_freedom"]


async def test_the_document_is_served_at_asyncapi_json(tmp_path):
    app = typed_app(_typed_config(tmp_path))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc"
    ) as client:
        r = await client.get("/asyncapi.json")
        openapi = (await client.get("/openapi.json")).json()
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == document(app)
    assert "/asyncapi.json" not in openapi["paths"]


def test_cli_mistakes_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert freedom_main(["asyncapi", "no_such_module:app"]) == 2
    assert capsys.readouterr().err.strip() == (
        "freedom: error: cannot import 'no_such_module': no such module (run from the directory that contains it)"
    )
    (tmp_path / "svc.py").write_text("import freedom\napp = freedom.Application()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert freedom_main(["asyncapi", "svc:app", "-o", str(tmp_path / "missing" / "a.json")]) == 2
    assert "cannot write it: No such file or directory" in capsys.readouterr().err


def test_publishes_refuses_a_type_it_cannot_describe(tmp_path):
    class Opaque:
        pass

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.publishes("opaque", Opaque)

    with pytest.raises(
        freedom.RouteError,
        match=r"initiator.publishes\('opaque', .*Opaque\): Pydantic cannot describe",
    ):
        freedom.Application(config_dir=tmp_path, prepare=[prepare]).setup()
