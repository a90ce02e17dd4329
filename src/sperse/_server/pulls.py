"""Pulls of objects held by other servers of the cluster: a pure part of the server's state.

Invariants: one pull per object is in flight, whichever tasks wait for it (``waiters``, in
arrival order); a pull no task waits for any more is cancelled (``CancelPull``); each pull
has its own id, so the outcome of a cancelled one is never taken for a later pull of the
same object.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sperse._server.actions import Action, CancelPull, StartPull
from sperse._server.model import PeerRef

if TYPE_CHECKING:
    from sperse._server.sessions import TaskState

__all__ = ["Pulls"]


@dataclass(slots=True, eq=False)
class _Pull:
    pull_id: int
    ref: PeerRef
    waiters: dict[TaskState, None] = field(default_factory=dict)  # in arrival order


class Pulls:
    """The pulls in flight. ``shm_prefix`` empty: pulled buffers come as bytes."""

    def __init__(self, shm_prefix: str) -> None:
        self._shm_prefix = shm_prefix
        self._by_object: dict[str, _Pull] = {}
        self._by_id: dict[int, _Pull] = {}
        self._ids = itertools.count(1)
        self.objects_pulled = 0
        self.bytes_pulled = 0

    def wait(self, task: TaskState, ref: PeerRef) -> StartPull | None:
        """``task`` waits for ``ref``; the pull to start if none is in flight."""
        pull = self._by_object.get(ref.object_id)
        if pull is not None:
            pull.waiters[task] = None
            return None
        pull_id = next(self._ids)
        pull = self._by_object[ref.object_id] = self._by_id[pull_id] = _Pull(pull_id, ref)
        pull.waiters[task] = None
        prefix = f"{self._shm_prefix}r{pull_id}-" if self._shm_prefix else ""
        return StartPull(pull_id, ref, prefix)

    def end(self, pull_id: int) -> tuple[PeerRef, list[TaskState]] | None:
        """The pull ended (with or without its object): its ref and the tasks that wait for
        it, in arrival order; None: it was cancelled, nobody waits."""
        pull = self._by_id.pop(pull_id, None)
        if pull is None:
            return None
        if self._by_object.get(pull.ref.object_id) is pull:
            del self._by_object[pull.ref.object_id]
        waiters = list(pull.waiters)
        pull.waiters.clear()
        return pull.ref, waiters

    def stop_waiting(self, task: TaskState) -> list[Action]:
        """``task`` has ended before the pulls it waits for: a pull no task waits for any
        more is cancelled."""
        actions: list[Action] = []
        waiting, task.waiting = task.waiting, {}
        for object_id in waiting:
            pull = self._by_object.get(object_id)
            if pull is None or task not in pull.waiters:
                continue
            del pull.waiters[task]
            if not pull.waiters:
                del self._by_object[object_id]
                del self._by_id[pull.pull_id]
                actions.append(CancelPull(pull.pull_id))
        return actions

    @property
    def waiting_tasks(self) -> int:
        return len({task for pull in self._by_object.values() for task in pull.waiters})

    @property
    def in_flight(self) -> int:
        return len(self._by_id)
