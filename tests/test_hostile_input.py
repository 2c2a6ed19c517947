"""Hostile input at every door: none crashes the process, none changes what it should not, each
gets a clear answer.

Doors: the Telegram webhook (bodies and headers), the node agent (without and with a valid token,
against a real V2Ray core), the JSON decoder they share (deep nesting), and the texts people type
into the bot: admin commands and prompts with NUL bytes, lone surrogates, SQL-looking and other
unicode-abusive strings, a forged top-up button and invoice floods. Hypothesis draws the inputs;
the async parts replay a derandomized draw in order (the bot is asyncio + trio, one event loop).
(The Crypto Pay webhook's own hostile-input properties are in ``test_cryptopay_webhook.py``;
forged callbacks and commands of non-admins in ``test_bot_admin.py`` and ``test_bot_user_flows.py``.)
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.applications import Starlette

from atlas.domain import InvalidAmount
from atlas.net.json_limits import DEFAULT_MAX_DEPTH, JsonTooDeep, json_depth, loads_bounded
from atlas.payments import CryptoPayClient
from atlas.payments.cryptopay_webhook import WebhookMalformed, parse_webhook
from atlas.storage import Database, Tx
from atlas.storage.units import TooManyInvoices, create_payment_intent
from atlas.telegram import make_bot
from atlas.telegram.config import BotConfig
from atlas.telegram.i18n import t
from atlas.telegram.intake import SECRET_HEADER, telegram_webhook_route
from atlas.telegram.routers.admin import ADMIN_COMMANDS
from atlas.testing.cryptopay_emulator import CryptoPayEmulator
from atlas.vpn.agent import run_agent
from atlas.vpn.agent_settings import NodeAgentSettings
from atlas.vpn.vless_user import InvalidUser, check_email
from atlas.web.server import serve_asgi
from tests._admin_support import ADMIN, NOW, add_users, admin_bot, settle
from tests._money_support import RUB, rows, scalar, setup_catalog
from tests.test_vpn_agent import TAG, start_core

T = TypeVar("T")

SQL_LIKE = ["'; DROP TABLE users; --", "1 OR 1=1", "$1", "\\x00", "%s%s%n", "' UNION SELECT * FROM ledger --"]
UNSTORABLE = ["\x00", "a\x00b", "\ud800", "tail \udfff", "\x00" * 50]
ABUSIVE = [
    "\u202eevil\u202c", "ｆｕｌｌ", "e\u0301" * 300, "\u200d\u200b\ufeff", "😀" * 200, "\t\r\n\x1b[31m",
]  # fmt: skip
hostile_text = st.one_of(
    st.sampled_from(SQL_LIKE + UNSTORABLE + ABUSIVE),
    st.text(min_size=1, max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=30).map(lambda s: s + "\x00"),
)


def drawn(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` examples of ``strategy`` (derandomized: the same on every run)."""
    found: list[T] = []

    @settings(max_examples=count, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: T) -> None:
        found.append(value)

    collect()
    return found[:count]


def nested(depth: int, opener: str = "[") -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "0" + closer * depth).encode()


# ----------------------------------------------------------------------------- the shared decoder

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
    max_leaves=20,
)


def _reference_depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    return 0


@given(value=json_values, brackets=st.text(alphabet="[]{}\"\\", max_size=8))
@settings(max_examples=300, deadline=None)
def test_depth_counts_structure_not_brackets_inside_strings(value: object, brackets: str) -> None:
    body = json.dumps({"noise": brackets, "value": value}).encode()
    assert json_depth(body) == 1 + _reference_depth(value)
    assert loads_bounded(body) == json.loads(body)


@given(body=st.binary(max_size=300) | st.text(max_size=100).map(str.encode))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_raise_value_error(body: bytes) -> None:
    try:
        decoded = loads_bounded(body)
    except ValueError:
        return
    assert decoded == json.loads(body)


@given(depth=st.integers(DEFAULT_MAX_DEPTH + 1, 200_000), opener=st.sampled_from(["[", '{"a":']))
@settings(max_examples=30, deadline=None)
def test_deep_nesting_is_a_value_error_never_a_recursion_error(depth: int, opener: str) -> None:
    with pytest.raises(JsonTooDeep):
        loads_bounded(nested(depth, opener))
    assert loads_bounded(nested(DEFAULT_MAX_DEPTH)) is not None


