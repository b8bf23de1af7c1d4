"""The services the domain-event tests run: the seed's Goods entity saved through a unit of work,
and a store that records every `Goods:Shopping` event it is delivered."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.responses import Response

import freedom
from freedom.infra import kafka
from tests.apps import Call, Recorder


class Base(DeclarativeBase):
    pass


class Goods(Base, freedom.Entity):
    """The seed's Goods entity, stored in table `goods`."""

    __tablename__ = "goods"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    amount: Mapped[int] = mapped_column(Integer, default=10)

    event_name = "Goods:Shopping"  # tests set a fresh name per test

    def identity(self) -> str:
        return str(self.id)

    def shopping(self) -> None:
        self.amount -= 1
        self.domain_event(
            self.event_name, {"ID": self.id, "Amount": self.amount}, headers={"x-action": "购买"}
        )

    def numbered(self, n: int) -> None:
        """An event carrying a sequence number, for the ordering tests."""
        self.domain_event(self.event_name, {"ID": self.id, "N": n})


class PlainGoods(freedom.Entity):
    """Goods kept in no table (an entity only tracked by the unit of work)."""

    def __init__(self, goods_id: int) -> None:
        self.id, self.amount = goods_id, 10

    def identity(self) -> str:
        return str(self.id)

    def shopping(self) -> None:
        self.amount -= 1
        self.domain_event("Goods:Shopping", {"ID": self.id, "Amount": self.amount})


class Stock(Base):
    """What the idempotent store handler changes: one row per delivered event id."""

    __tablename__ = "stock_moves"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    goods_id: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(String(64))


async def get_or_add(uow: freedom.UnitOfWork, goods_id: int) -> Goods:
    goods = await uow.get(Goods, goods_id)
    return goods if goods is not None else uow.add(Goods(id=goods_id, amount=10))


def shop_app(
    config_dir: Path,
    db_url: str,
    recorder: Recorder,
    event_name: str,
    *,
    idempotent: bool = False,
    fail_after_commit: int = 0,
    kill_after_commit: bool = False,
    **db_options: Any,
) -> freedom.Application:
    """GET /shop/shopping/{id} saves goods `id` and raises `event_name`; the store records deliveries.

    `idempotent`: the store handler writes a stock move per event, guarded by
    `uow.already_processed()`; `fail_after_commit`: it answers 500 after committing that many
    times (so the event is delivered again); `kill_after_commit`: the shop kills its own process
    with SIGKILL right after the commit, before anything can be published.
    """
    Goods.event_name = event_name
    state = {"failures": 0}

    class ShopController:
        runtime: freedom.Runtime
        uow: freedom.UnitOfWork

        async def get_shopping_by(self, id: int, fail: bool = False) -> str:
            self.runtime.bus["tenant"] = self.runtime.request.query_params.get("tenant", "none")
            async with self.uow as uow:
                goods = await get_or_add(uow, id)
                goods.shopping()
                if fail:
                    raise HTTPException(409, "no stock: rolled back")
            if kill_after_commit:
                os.kill(os.getpid(), signal.SIGKILL)
            return "ok"

    class StoreController:
        runtime: freedom.Runtime
        uow: freedom.UnitOfWork

        async def post_goods_shopping_by(self, event_id: str) -> Response:
            request = self.runtime.request
            body = await request.json()
            status = recorder.record(
                Call(
                    event_id=event_id,
                    body=body,
                    headers=dict(request.headers.items()),
                    bus=dict(self.runtime.bus),
                    trace_id=self.runtime.trace_id,
                )
            )
            if idempotent:
                async with self.uow as uow:
                    if await uow.already_processed():
                        return Response(status_code=200)
                    uow.session.add(
                        Stock(goods_id=body["ID"], event_id=request.headers["x-freedom-event-id"])
                    )
                if state["failures"] < fail_after_commit:
                    state["failures"] += 1
                    return Response(status_code=500)
            return Response(status_code=status)

    def prepare(initiator: freedom.Initiator) -> None:
        initiator.bind_controller("/shop", ShopController)
        initiator.bind_controller("/store", StoreController)
        initiator.listen_event(event_name, "StoreController.post_goods_shopping_by")

    app = freedom.Application(config_dir=config_dir, prepare=[prepare])
    app.install_domain_event_infra(kafka.get_domain_event_infra())
    db = freedom.Database(db_url, **db_options)
    db.add_tables(Base.metadata)
    app.install_database(db)
    return app


async def stock_moves(app: freedom.Application) -> list[Stock]:
    async with freedom.UnitOfWork(app) as uow:
        return list((await uow.session.execute(select(Stock).order_by(Stock.id))).scalars())
