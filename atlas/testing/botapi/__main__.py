"""``python -m atlas.testing.botapi``: the emulator in its own process, offering load and measuring.

A benchmark's fake Telegram must not share a scheduler or a core with the bot it measures, so this
runs the emulator alone: it serves the Bot API on ``--port``, creates ``--users`` interactive users
and ``--recipients`` broadcast recipients, waits for the bot's first ``getUpdates``, has every user
send ``/start`` once (the warm-up, paced at ``--warm-up-rate``), then runs the ``--steps``
(``rate:seconds,...``). In each step a feeder queues updates at the offered rate on trio's clock
(15 % ``/start``, 55 % presses of the ``--press`` buttons, 30 % text; users drawn with ``--seed``
among those not waiting for a reply and not answered within the last ``--cool-down`` seconds, as
people read before they tap again).

It measures itself, so its numbers do not depend on the bot process:

* **first-reply latency** of each update: from queueing it to the first record (a message or an
  edit) the bot makes in that chat afterwards;
* **handled**: updates answered by the window's end plus ``--grace`` seconds; a step is
  *sustained* when handled ≥ 0.97 × offered and the p99 over all offered (unanswered ones count
  as infinitely late) is under 1 s;
* **broadcast sends per second**: accepted ``send*`` calls to recipients, per calendar second of
  the window, and the seconds over ``--send-limit``.

Protocol (JSON lines on stdout, one event each): ``serving`` (with the ``url``), ``bot-up``,
``warmed``, then per step ``ready`` (the bot has answered everything offered so far, or
``--settle`` ran out: ``settled``), ``start``, ``closed`` (the window just ended), ``result``;
finally ``done`` (after settling too). With ``--controlled`` it reads ``go``, ``skip`` or ``stop``
from stdin before each step (the harness prepares the step meanwhile) and exits at end of input after
``done``; otherwise it runs the steps back to back and exits.

    python -m atlas.testing.botapi --port 0 --users 1000 --press m:sub --press m:plans \\
        --steps 50:10,100:10 [--recipients 20000] [--controlled]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import trio

from atlas.testing.botapi.emulator import DEFAULT_TOKEN, BotApiEmulator
from atlas.testing.botapi.errors import NothingInTime, ScriptError
from atlas.testing.botapi.rates import max_in_window
from atlas.testing.botapi.records import ChatRecord
from atlas.testing.botapi.users import EmulatedUser

TEXTS = ("hello", "how do I connect?", "price?", "vpn not working", "спасибо", "???")
SUSTAINED_HANDLED = 0.97
SUSTAINED_P99 = 1.0
USER_TRIES = 32


@dataclass
class _Step:
    """What one step offered and what came back."""

    index: int
    rate: float
    start: float = 0.0
    end: float = 0.0
    offered: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    replied_in_window: int = 0
    no_idle_user: int = 0


class LoadDriver:
    """Offers updates, clocks first replies, counts broadcast sends; one instance per process."""

    def __init__(
        self, emulator: BotApiEmulator, users: list[EmulatedUser], args: argparse.Namespace
    ) -> None:
        self.emulator = emulator
        self.users = users
        self.args = args
        self.rng = random.Random(args.seed)
        self.interactive = {user.id for user in users}
        # chat → (queued at, step) of updates not answered yet, oldest first.
        self.waiting: dict[int, deque[tuple[float, _Step | None]]] = {}
        self.last_record: dict[int, float] = {}
        self.step: _Step | None = None
        emulator.add_record_listener(self._on_record)

    def _on_record(self, record: ChatRecord) -> None:
        chat = record.chat_id
        if chat not in self.interactive:
            return
        self.last_record[chat] = record.time
        queue = self.waiting.get(chat)
        if not queue:
            return  # a second message of the same answer (``/start`` sends two)
        queued, step = queue.popleft()
        if step is not None:
            step.latencies.append(record.time - queued)
            if record.time < step.end or step.end == 0.0:
                step.replied_in_window += 1

    def unanswered(self) -> int:
        """Updates queued and not answered yet."""
        return sum(len(queue) for queue in self.waiting.values())

    def _pick_user(self, now: float, step: _Step | None) -> EmulatedUser:
        cool = self.args.cool_down
        for _ in range(USER_TRIES):
            user = self.rng.choice(self.users)
            if not self.waiting.get(user.id) and now - self.last_record.get(user.id, -math.inf) >= cool:
                return user
        if step is not None:
            step.no_idle_user += 1
        return self.rng.choice(self.users)

    def _offer(self, user: EmulatedUser, step: _Step | None) -> None:
        roll = self.rng.random()
        kind = "text"
        if roll < 0.15:
            user.send_command("/start")
            kind = "/start"
        elif roll < 0.70:
            data = self.rng.choice(self.args.press)
            try:
                user.press(data)
                kind = "press"
            except ScriptError:  # not on the user's screen: they open the menu instead
                user.send_command("/menu")
                kind = "/menu"
        else:
            user.send_text(self.rng.choice(TEXTS))
        self.waiting.setdefault(user.id, deque()).append((trio.current_time(), step))
        if step is not None:
            step.offered[kind] += 1

    async def warm_up(self) -> dict[str, Any]:
        """Every user sends ``/start`` once, paced; wait (bounded) until every one is answered."""
        begin = trio.current_time()
        for n, user in enumerate(self.users):
            await trio.sleep_until(begin + n / self.args.warm_up_rate)
            user.send_command("/start")
            self.waiting.setdefault(user.id, deque()).append((trio.current_time(), None))
        settled = await self.settle()
        seconds = round(trio.current_time() - begin, 2)
        return {"users": len(self.users), "seconds": seconds, "settled": settled}

    async def settle(self) -> bool:
        """Wait up to ``--settle`` s for the bot to answer everything queued; True if it did."""
        with trio.move_on_after(self.args.settle):
            while self.unanswered() or self.emulator.statistics().pending_updates:  # noqa: ASYNC110 - bounded
                await trio.sleep(0.05)
            await trio.sleep(self.args.cool_down)  # the last answers' second messages
            return True
        return False

    async def run_step(self, step: _Step, seconds: float) -> None:
        """Offer ``step.rate`` updates/s for ``seconds``; a late feeder catches up in a burst."""
        self.step = step
        step.start = trio.current_time()
        step.end = step.start + seconds
        n = 0
        while True:
            due = step.start + n / step.rate
            if due >= step.end:
                break
            await trio.sleep_until(due)
            now = trio.current_time()
            if now >= step.end:
                break
            self._offer(self._pick_user(now, step), step)
            n += 1
        await trio.sleep_until(step.end)

    def result(self, step: _Step, recipients: set[int]) -> dict[str, Any]:
        """The step's measures, after the grace period."""
        offered = sum(step.offered.values())
        handled = len(step.latencies)
        ordered = sorted(step.latencies)
        censored = ordered + [math.inf] * (offered - handled)
        window = step.end - step.start
        stamps = [s for s in self.emulator.send_stamps if step.start <= s.time < step.end]
        broadcast = [s.time for s in stamps if s.accepted and s.chat_id in recipients]
        per_second = [0] * max(1, math.ceil(window))
        for t in broadcast:
            per_second[min(len(per_second) - 1, int(t - step.start))] += 1
        p50_all, p99 = _nearest_rank(censored, 50), _nearest_rank(censored, 99)
        return {
            "step": step.index,
            "rate": step.rate,
            "seconds": round(window, 3),
            "offered": offered,
            "offered_by_kind": dict(step.offered),
            "handled": handled,
            "handled_in_window": step.replied_in_window,
            "p50": _nearest_rank(ordered, 50),
            "p90": _nearest_rank(ordered, 90),
            "p99": _nearest_rank(ordered, 99),
            "max": ordered[-1] if ordered else None,
            # Over every offered update, unanswered ones infinitely late (JSON null then).
            "p50_all_offered": None if p50_all is None or math.isinf(p50_all) else p50_all,
            "p99_all_offered": None if p99 is None or math.isinf(p99) else p99,
            "sustained": offered > 0
            and handled >= SUSTAINED_HANDLED * offered
            and p99 is not None
            and p99 < SUSTAINED_P99,
            "no_idle_user": step.no_idle_user,
            "broadcast_sent": len(broadcast),
            "broadcast_per_s": len(broadcast) / window if window else 0.0,
            "broadcast_per_second": per_second,
            "broadcast_max_1s": max_in_window(broadcast, 1.0),
            "broadcast_over_rate_seconds": sum(1 for n in per_second if n > self.args.send_limit),
            "all_sends_max_1s": max_in_window((s.time for s in stamps), 1.0),
            "served_429": self.emulator.served_429,
        }


