"""Supervision for Atlas: OTP's supervisor semantics on trio, plus what OTP lacks.

- :class:`Supervisor` runs :class:`ChildSpec` children by a :class:`Strategy`, restarts them by
  their :class:`RestartType` after a :class:`Backoff`, and gives up past its restart intensity
  (:class:`SupervisorGaveUp`); supervisors nest through :meth:`Supervisor.as_child`.
- The tree is trio's own task tree: each supervisor owns a nursery, each child incarnation is a
  task in it named by its path (``root/workers/renewal``) inside its own cancel scope, started
  with ``nursery.start`` and stopped by cancelling that scope. Context variables flow down as in
  any nursery. A child that will not stop is never restarted beside itself: its supervisor
  escalates (:class:`SupervisorStuck`), and at the root the process exits non-zero.
- Each child gets a :class:`ChildContext` (path, heartbeat, busy marker, mailbox probe); a busy child
  that stops beating is stalled, cancelled and restarted.
- Every crash, stall, start error, shutdown error and give-up becomes a :class:`CrashReport`,
  delivered by a :class:`CrashReporter` to sinks (:class:`LogSink`, :class:`RingSink`, and others').
- :class:`SlowStepInstrument` names the task behind a slow scheduler step;
  :class:`SchedulerWatchdog` exits the process when the scheduler stops altogether.
- :func:`run_root` turns the root giving up into a non-zero exit code (and, only when a task
  would not stop, ends the process through its ``hard_exit``).

Imports only trio and the standard library.
"""

from atlas.supervision._backoff import Backoff as Backoff
from atlas.supervision._context import ChildContext as ChildContext
from atlas.supervision._errors import ChildReturned as ChildReturned
from atlas.supervision._errors import ChildStalled as ChildStalled
from atlas.supervision._errors import ChildStartFailed as ChildStartFailed
from atlas.supervision._errors import ChildWouldNotStop as ChildWouldNotStop
from atlas.supervision._errors import DuplicateChildName as DuplicateChildName
from atlas.supervision._errors import InvalidChildSpec as InvalidChildSpec
from atlas.supervision._errors import InvalidSpec as InvalidSpec
from atlas.supervision._errors import InvalidSupervisorSpec as InvalidSupervisorSpec
from atlas.supervision._errors import SupervisionError as SupervisionError
from atlas.supervision._errors import SupervisorGaveUp as SupervisorGaveUp
from atlas.supervision._errors import SupervisorStuck as SupervisorStuck
from atlas.supervision._instrument import SlowStepInstrument as SlowStepInstrument
from atlas.supervision._reports import BudgetProbe as BudgetProbe
from atlas.supervision._reports import CrashReport as CrashReport
from atlas.supervision._reports import CrashReporter as CrashReporter
from atlas.supervision._reports import LogSink as LogSink
from atlas.supervision._reports import ReportKind as ReportKind
from atlas.supervision._reports import RingSink as RingSink
from atlas.supervision._reports import Sink as Sink
from atlas.supervision._root import EXIT_GAVE_UP as EXIT_GAVE_UP
from atlas.supervision._root import EXIT_OK as EXIT_OK
from atlas.supervision._root import run_root as run_root
from atlas.supervision._spec import ChildSpec as ChildSpec
from atlas.supervision._spec import RestartType as RestartType
from atlas.supervision._spec import Strategy as Strategy
from atlas.supervision._spec import check_child_specs as check_child_specs
from atlas.supervision._state import ChildState as ChildState
from atlas.supervision._state import ChildStatistics as ChildStatistics
from atlas.supervision._state import SupervisorStatistics as SupervisorStatistics
from atlas.supervision._supervisor import Supervisor as Supervisor
from atlas.supervision._watchdog import SchedulerWatchdog as SchedulerWatchdog
from atlas.supervision._watchdog import format_task_tree as format_task_tree

__all__ = [
    "EXIT_GAVE_UP",
    "EXIT_OK",
    "Backoff",
    "BudgetProbe",
    "ChildContext",
    "ChildReturned",
    "ChildSpec",
    "ChildStalled",
    "ChildStartFailed",
    "ChildState",
    "ChildStatistics",
    "ChildWouldNotStop",
    "CrashReport",
    "CrashReporter",
    "DuplicateChildName",
    "InvalidChildSpec",
    "InvalidSpec",
    "InvalidSupervisorSpec",
    "LogSink",
    "ReportKind",
    "RestartType",
    "RingSink",
    "SchedulerWatchdog",
    "Sink",
    "SlowStepInstrument",
    "Strategy",
    "SupervisionError",
    "Supervisor",
    "SupervisorGaveUp",
    "SupervisorStatistics",
    "SupervisorStuck",
    "check_child_specs",
    "format_task_tree",
    "run_root",
]
