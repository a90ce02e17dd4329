"""The sessions and tasks of a server as a pure state machine: events in, actions out.

Every method that takes an event returns the actions to take, in order
(:mod:`sperse._server.actions`); the driver (:class:`sperse._server.core.ServerCore`) takes
them. Nothing here reads a clock (``now`` is given), touches a file, a pool or a stream, or
starts a task; so each rule of :mod:`sperse._server.core`'s docstring can be tested by
feeding events (``tests/server/test_server_state.py``). Its parts: :mod:`~.sessions` (a
session's tasks and retained events), :mod:`~.held` (held values and their files),
:mod:`~.pulls` (objects pulled from other servers), :mod:`~.remote` (remote objects),
:mod:`~.holdback` (the ``Started`` hold-back).

Pool events come by the driver's pool id (``SESSION/ATTEMPT``): each attempt has its own, so
an event of an earlier attempt, or of a task that has ended, is dropped (its result files
are unlinked, an attempt that failed has its files swept).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Literal

from sperse._server.actions import (
    Action,
    Cancel,
    CancelObjectCall,
    Emit,
    EndSession,
    EndTaskLog,
    SetExpiry,
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
from sperse._server.envelope import Envelope, ResultFailure, ResultValue, pack_envelope
from sperse._server.held import HeldValues
from sperse._server.holdback import StartedHoldBack
from sperse._server.model import (
    OUTPUT_CHUNK,
    Done,
    Failed,
    HeldObject,
    Output,
    Pulled,
    Started,
    TaskRequest,
)
from sperse._server.pulls import Pulls
from sperse._server.remote import CLOSED, RemoteObject, RemoteObjects
from sperse._server.sessions import SessionState, TaskState, clip, clipped
from sperse._server.submit import refusal, what

__all__ = ["SESSION_END", "ServerState"]

SESSION_END = {
    "goodbye": "its client ended the session",
    "no_client": "its client went away and did not resume the session in time",
    "server_stopping": "the server is stopping",
}
_QUEUED = "cancelled while queued"


class ServerState:
    """Sessions, tasks, held values, pulls and remote objects of server ``name``.
    ``shm_prefix``: of the files of this server; ``new_id``: a fresh object id."""

    def __init__(
        self, config: ServerConfig, name: str, shm_prefix: str, new_id: Callable[[], str]
    ) -> None:
        self.config = config
        self.name = name
        self.shm_prefix = shm_prefix
        self.sessions: dict[str, SessionState] = {}  # open
        self.attempts: dict[str, TaskState] = {}  # by pool id: queued or running
        self.held = HeldValues(new_id)
        self.pulls = Pulls(shm_prefix if config.shm else "")
        self.objects = RemoteObjects(name)
        self.hold_back = StartedHoldBack()
        self.can_pull = False  # the driver reaches other servers
        self.tasks_done = 0
        self.tasks_failed = 0
        self._attempt_ids = itertools.count(1)
        self._out: list[Action] = []

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    # ---- sessions --------------------------------------------------------------------

    def open_session(self, session_id: str) -> SessionState:
        session = self.sessions[session_id] = SessionState(session_id)
        return session

    def attached(self, session_id: str) -> list[Action]:
        """A stream attached to the session: its grace period (if any) ends."""
        session = self.sessions.get(session_id)
        if session is None:
            return []
        session.attached = True
        if not session.expires:
            return []
        session.expires = False
        return [SetExpiry(session_id, None)]

    def detached(self, session_id: str, now: float) -> list[Action]:
        """The stream attached to the session has ended: its grace period starts."""
        session = self.sessions.get(session_id)
        if session is None:
            return []
        session.attached = False
        session.expires = True
        grace = self.config.session_grace
        return [
            log(
                logging.INFO,
                "session_detached",
                session=session_id,
                grace=f"{grace:g}s",
                tasks=len(session.tasks),
                objects=len(session.objects),
            ),
            SetExpiry(session_id, now + grace),
        ]

    def expire(self, session_id: str) -> list[Action]:
        """The session's grace period is over."""
        session = self.sessions.get(session_id)
        if session is None or not session.expires:
            return []
        session.expires = False
        if not session.attached:
            self._close(session, "session_expired", "no_client")
        return self._take()

    def close_session(self, session_id: str, event: str, reason: str) -> list[Action]:
        """End the session: its tasks are cancelled (no more events), its objects freed."""
        session = self.sessions.get(session_id)
        if session is not None:
            self._close(session, event, reason)
        return self._take()

    def _close(self, session: SessionState, event: str, reason: str) -> None:
        session.closed = True
        del self.sessions[session.session_id]
        if session.expires:
            session.expires = False
            self._out.append(SetExpiry(session.session_id, None))
        self._out.append(EndSession(session.session_id))
        cancelled = len(session.tasks)
        for task in session.tasks.values():
            self.attempts.pop(task.pool_id, None)
            # A call runs on (others use the object), its result is dropped.
            if task.obj is None and task.pool_id:
                self._out.append(Cancel(task.pool_id, task.pip))  # its files are swept
            self._release_task(task)
        for obj in list(session.remote_objects.values()):
            self._object_dies(
                obj,
                "was destroyed: the session that created it ended "
                f"({SESSION_END.get(reason, reason)})",
                event="object_destroyed",
            )
        self._out.append(
            log(
                logging.INFO,
                event,
                session=session.session_id,
                reason=reason,
                tasks_cancelled=cancelled,
                objects_freed=len(session.objects),
                bytes_freed=session.object_bytes,
            )
        )
        self._out.extend(self.held.release_all(session))
        session.tasks.clear()
        session.finished.clear()

    # ---- requests --------------------------------------------------------------------

    def submit(self, session_id: str, request: TaskRequest) -> list[Action]:
        """One task of a ``Submit``: run it, or tell why not, or (known) tell its end."""
        session = self.sessions.get(session_id)
        if session is None:  # it ended while its stream read on
            self._unlink(request.uploads, soon=False)
        else:
            self._submit(session, request)
        return self._take()

    def _submit(self, session: SessionState, request: TaskRequest) -> None:
        task_id = request.task_id
        running = session.tasks.get(task_id)
        if running is not None:  # its events will come; new files are not needed
            self._unlink([n for n in request.uploads if n not in running.uploads], soon=False)
            return
        known = session.finished.get(task_id)
        if known is not None:
            self._unlink(request.uploads, soon=False)
            self._out.append(Emit(session.session_id, known))
            return
        op = request.object
        if op is not None and op.kind == "close":
            self._unlink(request.uploads, soon=False)
            self._close_object(session, task_id, op.object_id)
            return
        refused = refusal(request, session, self.name)
        obj: RemoteObject | Failed | None = None
        if refused is None and op is not None:
            if op.kind == "call":
                obj = self.objects.alive.get(op.object_id) or self.objects.lost(
                    task_id, op.object_id
                )
            else:
                obj = self.objects.create(session, task_id, op, what(request))
                if isinstance(obj, RemoteObject):
                    self._out.append(self.objects.created(obj))
            if isinstance(obj, Failed):
                refused = obj
        if refused is not None:
            self._unlink(request.uploads, soon=False)
            self._record(session, refused)
            return
        assert request.work is not None and (obj is None or isinstance(obj, RemoteObject))
        elsewhere = {p.object_id: p for p in request.peer_refs}
        objects: dict[str, HeldObject] = {}
        waiting = {}
        for ref in dict.fromkeys(request.refs):
            held = self.held.lookup(session, ref)
            if held is None:
                waiting[ref] = elsewhere[ref]
            else:
                objects[ref] = held
                held.users += 1
        retries = 0 if obj is not None else request.retries  # a call is never run twice
        task = TaskState(
            session,
            task_id,
            request.label,
            request.inline_limit or self.config.inline_limit,
            retries,
            retries,
            request.work,
            objects,
            request.uploads,
            waiting=waiting,
            obj=obj,
            creates=op is not None and op.kind == "create",
            pip=request.pip if obj is None else (),
        )
        session.tasks[task_id] = task
        if not waiting:
            self._dispatch(task)
            return
        for peer_ref in list(waiting.values()):
            start = self.pulls.wait(task, peer_ref)
            if start is not None and self.can_pull:
                self._out.append(start)
            elif start is not None:
                self._pull_failed(
                    start.pull_id,
                    "this server has no way to reach other servers",
                    "run the task where the value is (pin it to that server)",
                )
            if task.task_id not in session.tasks:
                return  # failed at once (this server reaches no other)

    def _dispatch(self, task: TaskState) -> None:
        work = task.work
        assert work is not None
        obj = task.obj
        if obj is not None and not obj.alive:  # destroyed while the task waited for a pull
            self._finish(task, self.objects.lost(task.task_id, obj.object_id))
            return
        attempt = next(self._attempt_ids)
        pool_id = f"{task.session.session_id}/{attempt}"
        payload = pack_envelope(
            Envelope(
                task_id=task.task_id,
                label=task.label,
                server=self.name,
                inline_limit=task.inline_limit,
                work=work,
                objects={ref: held.value for ref, held in task.objects.items()},
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

    def cancel(self, session_id: str, task_id: str) -> list[Action]:
        session = self.sessions.get(session_id)
        task = session.tasks.get(task_id) if session is not None else None
        if task is None or task.cancel_requested:
            return []  # unknown or finished: nothing to do (its terminal event is sent)
        task.cancel_requested = True
        if task.waiting:  # for a pull: not queued in the pool yet
            self._finish(task, Failed(task.task_id, "cancelled", "TaskCancelled", _QUEUED))
        elif task.obj is not None:
            self._out.append(CancelObjectCall(task.obj.object_id, task.pool_id))
        else:
            self._out.append(Cancel(task.pool_id, task.pip))
        return self._take()

    def release(self, session_id: str, object_id: str) -> list[Action]:
        """A held value of the session, or a remote object it created (destroyed now)."""
        session = self.sessions.get(session_id)
        if session is None:
            return []
        actions = self.held.release(session, object_id)
        if actions is not None:
            return actions
        obj = session.remote_objects.get(object_id)
        if obj is not None:
            self._object_dies(
                obj, "was destroyed: its last proxy was released", event="object_released"
            )
        return self._take()

    def find(self, object_id: str) -> HeldObject | None:
        """The object of any session (for another server that pulls it: the id, 128 random
        bits, is the capability, as it is for a session's own client)."""
        for session in self.sessions.values():
            held = session.objects.get(object_id)
            if held is not None:
                return held
        return None

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
        self._announce_now(task)
        self._out.append(TaskLogOutput(task.log_key, stream, text))
        for start in range(0, len(text), OUTPUT_CHUNK):
            chunk = Output(task.task_id, stream, text[start : start + OUTPUT_CHUNK])
            self._out.append(Emit(task.session.session_id, chunk))
        return self._take()

    def done(self, pool_id: str, result: list[ResultValue] | ResultFailure) -> list[Action]:
        """The attempt returned ``result`` (its inline values read into bytes already)."""
        task = self.attempts.pop(pool_id, None)
        if task is None:  # its session has ended: nobody will own its files
            if not isinstance(result, ResultFailure):
                self._unlink([n for v in result for n in v.value.shm_names()], soon=False)
            return self._take()
        self._announce_now(task)
        if isinstance(result, ResultFailure):
            failed = Failed(
                task.task_id, result.kind, result.type_name, result.message, result.traceback
            )
            self._finish(task, failed)
        else:
            values = self.held.keep(task.session, result, task.inline_limit)
            self._finish(task, Done(task.task_id, values))
        self._out.extend(self.hold_back.forget(self._current))
        return self._take()

    def failed(self, pool_id: str, reason: str, message: str, traceback: str) -> list[Action]:
        """The attempt ended without its result (``reason``: worker_died, cancelled,
        runner_error): its files are swept; it may be retried."""
        task = self.attempts.pop(pool_id, None)
        self._sweep_attempt(pool_id)
        if task is not None:
            self._on_failed(task, pool_id, reason, message, traceback)
            self._out.extend(self.hold_back.forget(self._current))
        return self._take()

    def _on_failed(
        self, task: TaskState, pool_id: str, reason: str, message: str, traceback: str
    ) -> None:
        # The pool names its own task id; the client knows the task by its id or label.
        message = message.replace(pool_id, task.label or task.task_id)
        obj = task.obj
        if obj is not None and reason == "worker_died":
            if obj.alive and obj.rebuilt_after:  # see object_worker_exited
                message = (
                    f"{self.objects.describe(obj)} was rebuilt after {obj.rebuilt_after}: its "
                    "state was reset, and this call did not complete"
                )
                failed = Failed(task.task_id, "object_lost", "ObjectLost", message)
            else:
                failed = self.objects.lost(task.task_id, obj.object_id)
        elif reason == "worker_died":
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
                self._announce_now(task)  # each attempt has a Started of its own
                self._dispatch(task)
                return
            if task.retries:
                message += f" (the last of {task.retries + 1} attempts)"
            failed = Failed(task.task_id, "worker_died", "WorkerDied", message)
        elif reason == "cancelled":
            failed = Failed(task.task_id, "cancelled", "TaskCancelled", message)
        else:
            failed = Failed(task.task_id, "internal", "RunnerError", message, traceback)
        self._announce_now(task)
        self._finish(task, failed)

    def attempt_failed(self, pool_id: str, kind: str, type_name: str, message: str) -> list[Action]:
        """The driver could not run the attempt (or dropped it, cancelled, before it ran)."""
        task = self.attempts.pop(pool_id, None)
        if task is not None:
            self._finish(task, Failed(task.task_id, kind, type_name, message))
        return self._take()

    def announce(self, now: float) -> list[Action]:
        """The hold-back timer fired: emit the Started events that are due."""
        tasks, timer = self.hold_back.due(now, self._current)
        for task in tasks:
            self._announce_now(task)
        self._out.extend(timer)
        return self._take()

    def _current(self, task: TaskState, pool_id: str) -> bool:
        return task.pool_id == pool_id and self.attempts.get(pool_id) is task

    def _announce_now(self, task: TaskState) -> None:
        if not task.announced:
            task.announced = True
            self._out.append(Emit(task.session.session_id, Started(task.task_id, task.worker)))

    def _sweep_attempt(self, pool_id: str) -> None:
        if self.config.shm:
            self._out.append(Sweep(f"{self.shm_prefix}a{pool_id.rpartition('/')[2]}-"))

    # ---- pulls ---------------------------------------------------------------------------

    def pulled(self, pull_id: int, pulled: Pulled, seconds: float) -> list[Action]:
        """A pull brought its object: the tasks that wait for it use it (a replica)."""
        ended = self.pulls.end(pull_id)
        if ended is None:  # cancelled meanwhile
            self._unlink(pulled.value.shm_names())
            return self._take()
        ref, waiters = ended
        size = pulled.value.size
        self.pulls.objects_pulled += 1
        self.pulls.bytes_pulled += size
        self._out.append(
            log(
                logging.INFO,
                "object_pulled",
                object=ref.object_id,
                holder=ref.server,
                bytes=size,
                seconds=f"{seconds:.3f}",
                tasks=len(waiters),
            )
        )
        if not waiters:  # pragma: no cover - the pull is cancelled when the last one goes
            self._unlink(pulled.value.shm_names())
            return self._take()
        # No session owns a replica: it goes when the last task using it ends.
        held = self.held.add_replica(ref.object_id, pulled)
        for task in waiters:
            del task.waiting[ref.object_id]
            task.objects[ref.object_id] = held
            held.users += 1
            if not task.waiting:
                self._dispatch(task)
        return self._take()

    def pull_failed(self, pull_id: int, reason: str, advice: str) -> list[Action]:
        self._pull_failed(pull_id, reason, advice)
        return self._take()

    def _pull_failed(self, pull_id: int, reason: str, advice: str) -> None:
        ended = self.pulls.end(pull_id)
        if ended is None:
            return
        ref, waiters = ended
        self._out.append(
            log(
                logging.WARNING,
                "pull_failed",
                object=ref.object_id,
                holder=ref.server,
                address=ref.address,
                reason=reason,
            )
        )
        for task in waiters:
            message = (
                f"{task.what} uses object {ref.object_id!r}, held by server {ref.server!r} at "
                f"{ref.address or '(no address)'}, which server {self.name!r} could not pull: "
                f"{reason}; {advice}"
            )
            task.waiting.pop(ref.object_id, None)
            self._finish(task, Failed(task.task_id, "internal", "ObjectUnavailable", message))

    # ---- remote objects ------------------------------------------------------------------

    def object_worker_exited(self, object_id: str, pid: int, how: str) -> list[Action]:
        """The object's worker has died; the failures of the calls it ran come next."""
        obj = self.objects.alive.get(object_id)
        if obj is None:
            return []
        outcome = RemoteObjects.worker_exited(obj, pid, how)
        if isinstance(outcome, str):
            self._object_dies(obj, outcome, event="object_lost")
            return self._take()
        return outcome

    def rebuilt(
        self, object_id: str, pool_id: str, result: list[ResultValue] | ResultFailure
    ) -> list[Action]:
        obj = self.objects.alive.get(object_id)
        if obj is None or pool_id != obj.rebuild_id:
            return []
        outcome = RemoteObjects.rebuilt(obj, result)
        if isinstance(outcome, str):
            self._object_dies(obj, outcome, event="object_lost")
            return self._take()
        return outcome

    def rebuild_failed(
        self, object_id: str, pool_id: str, reason: str, message: str
    ) -> list[Action]:
        obj = self.objects.alive.get(object_id)
        if obj is None or pool_id != obj.rebuild_id:
            return []
        why = RemoteObjects.rebuild_failed(obj, reason, message)
        if why:
            self._object_dies(obj, why, event="object_lost")
        return self._take()

    def object_start_failed(self, object_id: str, error: str) -> list[Action]:
        """The object's worker cannot start."""
        obj = self.objects.alive.get(object_id)
        if obj is not None:
            self._object_dies(obj, f"could not be created: its worker cannot start: {error}")
        return self._take()

    def destroy_objects(self, why: str) -> list[Action]:
        for obj in list(self.objects.alive.values()):
            self._object_dies(obj, why)
        return self._take()

    def _close_object(self, session: SessionState, task_id: str, object_id: str) -> None:
        """A "close" task: destroy the object now (if it is still alive), and succeed."""
        obj = self.objects.alive.get(object_id)
        if obj is not None:
            self._object_dies(
                obj, "was closed (proxy.close()): create a new one", event="object_closed"
            )
        self._record(session, Done(task_id, (CLOSED,)))

    def _object_dies(self, obj: RemoteObject, why: str, *, event: str = "object_lost") -> None:
        """Destroy ``obj``: its calls fail, ``why`` is remembered, its worker stops."""
        if not obj.alive:
            return
        self._out.append(self.objects.unregister(obj, why, event))
        for pool_id, task in list(self.attempts.items()):
            if task.obj is obj:
                del self.attempts[pool_id]
                self._announce_now(task)
                self._finish(task, self.objects.lost(task.task_id, obj.object_id))
        pinned, obj.pinned = obj.pinned, {}
        for held_id, held in pinned.items():
            self._out.extend(self.held.unuse(held_id, held))
        if obj.uploads:
            self._unlink(obj.uploads)
            obj.uploads = ()
        obj.create_payload = b""
        self._out.append(StopObject(obj.object_id))

    # ---- ends ----------------------------------------------------------------------------

    def _release_task(self, task: TaskState) -> None:
        """The task has ended: its uploads go, the objects it used may go."""
        task.work = None
        if task.uploads:
            self._unlink(task.uploads)
            task.uploads = ()
        if task.waiting:
            self._out.extend(self.pulls.stop_waiting(task))
        objects, task.objects = task.objects, {}
        for object_id, held in objects.items():
            self._out.extend(self.held.unuse(object_id, held))

    def _finish(self, task: TaskState, event: Done | Failed) -> None:
        self._release_task(task)
        session = task.session
        self._out.append(EndTaskLog(task.log_key))
        if session.tasks.get(task.task_id) is task:
            del session.tasks[task.task_id]
        self._record(session, event)
        obj = task.obj
        if obj is not None and obj.alive:
            why = RemoteObjects.task_ended(obj, task, event)
            if why:
                self._object_dies(obj, why)

    def _record(self, session: SessionState, event: Done | Failed) -> None:
        if isinstance(event, Failed):
            event = clipped(event)
            self.tasks_failed += 1
            self._out.append(
                log(
                    logging.INFO if event.kind in ("raised", "cancelled") else logging.WARNING,
                    "task_failed",
                    session=session.session_id,
                    task=event.task_id,
                    kind=event.kind,
                    type=event.type_name,
                    message=clip(event.message, 200),
                )
            )
        else:
            self.tasks_done += 1
        session.retain(event)
        self._out.append(Emit(session.session_id, event))

    def _unlink(self, names: Iterable[str], *, soon: bool = True) -> None:
        found = tuple(names)
        if found:
            self._out.append(Unlink(found, soon))
