"""Supervision errors, named by who caused them.

Hierarchy::

    SupervisionError                  base of everything raised by atlas.supervision
    ├── InvalidSpec                   you wrote a bad spec (also a ValueError); nothing was started
    │   ├── InvalidChildSpec          one ChildSpec field is wrong: .field, .value
    │   ├── InvalidSupervisorSpec     one Supervisor/Backoff argument is wrong: .field, .value
    │   └── DuplicateChildName        two children of one supervisor share .name
    ├── ChildStartFailed              a child raised (or returned) before saying it was up: .name, .cause
    ├── SupervisorGaveUp              restart intensity exceeded: .name, .restarts, .period
    │   └── SupervisorStuck           a task under it would not stop: .stuck_path; never restarted
    ├── ChildReturned                 a permanent child returned (carried in ``crash`` reports)
    ├── ChildStalled                  a busy child stopped beating (carried in ``stall`` reports)
    └── ChildWouldNotStop             a child ignored cancellation past its shutdown timeout
                                      (carried in ``shutdown_error`` reports)

``ChildReturned``, ``ChildStalled`` and ``ChildWouldNotStop`` are never raised at callers: the
supervisor creates them so that a crash report always names an exception type and a message, even
when nothing was raised.
"""

from __future__ import annotations


class SupervisionError(Exception):
    """Base class of every error raised by :mod:`atlas.supervision`."""


class InvalidSpec(SupervisionError, ValueError):
    """A specification is invalid; raised before anything starts, nothing was changed."""


class InvalidChildSpec(InvalidSpec):
    """One field of a :class:`ChildSpec` is invalid: ``field`` names it, ``value`` is what was given."""

    def __init__(self, field: str, value: object, why: str = "") -> None:
        self.field = field
        self.value = value
        detail = f": {why}" if why else ""
        super().__init__(f"invalid child spec field {field}={value!r}{detail}")


class InvalidSupervisorSpec(InvalidSpec):
    """One argument of a :class:`Supervisor` or :class:`Backoff` is invalid (``field``, ``value``)."""

    def __init__(self, field: str, value: object, why: str = "") -> None:
        self.field = field
        self.value = value
        detail = f": {why}" if why else ""
        super().__init__(f"invalid supervisor spec field {field}={value!r}{detail}")


class DuplicateChildName(InvalidSpec):
    """Two children of the same supervisor have the same ``name`` (paths must be unique)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"duplicate child name {name!r}")


class ChildStartFailed(SupervisionError):
    """Child ``name`` failed to start; ``cause`` is what it raised (also chained as ``__cause__``)."""

    def __init__(self, name: str, cause: BaseException) -> None:
        self.name = name
        self.cause = cause
        super().__init__(f"child {name!r} failed to start: {type(cause).__name__}: {cause}")


class SupervisorGaveUp(SupervisionError):
    """Supervisor ``name`` saw more than its limit of restarts: ``restarts`` within ``period`` seconds.

    Its children are already stopped when this is raised. For a parent supervisor this is just a
    crash of that child; at the root it ends the process with a non-zero code (see ``run_root``).
    """

    def __init__(self, name: str, restarts: int, period: float) -> None:
        self.name = name
        self.restarts = restarts
        self.period = period
        super().__init__(f"supervisor {name!r} gave up: {restarts} restarts within {period:g}s")


class SupervisorStuck(SupervisorGaveUp):
    """Supervisor ``name`` gave up because the task at ``stuck_path`` would not stop when cancelled.

    That task still runs (cancelled, inside the supervisor's nursery), so the supervisor cannot end
    and must not start it again: a child never runs twice. A parent that sees this error from a
    child escalates in turn instead of restarting it; at the root the process ends (``run_root``).
    """

    def __init__(self, name: str, stuck_path: str, restarts: int, period: float) -> None:
        SupervisionError.__init__(
            self,
            f"supervisor {name!r} gave up: {stuck_path} would not stop when cancelled "
            "(it is never started twice)",
        )
        self.name = name
        self.stuck_path = stuck_path
        self.restarts = restarts
        self.period = period


class ChildReturned(SupervisionError):
    """The permanent child at ``path`` returned; it should run until cancelled, so it is restarted."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path} returned, but it is permanent: it should run until cancelled")


class ChildStalled(SupervisionError):
    """Child at ``path`` was busy with ``handling`` and did not beat for ``age`` > ``stall_after`` s."""

    def __init__(self, path: str, handling: str | None, age: float, stall_after: float) -> None:
        self.path = path
        self.handling = handling
        self.age = age
        self.stall_after = stall_after
        super().__init__(
            f"{path} stalled: busy with {handling!r}, "
            f"no heartbeat for {age:.2f}s (stall_after={stall_after:g}s)"
        )


class ChildWouldNotStop(SupervisionError):
    """Child at ``path`` ignored cancellation for ``timeout`` s; its supervisor escalates."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        super().__init__(
            f"{path} ignored cancellation for {timeout:g}s (shutdown_timeout); still running, cancelled"
        )
