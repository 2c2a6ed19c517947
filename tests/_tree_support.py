"""Walking trio's own task tree, to check that the supervision tree is that tree."""

from __future__ import annotations

import os
from collections.abc import Iterator

import trio
import trio.lowlevel

import atlas

ATLAS_DIR = os.path.dirname(atlas.__file__)


def walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    """``task`` and every task below it, parents before children."""
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from walk(child)


def parent_task(task: trio.lowlevel.Task) -> trio.lowlevel.Task | None:
    """The task whose nursery holds ``task`` (None for the root task)."""
    nursery = task.parent_nursery
    return nursery.parent_task if nursery is not None else None


def is_atlas_code(task: trio.lowlevel.Task) -> bool:
    """Whether the task's own coroutine is defined in the atlas package."""
    code = getattr(task.coro, "cr_code", None)
    return code is not None and code.co_filename.startswith(ATLAS_DIR)


def supervision_tasks(root_name: str = "root") -> tuple[trio.lowlevel.Task, dict[str, trio.lowlevel.Task]]:
    """The root supervisor's task and, by name, every task under it (the supervision tree)."""
    top = trio.lowlevel.current_root_task()
    assert top is not None
    [root] = [t for t in walk(top) if t.name == root_name]
    return root, {t.name: t for t in walk(root)}


def atlas_tasks_outside(root: trio.lowlevel.Task) -> list[str]:
    """Names of the tasks running atlas code that are not under the root supervisor's task."""
    top = trio.lowlevel.current_root_task()
    assert top is not None
    inside = {id(t) for t in walk(root)}
    return sorted(t.name for t in walk(top) if id(t) not in inside and is_atlas_code(t))
