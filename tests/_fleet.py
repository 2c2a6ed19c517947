"""Real ``atlas run`` processes on one database, for the scale-out and kill tests.

:class:`AtlasProcess` starts ``python -m atlas run`` with ``ATLAS_*`` settings, reads its JSON log
lines as they come (so a test can wait for "this process leads", say) and can be SIGKILLed or
stopped with SIGTERM. The emulators (Bot API, node, Crypto Pay) run in the test process and are
reached by the Atlas processes over real HTTP.

Every process gets ``ATLAS_SEED=FAST_SEED``: the seeded first-tick delays of the batch workers are
then short (renewal 5.9 s, reminders 7.9 s, expiry 1.5 s, payment watcher 1.7 s after start;
drawn with :func:`atlas.clock.seeded_random` as the actors draw them), so a process does its work
within seconds of starting instead of up to a minute later. Two processes with one seed tick at
the same moments, which makes them compete for the same rows: what a scale-out test wants.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
FAST_SEED = 1225651
NODE_TOKEN = "fleet-node-token-0123456789abcdef"
CRYPTOPAY_TOKEN = "4242:FLEET-cryptopay-token"
WEBHOOK_SECRET = "fleet_webhook_secret_42"
ADMIN_ID = 900


def write_nodes_file(path: Path, nodes: Mapping[str, str]) -> Path:
    """Write a nodes TOML file naming each ``name -> agent_url`` (plain links, no REALITY)."""
    blocks = [
        f'[[nodes]]\nname = "{name}"\nagent_url = "{url}"\ntoken = "{NODE_TOKEN}"\n'
        f'public_host = "127.0.0.1"\nport = 443\nsecurity = "none"\n'
        for name, url in nodes.items()
    ]
    path.write_text("\n".join(blocks))
    return path


def atlas_env(database: str, **settings: object) -> dict[str, str]:
    """The environment of an ``atlas run``: ``settings`` become ``ATLAS_<NAME>`` (upper-cased)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ATLAS_DATABASE_URL": database,
        "ATLAS_HTTP_PORT": "0",
        "ATLAS_LOG_FORMAT": "json",
        "ATLAS_LOG_LEVEL": "INFO",
        "ATLAS_SEED": str(FAST_SEED),
        "ATLAS_DB_POOL_SIZE": "8",
    }
    for name, value in settings.items():
        env[f"ATLAS_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@dataclass
class AtlasProcess:
    """One ``atlas run`` subprocess and the JSON log lines it wrote so far."""

    name: str
    process: trio.Process
    events: list[dict[str, Any]] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)
    tail: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        """True until the process has exited."""
        return self.process.returncode is None

    def saw(self, predicate: Callable[[dict[str, Any]], bool]) -> bool:
        """Whether any log line so far satisfies ``predicate``."""
        return any(predicate(event) for event in self.events)

    def count(self, fragment: str) -> int:
        """How many log lines so far contain ``fragment`` in their message."""
        return sum(1 for event in self.events if fragment in str(event.get("event", "")))

    async def wait_for_log(self, fragment: str, within: float) -> dict[str, Any]:
        """The first log line whose message contains ``fragment``; fails after ``within`` seconds."""
        with trio.move_on_after(within):
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if fragment in str(event.get("event", "")):
                        return event
                seen = len(self.events)
                if not self.alive:
                    break
                self._changed = trio.Event()
                await self._changed.wait()
        raise AssertionError(
            f"{self.name}: no log line with {fragment!r} within {within}s:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the process wrote (for failure messages)."""
        return "\n".join(self.tail[-lines:])

    async def read_logs(self) -> None:
        """Read stderr until it closes, parsing each JSON line (run in a nursery)."""
        assert self.process.stderr is not None
        buffered = b""
        while chunk := await self.process.stderr.receive_some(65536):
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.tail.append(text)
                del self.tail[:-400]
                try:
                    record = json.loads(text)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    self.events.append(record)
            self._changed.set()
        self._changed.set()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power cut or the OOM killer."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self, within: float = 30.0) -> int:
        """SIGTERM and wait for the exit code (SIGKILL after ``within`` seconds)."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(within):
            return await self.process.wait()
        self.kill()
        return await self.process.wait()


async def start_atlas(nursery: trio.Nursery, name: str, env: Mapping[str, str]) -> AtlasProcess:
    """Start ``python -m atlas run`` with ``env``; its logs are read by a task in ``nursery``."""
    process = await trio.lowlevel.open_process(
        [PYTHON, "-m", "atlas", "run"], env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        cwd=str(REPO),
    )  # fmt: skip
    atlas = AtlasProcess(name, process)
    nursery.start_soon(atlas.read_logs, name=f"logs-{name}")
    return atlas


async def wait_until(predicate: Callable[[], Any], within: float, what: str, every: float = 0.25) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; fail after ``within`` s."""
    with trio.move_on_after(within):
        while True:
            result = predicate()
            if hasattr(result, "__await__"):
                result = await result
            if result:
                return result
            await trio.sleep(every)
    raise AssertionError(f"not within {within}s: {what}")
