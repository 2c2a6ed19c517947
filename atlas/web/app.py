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

``/status`` and ``/metrics`` are for operators: they name actors, nodes and error messages. With an
``operator_token`` they answer 401 unless the request carries ``Authorization: Bearer <token>``
(compared in constant time); with ``operator_routes=False`` the public app does not serve them at
all and :func:`create_operator_app` serves them on a listener of their own (a private address).
``/healthz`` and ``/readyz`` stay open on both: load balancers and systemd call them without
credentials, and they say nothing but up or not and why not.
"""

from __future__ import annotations

import hmac
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


def _bearer_guard(
    token: str | None, endpoint: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """``endpoint`` behind ``Authorization: Bearer <token>`` (no token: open)."""
    if token is None:
        return endpoint
    if len(token) < 16:
        raise ValueError("operator_token must be at least 16 characters")
    expected = f"Bearer {token}".encode()

    async def guarded(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                {"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        return await endpoint(request)

    return guarded


def create_web_app(
    probes: WebProbes,
    extra_routes: Sequence[BaseRoute] = (),
    *,
    operator_token: str | None = None,
    operator_routes: bool = True,
) -> Starlette:
    """Build the Starlette app from the probes and any feature routes.

    ``operator_token`` puts ``/status`` and ``/metrics`` behind a bearer token;
    ``operator_routes=False`` leaves them out (they are served by :func:`create_operator_app`).
    """
    routes: list[BaseRoute] = _probe_routes(probes, operator_token, operator_routes)
    return Starlette(routes=[*routes, *extra_routes])


def create_operator_app(probes: WebProbes, *, operator_token: str | None = None) -> Starlette:
    """The operator listener's app: health, readiness, status and metrics, nothing else."""
    return Starlette(routes=_probe_routes(probes, operator_token, True))


def _probe_routes(probes: WebProbes, operator_token: str | None, operator_routes: bool) -> list[BaseRoute]:
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

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if operator_routes:
        routes += [
            Route("/status", _bearer_guard(operator_token, status)),
            Route("/status.json", _bearer_guard(operator_token, status_json)),
            Route("/metrics", _bearer_guard(operator_token, metrics)),
        ]
    return routes
