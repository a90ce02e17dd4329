"""The ``Started`` hold-back: a pure part of the server's state, on the machine's clock.

A task's ``Started`` waits ``STARTED_HOLD`` seconds: a task that ends sooner has its
``Started`` and its end sent together, in one message, and one that prints first has its
``Started`` sent before its first ``Output`` (the machine announces it then). One timer at
most is set, for the first entry still to announce; when no entry is left, there is no timer
(a short task must not cost a wake-up of the loop 5 ms later).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

from sperse._server.actions import Action, SetAnnounceTimer
from sperse._server.model import STARTED_HOLD

if TYPE_CHECKING:
    from sperse._server.sessions import TaskState

__all__ = ["StartedHoldBack"]

IsCurrent = Callable[["TaskState", str], bool]  # the task runs, in that attempt


class StartedHoldBack:
    def __init__(self) -> None:
        self._queue: collections.deque[tuple[float, TaskState, str]] = collections.deque()
        self.timer: float | None = None  # when the timer set fires

    def __len__(self) -> int:
        return len(self._queue)

    def hold(self, task: TaskState, pool_id: str, now: float) -> list[Action]:
        """``task`` has started (attempt ``pool_id``): its Started waits."""
        task.announced = False
        self._queue.append((now + STARTED_HOLD, task, pool_id))
        if self.timer is not None:
            return []
        self.timer = now + STARTED_HOLD
        return [SetAnnounceTimer(self.timer)]

    def forget(self, current: IsCurrent) -> list[Action]:
        """Drop the entries of tasks that ended or were announced, up to the first one
        still to announce; no entry left: no timer."""
        queue = self._queue
        while queue:
            _, task, pool_id = queue[0]
            if current(task, pool_id) and not task.announced:
                break
            queue.popleft()
        if queue or self.timer is None:
            return []
        self.timer = None
        return [SetAnnounceTimer(None)]

    def due(self, now: float, current: IsCurrent) -> tuple[list[TaskState], list[Action]]:
        """The timer has fired: the tasks whose Started is due (and which still run, not
        announced yet), and the timer for the next entry."""
        self.timer = None
        queue = self._queue
        tasks: list[TaskState] = []
        while queue:
            at, task, pool_id = queue[0]
            running = current(task, pool_id)
            if running and not task.announced and at > now:
                break  # the first one still to announce: the timer waits for it
            queue.popleft()
            if running and not task.announced:
                tasks.append(task)
        if not queue:
            return tasks, []
        self.timer = queue[0][0]
        return tasks, [SetAnnounceTimer(self.timer)]
