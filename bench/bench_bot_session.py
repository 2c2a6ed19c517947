"""Benchmark: CPU per Bot API call of the Bot session, against aiogram's own aiohttp session.

The Bot session was the largest single CPU cost of ``atlas run`` under load (issue 9), so its
transport is measured by itself: ``--calls`` ``sendMessage`` calls, ``--concurrency`` at a time,
against the Bot API emulator in its own process (``python -m atlas.testing.botapi``), each client
in a fresh process of its own, measuring its own CPU (``resource.getrusage``, user + system) over
the calls only (start-up and warm-up excluded). Rounds interleave the clients; the report gives
the median per client and the ratio to aiogram's ``AiohttpSession`` on a stdlib
``SelectorEventLoop`` (its process never imports ``atlas``, ``trio`` or ``trio_asyncio``).

Clients:

* ``aiohttp``: plain aiogram 3, ``AiohttpSession``, asyncio (what the peer bot uses);
* ``atlas``: :class:`atlas.telegram.session.GuardedHttpxSession` on trio (the tree's code);
* ``file:PATH``: a session module from a file (e.g. an older ``session.py`` from git), to compare
  an alternative: ``git show <rev>:atlas/telegram/session.py > /tmp/old_session.py`` then
  ``--clients aiohttp,atlas,file:/tmp/old_session.py``.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_bot_session.py [--rounds 5] [--calls 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# _harness (trio, atlas) is imported by the parent only: the aiohttp child must never import it.

USER_BASE = 1_000_000
TOKEN = "123456:bench-token"


def _aiohttp_client(url: str, calls: int, concurrency: int) -> dict[str, float | str]:
    """Plain aiogram + aiohttp on a stdlib loop; must not import atlas, trio or trio_asyncio."""
    import asyncio
    import resource

    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    async def main() -> float:
        session = AiohttpSession(api=TelegramAPIServer.from_base(url))
        bot = Bot(TOKEN, session=session)
        queue = list(range(calls))

        async def worker(n: int) -> None:
            while queue:
                queue.pop()
                await bot.send_message(USER_BASE + 1 + n, "benchmark")

        await asyncio.gather(*(worker(n) for n in range(concurrency)))  # warm-up: pools, caches
        queue.extend(range(calls))
        start = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        end = resource.getrusage(resource.RUSAGE_SELF)
        await session.close()
        return (end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        loop_type = type(runner.get_loop()).__name__
        cpu = runner.run(main())
    leaked = {"atlas", "trio", "trio_asyncio"} & set(sys.modules)
    if leaked:
        raise SystemExit(f"the baseline imported {sorted(leaked)}")
    return {"cpu": cpu, "loop": loop_type}


def _trio_client(url: str, calls: int, concurrency: int, module_file: str | None) -> dict[str, float | str]:
    """Atlas's session class (or one loaded from ``module_file``) on trio."""
    import importlib.util
    import resource

    import trio
    from aiogram import Bot
    from aiogram.client.telegram import TelegramAPIServer

    if module_file is None:
        from atlas.telegram import session as module
    else:
        spec = importlib.util.spec_from_file_location("bench_session_alternative", module_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

    async def main() -> float:
        session = module.GuardedHttpxSession(api=TelegramAPIServer.from_base(url))
        bot = Bot(TOKEN, session=session)
        queue = list(range(calls))

        async def worker(n: int) -> None:
            while queue:
                queue.pop()
                await bot.send_message(USER_BASE + 1 + n, "benchmark")

        for _ in range(2):  # warm-up, then measured
            if _ == 1:
                queue.extend(range(calls))
                start = resource.getrusage(resource.RUSAGE_SELF)
            async with trio.open_nursery() as nursery:
                for n in range(concurrency):
                    nursery.start_soon(worker, n)
        end = resource.getrusage(resource.RUSAGE_SELF)
        await session.close()
        return (end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)

    return {"cpu": trio.run(main), "loop": "trio"}


def _client_round(client: str, url: str, calls: int, concurrency: int) -> float:
    import _harness as h

    env = dict(os.environ)
    if client == "aiohttp":
        env.pop("PYTHONPATH", None)  # the baseline never sees the worktree's atlas
    else:
        env["PYTHONPATH"] = str(h.REPO)
    argv = [h.PYTHON, __file__, "--child", client, "--url", url, "--calls", str(calls),
            "--concurrency", str(concurrency)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False,
                         cwd="/")
    if out.returncode != 0:
        raise SystemExit(f"{client} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["cpu"]) / calls


def main() -> None:
    """Start the emulator, run the interleaved client rounds, print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--clients", default="aiohttp,atlas")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "aiohttp":
            result = _aiohttp_client(args.url, args.calls, args.concurrency)
        else:
            path = args.child.removeprefix("file:") if args.child.startswith("file:") else None
            result = _trio_client(args.url, args.calls, args.concurrency, path)
        print(json.dumps(result))
        return

    import _harness as h

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    load_before = h.load_line()
    emulator = subprocess.Popen(
        [h.PYTHON, "-m", "atlas.testing.botapi", "--token", TOKEN, "--users", str(args.concurrency),
         "--user-base", str(USER_BASE), "--bot-timeout", "3600", "--send-limit", "1000000"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(h.REPO)),
    )
    assert emulator.stdout is not None
    try:
        url = json.loads(emulator.stdout.readline())["url"]
        per_call: dict[str, list[float]] = {c: [] for c in clients}
        for round_number in range(args.rounds):
            order = clients if round_number % 2 == 0 else list(reversed(clients))
            for client in order:
                per_call[client].append(_client_round(client, url, args.calls, args.concurrency))
            print(f"round {round_number + 1}: " + ", ".join(
                f"{c} {per_call[c][-1] * 1e6:.0f} µs" for c in clients), file=sys.stderr)
    finally:
        emulator.terminate()
        emulator.wait(timeout=20)
    print(h.machine_line().replace(h.load_line(), f"{load_before} before, {h.load_line()} after"))
    print(f"command: bench/bench_bot_session.py {' '.join(sys.argv[1:])}")
    print(f"{args.calls} sendMessage calls × {args.rounds} rounds, {args.concurrency} in flight, "
          "CPU of the client process over the calls")
    print()
    print("| client | CPU per call, median | per round | / aiohttp |")
    print("|---|---|---|---|")
    base = h.median(per_call[clients[0]])
    for client in clients:
        values = per_call[client]
        rounds = ", ".join(f"{v * 1e6:.0f}" for v in values)
        print(f"| {Path(client).name if client.startswith('file:') else client} | "
              f"{h.median(values) * 1e6:.0f} µs | {rounds} | {h.ratio(h.median(values), base)} |")


if __name__ == "__main__":
    main()
