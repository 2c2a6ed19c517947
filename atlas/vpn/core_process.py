"""Run a real Xray/V2Ray core as a child process (tests and the demo; production uses systemd).

``await nursery.start(run_core, argv, ready=[("127.0.0.1", api_port), ...])`` returns the
``trio.Process`` once every listed port accepts TCP connections; cancelling the surrounding scope
stops the core (SIGTERM, then SIGKILL after trio's grace period). The core's output is kept as a
bounded tail so a failure can say what the core complained about.

Errors::

    CoreProcessError        the core could not be started or run
    ├── CoreBinaryMissing   the executable is not installed
    └── CoreExited          it exited (before becoming ready, or later)
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Final

import trio

from atlas.vpn.wire.messages import Flavour

_TAIL_BYTES: Final = 8192
_POLL_INTERVAL: Final = 0.02


class CoreProcessError(RuntimeError):
    """The core process could not be started or run."""


class CoreBinaryMissing(CoreProcessError):
    """The core's executable is not on PATH."""


class CoreExited(CoreProcessError):
    """The core process exited; the message carries its exit code and the tail of its output."""


def find_core_binary(name: str = "v2ray") -> str:
    """Return the path of the core executable ``name``, or raise :class:`CoreBinaryMissing`."""
    found = shutil.which(name)
    if found is None:
        raise CoreBinaryMissing(
            f"{name!r} is not installed: run the README set-up (Debian/Ubuntu: apt-get install -y v2ray)"
        )
    return found


def core_command(binary: str, config_path: Path, flavour: Flavour = "v2ray") -> list[str]:
    """The command line that runs ``binary`` with ``config_path`` (V2Ray 4.x and Xray differ)."""
    if flavour == "v2ray":
        return [binary, "-config", str(config_path)]
    return [binary, "run", "-c", str(config_path)]


class _Tail:
    """The last few KiB a process wrote, for error messages."""

    def __init__(self) -> None:
        self.data = b""
        self.done = trio.Event()

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        try:
            while chunk := await stream.receive_some(4096):
                self.data = (self.data + chunk)[-_TAIL_BYTES:]
        finally:
            self.done.set()

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace").strip()


async def _accepts(host: str, port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def run_core(
    argv: Sequence[str],
    *,
    ready: Sequence[tuple[str, int]],
    startup_timeout: float = 10.0,
    task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the core until cancelled; ``task_status.started`` gets the process once ``ready`` ports accept.

    Raises :class:`CoreExited` if the core exits (before or after becoming ready) and
    ``trio.TooSlowError`` if the ports do not accept within ``startup_timeout`` seconds (the
    process is stopped in both cases).
    """
    tail = _Tail()
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                check=False,
            )
        )
        assert process.stdout is not None
        nursery.start_soon(tail.drain, process.stdout)
        with trio.fail_after(startup_timeout):
            for host, port in ready:
                # Polling is the only readiness signal a foreign process gives; it is bounded above.
                while not await _accepts(host, port):
                    if process.poll() is not None:
                        break
                    await trio.sleep(_POLL_INTERVAL)
                if process.poll() is not None:
                    break
        if process.returncode is None:
            task_status.started(process)
        await process.wait()
        # Let the drain task read the last of the output before we quote it.
        with trio.move_on_after(1.0):
            await tail.done.wait()
        raise CoreExited(f"{argv[0]} exited with code {process.returncode}: {tail.text()[-2000:]}")


class ManagedCore:
    """A core process that can be stopped and started again from the same config (tests, demo).

    ``start`` runs :func:`run_core` in ``nursery`` and returns once the ``ready`` ports accept;
    ``stop`` cancels it and returns once the process is gone. If the core dies on its own,
    :class:`CoreExited` propagates into ``nursery`` (loudly, by design).
    """

    def __init__(self, argv: Sequence[str], ready: Sequence[tuple[str, int]]) -> None:
        self.argv = list(argv)
        self.ready = list(ready)
        self.process: trio.Process | None = None
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    async def start(self, nursery: trio.Nursery, *, startup_timeout: float = 10.0) -> None:
        """Start the core; raises ``RuntimeError`` if it is already running."""
        if self._scope is not None:
            raise RuntimeError("core is already running")
        scope = trio.CancelScope()
        stopped = trio.Event()

        async def _run(*, task_status: trio.TaskStatus[trio.Process]) -> None:
            try:
                with scope:
                    await run_core(
                        self.argv, ready=self.ready, startup_timeout=startup_timeout, task_status=task_status
                    )
            finally:
                stopped.set()

        self._scope, self._stopped = scope, stopped
        try:
            self.process = await nursery.start(_run)
        except BaseException:
            self._scope = None
            raise

    async def stop(self) -> None:
        """Stop the core (SIGTERM) and wait until it has exited; a no-op if it is not running."""
        if self._scope is None:
            return
        self._scope.cancel()
        await self._stopped.wait()
        self._scope = None
        self.process = None
