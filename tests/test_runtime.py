"""The assembled runtime: the tree against a real database, the CLI as a user runs it."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys

import asyncpg
import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing
import trio_asyncio

from atlas.actors import Actor
from atlas.runtime.app import make_services, serve_tree
from atlas.runtime.settings import load_settings
from atlas.supervision import RestartType
from tests._tree_support import atlas_tasks_outside, parent_task, supervision_tasks, walk

PYTHON = sys.executable


class Exploder(Actor):
    """Crashes on its first tick, then behaves (so the test sees one crash and a restart)."""

    def __init__(self) -> None:
        super().__init__("exploder", period=1.0, first_tick=(0.0, 0.0))
        self.exploded = False

    async def tick(self) -> None:
        if not self.exploded:
            self.exploded = True
            raise ValueError("boom: the first row had no telegram_id")


async def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [PYTHON, "-m", "atlas", *args],
        env={**os.environ, **env},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_a_crash_in_a_child_actor_is_readable_with_atlas_crashes(
    bridge: None, fresh_database: str
) -> None:
    settings = load_settings(database_url=fresh_database, http_port=0, seed=7)
    services = make_services(settings)
    stop = trio.Event()
    exploder = Exploder()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_tree(
                services,
                fresh_database,
                stop=stop,
                extra_workers=[exploder.child_spec(restart=RestartType.PERMANENT)],
                task_status=task_status,
            )
        )
        with trio.fail_after(20):
            # Polling counters the tree updates from other tasks: there is no event to wait on.
            while services.crash_counts.get("crash", 0) < 1 or exploder.statistics().ticks < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        async with httpx.AsyncClient(base_url=services.web_url or "") as client:
            ready = await client.get("/readyz")
            status = (await client.get("/status.json")).json()
            metrics = (await client.get("/metrics")).text
        stop.set()

    assert ready.status_code == 200, ready.text
    assert status["crash_reports"][0]["path"] == "root/workers/exploder"
    assert 'atlas_child_restarts_total{path="root/workers/exploder"} 1.0' in metrics
    assert 'atlas_crash_reports_total{kind="crash"} 1.0' in metrics

    result = await _run_cli("crashes", env={"ATLAS_DATABASE_URL": fresh_database})
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "crash" in out and "root/workers/exploder" in out
    assert "ValueError: boom: the first row had no telegram_id" in out
    assert "decision: restart in" in out

    as_json = await _run_cli("crashes", "--json", "--limit", "1", env={"ATLAS_DATABASE_URL": fresh_database})
    assert b'"budget": [' in as_json.stdout and b'"frames": [' in as_json.stdout


async def test_two_processes_migrating_at_once_both_succeed(bridge: None, empty_database: str) -> None:
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def migrate_once() -> None:
        results.append(await _run_cli("migrate", env={"ATLAS_DATABASE_URL": empty_database}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(migrate_once)
        nursery.start_soon(migrate_once)

    assert [r.returncode for r in results] == [0, 0], [r.stderr.decode()[-500:] for r in results]
    outputs = sorted(r.stdout.decode().split(":")[0].strip() for r in results)
    assert outputs[0] == "applied 0 migration(s)", outputs
    assert outputs[1].startswith("applied ") and outputs[1] != "applied 0 migration(s)"

    async def versions() -> list[int]:
        conn = await asyncpg.connect(empty_database)
        try:
            return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        finally:
            await conn.close()

    found = await trio_asyncio.aio_as_trio(versions)()
    assert found == sorted(set(found)) and found


async def test_a_bad_setting_is_named_and_nothing_starts() -> None:
    result = await _run_cli("check", env={"ATLAS_DB_POOL_SIZE": "many", "ATLAS_DATABASE_URL": "mysql://x"})
    err = result.stderr.decode()
    assert result.returncode == 2
    assert "ATLAS_DB_POOL_SIZE='many'" in err
    assert "ATLAS_DATABASE_URL=<secret>" in err and "mysql" not in err


async def test_check_reports_an_unreachable_database() -> None:
    result = await _run_cli(
        "check", env={"ATLAS_DATABASE_URL": "postgresql://nobody@/nowhere?host=/nonexistent"}
    )
    assert result.returncode == 1
    assert "DatabaseUnavailable" in result.stderr.decode()


async def test_readiness_names_a_database_that_cannot_answer(bridge: None, fresh_database: str) -> None:
    from atlas.runtime.status import readiness
    from atlas.storage import Database, DatabaseSettings, Tx

    services = make_services(load_settings(database_url=fresh_database, http_port=0))
    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=1, acquire_timeout=0.1))
    services.db = db

    async def hold(tx: Tx) -> None:
        await tx.execute("SELECT pg_sleep(1)")

    try:
        assert await readiness(services) == (True, [])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.run, hold)
            await trio.sleep(0.1)
            ready, reasons = await readiness(services)
    finally:
        await db.close()
    assert ready is False
    assert reasons == ["database: BudgetExhausted"]


# ----------------------------------------------------------------------------- secrets in settings errors

_SECRETS = {
    "ATLAS_BOT_TOKEN": "123456:BOT-SECRET-never-print-me",
    "ATLAS_CRYPTOPAY_TOKEN": "12345:CRYPTO-SECRET-never-print-me",
    "ATLAS_DATABASE_URL": "postgresql://atlas:DB-PASSWORD-never-print-me@db.internal/atlas",
    "ATLAS_OPERATOR_TOKEN": "OPERATOR-SECRET-never-print-me",
}


def _assert_no_secret(text: str) -> None:
    for name, value in _SECRETS.items():
        for fragment in (value, "never-print-me"):
            assert fragment not in text, f"{name} leaked: {text}"


@pytest.mark.slow
async def test_a_rule_about_two_settings_names_them_and_prints_no_secret() -> None:
    env = {**_SECRETS, "ATLAS_TELEGRAM_WEBHOOK_URL": "https://bot.example/hook"}
    result = await _run_cli("check", env=env)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "ATLAS_TELEGRAM_WEBHOOK_URL and ATLAS_TELEGRAM_WEBHOOK_SECRET" in err
    _assert_no_secret(err)


@pytest.mark.slow
async def test_bad_secrets_and_a_bad_list_are_named_without_their_values() -> None:
    result = await _run_cli(
        "check",
        env={
            **_SECRETS,
            "ATLAS_TELEGRAM_WEBHOOK_SECRET": "x" * 5,
            "ATLAS_TELEGRAM_WEBHOOK_URL": "https://bot.example/hook",
            "ATLAS_OPERATOR_TOKEN": "short-never-print-me"[:9],
            "ATLAS_DB_POOL_SIZE": "many",
        },
    )
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "ATLAS_OPERATOR_TOKEN=<secret>: Value error, must be at least 16 characters" in err
    assert "ATLAS_DB_POOL_SIZE='many'" in err
    _assert_no_secret(err)
    assert "short-nev" not in err

    listed = await _run_cli("check", env={**_SECRETS, "ATLAS_ADMIN_IDS": "12345,oops"})
    assert listed.returncode == 2
    assert "ATLAS_ADMIN_IDS: could not be parsed" in listed.stderr.decode()
    _assert_no_secret(listed.stderr.decode())


def test_min_topup_is_an_exact_amount_in_the_balance_currency() -> None:
    from atlas.runtime.settings import SettingsError

    assert load_settings().min_topup_minor == 10_000  # 100 RUB
    assert load_settings(min_topup="2.50", currency="USD").min_topup_minor == 250
    for bad, reason in (("0", "zero"), ("1e3", "malformed"), ("0.001", "too_precise"), ("-5", "negative")):
        try:
            load_settings(min_topup=bad)
        except SettingsError as exc:
            assert f"ATLAS_MIN_TOPUP={bad!r} is not a positive amount in RUB ({reason})" in str(exc), exc
        else:
            raise AssertionError(f"ATLAS_MIN_TOPUP={bad!r} was accepted")


# ----------------------------------------------------------------------------- operator endpoints

OPERATOR_TOKEN = "operator-token-0123456789"
_BEARER = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
_WRONG_BEARER = {"Authorization": "Bearer not-the-operator-token"}


async def _serve_briefly(settings_overrides: dict[str, object], database: str) -> dict[str, int]:
    """Start the tree, ask each listener each endpoint (with and without the token); the codes."""
    settings = load_settings(database_url=database, http_port=0, seed=1, **settings_overrides)
    services = make_services(settings)
    stop = trio.Event()
    codes: dict[str, int] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve_tree(services, database, stop=stop, task_status=task_status)
        )
        listeners = {"public": services.web_url or ""}
        if services.operator_url is not None:
            listeners["operator"] = services.operator_url
        async with httpx.AsyncClient() as client:
            for where, base in listeners.items():
                for path in ("/healthz", "/readyz", "/status", "/metrics"):
                    plain = await client.get(base + path)
                    codes[f"{where} {path}"] = plain.status_code
                    authed = await client.get(base + path, headers=_BEARER)
                    codes[f"{where} {path} +token"] = authed.status_code
                wrong = await client.get(base + "/status", headers=_WRONG_BEARER)
                codes[f"{where} /status +wrong"] = wrong.status_code
        stop.set()
    return codes


async def test_status_and_metrics_need_the_operator_token_but_health_stays_open(
    bridge: None, fresh_database: str
) -> None:
    codes = await _serve_briefly({"operator_token": OPERATOR_TOKEN}, fresh_database)
    assert codes["public /healthz"] == codes["public /readyz"] == 200
    assert codes["public /status"] == codes["public /metrics"] == 401
    assert codes["public /status +wrong"] == 401
    assert codes["public /status +token"] == codes["public /metrics +token"] == 200


async def test_a_separate_operator_listener_takes_status_and_metrics_off_the_public_one(
    bridge: None, fresh_database: str
) -> None:
    codes = await _serve_briefly({"operator_http_port": 0}, fresh_database)
    assert codes["public /healthz"] == 200
    assert codes["public /status"] == codes["public /metrics"] == 404
    assert codes["operator /status"] == codes["operator /metrics"] == codes["operator /healthz"] == 200

    both = await _serve_briefly({"operator_http_port": 0, "operator_token": OPERATOR_TOKEN}, fresh_database)
    assert both["public /status +token"] == 404
    assert both["operator /status"] == both["operator /metrics"] == 401
    assert both["operator /status +token"] == 200 and both["operator /readyz"] == 200


# ----------------------------------------------------------------------------- what the log keeps out


def test_the_log_masks_vpn_uuids_and_bot_tokens_and_drops_httpx_request_lines() -> None:
    import io
    import json
    import logging
    import warnings

    from atlas.runtime.logs import configure_logging

    stream = io.StringIO()
    pipeline = configure_logging("INFO", "json", stream=stream)
    key = "0f8c2b9e-1d4a-4c6b-9e3f-7a5d2c1b0e9f"
    try:
        logging.getLogger("httpx").info('HTTP Request: PUT http://node/v1/users/%s "HTTP/1.1 200 OK"', key)
        logging.getLogger("atlas.test").warning("key %s failed via /bot123456:AAEhBP0av28-secret/x", key)
        batch_fields = {"keys": [key, {"node": "a", "uuid": key}], "n": 2}
        logging.getLogger("atlas.test").info("batch", extra=batch_fields)
        try:
            raise ValueError(f"uuid {key.upper()} refused")
        except ValueError:
            logging.getLogger("atlas.test").exception("crashed")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(
                "Detected unknown update type.\nSeems like Telegram Bot API was updated\n"
                'Update: {"update_id": 42, "message": {"text": "my secret text"}}',
                RuntimeWarning,
                stacklevel=1,
            )
    finally:
        pipeline.stop()
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON, the warning's included
    text = stream.getvalue()
    assert key not in text and key.upper() not in text
    assert "AAEhBP0av28" not in text and "my secret text" not in text
    assert not any(r.get("logger") == "httpx" for r in records)
    masked = next(r for r in records if r["event"].startswith("key "))
    assert masked["event"] == "key <uuid> failed via /bot<redacted>/x"
    batch = next(r for r in records if r["event"] == "batch")  # structure kept, strings masked
    assert batch["keys"] == ["<uuid>", {"node": "a", "uuid": "<uuid>"}] and batch["n"] == 2
    crashed = next(r for r in records if r["event"] == "crashed")
    assert "uuid <uuid> refused" in crashed["exception"]
    warned = next(r for r in records if r.get("category") == "RuntimeWarning")
    assert warned["event"] == "Detected unknown update type." and warned["update_id"] == 42


def test_a_url_setting_that_is_not_a_url_is_refused_by_name() -> None:
    import pytest

    from atlas.runtime.settings import SettingsError

    with pytest.raises(SettingsError, match=r"ATLAS_SUPPORT_URL=.*must be an http"):
        load_settings(support_url="@atlas_support")
    with pytest.raises(SettingsError, match=r"ATLAS_PUBLIC_BASE_URL"):
        load_settings(public_base_url="vpn.example.com")
    assert load_settings(support_url="https://t.me/atlas_support").support_url == "https://t.me/atlas_support"


async def test_the_real_tree_is_trios_task_tree(
    mock_clock: trio.testing.MockClock, bridge: None, fresh_database: str
) -> None:
    """Every actor of ``atlas run``'s tree is a task under the root supervisor, at its path."""
    mock_clock.autojump_threshold = 1.0  # real sockets in flight: jump only when truly idle
    settings = load_settings(database_url=fresh_database, http_port=0, seed=7)
    services = make_services(settings)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                serve_tree, services, fresh_database, stop=stop, extra_workers=[Actor("idle").child_spec()]
            )
        )
        root_task, tree = supervision_tasks("root")
        children = [c for sup in services.supervisors for c in sup.statistics().children]
        paths = [c.path for c in children]
        assert {"root/storage", "root/web", "root/workers", "root/workers/renewal"} <= set(paths)
        assert "root/workers/idle" in paths and all(c.state.value == "running" for c in children)
        for path in paths:
            parent = parent_task(tree[path])
            assert parent is not None and parent.name == path.rsplit("/", 1)[0], path
        # The web server's own tasks live under the web child, not beside the tree.
        assert any(parent_task(t) is not None for t in walk(tree["root/web"]) if t is not tree["root/web"])
        # Outside the tree: only the plumbing that holds the root (serve_tree, run_root's waiter).
        assert atlas_tasks_outside(root_task) == [
            "atlas.runtime.app.serve_tree",
            "atlas.runtime.app.serve_tree.<locals>._root",
            "root: stop request",
        ]
        stop.set()


