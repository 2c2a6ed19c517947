"""The operator's ``/status`` page: the live tree, the budget, the outbox and the latest crash reports,
rendered by the real process and read in a real headless browser (Debian's ``chromium``)."""

from __future__ import annotations

import shutil

import httpx
import trio

from atlas.actors import Actor
from atlas.storage import Database, Tx
from atlas.storage.units import buy_plan_from_balance
from atlas.storage.units.operator_view import operator_view
from atlas.supervision import RestartType
from atlas.web.status_page import render_status_page
from tests._money_support import NOW, RUB, add_user, setup_catalog, topup
from tests._running_tree import running_tree

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Exploder(Actor):
    """Crashes on its first tick with a message that looks like markup, then behaves."""

    def __init__(self) -> None:
        super().__init__("exploder", period=1.0, first_tick=(0.0, 0.0))
        self.exploded = False

    async def tick(self) -> None:
        if not self.exploded:
            self.exploded = True
            raise ValueError("boom <script>alert(1)</script>")


async def _dump_dom(url: str) -> str:
    done = await trio.run_process(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


async def test_the_status_page_shows_the_tree_budget_outbox_and_crashes_in_a_browser(
    bridge: None, fresh_database: str
) -> None:
    exploder = Exploder()
    extra = [exploder.child_spec(restart=RestartType.PERMANENT)]
    async with running_tree(fresh_database, seed=11, extra_workers=extra) as tree:
        services, settings = tree.services, tree.services.settings
        with trio.fail_after(20):
            while services.crash_counts.get("crash", 0) < 1 or exploder.statistics().ticks < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
        base = services.web_url or ""
        async with httpx.AsyncClient(base_url=base) as client:
            as_json = (await client.get("/status.json")).json()
            negotiated = await client.get("/status", headers={"Accept": "application/json"})
            page = await client.get("/status", headers={"Accept": "text/html,application/xhtml+xml"})
        dom = await _dump_dom(f"{base}/status")

    children = {child["path"]: child for child in as_json["supervisors"]}
    renewal = children["root/workers/renewal"]
    assert renewal["state"] == "running" and renewal["mailbox"]["capacity"] >= 1
    assert children["root/workers/exploder"]["last_crash"]["exc_type"] == "ValueError"
    workers = next(s for s in as_json["tree"] if s["path"] == "root/workers")
    assert workers["max_restarts"] == settings.max_restarts
    assert as_json["work"]["outbox"]["pending"] == 0 and as_json["work"]["keys_pending"] == {}
    assert negotiated.headers["content-type"].startswith("application/json")
    assert negotiated.json()["pid"] == as_json["pid"]
    assert page.headers["content-type"].startswith("text/html")
    assert '<meta http-equiv="refresh"' in page.text

    # What the browser shows: every section, every actor, the crash with its frames, and the
    # crash message as text, never as markup.
    for heading in ("Supervision tree", "Connection budget", "Outbox", "Latest crash reports"):
        assert heading in dom
    for path in ("root/storage", "root/web", "root/workers/renewal", "root/workers/exploder"):
        assert path in dom
    assert "boom &lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>" not in dom
    assert "test_status_page.py" in dom  # a frame of the crash


def test_the_page_escapes_everything_and_says_when_storage_is_down() -> None:
    snapshot = {
        "time": "2026-12-01T00:00:00+00:00",
        "pid": 1,
        "uptime_seconds": 3.0,
        "database": None,
        "tree": [{"path": "root", "strategy": "rest_for_one", "restarts_in_window": 6, "max_restarts": 5,
                  "period_seconds": 30.0}],
        "supervisors": [{"path": "root/<i>x&", "name": "x", "state": "restarting", "restarts": 6,
                         "busy_with": None, "heartbeat_age": None, "mailbox": None, "last_crash": None}],
        "work": None,
        "scheduler": {"slow_steps": 0, "longest_step_seconds": 0.0, "longest_step_task": None},
        "crash_reports": [],
    }  # fmt: skip
    html = render_status_page(snapshot)
    assert "root/&lt;i&gt;x&amp;" in html and "<i>x" not in html
    assert "6 / 5 in 30 s" in html
    assert "storage is down" in html and "work counts unavailable" in html
    assert "no crash reports" in html


async def test_keys_pending_are_counted_per_node_in_one_statement(db: Database) -> None:
    """A live key not yet applied anywhere is pending on every node; once applied on one, only on
    the others; a revoked key still present on a node is pending there; counts stop at the cap."""
    await setup_catalog(db)
    for user_id in (1, 2):
        await add_user(db, user_id)
        await topup(db, user_id, 20_000)
        await db.run(
            buy_plan_from_balance, user_id=user_id, plan_code="m1", currency=RUB, promo_code=None,
            idempotency_key=f"buy-{user_id}", now=NOW,
        )

    async def mark(tx: Tx) -> None:
        # User 1's key is live on n1; user 2's key was revoked but n2 still has it.
        await tx.execute(
            """
            INSERT INTO vpn_key_nodes (key_id, node, applied, applied_generation, updated_at)
            SELECT k.id, 'n1', 'present', k.generation, $1 FROM vpn_keys k
            JOIN subscriptions s ON s.id = k.subscription_id WHERE s.user_id = 1
            """,
            NOW,
        )
        await tx.execute(
            """
            UPDATE vpn_keys k SET desired = 'absent', generation = generation + 1 FROM subscriptions s
            WHERE s.id = k.subscription_id AND s.user_id = 2
            """
        )
        await tx.execute(
            """
            INSERT INTO vpn_key_nodes (key_id, node, applied, applied_generation, updated_at)
            SELECT k.id, 'n2', 'present', 1, $1 FROM vpn_keys k
            JOIN subscriptions s ON s.id = k.subscription_id WHERE s.user_id = 2
            """,
            NOW,
        )

    await db.run(mark)
    view = await db.run(operator_view, now=NOW, nodes=["n1", "n2", "n3"])
    assert view.keys_pending == {"n1": 0, "n2": 2, "n3": 1}
    capped = await db.run(operator_view, now=NOW, nodes=["n2"], cap=1)
    assert capped.keys_pending == {"n2": 1}
