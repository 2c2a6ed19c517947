"""A real headless browser for the tests of the pages Atlas serves: Debian's ``chromium``.

``await dump_dom(url)`` loads the page as a browser does (its own User-Agent and ``Accept``
headers, scripts run, the Content-Security-Policy enforced) and returns the DOM after load;
``await screenshot(url, path)`` renders it to a PNG. Both run chromium as a subprocess with a
fresh profile, so tests do not share cookies or caches. ``open_browser()`` keeps one running and
drives it over the DevTools protocol (a websocket, wsproto over a trio socket): ``page =
await browser.open(url)``, then ``await page.evaluate(js)`` to click, type and read the DOM, and
``await page.wait_for(js)`` to wait, bounded, for what the page should come to show. Failing,
never skipping, when chromium is missing: the README set-up installs it (``scripts/setup --system``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

_TIMEOUT = 60  # seconds for one page load, under a loaded CI machine


def chromium_binary() -> str:
    """The ``chromium`` executable, or a test failure naming the set-up step."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "the 'chromium' executable is missing: run the README set-up "
            "(Debian/Ubuntu: apt-get install -y chromium) before the test suite",
            pytrace=False,
        )
    return found


def _argv(extra: list[str], profile: str) -> list[str]:
    return [
        chromium_binary(),
        "--headless",
        "--no-sandbox",  # the tests run as root in a container; the page is our own
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--window-size=412,1400",
        *extra,
    ]


async def dump_dom(url: str) -> str:
    """The page's DOM (serialized HTML) after load, as chromium saw it."""
    with tempfile.TemporaryDirectory() as profile, trio.fail_after(_TIMEOUT):
        done = await trio.run_process(
            _argv(["--virtual-time-budget=3000", "--dump-dom", url], profile),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


async def screenshot(url: str, path: trio.Path) -> bytes:
    """Render ``url`` to the PNG ``path`` and return its bytes."""
    with tempfile.TemporaryDirectory() as profile, trio.fail_after(_TIMEOUT):
        done = await trio.run_process(
            _argv([f"--screenshot={path}", url], profile),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0 and await path.exists(), done.stderr.decode(errors="replace")[-2000:]
    return await path.read_bytes()


# -- driving a page: the DevTools protocol over a websocket ----------------------------------------


class CdpError(Exception):
    """The browser answered a DevTools command with an error, or a page script threw."""


class _WebSocket:
    """A websocket client over a trio stream (wsproto does the framing); text messages only."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._parts: list[str] = []
        self._ready: list[str] = []

    @classmethod
    async def connect(cls, host: str, port: int, path: str) -> _WebSocket:
        socket = cls(await trio.open_tcp_stream(host, port))
        await socket._stream.send_all(socket._ws.send(Request(host=f"{host}:{port}", target=path)))
        while True:
            for event in await socket._events():
                if isinstance(event, AcceptConnection):
                    return socket
                if isinstance(event, RejectConnection):
                    raise CdpError(f"the browser refused the websocket: {event.status_code}")

    async def _events(self) -> list[object]:
        data = await self._stream.receive_some(65536)
        if not data:
            raise CdpError("the browser closed the DevTools connection")
        self._ws.receive_data(data)
        return list(self._ws.events())

    async def send(self, text: str) -> None:
        await self._stream.send_all(self._ws.send(TextMessage(data=text)))

    async def receive(self) -> str:
        while not self._ready:
            for event in await self._events():
                if isinstance(event, TextMessage):
                    self._parts.append(event.data)
                    if event.message_finished:
                        self._ready.append("".join(self._parts))
                        self._parts.clear()
                elif isinstance(event, Ping):
                    await self._stream.send_all(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    raise CdpError("the browser closed the DevTools connection")
        return self._ready.pop(0)

    async def aclose(self) -> None:
        await self._stream.aclose()


class Page:
    """One tab, driven with ``Runtime.evaluate``: read the DOM, click, type, wait for a condition."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session = session_id
        """The DevTools session of this tab: pass it to ``browser.command`` for other domains."""

    async def evaluate(self, expression: str) -> Any:
        """The value of the JavaScript ``expression`` (awaited if it is a promise); CdpError if it throws."""
        result = await self.browser.command(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, within: float = 30.0, what: str | None = None) -> Any:
        """Re-evaluate ``expression`` until it is truthy and return its value; fail after ``within`` s."""
        with trio.move_on_after(within):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await trio.sleep(0.1)
        dom = await self.evaluate("document.body ? document.body.innerText : ''")
        pytest.fail(f"{what or expression}: not within {within} s; the page shows:\n{dom[-3000:]}")


class Browser:
    """A headless chromium with its DevTools endpoint open; see :func:`open_browser`."""

    def __init__(self, socket: _WebSocket) -> None:
        self._socket = socket
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        """Every event the browser sent (console messages, CSP reports, ...), in order."""

    async def command(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result (one command at a time)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        with trio.fail_after(_TIMEOUT):
            await self._socket.send(json.dumps(message))
            while True:
                reply = json.loads(await self._socket.receive())
                if reply.get("id") == self._next_id:
                    break
                self.events.append(reply)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def open(self, url: str) -> Page:
        """A new tab at ``url``, its page loaded, with console and log events recorded."""
        target = await self.command("Target.createTarget", {"url": "about:blank"})
        attached = await self.command(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await self.command(f"{domain}.enable", session=attached["sessionId"])
        await self.command("Page.navigate", {"url": url}, session=attached["sessionId"])
        await page.wait_for("document.readyState === 'complete'", what=f"loading {url}")
        return page

    def console_errors(self) -> list[str]:
        """Errors the pages logged: exceptions, console.error, CSP violations, failed loads."""
        found: list[str] = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails", {}).get("text")))
            elif event.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args"))[:500])
        return found


@asynccontextmanager
async def open_browser() -> AsyncIterator[Browser]:
    """A headless chromium driven over its DevTools websocket; closed (and reaped) on exit."""
    with tempfile.TemporaryDirectory() as profile:
        process = await trio.lowlevel.open_process(
            _argv(["--remote-debugging-port=0", "about:blank"], profile),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = trio.Path(profile) / "DevToolsActivePort"
            with trio.fail_after(_TIMEOUT):
                # Chromium writes the port it bound (and the browser's websocket path) once it listens.
                while not await port_file.exists() or len((await port_file.read_text()).split()) < 2:
                    assert process.returncode is None, f"chromium exited with {process.returncode}"
                    await trio.sleep(0.05)
            port, path = (await port_file.read_text()).split()[:2]
            socket = await _WebSocket.connect("127.0.0.1", int(port), path)
            browser = Browser(socket)
            try:
                yield browser
            finally:
                # The browser may drop the connection before it answers: it is closing either way.
                with trio.CancelScope(shield=True), trio.move_on_after(10), contextlib.suppress(CdpError):
                    await browser.command("Browser.close")
                await socket.aclose()
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
