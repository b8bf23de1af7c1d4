"""The service's operations endpoints: `GET /metrics`, `/livez` and `/readyz` (docs/observability.md),
and app.toml's `log_format`.

Installed by `Application.setup()` after the user's routes, so a route of the service's own with
one of these paths wins. They are left out of the OpenAPI document, and are not event routes:
the consumer proxy's secret does not guard them (serve them on a network only operators reach,
or put the paths behind the ingress's own rules).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from freedom.observability import health, metrics
from freedom.observability.json_logs import use_log_format

if TYPE_CHECKING:
    from freedom.web.application import Application

METRICS_PATH = "/metrics"
LIVEZ_PATH = "/livez"
READYZ_PATH = "/readyz"


def install(app: Application) -> None:
    """Add the three endpoints to `app` and apply its log format (once, at set-up)."""
    use_log_format(app.config.log_format)
    tick = health.LoopTick()
    producers = health.ProducerCheck()
    app.on_startup(tick.start)
    app.on_shutdown(tick.stop)

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(await metrics.exposition(app), media_type=metrics.CONTENT_TYPE_LATEST)

    async def livez(_request: Request) -> Response:
        problems = health.liveness(app, tick, app.config.liveness_timeout_sec)
        return _answer(problems, "live")

    async def readyz(_request: Request) -> Response:
        problems = await health.readiness(app, producers)
        if app._draining is not None:
            problems.append("the service is stopping")
        return _answer(problems, "ready")

    api = app.fastapi
    api.add_route(METRICS_PATH, metrics_endpoint, methods=["GET"], include_in_schema=False)
    api.add_route(LIVEZ_PATH, livez, methods=["GET"], include_in_schema=False)
    api.add_route(READYZ_PATH, readyz, methods=["GET"], include_in_schema=False)


def _answer(problems: list[str], good: str) -> Response:
    if problems:
        return JSONResponse({"status": f"not {good}", "problems": problems}, status_code=503)
    return JSONResponse({"status": good})