def _nearest_rank(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class _Commands:
    """Lines from stdin, read without blocking the scheduler."""

    def __init__(self) -> None:
        self._stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        self._buffer = b""

    async def next(self) -> str | None:
        """The next line without its newline; None at end of input."""
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()


def _parse_steps(text: str) -> list[tuple[float, float]]:
    steps = []
    for part in text.split(","):
        rate, _, seconds = part.partition(":")
        steps.append((float(rate), float(seconds or 10)))
        if not (steps[-1][0] > 0 and steps[-1][1] > 0):
            raise argparse.ArgumentTypeError(f"a step is rate:seconds, both positive; got {part!r}")
    return steps


async def _main(args: argparse.Namespace) -> None:
    emulator = BotApiEmulator(args.token, bot_username=args.bot_username, enforce_limits=False)
    users = [
        emulator.add_user(args.user_base + n, f"U{n}", language_code="en" if n % 2 else "ru")
        for n in range(1, args.users + 1)
    ]
    recipients = {args.recipient_base + n for n in range(1, args.recipients + 1)}
    for chat in sorted(recipients):
        emulator.add_user(chat, "B")
    driver = LoadDriver(emulator, users, args)
    commands = _Commands() if args.controlled else None
    async with trio.open_nursery() as nursery:
        url = await nursery.start(emulator.serve, args.host, args.port)
        _emit("serving", url=url, pid=os.getpid())
        try:
            await emulator.wait_for_long_poll(within=args.bot_timeout)
        except NothingInTime:
            _emit("error", message=f"no getUpdates within {args.bot_timeout} s")
            raise SystemExit(2) from None
        _emit("bot-up")
        _emit("warmed", **await driver.warm_up())
        for index, (rate, seconds) in enumerate(args.steps):
            settled = await driver.settle()
            _emit("ready", step=index, rate=rate, seconds=seconds, settled=settled)
            command = "go" if commands is None else await commands.next()
            if command == "skip":
                continue
            if command != "go":
                break
            step = _Step(index, rate)
            _emit("start", step=index)
            await driver.run_step(step, seconds)
            _emit("closed", step=index)
            await trio.sleep(args.grace)
            _emit("result", **driver.result(step, recipients))
        _emit("done", settled=await driver.settle(), calls=dict(emulator.calls))
        if commands is not None:
            while await commands.next() is not None:  # serve until the harness closes our input
                pass
        nursery.cancel_scope.cancel()


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m atlas.testing.botapi", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--bot-username", default="atlas_emulated_bot")
    parser.add_argument("--users", type=int, default=1000, help="interactive users")
    parser.add_argument("--user-base", type=int, default=1_000_000, help="user ids are base+1 ...")
    parser.add_argument("--recipients", type=int, default=0, help="broadcast recipients (not interactive)")
    parser.add_argument("--recipient-base", type=int, default=5_000_000)
    parser.add_argument("--press", action="append", default=[], help="callback_data of a menu button")
    parser.add_argument("--steps", type=_parse_steps, default=_parse_steps("100:30"), help="rate:seconds,...")
    parser.add_argument("--warm-up-rate", type=float, default=100.0)
    parser.add_argument("--cool-down", type=float, default=1.0, help="s a user reads before acting again")
    parser.add_argument("--grace", type=float, default=2.0, help="s after a window for late answers")
    parser.add_argument("--settle", type=float, default=60.0, help="most s to wait for a backlog to clear")
    parser.add_argument("--send-limit", type=int, default=30, help="broadcast sends allowed per second")
    parser.add_argument("--bot-timeout", type=float, default=120.0, help="most s to wait for getUpdates")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--controlled", action="store_true", help="wait for go/stop on stdin per step")
    return parser


def main() -> None:
    """Parse the command line and run the emulator until its steps are done."""
    args = build_parser().parse_args()
    if not args.press:
        args.press = ["m:sub", "m:plans", "m:topup", "m:ref", "m:help", "m:menu"]
    trio.run(_main, args)


if __name__ == "__main__":
    main()
