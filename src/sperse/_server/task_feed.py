"""``TaskFeed``: what a server tells its coordinator of its tasks, for the coordinator's
dashboard (``Coordinator.ReportTasks``, sent by :class:`~sperse._server.join.Joiner`).

The driver (:class:`~sperse._server.core.ServerCore`) hands it the events it emits to its
sessions, as they are emitted (after ``Started`` is held back), and the tasks it is
submitted; nothing here decides anything about a task, and the state machine never hears of
it.

Invariants:

- Never slows the task path much: an event updates a list in place, or appends one (no
  protobuf, no I/O, no lock: everything runs on the server's loop); the protocol messages
  are built when the joiner drains the buffer, in batches.
- One note per task between two reports, merged (kind ``task``): a task submitted, started
  and done while the joiner waits is one note with the three times, not three notes, so
  the server builds, and the coordinator reads, a third of the messages. Notes leave in the
  order of their first event since the last report; a session's end goes after its tasks'.
- Bounded: at most ``limit`` notes wait; past that the oldest is dropped and counted, and
  the count goes with the next report (the dashboard says so). An output chunk is clipped to
  ``OUTPUT_NOTE`` characters, and a note keeps at most ``OUTPUT_KEPT`` of them (its end); an
  error's message and traceback are clipped as the session's are.
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

__all__ = ["FEED_LIMIT", "OUTPUT_KEPT", "OUTPUT_NOTE", "TaskFeed"]

FEED_LIMIT = 20_000  # notes waiting to be reported
OUTPUT_NOTE = 4096  # characters of one output chunk (its start)
OUTPUT_KEPT = 16  # output chunks one note holds at most (the last ones)

# A task's note, merged, updated in place until it is reported:
# [task, queued_at, label, client, started_at, worker, ended_at, error, output]
# (times 0.0 where the note does not say; error: (kind, type, message, traceback) or None;
# output: the chunks printed, or None). A session's end: ("session_ended", prefix, at).
_QUEUED, _STARTED, _WORKER, _ENDED, _ERROR, _OUTPUT = 1, 4, 5, 6, 7, 8
Note = list[Any] | tuple[str, str, float]


class TaskFeed:
    """Task notes waiting for the next report. Call from the server's loop only."""

    def __init__(self, limit: int = FEED_LIMIT, *, clock: Callable[[], float] = time.time) -> None:
        self._notes: deque[Note] = deque()
        self._open: dict[str, list[Any]] = {}  # task -> its note, while it waits
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
            old = notes.popleft()
            if isinstance(old, list):
                del self._open[old[0]]
            self.dropped += 1
        notes.append(note)

    def _note(self, task: str) -> list[Any]:
        note = self._open.get(task)
        if note is None:
            note = self._open[task] = [task, 0.0, "", "", 0.0, 0, 0.0, None, None]
            self._add(note)
        return note

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
            note = self._note(f"{prefix}/{request.task_id}")
            note[1:4] = now, request.label, client

    def event(self, session_id: str, event: BackendEvent) -> None:
        note = self._note(f"{self._key(session_id)}/{event.task_id}")
        if isinstance(event, Started):
            note[_STARTED] = self._clock()
            note[_WORKER] = event.worker
        elif isinstance(event, Done):
            note[_ENDED] = self._clock()
        elif isinstance(event, Output):
            output = note[_OUTPUT]
            if output is None:
                output = note[_OUTPUT] = []
            elif len(output) >= OUTPUT_KEPT:
                del output[0]
            output.append(event.text[:OUTPUT_NOTE])
        elif isinstance(event, Failed):
            e = event.error
            note[_ENDED] = self._clock()
            note[_ERROR] = (e.kind, e.type_name, clip(e.message), clip(e.traceback, keep_end=True))

    def session_ended(self, session_id: str) -> None:
        number = self._sessions.pop(session_id, None)
        if number is not None:
            self._add(("session_ended", f"{number}/", self._clock()))

    # ---- to the joiner ---------------------------------------------------------------

    def fill(self, report: pb.TaskReport, most: int) -> None:
        """Move up to ``most`` notes, oldest first, into ``report`` (built in place: a
        note copied into it would cost as much again), with the count dropped since the
        last time."""
        notes, add, open_ = self._notes, report.notes.add, self._open
        for _ in range(min(most, len(notes))):
            note = notes.popleft()
            if isinstance(note, tuple):
                add(task=note[1], kind=note[0], at=note[2])
                continue
            task, queued, label, client, started, worker, ended, error, output = note
            del open_[task]
            added = add(
                task=task,
                kind="task",
                queued_at=queued,
                label=label,
                client=client,
                started_at=started,
                worker=worker,
                ended_at=ended,
            )
            if error is not None:
                (
                    added.error_kind,
                    added.error_type,
                    added.error_message,
                    added.traceback,
                ) = error
            if output is not None:
                added.text = "".join(output)
        if not notes:
            self.ready.clear()
        report.dropped += self.dropped
        self.dropped = 0

    def drain(self, most: int) -> tuple[list[pb.TaskNote], int]:
        """``fill`` into a new report: its notes and the count dropped."""
        report = pb.TaskReport()
        self.fill(report, most)
        return list(report.notes), report.dropped