def test_the_cryptopay_webhook_refuses_a_signed_deep_body_as_malformed() -> None:
    from atlas.payments.cryptopay_webhook import compute_signature

    body = nested(100_000)
    headers = {"crypto-pay-api-signature": compute_signature("4242:TEST", body)}
    with pytest.raises(WebhookMalformed):
        parse_webhook("4242:TEST", body, headers)


# ----------------------------------------------------------------------------- the Telegram webhook

SECRET = "webhook_secret-0123456789"


class RecordingSink:
    """What the route hands updates to (the dispatcher's interface); records instead of handling."""

    def __init__(self) -> None:
        self.updates: list[Any] = []

    async def take(self, update: Any, within: float) -> bool:
        self.updates.append(update)
        return True


def _update_with(text: str) -> bytes:
    return json.dumps(
        {
            "update_id": 7,
            "message": {
                "message_id": 1,
                "date": 1_700_000_000,
                "chat": {"id": 5, "type": "private"},
                "from": {"id": 5, "is_bot": False, "first_name": text},
                "text": text,
            },
        }
    ).encode()


webhook_bodies = st.one_of(
    st.binary(max_size=400),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(nested, st.integers(DEFAULT_MAX_DEPTH + 1, 50_000), st.sampled_from(["[", '{"a":'])),
    st.builds(lambda d: b'{"update_id": 1, "message": ' + nested(d) + b"}", st.integers(30, 5_000)),
    hostile_text.map(_update_with),
    st.just(b"x" * (1024 * 1024 + 10)),
)
webhook_secrets = st.one_of(
    st.just(SECRET),
    st.none(),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)


async def test_the_telegram_webhook_answers_every_hostile_request_and_queues_only_valid_updates(
    bridge: None, nursery: trio.Nursery
) -> None:
    bot = make_bot("123456:AAEhBP0av28-test-token")
    sink = RecordingSink()
    app = Starlette(routes=[telegram_webhook_route("/hook", SECRET, sink, bot)])
    base = await nursery.start(serve_asgi, app)
    cases = drawn(st.tuples(webhook_bodies, webhook_secrets), 150)
    seen: set[int] = set()
    # No keep-alive: a refused oversized body leaves its connection unusable, as it should.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=20, limits=fresh) as client:
        for body, secret in cases:
            headers = {SECRET_HEADER: secret} if secret is not None else {}
            before = len(sink.updates)
            answer = await client.post("/hook", content=body, headers=headers)
            seen.add(answer.status_code)
            assert answer.status_code in (200, 400, 401, 413), (answer.status_code, body[:80], secret)
            if secret != SECRET:
                assert answer.status_code == 401 and len(sink.updates) == before
            elif len(body) > 1024 * 1024:
                assert answer.status_code == 413
            elif json_depth(body) > DEFAULT_MAX_DEPTH:
                assert answer.status_code == 400
            queued = len(sink.updates) - before
            assert queued == (1 if answer.status_code == 200 else 0)
    assert {200, 400, 401, 413} <= seen  # the draw reached every door
    await bot.session.close()


# ----------------------------------------------------------------------------- the Crypto Pay webhook route

CRYPTO_TOKEN = "31337:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


async def test_the_cryptopay_webhook_route_answers_hostile_requests_and_records_nothing(
    db: Database, nursery: trio.Nursery
) -> None:
    from atlas.clock import Clock
    from atlas.payments.cryptopay_webhook import compute_signature
    from atlas.web.cryptopay_webhook import cryptopay_webhook_route
    from tests._money_support import POLICY

    route = cryptopay_webhook_route(
        "/hook", token=CRYPTO_TOKEN, db_provider=lambda: db, clock=Clock(NOW), referral_policy=POLICY,
        balance_currency=RUB,
    )  # fmt: skip
    base = await nursery.start(serve_asgi, Starlette(routes=[route]))
    bodies = st.one_of(
        webhook_bodies.filter(lambda b: len(b) < 1024 * 1024), st.just(b"x" * (64 * 1024 + 1))
    )
    signatures = st.sampled_from(["valid", "none", "garbage", "other token"])
    before = await db.run(_payments_state)
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=20, limits=fresh) as client:
        for body, how in drawn(st.tuples(bodies, signatures), 100):
            headers = {
                "valid": {"crypto-pay-api-signature": compute_signature(CRYPTO_TOKEN, body)},
                "none": {},
                "garbage": {"crypto-pay-api-signature": "zz" * 32},
                "other token": {"crypto-pay-api-signature": compute_signature("1:another", body)},
            }[how]
            answer = await client.post("/hook", content=body, headers=headers)
            if len(body) > 64 * 1024:
                assert answer.status_code == 413
            elif how != "valid":
                assert answer.status_code == 401, (answer.status_code, body[:60])
            else:  # signed, but none of these is an invoice_paid update of ours
                assert answer.status_code in (200, 400), (answer.status_code, answer.text, body[:60])
    assert await db.run(_payments_state) == before


