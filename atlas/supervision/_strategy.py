"""The restart rules as two tables: whether a child restarts, and which children go with it.

Everything here is pure (no I/O, no trio): the supervisor asks, then acts.
"""

from __future__ import annotations

from collections.abc import Sequence

from atlas.supervision._spec import RestartType, Strategy

# (restart type, ended abnormally?) -> restart it?  "Abnormally" = raised, or stalled.
RESTART_TABLE: dict[tuple[RestartType, bool], bool] = {
    (RestartType.PERMANENT, False): True,
    (RestartType.PERMANENT, True): True,
    (RestartType.TRANSIENT, False): False,
    (RestartType.TRANSIENT, True): True,
    (RestartType.TEMPORARY, False): False,
    (RestartType.TEMPORARY, True): False,
}


def should_restart(restart: RestartType, abnormal: bool) -> bool:
    """Look up :data:`RESTART_TABLE`."""
    return RESTART_TABLE[(restart, abnormal)]


def restart_set(strategy: Strategy, positions: Sequence[int], failed: int) -> list[int]:
    """The positions (in start order) that restart when the child at ``failed`` does.

    ``positions`` are the children still under supervision, in start order; the result is in
    start order too (stop it reversed, start it as is).
    """
    if strategy is Strategy.ONE_FOR_ONE:
        return [failed]
    if strategy is Strategy.ONE_FOR_ALL:
        return sorted(set(positions) | {failed})
    if strategy is Strategy.REST_FOR_ONE:
        return sorted({p for p in positions if p >= failed} | {failed})
    raise AssertionError(f"unknown strategy {strategy!r}")
