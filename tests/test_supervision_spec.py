"""Specs are validated field by field before anything starts; errors name the field and the value."""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import math
import pkgutil
from typing import Any

import pytest
import trio

import atlas.supervision
from atlas.supervision import (
    Backoff,
    ChildContext,
    ChildSpec,
    CrashReporter,
    DuplicateChildName,
    InvalidChildSpec,
    InvalidSupervisorSpec,
    RestartType,
    Strategy,
    SupervisionError,
    Supervisor,
    check_child_specs,
)

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


async def _child(ctx: ChildContext, *, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "a/b"),
        ("name", 5),
        ("name", " padded"),
        ("name", "x" * 65),
        ("start", "not callable"),
        ("restart", "permanent"),
        ("shutdown_timeout", -1),
        ("shutdown_timeout", 0),
        ("shutdown_timeout", math.nan),
        ("shutdown_timeout", True),
        ("shutdown_timeout", "5"),
        ("stall_after", 0),
        ("stall_after", -2.5),
        ("stall_after", math.inf),
    ],
)
def test_each_bad_field_is_named(field: str, value: object) -> None:
    kwargs: dict[str, Any] = {"name": "w", "start": _child, field: value}
    with pytest.raises(InvalidChildSpec) as info:
        ChildSpec(**kwargs)
    assert (info.value.field, info.value.value) == (field, value) or (
        info.value.field == field and math.isnan(value)  # type: ignore[arg-type]
    )
    assert field in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SupervisionError)


def test_documented_defaults_and_an_infinite_shutdown_for_supervisors() -> None:
    spec = ChildSpec("w", _child)
    assert (spec.restart, spec.shutdown_timeout, spec.stall_after) == (RestartType.PERMANENT, 5.0, None)
    assert ChildSpec("sup", _child, shutdown_timeout=math.inf).shutdown_timeout == math.inf


def test_check_child_specs_rejects_duplicates_and_tampered_specs() -> None:
    a = ChildSpec("a", _child)
    check_child_specs([a, ChildSpec("b", _child)])
    with pytest.raises(DuplicateChildName) as info:
        check_child_specs([a, ChildSpec("b", _child), ChildSpec("a", _child)])
    assert info.value.name == "a"
    tampered = ChildSpec("t", _child)
    object.__setattr__(tampered, "shutdown_timeout", -1)  # bypassing the frozen dataclass
    with pytest.raises(InvalidChildSpec) as bad:
        check_child_specs([tampered])
    assert (bad.value.field, bad.value.value) == ("shutdown_timeout", -1)
    with pytest.raises(InvalidChildSpec, match="spec"):
        check_child_specs(["not a spec"])  # type: ignore[list-item]


def _supervisor(**kw: Any) -> Supervisor:
    args: dict[str, Any] = {
        "name": "root",
        "strategy": Strategy.ONE_FOR_ONE,
        "children": [ChildSpec("a", _child)],
        "reporter": CrashReporter([], now=lambda: NOW),
    }
    args.update(kw)
    return Supervisor(**args)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "a/b"),
        ("strategy", "one_for_one"),
        ("children", "abc"),
        ("max_restarts", -1),
        ("max_restarts", 1.5),
        ("period", 0),
        ("period", math.inf),
        ("backoff", 0.1),
        ("reporter", None),
        ("rng", 42),
        ("stall_check_interval", 0),
    ],
)
def test_supervisor_arguments_are_checked(field: str, value: object) -> None:
    with pytest.raises(InvalidSupervisorSpec) as info:
        _supervisor(**{field: value})
    assert (info.value.field, info.value.value) == (field, value)


def test_supervisor_rejects_duplicate_children_before_starting() -> None:
    with pytest.raises(DuplicateChildName):
        _supervisor(children=[ChildSpec("a", _child), ChildSpec("a", _child)])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": -0.1}, "backoff.initial"),
        ({"factor": 0.5}, "backoff.factor"),
        ({"initial": 2.0, "maximum": 1.0}, "backoff.maximum"),
        ({"jitter": 1.0}, "backoff.jitter"),
        ({"jitter": -0.1}, "backoff.jitter"),
    ],
)
def test_backoff_fields_are_checked(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidSupervisorSpec) as info:
        Backoff(**kwargs)
    assert info.value.field == field


def test_default_stall_check_interval_is_a_quarter_of_the_smallest_stall_after() -> None:
    children = [ChildSpec("a", _child, stall_after=8.0), ChildSpec("b", _child, stall_after=2.0)]
    assert _supervisor(children=children).stall_check_interval == 0.5
    assert _supervisor().stall_check_interval is None
    assert _supervisor(stall_check_interval=3.0).stall_check_interval == 3.0


def test_as_child_builds_a_spec_with_a_bounded_shutdown() -> None:
    children = [ChildSpec("a", _child, shutdown_timeout=2.0), ChildSpec("b", _child, shutdown_timeout=3.0)]
    spec = _supervisor(name="workers", children=children).as_child(restart=RestartType.TRANSIENT)
    assert (spec.name, spec.restart, spec.shutdown_timeout) == ("workers", RestartType.TRANSIENT, 10.0)


def test_public_names_are_re_exported_exactly_once() -> None:
    """Every public class/function defined in a private module is exported by the package."""
    exported = set(atlas.supervision.__all__)
    assert len(exported) == len(atlas.supervision.__all__)
    for name in exported:
        assert getattr(atlas.supervision, name) is not None
    internal = {"RestartIntensity", "Incarnation", "frames_of_exception", "frames_of_task"}
    internal |= {"name_problem", "number_problem", "int_problem", "restart_set", "should_restart"}
    for info in pkgutil.iter_modules(atlas.supervision.__path__):
        module = importlib.import_module(f"atlas.supervision.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or name in internal:
                continue
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__:
                assert name in exported, f"{module.__name__}.{name} is not re-exported"