async def _payments_state(tx: Tx) -> list[dict[str, Any]]:
    rows_ = await tx.fetch("SELECT * FROM payments ORDER BY id LIMIT 1000")
    ledger = await tx.fetch("SELECT * FROM ledger ORDER BY id LIMIT 1000")
    return [dict(r) for r in [*rows_, *ledger]]


# ----------------------------------------------------------------------------- the node agent

AGENT_TOKEN = "agent-token-0123456789abcdef"
hostile_emails = st.one_of(
    st.sampled_from(["a@atlas", "../etc/passwd", "a%00b", "%2e%2e", "x" * 300, "user;rm", "é@atlas"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=40),
)
agent_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(nested, st.integers(DEFAULT_MAX_DEPTH + 1, 20_000)),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"uuid": st.one_of(st.uuids().map(str), hostile_text, st.integers(), st.none())},
        optional={"flow": hostile_text | st.integers(), "level": st.integers() | hostile_text},
    ).map(lambda d: json.dumps(d).encode()),
)
agent_requests = st.tuples(
    st.sampled_from(["PUT", "DELETE", "GET", "POST"]),
    hostile_emails,
    st.sampled_from(["", "/traffic"]),
    agent_bodies,
    st.sampled_from(["valid", "none", "wrong", "basic"]),
)


def _config_clients(path: Path) -> list[dict[str, Any]]:
    config = json.loads(path.read_text())
    inbound = next(i for i in config["inbounds"] if i.get("tag") == TAG)
    return list(inbound["settings"].get("clients", []))


async def test_the_node_agent_refuses_hostile_requests_and_keeps_its_config_valid(
    nursery: trio.Nursery, tmp_path: Path, v2ray_binary: str
) -> None:
    _, api, config_path = await start_core(nursery, tmp_path, v2ray_binary)
    agent_settings = NodeAgentSettings(
        token=SecretStr(AGENT_TOKEN), listen_port=0, core_api=api, flavour="v2ray", inbound_tag=TAG,
        config_path=config_path,
    )  # fmt: skip
    url = await nursery.start(run_agent, agent_settings)
    auth = {
        "valid": {"authorization": f"Bearer {AGENT_TOKEN}"},
        "none": {},
        "wrong": {"authorization": "Bearer " + "y" * len(AGENT_TOKEN)},
        "basic": {"authorization": f"Basic {AGENT_TOKEN}"},
    }
    accepted: dict[str, str] = {}
    statuses: set[int] = set()
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=20, limits=fresh) as client:
        for method, email, suffix, body, who in drawn(agent_requests, 120):
            before = config_path.read_text()
            path = "/v1/users/" + quote(email.encode("utf-8", "surrogatepass"), safe="@") + suffix
            answer = await client.request(method, path, content=body, headers=auth[who])
            statuses.add(answer.status_code)
            assert answer.status_code < 500, (answer.status_code, answer.text, method, email, body[:60])
            if answer.status_code in (400, 401):  # refusals say why, as JSON
                assert "error" in answer.json(), (answer.status_code, answer.text)
            if who != "valid":
                assert answer.status_code == 401 and config_path.read_text() == before
                continue
            assert answer.status_code in (200, 400, 404, 405, 413), (answer.status_code, answer.text)
            if method == "PUT" and suffix == "" and answer.status_code == 200:
                accepted[email] = json.loads(body)["uuid"]
            elif answer.status_code != 200:
                assert config_path.read_text() == before, (method, email, answer.text)
    assert {200, 400, 401} <= statuses, statuses  # the draw reached every door
    clients = _config_clients(config_path)
    for client_entry in clients:  # whatever got in is a well-formed user
        check_email(client_entry["email"])
        uuid.UUID(client_entry["id"])
    assert {c["email"] for c in clients} <= set(accepted)
    with pytest.raises(InvalidUser):
        check_email("a\x00b")