# Runs `atlas run` as the console script does, and says whether the interpreter ended normally:
# atexit handlers run when main() returns through trio.run, never after os._exit.
_RUN_AND_MARK_EXIT = """
import atexit, sys
atexit.register(lambda: print("interpreter exited normally", flush=True))
from atlas.runtime.cli import main
sys.exit(main(["run"]))
"""


@pytest.mark.slow
async def test_atlas_run_stops_in_reverse_order_on_sigterm_and_exits_0(fresh_database: str) -> None:
    env = {
        **os.environ,
        "ATLAS_DATABASE_URL": fresh_database,
        "ATLAS_HTTP_PORT": "0",
        "ATLAS_LOG_LEVEL": "DEBUG",
        "ATLAS_LOG_FORMAT": "json",
    }
    process = await trio.lowlevel.open_process(
        [PYTHON, "-c", _RUN_AND_MARK_EXIT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    events: list[str] = []
    stderr = b""
    try:
        with trio.fail_after(60):
            buffered = b""
            while "→ started root/workers" not in events:
                chunk = await process.stderr.receive_some()
                assert chunk, f"atlas run ended before the tree was up: {stderr.decode()[-2000:]}"
                stderr += chunk
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                events += [_event(line) for line in lines]
            process.send_signal(signal.SIGTERM)
            rest = b""
            while chunk := await process.stderr.receive_some():
                rest += chunk
            stdout = b""
            while chunk := await process.stdout.receive_some():
                stdout += chunk
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    events += [_event(line) for line in (buffered + rest).split(b"\n")]
    log = (stderr + rest).decode()
    assert code == 0, log[-3000:]
    assert stdout.decode().strip() == "interpreter exited normally"  # not os._exit
    started = [e.split(" ", 2)[2] for e in events if e.startswith("→ started ")]
    stopped = [e.split(" ", 2)[2].split(" (", 1)[0] for e in events if e.startswith("← stopped ")]
    workers = [p for p in started if p.startswith("root/workers/")]
    assert started == ["root/storage", "root/web", *workers, "root/workers"]
    assert stopped == [*reversed(workers), "root/workers", "root/web", "root/storage"]
    assert "exiting now" not in log
    assert "atlas stopped with exit code 0" in log


def _event(line: bytes) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return ""
    return str(record.get("event", "")) if isinstance(record, dict) else ""


async def test_crash_reports_wait_for_the_database_and_go_in_when_it_returns(
    bridge: None, fresh_database: str
) -> None:
    from atlas.storage import Database, DatabaseSettings
    from atlas.storage.crash_reports import latest_crash_reports
    from atlas.supervision import ReportKind

    services = make_services(load_settings(database_url=fresh_database, http_port=0))
    store = services.crash_store
    assert store is not None

    async def report(path: str) -> None:
        composed = services.reporter.compose(
            kind=ReportKind.GAVE_UP,
            path=path,
            error=RuntimeError("database went away"),
            decision="escalate to parent",
            restarts_in_window=6,
            max_restarts=5,
            period=30.0,
            uptime=1.0,
        )
        await services.reporter.report(composed)

    await report("root/workers")  # storage is not up at all
    closed = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=1))
    await closed.close()
    services.db = closed  # up, but its database cannot be reached: DatabaseUnavailable
    await report("root/storage")
    assert [r["path"] for r in store.pending] == ["root/workers", "root/storage"]

    db = await Database.open(DatabaseSettings(dsn=fresh_database, pool_size=2))
    try:
        services.db = db
        assert await store.flush() == 2  # what the storage child does once it is up again
        await report("root")
        stored = await db.run(latest_crash_reports, limit=10)
    finally:
        await db.close()
    assert list(store.pending) == [] and store.dropped == 0
    assert [r.path for r in reversed(stored)] == ["root/workers", "root/storage", "root"]
