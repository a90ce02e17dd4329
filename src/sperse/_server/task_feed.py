"""``TaskFeed``: what a server tells its coordinator of its tasks, for the coordinator's
dashboard (``Coordinator.ReportTasks``, sent by :class:`~sperse._server.join.Joiner`).

The driver (:class:`~sperse._server.core.ServerCore`) hands it the events it emits to its
sessions, as they are emitted (after ``Started`` is held back), and the tasks it is
submitted; nothing here decides anything about a task, and the state machine never hears of
it.

Invariants:

- Never slows the task path much: a note is a tuple appended to a deque (no protobuf, no
  I/O, no lock: everything runs on the server's loop); the protocol messages are built when
  the joiner drains the buffer, in batches.
- Bounded: at most ``limit`` notes wait; past that the oldest is dropped and counted, and
  the count goes with the next report (the dashboard says so). An output chunk is clipped to
  ``OUTPUT_NOTE`` characters, an error's message and traceback as the session's are.
- Nothing secret leaves: no value, no held value's id (a capability), no session id (it
  resumes a session). Sessions are numbered here instead (``s1``, ``s2``, ... in the order
  they first submit, after a random word of this feed's, so that a restarted server's
  numbers never meet its last run's), and a note names a task ``<word>.s<N>/<task id>``.
- ``session_ended``: the session is gone, and so is every task of it that had not ended
  (they get no more events); the coordinator marks them cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from sperse._core import BackendEvent, Done, Failed, Output, Started
from sperse._server.model import TaskRequest
from sperse._server.sessions import clip
from sperse._wire import pb

__all__ = ["FEED_LIMIT", "OUTPUT_NOTE", "TaskFeed"]

FEED_LIMIT = 20_000  # notes waiting to be reported
OUTPUT_NOTE = 4096  # characters of one output chunk (its start)

Note = tuple[Any, ...]  # (kind, task, at, *fields): see TaskFeed.fill


class TaskFeed:
    """Task notes waiting for the next report. Call from the server's loop only."""

    def __init__(self, limit: int = FEED_LIMIT, *, clock: Callable[[], float] = time.time) -> None:
        self._notes: deque[Note] = deque()
        self._limit = limit
        self._clock = clock
        self._numbers = itertools.count(1)
        self._word = secrets.token_hex(2)
        self._sessions: dict[str, str] = {}  # session id -> "<word>.s<N>"
        self.dropped = 0  # since the last drain
        self.ready = asyncio.Event()  # set when the buffer goes from empty to not

    def __len__(self) -> int:
        return len(self._notes)

    def _add(self, note: Note) -> None:
        notes = self._notes
        if not notes:
            self.ready.set()
        elif len(notes) >= self._limit:
            notes.popleft()
            self.dropped += 1
        notes.append(note)

    def _key(self, session_id: str) -> str:
        number = self._sessions.get(session_id)
        if number is None:
            number = self._sessions[session_id] = f"{self._word}.s{next(self._numbers)}"
        return number

    # ---- from the driver -------------------------------------------------------------

    def submitted(self, session_id: str, client: str, requests: Iterable[TaskRequest]) -> None:
        prefix = self._key(session_id)
        now = self._clock()
        for request in requests:
            self._add(("queued", f"{prefix}/{request.task_id}", now, request.label, client))

    def event(self, session_id: str, event: BackendEvent) -> None:
        task = f"{self._key(session_id)}/{event.task_id}"
        now = self._clock()
        if isinstance(event, Started):
            self._add(("started", task, now, event.worker))
        elif isinstance(event, Done):
            self._add(("done", task, now))
        elif isinstance(event, Output):
            self._add(("output", task, now, event.text[:OUTPUT_NOTE]))
        elif isinstance(event, Failed):
            e = event.error
            self._add(
                (
                    "failed",
                    task,
                    now,
                    e.kind,
                    e.type_name,
                    clip(e.message),
                    clip(e.traceback, keep_end=True),
                )
            )

    def session_ended(self, session_id: str) -> None:
        number = self._sessions.pop(session_id, None)
        if number is not None:
            self._add(("session_ended", f"{number}/", self._clock()))

    # ---- to the joiner ---------------------------------------------------------------

    def fill(self, report: pb.TaskReport, most: int) -> None:
        """Move up to ``most`` notes, oldest first, into ``report`` (built in place: a
        note copied into it would cost as much again), with the count dropped since the
        last time."""
        notes, add = self._notes, report.notes.add
        for _ in range(min(most, len(notes))):
            note = notes.popleft()
            kind, task, at = note[0], note[1], note[2]
            if kind == "queued":
                add(task=task, kind=kind, at=at, label=note[3], client=note[4])
            elif kind == "started":
                add(task=task, kind=kind, at=at, worker=note[3])
            elif kind == "output":
                add(task=task, kind=kind, at=at, text=note[3])
            elif kind == "failed":
                add(
                    task=task,
                    kind=kind,
                    at=at,
                    error_kind=note[3],
                    error_type=note[4],
                    error_message=note[5],
                    traceback=note[6],
                )
            else:  # done, session_ended
                add(task=task, kind=kind, at=at)
        if not notes:
            self.ready.clear()
        report.dropped += self.dropped
        self.dropped = 0

    def drain(self, most: int) -> tuple[list[pb.TaskNote], int]:
        """``fill`` into a new report: its notes and the count dropped."""
        report = pb.TaskReport()
        self.fill(report, most)
        return list(report.notes), report.dropped
