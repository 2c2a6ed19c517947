"""Benchmark: what the scheduler instrument costs per task step, against trio with no instrument.

Each variant runs in its own process (the baseline imports trio only, never atlas), in interleaved
rounds (baseline, instrument, step-hooks, baseline, ...), so machine noise hits them alike:

- ``baseline``: plain trio;
- ``instrument``: ``atlas.supervision.SlowStepInstrument`` installed;
- ``step-hooks``: an instrument that times every step with ``before/after_task_step`` (what the
  SlowStepInstrument did before), for comparison.

Two workloads: ``many`` (100 tasks each checkpointing ``--steps`` times: large batches) and
``pingpong`` (two tasks handing items over an unbuffered channel: batches of one or two steps, the
worst case for per-batch hooks). Reported: CPU seconds per million steps (process time, which load
on other cores disturbs less than wall time), medians over rounds, and the ratio to the baseline.

    .venv/bin/python bench/bench_instrument.py [--rounds 7] [--steps 2000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time, logging
import trio

variant, workload, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])

class StepHooks(trio.abc.Instrument):
    def __init__(self):
        self.started = None
        self.longest = 0.0
    def before_task_step(self, task):
        self.started = time.perf_counter()
    def after_task_step(self, task):
        if self.started is not None:
            elapsed = time.perf_counter() - self.started
            self.started = None
            if elapsed > self.longest:
                self.longest = elapsed

def make():
    if variant == "baseline":
        return None
    if variant == "step-hooks":
        return StepHooks()
    from atlas.supervision import SlowStepInstrument
    return SlowStepInstrument(0.1, logging.getLogger("bench"))

async def worker(n):
    for _ in range(n):
        await trio.lowlevel.checkpoint()

async def pingpong(n):
    send, receive = trio.open_memory_channel(0)
    async def drain():
        async for _ in receive:
            pass
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        async with send:
            for i in range(n):
                await send.send(i)

async def main():
    instrument = make()
    if instrument is not None:
        trio.lowlevel.add_instrument(instrument)
    start = time.process_time()
    if workload == "many":
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(worker, steps)
        total = 100 * steps
    else:
        await pingpong(50 * steps)
        total = 2 * 50 * steps
    print((time.process_time() - start) / total * 1e6)

trio.run(main)
"""

VARIANTS = ("baseline", "instrument", "step-hooks")


def _run(variant: str, workload: str, steps: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, workload, str(steps)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    return float(out.stdout.strip())


def main() -> None:
    """Run the rounds and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for workload in ("many", "pingpong"):
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                results[variant].append(_run(variant, workload, args.steps))
        base = statistics.median(results["baseline"])
        for variant in VARIANTS:
            median = statistics.median(results[variant])
            print(
                f"{workload:<9} {variant:<11} {median:6.3f} CPU-s per million steps  "
                f"ratio {median / base:5.3f}"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
