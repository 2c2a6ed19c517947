"""Child specs: frozen plain data, validated field by field before anything starts.

After OTP's child spec map: every field is listed here with its default, and one small check runs
per field. A bad field raises :class:`InvalidChildSpec` naming the field and the value; two children
with one name raise :class:`DuplicateChildName`. A spec is checked when it is built and again by
:func:`check_child_specs` (which the Supervisor calls in its constructor), so a tree with a bad spec
anywhere never starts at all.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from atlas.supervision._checks import name_problem, number_problem
from atlas.supervision._errors import DuplicateChildName, InvalidChildSpec


class RestartType(enum.Enum):
    """When a child that ended is started again (OTP's restart types).

    ==========  ===============  =====================
    type        normal return    exception or stall
    ==========  ===============  =====================
    PERMANENT   restarted        restarted
    TRANSIENT   not restarted    restarted
    TEMPORARY   not restarted    not restarted
    ==========  ===============  =====================

    A temporary child that is stopped because a sibling failed (one_for_all, rest_for_one) is
    not restarted either, as in OTP.
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    """Which children restart when one fails (OTP semantics).

    The restart set is stopped in reverse start order and started again in start order.

    - ``ONE_FOR_ONE``: only the failed child.
    - ``ONE_FOR_ALL``: every child (they depend on each other).
    - ``REST_FOR_ONE``: the failed child and every child started after it (later children depend
      on earlier ones, e.g. telegram intake → dispatch).
    """

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start and supervise one child.

    Fields (mandatory first):

    - ``name`` (mandatory): unique among the supervisor's children; one segment of the child's path
      (``root/workers/renewal``), so no ``/``.
    - ``start`` (mandatory): called as ``await start(ctx, task_status=status)`` with a
      :class:`ChildContext`. The child calls ``status.started()`` once it is up; the next child starts
      only after that. Raising (or returning) before ``started()`` is a start failure. After
      ``started()``, returning is a normal exit and raising is a crash. Cancellation is how the
      supervisor stops it: the child should let ``trio.Cancelled`` propagate promptly.
    - ``restart`` (default ``PERMANENT``): see :class:`RestartType`.
    - ``shutdown_timeout`` (default 5.0 s, ``math.inf`` allowed for nested supervisors): how long
      a stop waits after cancelling. A child still running then is ``stuck``: a ``shutdown_error``
      report, never started again, and its supervisor escalates (``SupervisorStuck``).
    - ``stall_after`` (default None = never judged): a child that is inside ``ctx.busy(...)`` and has
      not called ``ctx.heartbeat()`` for longer than this is cancelled and restarted (a ``stall``).
    """

    name: str
    start: Callable[..., Awaitable[None]]
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout: float = 5.0
    stall_after: float | None = None

    def __post_init__(self) -> None:
        _check_spec(self)


def _check_name(value: object) -> None:
    problem = name_problem(value)
    if problem:
        raise InvalidChildSpec("name", value, problem)


def _check_start(value: object) -> None:
    if not callable(value):
        raise InvalidChildSpec("start", value, "must be an async callable start(ctx, task_status=...)")


def _check_restart(value: object) -> None:
    if not isinstance(value, RestartType):
        raise InvalidChildSpec("restart", value, "must be a RestartType")


def _check_shutdown_timeout(value: object) -> None:
    problem = number_problem(value, allow_inf=True)
    if problem:
        raise InvalidChildSpec("shutdown_timeout", value, problem)


def _check_stall_after(value: object) -> None:
    if value is None:
        return
    problem = number_problem(value)
    if problem:
        raise InvalidChildSpec("stall_after", value, problem)


def _check_spec(spec: object) -> None:
    if not isinstance(spec, ChildSpec):
        raise InvalidChildSpec("spec", spec, "must be a ChildSpec")
    _check_name(spec.name)
    _check_start(spec.start)
    _check_restart(spec.restart)
    _check_shutdown_timeout(spec.shutdown_timeout)
    _check_stall_after(spec.stall_after)


def check_child_specs(specs: Iterable[ChildSpec]) -> None:
    """Check every field of every spec and that names are unique; raise the first problem found.

    Raises :class:`InvalidChildSpec` (naming the field and value) or :class:`DuplicateChildName`.
    Pure: starts nothing and changes nothing.
    """
    seen: set[str] = set()
    for spec in specs:
        _check_spec(spec)
        if spec.name in seen:
            raise DuplicateChildName(spec.name)
        seen.add(spec.name)
