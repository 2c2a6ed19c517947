"""Serve an ASGI application on trio with Hypercorn.

One helper for every server Atlas runs (the bot's web app, `atlas node`, the emulators in
`atlas.testing`), so that they all start the same way: ``await nursery.start(serve_asgi, app, ...)``
returns the URL actually bound (port 0 picks a free port), and cancelling the surrounding scope
stops the server (Hypercorn closes its listeners and lets in-flight requests finish within
``graceful_timeout``).
"""

from __future__ import annotations

import logging

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

_log = logging.getLogger("atlas.web.server")


async def serve_asgi(
    app: ASGIFramework,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    graceful_timeout: float = 2.0,
    certfile: str | None = None,
    keyfile: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; ``task_status.started`` gets the base URL.

    The URL is the first bound address, e.g. ``http://127.0.0.1:43127``. With ``certfile`` and
    ``keyfile`` (PEM; both or neither) it serves HTTPS (TLS 1.2+, Hypercorn's defaults) and the
    URL starts with ``https://``.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError("serve_asgi needs both certfile and keyfile, or neither")
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.certfile = certfile
    config.keyfile = keyfile
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = _log
    # Hypercorn keeps idle keep-alive connections open for this long; short enough that a test
    # server stops promptly, long enough for clients that reuse connections.
    config.keep_alive_timeout = 5.0

    async def _serve(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_serve)
        task_status.started(binds[0])
