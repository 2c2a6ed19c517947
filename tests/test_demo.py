"""``atlas demo`` as a user runs it: a real subprocess with the embedded PostgreSQL, the emulators,
the VPN node (the real V2Ray core when installed) and the whole tree, a crowd of simulated users.

The run must exit 0 with its invariant check passed, every flow exercised at least once, and
every injected fault recovered from; a broken invariant (a test-only flag corrupts one balance
after the crowd) must give a non-zero exit. The summary is read from the run's last line
(``demo-summary: {json}``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from atlas.demo.counts import ShopCounts
from atlas.demo.faults import SCHEDULE, Fault, burst_size
from atlas.demo.options import TARGET_RUN_SECONDS, DemoOptions
from atlas.demo.summary import (
    EXIT_INVARIANT_FAILED,
    EXIT_OK,
    EXIT_TREE_GAVE_UP,
    SUMMARY_PREFIX,
    DemoSummary,
    exit_code,
)
from atlas.demo.tally import FLOWS
from tests._browser import open_browser
from tests._webchat_page import WebChat

ROOT = Path(__file__).resolve().parent.parent
# A bound against a hung run, not a speed requirement: the machine may be busy.
RUN_LIMIT = 900


def _reachable_temp_dir() -> Path:
    # Not under pytest's 0700 base: as root the embedded PostgreSQL runs as its own user, which
    # must reach the data directory (the demo's default, a new temp dir, is made reachable too).
    data_dir = Path(tempfile.mkdtemp(prefix="atlas-test-demo-"))
    data_dir.chmod(0o711)
    return data_dir


WhileRunning = Callable[[str], Awaitable[None]]
"""What a test does with the running demo, given the web chat URL it printed."""


async def run_demo(
    tmp_path: Path, *args: str, while_running: WhileRunning | None = None
) -> tuple[int, dict[str, Any], str]:
    """Run ``python -m atlas demo ARGS`` from the checkout; return (exit code, summary, output).

    ``while_running`` is awaited, as soon as the demo prints its web chat URL, with that URL,
    while the crowd plays (the demo keeps going meanwhile).
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("ATLAS_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"  # the URL lines arrive as printed
    data_dir = _reachable_temp_dir()
    stdout, stderr = bytearray(), bytearray()
    url_seen, webchat = trio.Event(), [""]

    async def read(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
        async for chunk in stream:
            into.extend(chunk)
            if not url_seen.is_set() and (found := re.search(rb"web chat:\s+(\S+)", into)):
                webchat[0] = found.group(1).decode()
                url_seen.set()

    try:
        with trio.fail_after(RUN_LIMIT):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "atlas", "demo", "--data-dir", str(data_dir), *args],
                cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                async with trio.open_nursery() as nursery:
                    assert process.stdout is not None and process.stderr is not None
                    nursery.start_soon(read, process.stdout, stdout)
                    nursery.start_soon(read, process.stderr, stderr)
                    if while_running is not None:
                        await url_seen.wait()
                        await while_running(webchat[0])
                    await process.wait()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    output = stdout.decode() + stderr.decode()
    lines = [line for line in stdout.decode().splitlines() if line.startswith(SUMMARY_PREFIX)]
    assert lines, f"no summary line; exit {process.returncode}; output tail:\n{output[-4000:]}"
    code = process.returncode
    assert code is not None
    return code, json.loads(lines[-1][len(SUMMARY_PREFIX):]), output


async def _chat_through_the_web_page(url: str) -> None:
    """The person running the demo, in chromium: /start, a button press, the bot's reply."""
    async with open_browser() as browser:
        chat = WebChat(await browser.open(url))
        await chat.send("/start")
        await chat.press("❓", within=60)  # Help, in either language
        await chat.wait_for_bot_text("/promo", within=60)  # only the help screen names it


@pytest.mark.slow
async def test_the_demo_runs_every_flow_recovers_from_every_fault_and_passes_its_invariants(
    tmp_path: Path,
) -> None:
    # While the crowd plays, the person running the demo chats with the bot through the web page.
    code, summary, output = await run_demo(
        tmp_path, "--users", "50", "--days", "3", "--seed", "7", while_running=_chat_through_the_web_page
    )
    assert code == 0, output[-4000:]
    assert summary["invariants_ok"] is True and summary["violations"] == []
    assert summary["tree_exit_code"] == 0

    # Every flow happened at least once, as the simulated users saw it in their chats.
    flows = summary["flows"]
    assert set(flows) == set(FLOWS)
    assert [flow for flow in FLOWS if flows[flow] == 0] == [], flows

    # ... and as the database records it.
    counts = summary["counts"]
    assert counts["users"] >= 50 and counts["referred"] > 0
    assert counts["paid_stars"] > 0 and counts["paid_cryptopay"] > 0, counts
    assert counts["renewals"] > 0 and counts["promo_redemptions"] > 0 and counts["topups"] > 0, counts
    assert counts["keys_revoked"] > 0 and counts["broadcasts_done"] == 1, counts
    assert summary["messages"] > counts["users"]

    # Every fault was injected, ended, and recovered from; the crashed actor was restarted.
    faults = {fault["name"]: fault for fault in summary["faults"]}
    assert set(faults) == {"bot_api_429", "node_outage", "cryptopay_outage", "intake_crash"}
    for name, fault in faults.items():
        assert fault["injected"] and fault["ended"] and fault["recovered"], (name, fault)
    assert summary["restarts_by_actor"].get("root/telegram/intake", 0) >= 1
    assert summary["restarts"] >= 1 and summary["crash_reports"] >= 1


@pytest.mark.slow
async def test_a_broken_invariant_makes_the_demo_exit_non_zero(tmp_path: Path) -> None:
    # A hidden, test-only flag adds one minor unit to one balance after the crowd: the audit must
    # name it and the exit code must say so.
    code, summary, output = await run_demo(
        tmp_path, "--users", "3", "--days", "1", "--seed", "3", "--corrupt-balance-for-test"
    )
    assert code == EXIT_INVARIANT_FAILED, output[-4000:]
    assert summary["invariants_ok"] is False
    assert any("balance differs from its ledger" in v for v in summary["violations"]), summary["violations"]


def _summary(*, invariants_ok: bool, tree_exit_code: int) -> DemoSummary:
    counts = ShopCounts(**{name: 0 for name in ShopCounts.__dataclass_fields__})
    return DemoSummary(
        users=1, counts=counts, flows={}, messages=0, restarts=0, crash_reports=0, restarts_by_actor={},
        faults=[], invariants_ok=invariants_ok, violations=[] if invariants_ok else ["broken"],
        audit_counts={}, tree_exit_code=tree_exit_code, unanswered=0, node="emulator",
    )  # fmt: skip


def test_the_exit_code_says_whether_the_invariants_held_and_the_tree_stopped_cleanly() -> None:
    assert exit_code(_summary(invariants_ok=True, tree_exit_code=0)) == EXIT_OK
    assert exit_code(_summary(invariants_ok=False, tree_exit_code=0)) == EXIT_INVARIANT_FAILED
    assert exit_code(_summary(invariants_ok=False, tree_exit_code=1)) == EXIT_INVARIANT_FAILED
    assert exit_code(_summary(invariants_ok=True, tree_exit_code=1)) == EXIT_TREE_GAVE_UP


def test_the_default_speed_makes_the_run_last_its_target_and_every_fault_ends_early_enough() -> None:
    options = DemoOptions(days=3)
    assert options.business_speed() * TARGET_RUN_SECONDS == 3 * 86_400
    assert DemoOptions(days=3, speed=100.0).business_speed() == 100.0
    with pytest.raises(ValueError, match="--users"):
        DemoOptions(users=0)
    # Each fault is over with a quarter of the run left, so that its recovery can be seen.
    assert all(item.at + item.lasts <= 0.75 for item in SCHEDULE)
    assert {item.fault for item in SCHEDULE} == set(Fault)
    assert [burst_size(n) for n in (1, 50, 200, 10_000)] == [3, 10, 40, 40]
