"""Driver side: what the driver knows of each task between ``submit`` and its end.

``InFlight`` is the one place the callers' threads (``submit``, ``cancel``, ``stats``) and
the I/O thread meet, under one condition: the tasks not ended yet, those the I/O thread has
not taken up, the cancels it has to carry out, the counters, and whether the backend is
closed or broken.

Invariants: a task is in ``tasks`` from the moment it was accepted until ``end`` (exactly
once); once closed or broken, no task is accepted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from sperse._backends.ray.protocol import describe_object
from sperse._core import Done, Failed
from sperse.errors import SperseError

__all__ = ["CANCEL_GRACE", "CANCEL_SETTLE", "InFlight", "Prepared", "RemoteObject", "Task"]

CANCEL_GRACE: Final = 1.0  # a cancelled task still running this long has its worker killed
CANCEL_SETTLE: Final = 0.5  # a task is interrupted no sooner than this after it was sent


@dataclass(slots=True, eq=False)
class RemoteObject:
    """A remote object this backend created (``owned``) or found (a borrowed proxy's)."""

    object_id: str
    type_name: str
    name: str
    restart: bool
    owned: bool
    handle: Any = None  # its actor's handle, once created
    where: str = ""  # its node's name, once created here

    def describe(self) -> str:
        return describe_object(self.object_id, self.type_name, self.name)


@dataclass(slots=True)
class Task:
    """A task sent to Ray (or ended as it was submitted: ``summary`` None)."""

    task_id: str  # (not the spec: the task's inputs are not kept once sent)
    summary: Any  # the ObjectRef of the summary
    slots: list[Any]  # the ObjectRefs of the values
    names: tuple[str, ...] | None
    node: str = ""  # the node id, once known
    started: bool = False  # Started was emitted
    received: int = 0  # mailbox items reported
    ended: list[Any] | None = None  # its summary, once it ended
    wait_until: float = 0.0
    kill_at: float = 0.0  # cancelled: when to kill its worker if it still runs
    obj: RemoteObject | None = None  # the remote object it creates or calls
    creating: bool = False
    sent_at: float = 0.0  # when it was handed to Ray
    interrupt_at: float = 0.0  # cancelled: when to ask Ray to interrupt it (0: asked)


@dataclass(slots=True)
class Prepared:
    """A task ready to go: ``send()`` sends it and returns what Ray returned, or the event
    that ends it at once (a close; a call of an object known to be gone)."""

    task_id: str
    send: Callable[[], Any]
    names: tuple[str, ...] | None = None
    obj: RemoteObject | None = None
    creating: bool = False


Immediate = tuple[Task, Done | Failed]  # a task that ended as it was submitted


class InFlight:
    """The tasks of one backend not ended yet, shared by every thread (see the module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tasks: dict[str, Task] = {}
        self._new: list[Task] = []  # sent, not taken up by the I/O thread yet
        self._immediate: list[Immediate] = []  # ended when submitted
        self._cancelling: list[Task] = []
        self._counters = dict.fromkeys(
            ("tasks_submitted", "tasks_done", "tasks_failed", "tasks_cancelled"), 0
        )
        self.closed = False
        self.broken: SperseError | None = None  # the I/O thread failed: no more tasks

    # ---- the callers' side ----------------------------------------------------------------

    def add(self, task: Task, ended: Done | Failed | None) -> bool:
        """Accept a task just sent (``ended``: it ended at once); False once closed or
        broken (its result is then never read)."""
        with self._cond:
            if self.closed or self.broken is not None:
                return False
            self._tasks[task.task_id] = task
            if ended is not None:
                self._immediate.append((task, ended))
            else:
                self._new.append(task)
            self._counters["tasks_submitted"] += 1
            self._cond.notify_all()
            return True

    def cancel(self, task_id: str) -> Any:
        """Cancel a task: a task's interrupt (then its worker's kill) is left to the I/O
        thread; the summary of a call of a remote object is returned, to be cancelled now
        (its actor is never killed). None: nothing to do."""
        with self._cond:
            task = self._tasks.get(task_id)
            if task is None or task.kill_at or task.summary is None:
                return None
            if task.obj is not None:
                return task.summary
            # Ray (2.60) can abort the driver ("Tried to complete task that was not
            # pending") when a task is cancelled while it is being pushed to a worker,
            # so a task cancelled just after it was sent is interrupted only once it
            # has had CANCEL_SETTLE seconds to get there (its result is dropped anyway).
            task.interrupt_at = max(time.monotonic(), task.sent_at + CANCEL_SETTLE)
            task.kill_at = task.interrupt_at + CANCEL_GRACE
            self._cancelling.append(task)
            self._cond.notify_all()
            return None

    def close(self) -> bool:
        """No more tasks; the I/O thread stops. False if it was closed already."""
        with self._cond:
            if self.closed:
                return False
            self.closed = True
            self._cond.notify_all()
            return True

    def busy(self) -> dict[str, int]:
        """Node id -> the tasks running there."""
        busy: dict[str, int] = {}
        with self._cond:
            for task in self._tasks.values():
                if task.node and task.ended is None:
                    busy[task.node] = busy.get(task.node, 0) + 1
        return busy

    def stats(self) -> dict[str, int]:
        with self._cond:
            counters = dict(self._counters)
            counters["tasks_running"] = len(self._tasks)
        return counters

    # ---- the I/O thread's side ------------------------------------------------------------

    def next_turn(self, busy: bool) -> tuple[list[Task], list[Immediate], list[Task]] | None:
        """Wait until there is something to do (at once if ``busy``: tasks are active): the
        tasks sent, those ended at once, and those cancelled since the last turn. None once
        closed."""
        with self._cond:
            while not (self.closed or self._new or self._immediate or busy):
                self._cond.wait()
            if self.closed:
                return None
            new, self._new = self._new, []
            immediate, self._immediate = self._immediate, []
            cancelling, self._cancelling = self._cancelling, []
            return new, immediate, cancelling

    def find(self, task_ids: Iterable[str]) -> list[Task | None]:
        with self._cond:
            return [self._tasks.get(task_id) for task_id in task_ids]

    def end(self, task_id: str, event: Done | Failed) -> None:
        with self._cond:
            self._tasks.pop(task_id, None)
            if isinstance(event, Done):
                self._counters["tasks_done"] += 1
            elif event.error.kind == "cancelled":
                self._counters["tasks_cancelled"] += 1
            else:
                self._counters["tasks_failed"] += 1

    def fail(self, error: SperseError) -> None:
        """The I/O thread failed: no more tasks."""
        with self._cond:
            self.broken = error

    def unfinished(self) -> list[Task]:
        """The tasks not ended yet, as the I/O thread stops."""
        with self._cond:
            self._new.clear()
            return list(self._tasks.values())
