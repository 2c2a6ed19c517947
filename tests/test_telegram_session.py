"""The Bot session (h11 over trio) against a real HTTP server: deadlines, error translation, bounds, reuse.

The Bot API behaviour itself (429 → ``TelegramRetryAfter``, 403, multipart photos...) is covered
against the emulator in ``test_botapi_emulator.py``; here a small Starlette server misbehaves on
purpose, and a Bot call inside a unit of work is refused on the new session.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from aiogram import Bot
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramEntityTooLarge, TelegramNetworkError, TelegramRetryAfter
from aiogram.methods import GetUpdates, SendDocument
from aiogram.types import BufferedInputFile
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atlas.net import ConnectionHeldAcrossIO, http11
from atlas.storage import Database, Tx
from atlas.telegram.session import GuardedHttpxSession, TelegramResponseTooLarge, make_bot
from atlas.testing.botapi import BotApiEmulator
from atlas.web.server import serve_asgi

TOKEN = "123:secret"
ME = {"id": 123, "is_bot": True, "first_name": "Atlas", "username": "atlas_bot"}


class Misbehaving:
    """A Bot API stand-in that answers each method in its own bad way, and records its peers."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.bodies: list[tuple[str, str, bytes]] = []
        self.inside = 0
        self.most_inside = 0

    async def endpoint(self, request: Request) -> Response:
        method = request.path_params["method"]
        client = request.client
        assert client is not None
        self.peers.append((client.host, client.port))
        self.bodies.append((method, request.headers.get("content-type", ""), await request.body()))
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            if method == "getMe":
                await trio.sleep(0.01)
                return _ok(ME)
            if method == "getChat":  # slow: past any sensible deadline
                await trio.sleep(30)
                return _ok({})
            if method == "getUpdates":  # an answer far larger than the bound
                return Response(json.dumps({"ok": True, "result": ["x" * 1000] * 200}))
            if method == "sendMessage":
                return Response(
                    json.dumps(
                        {
                            "ok": False,
                            "error_code": 429,
                            "description": "Too Many Requests: retry after 7",
                            "parameters": {"retry_after": 7},
                        }
                    ),
                    status_code=429,
                )
            return _ok(True)
        finally:
            self.inside -= 1


def _ok(result: object) -> Response:
    return Response(json.dumps({"ok": True, "result": result}), media_type="application/json")


@asynccontextmanager
async def misbehaving(limit: int = 100) -> AsyncIterator[tuple[Misbehaving, Bot]]:
    server = Misbehaving()
    app = Starlette(routes=[Route("/bot{token}/{method}", server.endpoint, methods=["POST"])])
    async with trio.open_nursery() as nursery:
        base = await nursery.start(serve_asgi, app)
        bot = Bot(TOKEN, session=GuardedHttpxSession(api=TelegramAPIServer.from_base(base), limit=limit))
        try:
            yield server, bot
        finally:
            await bot.session.close()
            nursery.cancel_scope.cancel()


async def test_calls_reuse_kept_alive_connections_within_the_pool_bound() -> None:
    async with misbehaving(limit=3) as (server, bot):
        for _ in range(10):
            assert (await bot.get_me()).username == "atlas_bot"
        assert len(set(server.peers)) == 1  # one connection, kept alive and reused
        method, content_type, body = server.bodies[0]
        assert (method, content_type, json.loads(body)) == ("getMe", "application/json", {})

        server.peers.clear()
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(bot.get_me)
        assert server.most_inside <= 3 and len(set(server.peers)) <= 3  # the pool is bounded
        assert len(server.peers) == 12

        await bot.session.close()  # a closed session opens a new client on the next call
        assert (await bot.get_me()).id == 123


async def test_the_per_request_timeout_is_a_deadline_and_errors_are_translated() -> None:
    async with misbehaving() as (server, bot):
        with trio.fail_after(10):
            with pytest.raises(TelegramNetworkError, match="Request timeout error") as slow:
                await bot.get_chat(chat_id=1, request_timeout=1)
        assert isinstance(slow.value.__cause__, trio.TooSlowError)

        bounded = GuardedHttpxSession(api=bot.session.api, max_response_bytes=4096)
        with pytest.raises(TelegramResponseTooLarge, match="exceeds 4096 bytes"):
            await bounded(bot, GetUpdates())
        await bounded.close()

        with pytest.raises(TelegramRetryAfter) as limited:  # aiogram's own mapping of the answer
            await bot.send_message(1, "hi")
        assert limited.value.retry_after == 7

        small = GuardedHttpxSession(api=bot.session.api, max_upload_bytes=1000)
        with pytest.raises(TelegramEntityTooLarge, match="upload exceeds 1000 bytes"):
            await small(bot, SendDocument(chat_id=1, document=BufferedInputFile(b"x" * 5000, "big.bin")))
        assert "sendDocument" not in [method for method, _, _ in server.bodies]  # refused before sending
        await small.close()

    with trio.socket.socket() as closed:  # a port nobody listens on
        await closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    nowhere = make_bot(TOKEN, f"http://127.0.0.1:{port}")
    with pytest.raises(TelegramNetworkError, match="network error: ConnectError") as refused:
        await nowhere.get_me()
    assert isinstance(refused.value.__cause__, http11.ConnectError)
    await nowhere.session.close()


async def test_a_bot_call_inside_a_unit_of_work_raises_and_the_unit_rolls_back(db: Database) -> None:
    emulator = BotApiEmulator()
    async with trio.open_nursery() as nursery:
        base = await nursery.start(emulator.serve)
        bot = make_bot(emulator.token, base)
        alice = emulator.add_user(1001, "Alice")
        await db.run(_create_scratch)

        async def unit(tx: Tx) -> None:
            await tx.execute("INSERT INTO tg_scratch (note) VALUES ('written before the Bot call')")
            await bot.send_message(alice.id, "from inside a transaction")

        with pytest.raises(ConnectionHeldAcrossIO, match=r"Telegram sendMessage.*inside unit of work"):
            await db.run(unit)
        assert await db.run(_count_scratch) == 0  # rolled back
        assert emulator.calls["sendMessage"] == 0  # refused before any byte was sent
        await bot.send_message(alice.id, "outside")  # the same session works outside a unit
        assert [m.text for m in alice.chat_log()] == ["outside"]
        await bot.session.close()
        nursery.cancel_scope.cancel()


async def _create_scratch(tx: Tx) -> None:
    await tx.execute("CREATE TABLE tg_scratch (id serial PRIMARY KEY, note text NOT NULL)")


async def _count_scratch(tx: Tx) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM tg_scratch"))
