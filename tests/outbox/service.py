"""A shop/store service run as a real subprocess by the outbox crash test (`freedom run service:app`).

GET /shop/shopping/{id} saves goods `id` through the unit of work, raising $EVENT_NAME; with
$KILL_AFTER_COMMIT set the process then kills itself with SIGKILL: the transaction (and its
outbox row) is committed, nothing is published yet. The store appends every delivery of the
event as a JSON line to $RECORD_FILE. The database is $DATABASE_URL.
"""

from __future__ import annotations

import json
import os
import signal

from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import freedom
from freedom.infra import kafka

EVENT_NAME = os.environ.get("EVENT_NAME", "Goods:Shopping")


class Base(DeclarativeBase):
    pass


class Goods(Base, freedom.Entity):
    __tablename__ = "goods"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    amount: Mapped[int] = mapped_column(Integer, default=10)

    def identity(self) -> str:
        return str(self.id)

    def shopping(self) -> None:
        self.amount -= 1
        self.domain_event(EVENT_NAME, {"ID": self.id, "Amount": self.amount})


class ShopController:
    uow: freedom.UnitOfWork

    async def get_shopping_by(self, id: int) -> str:
        async with self.uow as uow:
            goods = await uow.get(Goods, id) or uow.add(Goods(id=id, amount=10))
            goods.shopping()
        if os.environ.get("KILL_AFTER_COMMIT"):
            os.kill(os.getpid(), signal.SIGKILL)  # committed; the relay has not run yet
        return "ok"


class StoreController:
    runtime: freedom.Runtime

    async def post_goods_shopping_by(self, event_id: str) -> str:
        headers = self.runtime.request.headers
        line = json.dumps(
            {
                "key": event_id,
                "event_id": headers.get("x-freedom-event-id"),
                "body": await self.runtime.request.json(),
            }
        )
        with open(os.environ["RECORD_FILE"], "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return "ok"


@freedom.prepare
def _(initiator: freedom.Initiator) -> None:
    initiator.bind_controller("/shop", ShopController)
    initiator.bind_controller("/store", StoreController)
    initiator.listen_event(EVENT_NAME, "StoreController.post_goods_shopping_by")


app = freedom.Application()
app.install_domain_event_infra(kafka.get_domain_event_infra())
db = freedom.Database(os.environ["DATABASE_URL"])
db.add_tables(Base.metadata)
app.install_database(db)
