"""The service's AsyncAPI 3.0 document (being written)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .application import Application


def document(app: "Application") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `app`'s event bindings."""
    app.setup()
    return {"asyncapi": "3.0.0", "info": {"title": app.config.service_name, "version": "0.0.0"}}
