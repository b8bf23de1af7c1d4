"""The seed's Goods entity: stored in table `goods`, `shopping()` raises the `Goods:Shopping` domain event.

As in the seed (`type Goods struct { freedom.Entity; goodsObj objects.Goods }`), buying is the
entity's own method; the event carries the goods as JSON and is keyed by `identity()`, so the
events of one goods arrive in order. Saved through a unit of work, the event is written to the
outbox with the goods, in one transaction, and published after the commit.
"""

from __future__ import annotations

from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import freedom

EVENT_SHOPPING = "Goods:Shopping"  # published to, and listened on, topic "Goods.Shopping"


class Base(DeclarativeBase):
    """The example's tables."""


class Goods(Base, freedom.Entity):
    """A goods with its stock."""

    __tablename__ = "goods"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    amount: Mapped[int] = mapped_column(Integer, default=10)

    def identity(self) -> str:
        return str(self.id)

    def shopping(self) -> None:
        """Buy one: less stock, and the `Goods:Shopping` event with the goods (the seed's objects.Goods)."""
        self.amount -= 1
        self.domain_event(
            EVENT_SHOPPING, {"ID": self.id, "Amount": self.amount}, headers={"x-action": "购买"}
        )
