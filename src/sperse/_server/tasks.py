"""The tasks of a server's sessions, from dispatch to their one terminal event: a pure part
of the server's state machine (:mod:`sperse._server.state`).

Each attempt of a task has its own pool id (``SESSION/ATTEMPT``); an event of an attempt that
is not current (an earlier one, or one of a task that ended) is dropped, its result's files
unlinked, a failed attempt's files swept. A task whose worker died is dispatched again while
it has retries left (a call of a remote object never is), with a ``Started`` of its own. A
task that ends releases what it used (its uploads, its held values, its pulls) and gets its
terminal event, recorded in its session (retained for resubmissions) and emitted.

A session has at most ``window`` tasks in the pools at once (``WINDOW_PER_WORKER`` per
worker: enough to keep every worker's pipeline full, and as many again queued), and none
more while it is ``paused`` (its client leaves too many events unread: see
:mod:`sperse._server.outgoing`); the others wait in its ``ready`` queue, in order, and go
as room is made. So a client that does not read stops its own work after at most a window
more of results, and one session's thousands of tasks never queue ahead of another's in the
pool. Likewise a session has at most ``max_concurrency + WINDOW_PER_WORKER`` calls in a
remote object's pool (the others wait in the object's ``waiting_calls``, a queue per
session): as many as can run, and more queued behind them, so holding one back never keeps a
call from running that could have run (no call waited for could have started sooner).
Creates go to their objects' pools at once.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Iterable
from typing import Literal

from sperse._core import Done, ErrorInfo, Failed, Output, Started
from sperse._pool.policy import PIPELINE
from sperse._server.actions import (
    Action,
    Emit,
    EndTaskLog,
    StartObject,
    StopObject,
    Submit,
    SubmitToObject,
    Sweep,
    TaskLogOutput,
    Unlink,
    log,
)
from sperse._server.config import ServerConfig
from sperse._server.envelope import Envelope, ResultValue, pack_envelope
from sperse._server.held import HeldValues
from sperse._server.holdback import StartedHoldBack
from sperse._server.model import OUTPUT_CHUNK
from sperse._server.pulls import Pulls
from sperse._server.remote import RemoteObject, RemoteObjects
from sperse._server.sessions import SessionState, TaskState, clip, clipped

__all__ = ["WINDOW_PER_WORKER", "TaskTable"]

WINDOW_PER_WORKER = 2 * PIPELINE  # a session's tasks in the pools, per worker


class TaskTable:
    """The attempts of server ``name`` in flight, and the rules of a task's end. Shares the
    action list ``out`` with the machine it is part of: the methods that return actions take
    an event (the driver calls them); the others are steps the machine composes (they add
    their actions to ``out``)."""

    def __init__(
        self,
        config: ServerConfig,
        name: str,
        shm_prefix: str,
        parts: tuple[HeldValues, Pulls, RemoteObjects],
        out: list[Action],
    ) -> None:
        self.config = config
        self.name = name
        self.shm_prefix = shm_prefix
        self.held, self.pulls, self.objects = parts
        self.attempts: dict[str, TaskState] = {}  # by pool id: queued or running
        self.hold_back = StartedHoldBack()
        self.window = config.worker_count * WINDOW_PER_WORKER
        self.tasks_done = 0
        self.tasks_failed = 0
        self._attempt_ids = itertools.count(1)
        self._out = out

    def _take(self) -> list[Action]:
        actions = list(self._out)
        self._out.clear()
        return actions

    def dispatch(self, task: TaskState) -> None:
        work = task.work
        assert work is not None
        obj = task.obj
        if obj is not None and not obj.alive:  # destroyed while the task waited for a pull
            self.finish(task, self.objects.lost(task.task_id, obj.object_id))
            return
        session = task.session
        if obj is None:
            if session.paused or session.in_pools >= self.window:
                task.queued, task.pool_id = True, ""
                session.ready.append(task)
                return
            session.in_pools += 1
        elif not task.creates:
            sid = session.session_id
            if session.paused or sid in obj.waiting_calls or not self._call_room(obj, sid):
                task.queued, task.pool_id = True, ""
                obj.waiting_calls.setdefault(sid, collections.deque()).append(task)
                return
            obj.calls_in_pool[sid] += 1
        self._send(task)

    @staticmethod
    def _call_room(obj: RemoteObject, session_id: str) -> bool:
        return obj.calls_in_pool[session_id] < obj.max_concurrency + WINDOW_PER_WORKER

    def _send(self, task: TaskState) -> None:
        work, obj, session = task.work, task.obj, task.session
        assert work is not None
        attempt = next(self._attempt_ids)
        pool_id = f"{session.session_id}/{attempt}"
        payload = pack_envelope(
            Envelope(
                task_id=task.task_id,
                label=task.label,
                server=self.name,
                inline_limit=task.inline_limit,
                work=work,
                objects=(
                    {ref: held.value for ref, held in task.objects.items()} if task.objects else {}
                ),
                shm_prefix=f"{self.shm_prefix}a{attempt}-" if self.config.shm else "",
            )
        )
        task.pool_id = pool_id
        if task.retries_left == 0:
            task.work = None
        self.attempts[pool_id] = task
        if obj is None:
            self._out.append(Submit(pool_id, payload, task.pip))
        elif not task.creates:
            self._out.append(SubmitToObject(obj.object_id, pool_id, payload))
        else:
            if obj.restart:  # kept for a rebuild, with what it names
                RemoteObjects.keep_create(obj, task, payload)
            # First, before calls sent while it waited for a pull; its pool starts now.
            self._out.append(
                StartObject(obj.object_id, obj.label, obj.max_concurrency, pool_id, payload)
            )

    def pump(self, session: SessionState) -> None:
        """Start ``session``'s ready tasks while it has room and is not paused."""
        ready = session.ready
        while ready and not session.paused and session.in_pools < self.window:
            task = ready.popleft()
            if task.queued:  # (else it ended while it waited)
                task.queued = False
                self.dispatch(task)

    def pump_calls(self, obj: RemoteObject, session: SessionState) -> None:
        """Send ``obj`` the waiting calls of ``session`` while it has room, in order."""
        sid = session.session_id
        waiting = obj.waiting_calls.get(sid)
        while waiting and obj.alive and not session.paused and self._call_room(obj, sid):
            task = waiting.popleft()
            if task.queued:  # (else it ended while it waited)
                task.queued = False
                obj.calls_in_pool[sid] += 1
                self._send(task)
        if not waiting:
            obj.waiting_calls.pop(sid, None)

    def unqueue(self, task: TaskState) -> None:
        """``task``, which waits for room, ends: it is skipped when its turn comes (the
        queue is walked then, not now: cancelling many is not quadratic)."""
        task.queued = False
        session = task.session
        queue = session.ready if task.obj is None else task.obj.waiting_calls[session.session_id]
        while queue and not queue[0].queued:  # (so no queue is left holding only those)
            queue.popleft()
        if not queue and task.obj is not None:
            del task.obj.waiting_calls[session.session_id]

    def hold(self, session: SessionState, unread: int) -> list[Action]:
        """The session's client leaves ``unread`` bytes of events unread, past the bound:
        its tasks that wait for room wait on (those in the pools run)."""
        if session.closed or session.paused:
            return []
        session.paused = True
        limit = self.config.max_unread_bytes
        return [
            log(
                logging.WARNING,
                "session_paused",
                session=session.session_id,
                unread=unread,
                limit=limit,
                waiting=len(session.ready),
            )
        ]

    def let_go(self, session: SessionState, unread: int) -> list[Action]:
        """The session's client has read enough: its waiting tasks may start."""
        if session.closed or not session.paused:
            return []
        session.paused = False
        self._out.append(
            log(
                logging.INFO,
                "session_unpaused",
                session=session.session_id,
                unread=unread,
                waiting=len(session.ready),
            )
        )
        self.pump(session)
        for obj in list(self.objects.alive.values()):
            if session.session_id in obj.waiting_calls:
                self.pump_calls(obj, session)
        return self._take()

    def _left_pool(self, task: TaskState) -> None:
        obj = task.obj
        if obj is None:
            task.session.in_pools -= 1
        elif not task.creates:
            obj.calls_in_pool[task.session.session_id] -= 1

    def _room_made(self, task: TaskState) -> None:
        """After ``task``'s attempt has left its pool: what waited for room may go."""
        if task.obj is None:
            self.pump(task.session)
        elif not task.creates:
            self.pump_calls(task.obj, task.session)

    # ---- events of the pools -------------------------------------------------------------

    def inline_limit(self, pool_id: str) -> int | None:
        """The inline limit of the attempt's task; None: it is not known (any more)."""
        task = self.attempts.get(pool_id)
        return task.inline_limit if task is not None else None

    def started(self, pool_id: str, worker: int, now: float) -> list[Action]:
        task = self.attempts.get(pool_id)
        if task is None:
            return []
        task.worker = worker
        return self.hold_back.hold(task, pool_id, now)

    def output(self, pool_id: str, stream: Literal["stdout", "stderr"], text: str) -> list[Action]:
        task = self.attempts.get(pool_id)
        if task is None:
            return []
        self.announce_now(task)
        self._out.append(TaskLogOutput(task.log_key, stream, text))
        for start in range(0, len(text), OUTPUT_CHUNK):
            chunk = Output(task.task_id, self.name, stream, text[start : start + OUTPUT_CHUNK])
            self._out.append(Emit(task.session.session_id, chunk))
        return self._take()

    def done(self, pool_id: str, result: list[ResultValue] | ErrorInfo) -> list[Action]:
        """The attempt returned ``result`` (its inline values read into bytes already)."""
        task = self.attempts.pop(pool_id, None)
        if task is None:  # its session has ended: nobody will own its files
            if not isinstance(result, ErrorInfo):
                self.unlink([n for v in result for n in v.value.shm_names()], soon=False)
            return self._take()
        self._left_pool(task)
        self.announce_now(task)
        if not isinstance(result, ErrorInfo):
            refused = self.held.over_cap(self.name, result, task.inline_limit)
            if refused is not None:
                self.unlink([n for v in result for n in v.value.shm_names()])
                result = refused
        if isinstance(result, ErrorInfo):
            self.finish(task, Failed(task.task_id, self.name, result))
        else:
            values = self.held.keep(task.session, result, task.inline_limit)
            self.finish(task, Done(task.task_id, self.name, values))
        self._out.extend(self.hold_back.forget(self._current))
        self._room_made(task)
        return self._take()

    def failed(self, pool_id: str, error: ErrorInfo) -> list[Action]:
        """The attempt ended without its result, with the pool's ``error`` (its worker died,
        it was cancelled, or the runner failed): its files are swept; it may be retried."""
        task = self.attempts.pop(pool_id, None)
        self._sweep_attempt(pool_id)
        if task is not None:
            self._left_pool(task)
            self._on_failed(task, pool_id, error)
            self._out.extend(self.hold_back.forget(self._current))
            self._room_made(task)
        return self._take()

    def _on_failed(self, task: TaskState, pool_id: str, error: ErrorInfo) -> None:
        # The pool names its own task id; the client knows the task by its id or label.
        message = error.message.replace(pool_id, task.label or task.task_id)
        obj = task.obj
        died = error.kind == "worker_died"
        if obj is not None and died:
            if obj.alive and obj.rebuilt_after:  # see object_worker_exited
                message = (
                    f"{self.objects.describe(obj)} was rebuilt after {obj.rebuilt_after}: its "
                    "state was reset, and this call did not complete"
                )
                lost = ErrorInfo("object_lost", "ObjectLost", message)
                failed = Failed(task.task_id, self.name, lost)
            else:
                failed = self.objects.lost(task.task_id, obj.object_id)
        else:
            if died:
                self._out.append(
                    log(logging.WARNING, "worker_replaced", task=task.task_id, reason=message)
                )
                if task.retries_left > 0 and not task.cancel_requested:
                    task.retries_left -= 1
                    self._out.append(
                        log(
                            logging.WARNING,
                            "task_retried",
                            session=task.session.session_id,
                            task=task.task_id,
                            retries_left=task.retries_left,
                        )
                    )
                    self.announce_now(task)  # each attempt has a Started of its own
                    self.dispatch(task)
                    return
                if task.retries:
                    message += f" (the last of {task.retries + 1} attempts)"
            # The pool's error (WorkerDied, TaskCancelled, RunnerError), told of the client's task.
            error = ErrorInfo(error.kind, error.type_name, message, error.traceback)
            failed = Failed(task.task_id, self.name, error)
        self.announce_now(task)
        self.finish(task, failed)

    def attempt_failed(self, pool_id: str, error: ErrorInfo) -> list[Action]:
        """The driver could not run the attempt (or dropped it, cancelled, before it ran)."""
        task = self.attempts.pop(pool_id, None)
        if task is not None:
            self._left_pool(task)
            self.finish(task, Failed(task.task_id, self.name, error))
            self._room_made(task)
        return self._take()

    def announce(self, now: float) -> list[Action]:
        """The hold-back timer fired: emit the Started events that are due."""
        tasks, timer = self.hold_back.due(now, self._current)
        for task in tasks:
            self.announce_now(task)
        self._out.extend(timer)
        return self._take()

    def _current(self, task: TaskState, pool_id: str) -> bool:
        return task.pool_id == pool_id and self.attempts.get(pool_id) is task

    def announce_now(self, task: TaskState) -> None:
        if not task.announced:
            task.announced = True
            started = Started(task.task_id, self.name, task.worker)
            self._out.append(Emit(task.session.session_id, started))

    def _sweep_attempt(self, pool_id: str) -> None:
        if self.config.shm:
            self._out.append(Sweep(f"{self.shm_prefix}a{pool_id.rpartition('/')[2]}-"))

    def object_dies(
        self,
        obj: RemoteObject,
        why: str,
        *,
        event: str = "object_lost",
        closed_by: SessionState | None = None,
    ) -> None:
        """Destroy ``obj``: its calls fail, ``why`` is remembered, its worker stops.
        ``closed_by``: the session that closed it (its own calls' failures are no news)."""
        if not obj.alive:
            return
        self._out.append(self.objects.unregister(obj, why, event))
        for pool_id, task in list(self.attempts.items()):
            if task.obj is obj:
                del self.attempts[pool_id]
                self.announce_now(task)
                lost = self.objects.lost(task.task_id, obj.object_id)
                self.finish(task, lost, task.session is closed_by)
        waiting, obj.waiting_calls = obj.waiting_calls, {}
        obj.calls_in_pool.clear()
        for task in (t for queue in waiting.values() for t in queue):
            task.queued = False
            lost = self.objects.lost(task.task_id, obj.object_id)
            self.finish(task, lost, task.session is closed_by)
        pinned, obj.pinned = obj.pinned, {}
        for held_id, held in pinned.items():
            self._out.extend(self.held.unuse(held_id, held))
        if obj.uploads:
            self.unlink(obj.uploads)
            obj.uploads = ()
        obj.create_payload = b""
        self._out.append(StopObject(obj.object_id))

    # ---- ends ----------------------------------------------------------------------------

    def release_task(self, task: TaskState) -> None:
        """The task has ended: its uploads go, the objects it used may go."""
        task.work = None
        if task.uploads:
            self.unlink(task.uploads)
            task.uploads = ()
        if task.waiting:
            self._out.extend(self.pulls.stop_waiting(task))
        objects, task.objects = task.objects, {}
        for object_id, held in objects.items():
            self._out.extend(self.held.unuse(object_id, held))

    def finish(self, task: TaskState, event: Done | Failed, expected: bool = False) -> None:
        """``expected``: a failure the client caused and knows of (logged as info)."""
        self.release_task(task)
        session = task.session
        self._out.append(EndTaskLog(task.log_key))
        if session.tasks.get(task.task_id) is task:
            del session.tasks[task.task_id]
        self.record(session, event, expected)
        obj = task.obj
        if obj is not None and obj.alive:
            why = RemoteObjects.task_ended(obj, task, event)
            if why:
                self.object_dies(obj, why)

    def record(self, session: SessionState, event: Done | Failed, expected: bool = False) -> None:
        if isinstance(event, Failed):
            event = clipped(event)
            error = event.error
            self.tasks_failed += 1
            usual = expected or error.kind in ("raised", "cancelled")
            self._out.append(
                log(
                    logging.INFO if usual else logging.WARNING,
                    "task_failed",
                    session=session.session_id,
                    task=event.task_id,
                    kind=error.kind,
                    type=error.type_name,
                    message=clip(error.message, 200),
                )
            )
        else:
            self.tasks_done += 1
        session.retain(event)
        self._out.append(Emit(session.session_id, event))

    def unlink(self, names: Iterable[str], *, soon: bool = True) -> None:
        found = tuple(names)
        if found:
            self._out.append(Unlink(found, soon))