# ----------------------------------------------------------------------------- texts typed into the bot

TARGET = 500


async def _state(tx: Tx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in ("broadcasts", "maintenance", "admin_audit", "promo_codes", "subscriptions", "ledger"):
        out[table] = [dict(r) for r in await tx.fetch(f"SELECT * FROM {table} ORDER BY 1 LIMIT 1000")]
    return out


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _unstorable(text: str) -> bool:
    return "\x00" in text or any("\ud800" <= ch <= "\udfff" for ch in text)


@pytest.mark.slow
async def test_admin_texts_with_nul_surrogates_and_sql_get_a_clear_answer_and_store_nothing_half_way(
    db: Database,
) -> None:
    await db.run(add_users, ids=[TARGET], now=NOW)
    # Telegram delivers valid UTF-8 only, so a lone surrogate cannot reach a handler from a chat
    # (the units' own test below covers it); everything else can.
    typed = [s for s in [*SQL_LIKE, *UNSTORABLE, *ABUSIVE[:3], *drawn(hostile_text, 12)] if _utf8(s)]
    strings = list(dict.fromkeys(typed))
    apology = t("en", "errors.apology")
    async with admin_bot(db) as h:
        admin = h.emulator.add_user(ADMIN, "Boss", language_code="en")
        actions: list[tuple[str, Callable[[str], None]]] = [
            ("grant", lambda s: admin.send_command("/grant", f"{TARGET} 1 {s}")),
            ("maintenance", lambda s: admin.send_command("/maintenance", f"on {s}")),
            ("find", lambda s: admin.send_command("/find", s)),
            ("promo", lambda s: admin.send_command("/promo_new", f"{s} percent 10 plans={s}")),
        ]
        for text in strings:
            for name, act in actions:
                before = await db.run(_state)
                mark = len(admin.chat_log())
                act(text)
                await settle(h)
                got = _messages(admin, mark)
                assert got, (name, text)  # every command is answered
                assert apology not in "\n".join(m.plain_text or "" for m in got), (name, text)
                after = await db.run(_state)
                if _unstorable(text):
                    assert after == before, (name, text)
                    if name in ("grant", "maintenance"):
                        said = got[-1].plain_text or ""
                        assert "cannot be stored" in said, (name, text, said)
                elif name == "grant" and after["admin_audit"] != before["admin_audit"]:
                    assert after["admin_audit"][-1]["reason"] == text.strip()  # stored verbatim, not run
                elif name == "maintenance" and after["maintenance"] != before["maintenance"]:
                    assert after["maintenance"][0]["message"] == text.strip()
            admin.send_command("/maintenance", "off")
            await settle(h)

            # The broadcast prompt: the typed text, as is.
            admin.send_command("/broadcast")
            await settle(h)
            admin.press(t("en", "admin.broadcast.segment_all"))
            await settle(h)
            before = await db.run(_state)
            mark = len(admin.chat_log())
            admin.send_text(text)
            await settle(h)
            got = _messages(admin, mark)
            assert got and apology not in "\n".join(m.plain_text or "" for m in got), text
            after = await db.run(_state)
            if _unstorable(text):
                assert after["broadcasts"] == before["broadcasts"], text
                assert "cannot be stored" in (got[-1].plain_text or ""), got[-1].plain_text
            elif text.strip():
                assert len(after["broadcasts"]) == len(before["broadcasts"]) + 1, text
            admin.send_command("/admin")  # leaves the prompt (a refused text keeps it open)
            await settle(h)
        assert h.dispatch.failed == 0, [r.message for r in h.reports.latest()]


ADMIN_PREFIXES = ["adm", "ads", "adg", "adb", "adu", "adp"]
stranger_actions = st.one_of(
    st.tuples(
        st.just("command"),
        st.sampled_from(ADMIN_COMMANDS),
        st.one_of(st.none(), hostile_text, st.just(f"{TARGET} 30 because"), st.just(f"{TARGET} +100 x")),
    ),
    st.tuples(
        st.just("forge"),
        st.builds(
            lambda prefix, parts: ":".join([prefix, *parts])[:64],
            st.sampled_from(ADMIN_PREFIXES),
            st.lists(st.one_of(st.integers(-5, 10**12).map(str), st.text(max_size=8)), max_size=4),
        ),
        st.none(),
    ),
    st.tuples(st.just("text"), hostile_text, st.none()),
)


async def test_a_non_admin_with_drawn_commands_callbacks_and_texts_changes_nothing(db: Database) -> None:
    await db.run(add_users, ids=[TARGET], now=NOW)
    before = await db.run(_state)
    # What Telegram can deliver: valid UTF-8 (a lone surrogate cannot come from a chat).
    cases = [c for c in drawn(stranger_actions, 80) if all(_utf8(part or "") for part in c)]
    async with admin_bot(db) as h:
        mallory = h.emulator.add_user(600, "Mallory", language_code="en")
        for kind, value, payload in cases:
            if kind == "command":
                mallory.send_command(f"/{value}", payload)
            elif kind == "forge":
                _forge(h.emulator, mallory, value)
            elif value.strip():
                mallory.send_text(value)
            await settle(h)
        texts = {r.plain_text for r in mallory.chat_log()}
        assert texts <= {"Unknown command. Open the menu: /start"}, texts  # no admin screen, ever
        answers = {a.text for a in h.emulator.callback_answers if a.user_id == mallory.id}
        assert answers <= {"This button is outdated."}, answers
        assert h.dispatch.failed == 0
    assert await db.run(_state) == before


async def test_units_refuse_unstorable_admin_text_before_writing_anything(db: Database) -> None:
    from atlas.storage.units import InvalidAdminInput
    from atlas.storage.units.admin import admin_grant_days
    from atlas.storage.units.admin_views import set_maintenance
    from atlas.storage.units.broadcasts import BroadcastError, create_broadcast

    await db.run(add_users, ids=[TARGET], now=NOW)
    before = await db.run(_state)
    for text in UNSTORABLE:
        with pytest.raises(BroadcastError) as refused:
            await db.run(create_broadcast, admin_id=ADMIN, segment="all", text=text, now=NOW)
        assert refused.value.params["reason"] == "unstorable_text"
        with pytest.raises(InvalidAdminInput) as bad_message:
            await db.run(set_maintenance, admin_id=ADMIN, enabled=True, message=text, now=NOW)
        assert bad_message.value.params["reason"] == "unstorable"
        with pytest.raises(InvalidAdminInput) as bad_reason:
            await db.run(
                admin_grant_days, admin_id=ADMIN, user_id=TARGET, days=1, reason=f"ok {text}", now=NOW
            )
        params = bad_reason.value.params
        assert (params["field"], params["reason"]) == ("reason", "unstorable")
    assert await db.run(_state) == before


async def test_a_forged_tiny_top_up_and_an_invoice_flood_are_refused_with_a_reason(
    db: Database, nursery: trio.Nursery
) -> None:
    from tests.test_bot_user_flows import BOT_USERNAME

    crypto = CryptoPayEmulator("4242:TEST")
    await nursery.start(crypto.run)
    config = BotConfig(
        currency=RUB, public_base_url="https://vpn.example.com", bot_username=BOT_USERNAME,
        min_topup_minor=10_000, invoices_per_hour=3,
    )  # fmt: skip
    await setup_catalog(db)
    async with (
        CryptoPayClient("4242:TEST", base_url=crypto.api_url, timeout=5) as client,
        _user_bot(db, config, client) as (emulator, dispatch, reports),
    ):
        gus = emulator.add_user(9701, "Gus", language_code="en")
        gus.send_command("/start", "ref_\x00'; DROP TABLE users; --")
        await _settle(emulator, dispatch)
        for text in [*SQL_LIKE, *UNSTORABLE[:2], *ABUSIVE]:  # typed anywhere a user can type
            mark = len(gus.chat_log())
            gus.send_command("/promo", text)
            gus.send_text(text)
            await _settle(emulator, dispatch)
            said = "\n".join(r.plain_text or "" for r in _messages(gus, mark))
            assert said and t("en", "errors.apology") not in said, (text, said)
        assert await scalar(db, "SELECT count(*) FROM users") == 1
        for forged in ("t:1", "t:0", "t:9999", "t:-5", "t:99999999999999999"):
            _forge(emulator, gus, forged)
            await _settle(emulator, dispatch)
        assert await scalar(db, "SELECT count(*) FROM payments") == 0
        assert crypto.invoices() == []
        refusals = [a.text or "" for a in emulator.callback_answers if a.user_id == gus.id] + [
            r.plain_text or "" for r in gus.chat_log()
        ]
        assert any("cannot be used" in text for text in refusals), refusals

        for _ in range(3):
            _forge(emulator, gus, "t:10000")
            await _settle(emulator, dispatch)
        mark = len(gus.chat_log())
        _forge(emulator, gus, "t:10000")
        await _settle(emulator, dispatch)
        said = "\n".join(r.plain_text or "" for r in _messages(gus, mark))
        assert "You have opened 3 invoices in the last hour" in said, said
        assert await scalar(db, "SELECT count(*) FROM payments") == 3 and len(crypto.invoices()) == 3
        assert dispatch.failed == 0, [r.message for r in reports.latest()]


async def test_the_hourly_invoice_limit_counts_the_last_hour_of_business_time(db: Database) -> None:
    await setup_catalog(db)
    await db.run(add_users, ids=[TARGET], now=NOW)

    async def intent(at: dt.datetime, amount: int = 10_000) -> Any:
        return await db.run(
            create_payment_intent, user_id=TARGET, provider="cryptopay", purpose="topup", currency=RUB,
            balance_currency=RUB, ttl=dt.timedelta(hours=1), now=at, amount_minor=amount,
            min_topup_minor=10_000, invoices_per_hour=2,
        )  # fmt: skip

    await intent(NOW)
    await intent(NOW + dt.timedelta(minutes=30))
    with pytest.raises(TooManyInvoices) as caught:
        await intent(NOW + dt.timedelta(minutes=59))
    assert caught.value.params == {"limit": 2}
    with pytest.raises(InvalidAmount):
        await intent(NOW + dt.timedelta(hours=5), amount=9_999)  # below the minimum: refused first
    await intent(NOW + dt.timedelta(minutes=61))  # the first one left the window
    assert len(await rows(db, "SELECT id FROM payments")) == 3


# ----------------------------------------------------------------------------- a small user bot


def _messages(user: Any, mark: int) -> list[Any]:
    """The messages ``user`` got after the chat log had ``mark`` records."""
    return [r for r in user.chat_log()[mark:] if r.kind == "message"]


def _forge(emulator: Any, user: Any, data: str) -> None:
    from atlas.testing.botapi._core import PendingCallback

    core = emulator._core  # the emulator has no public "forge" on purpose; tests reach in
    query_id = core.new_id("CBQ")
    core.callbacks[query_id] = PendingCallback(query_id, user.id, data)
    core.enqueue_update(
        "callback_query",
        {"id": query_id, "from": user.as_json(), "chat_instance": f"ci{user.id}", "data": data},
    )


async def _settle(emulator: Any, dispatch: Any) -> None:
    with trio.fail_after(10):
        await emulator.wait_until_delivered()
        await dispatch.join()


def _user_bot(db: Database, config: BotConfig, cryptopay: CryptoPayClient) -> Any:
    from contextlib import asynccontextmanager

    from atlas.clock import Clock
    from atlas.supervision import CrashReporter, RingSink
    from atlas.telegram import DispatchSettings, PollingIntake, UpdateDispatcher, build_dispatcher
    from atlas.telegram.routers import build_user_routers
    from atlas.testing.botapi import BotApiEmulator
    from tests.test_bot_user_flows import BOT_USERNAME, FAST

    @asynccontextmanager
    async def run() -> Any:
        emulator = BotApiEmulator(bot_username=BOT_USERNAME)
        reports = RingSink()
        async with trio.open_nursery() as nursery:
            base = await nursery.start(emulator.serve)
            bot = make_bot(emulator.token, base)
            root = build_dispatcher(
                build_user_routers(), db=db, clock=Clock(NOW), config=config, cryptopay=cryptopay
            )
            dispatch = UpdateDispatcher(
                dispatcher=root,
                bot=bot,
                reporter=CrashReporter([reports], now=lambda: dt.datetime.now(dt.UTC)),
                settings=DispatchSettings(handler_timeout=20),
            )
            await nursery.start(dispatch.run)
            nursery.start_soon(PollingIntake(bot=bot, dispatcher=dispatch, settings=FAST).run)
            try:
                yield emulator, dispatch, reports
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await bot.session.close()

    return run()
