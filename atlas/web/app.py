"""The bot process's ASGI app: health, readiness, status and metrics, plus routes other parts add.

The app knows nothing about the runtime: it is built from plain callables (``WebProbes``), so it can
be tested alone and so that the runtime stays the only place that assembles things. Webhook routes
(Telegram, Crypto Pay) and ``/sub/<token>`` are passed in as extra routes by the features that own
them.

* ``GET /healthz``: the process is alive and its scheduler answers (always 200 while serving).
* ``GET /readyz``: 200 when the database answers and the supervision tree is up, else 503 with
  the reason; load balancers and systemd use it.
* ``GET /status``: the operator's page (HTML, auto-refreshing; :mod:`atlas.web.status_page`), or the
  JSON snapshot when the request asks for ``application/json``; ``GET /status.json``: always JSON.
* ``GET /metrics``: Prometheus text format.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from atlas.web.status_page import render_status_page

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class WebProbes:
    """What the web app asks the runtime.

    ``ready`` returns ``(ready, reasons)``; ``status`` returns a JSON-able dict; ``metrics`` returns
    the Prometheus exposition bytes.
    """

    ready: Callable[[], Awaitable[tuple[bool, list[str]]]]
    status: Callable[[], Awaitable[dict[str, Any]]]
    metrics: Callable[[], bytes]


def _wants_json(accept: str) -> bool:
    """True when ``Accept`` names JSON and does not name HTML before it (browsers send text/html)."""
    accept = accept.lower()
    json_at = accept.find("application/json")
    html_at = accept.find("text/html")
    return json_at >= 0 and (html_at < 0 or json_at < html_at)


def create_web_app(probes: WebProbes, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """Build the Starlette app from the probes and any feature routes."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(request: Request) -> Response:
        ready, reasons = await probes.ready()
        return JSONResponse({"ready": ready, "reasons": reasons}, status_code=200 if ready else 503)

    async def status(request: Request) -> Response:
        snapshot = await probes.status()
        if _wants_json(request.headers.get("accept", "")):
            return JSONResponse(snapshot)
        return HTMLResponse(render_status_page(snapshot))

    async def status_json(request: Request) -> Response:
        return JSONResponse(await probes.status())

    async def metrics(request: Request) -> Response:
        return Response(probes.metrics(), media_type=PROMETHEUS_CONTENT_TYPE)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/status", status),
        Route("/status.json", status_json),
        Route("/metrics", metrics),
        *extra_routes,
    ]
    return Starlette(routes=routes)
