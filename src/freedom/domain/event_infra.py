"""The domain-event infrastructure: what publishes the events entities raise.

An application has at most one (`app.install_domain_event_infra(kafka.get_domain_event_infra())`,
as the seed's `app.InstallDomainEventInfra`). Any object with these two methods will do, so a
service can publish its domain events somewhere other than Kafka.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from freedom.domain.events import DomainEvent, DomainEventError

if TYPE_CHECKING:
    from freedom.web.application import Application

INSTALL_HINT = "app.install_domain_event_infra(kafka.get_domain_event_infra())"


@runtime_checkable
class DomainEventInfra(Protocol):
    """Publishes domain events for one application."""

    def attach(self, app: Application) -> None:
        """Called once, by `install_domain_event_infra`, with the application it serves."""

    async def publish(self, event: DomainEvent) -> None:
        """Publish one event; return once the broker acknowledged it, raise if it could not."""


def install(app: Application, infra: DomainEventInfra) -> None:
    """Install `infra` as `app`'s one domain-event infrastructure (a second install is an error)."""
    if not isinstance(infra, DomainEventInfra):
        raise DomainEventError(
            f"install_domain_event_infra: {type(infra).__name__} is not a domain-event infrastructure "
            f"(it needs attach(app) and async publish(event)); use {INSTALL_HINT}"
        )
    if getattr(app, "_started", False):
        raise DomainEventError(
            "install_domain_event_infra: the application has already started; "
            "install the infrastructure before it starts (at import time, next to Application())"
        )
    current = getattr(app, "domain_event_infra", None)
    if current is not None:
        raise DomainEventError(
            f"install_domain_event_infra: {type(current).__name__} is already installed; "
            "an application publishes its domain events through one infrastructure only"
        )
    infra.attach(app)
    app.domain_event_infra = infra


def installed(app: Application, event_name: str) -> DomainEventInfra:
    """`app`'s infrastructure, or DomainEventError saying how to install one."""
    infra: DomainEventInfra | None = getattr(app, "domain_event_infra", None)
    if infra is None:
        raise DomainEventError(
            f"cannot raise domain event {event_name!r}: no domain-event infrastructure is installed; "
            f"call {INSTALL_HINT} before the application starts"
        )
    return infra
