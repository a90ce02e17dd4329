"""The sessions and tasks of a server as a pure state machine: events in, actions out.

Every method that takes an event returns the actions to take, in order
(:mod:`sperse._server.actions`); the driver (:class:`sperse._server.core.ServerCore`) takes
them. Nothing here reads a clock (``now`` is given), touches a file, a pool or a stream, or
starts a task; so each rule of :mod:`sperse._server.core`'s docstring can be tested by
feeding events (``tests/server/test_server_state*.py``).

This class keeps the sessions and takes the requests (submit, cancel, release), the
outcomes of pulls and the news of remote objects' workers; its parts: :mod:`~.tasks`
(``TaskTable``: attempts, the pools' events, retries, a task's end; the driver feeds it the
pools' events directly), :mod:`~.sessions` (a session's tasks and retained events),
:mod:`~.held` (held values and their files), :mod:`~.pulls` (objects pulled from other
servers), :mod:`~.remote` (remote objects), :mod:`~.holdback` (the ``Started`` hold-back).
All of them append to one action list, which each event method returns and empties.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sperse._core import Done, ErrorInfo, Failed, Started
from sperse._server.actions import (
    Action,
    Cancel,
    CancelObjectCall,
    Emit,
    EndSession,
    SetExpiry,
    log,
)
from sperse._server.config import ServerConfig
from sperse._server.envelope import ResultValue
from sperse._server.held import HeldValues
from sperse._server.model import HeldObject, Pulled, TaskRequest
from sperse._server.pulls import Pulls
from sperse._server.remote import CLOSED, RemoteObject, RemoteObjects
from sperse._server.sessions import SessionState, TaskState
from sperse._server.submit import refusal, what
from sperse._server.tasks import TaskTable

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
        self.held = HeldValues(new_id, config.max_held_bytes)
        self.pulls = Pulls(shm_prefix if config.shm else "")
        self.objects = RemoteObjects(name, config.max_objects, config.session_objects_limit)
        self._out: list[Action] = []
        self.tasks = TaskTable(
            config, name, shm_prefix, (self.held, self.pulls, self.objects), self._out
        )
        self.can_pull = False  # the driver reaches other servers

    def _take(self) -> list[Action]:
        actions = list(self._out)
        self._out.clear()
        return actions

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
            self.tasks.attempts.pop(task.pool_id, None)
            # A call runs on (others use the object), its result is dropped.
            if task.obj is None and task.pool_id:
                self._out.append(Cancel(task.pool_id, task.pip))  # its files are swept
            self.tasks.release_task(task)
        for obj in list(session.remote_objects.values()):
            self.tasks.object_dies(
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
        for obj in self.objects.alive.values():  # its calls there run on, uncounted
            obj.calls_in_pool.pop(session.session_id, None)
            for task in obj.waiting_calls.pop(session.session_id, ()):
                task.queued = False  # (it is in session.tasks: released above)
        session.ready.clear()
        session.tasks.clear()
        session.finished.clear()

    # ---- requests --------------------------------------------------------------------

    def _put(self, session: SessionState, request: TaskRequest) -> None:
        """Hold the value a put carries, as if a task had returned it: its files are the
        held value's from now on (none is copied). It is said to start here, as every task
        that ends is (the client learns where it is)."""
        assert request.work is not None and request.put is not None
        self._out.append(Emit(session.session_id, Started(request.task_id, self.name)))
        result = [ResultValue("", request.put.type_name, request.put.repr, request.work)]
        over = self.held.over_cap(self.name, result, 0, "the value put")
        if over is not None:
            self.tasks.unlink(request.uploads, soon=False)
            self.tasks.record(session, Failed(request.task_id, self.name, over))
            return
        values = self.held.keep(session, result, 0)
        self.tasks.record(session, Done(request.task_id, self.name, values))

    def submit(self, session_id: str, request: TaskRequest) -> list[Action]:
        """One task of a ``Submit``: run it, or tell why not, or (known) tell its end."""
        session = self.sessions.get(session_id)
        if session is None:  # it ended while its stream read on
            self.tasks.unlink(request.uploads, soon=False)
        else:
            self._submit(session, request)
        return self._take()

    def _submit(self, session: SessionState, request: TaskRequest) -> None:
        task_id = request.task_id
        running = session.tasks.get(task_id)
        if running is not None:  # its events will come; new files are not needed
            self.tasks.unlink([n for n in request.uploads if n not in running.uploads], soon=False)
            return
        known = session.finished.get(task_id)
        if known is not None:
            self.tasks.unlink(request.uploads, soon=False)
            self._out.append(Emit(session.session_id, known))
            return
        op = request.object
        if op is not None and op.kind == "close":
            self.tasks.unlink(request.uploads, soon=False)
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
        if refused is None and request.put is not None:
            self._put(session, request)
            return
        if refused is not None:
            self.tasks.unlink(request.uploads, soon=False)
            self.tasks.record(session, refused)
            return
        assert request.work is not None and (obj is None or isinstance(obj, RemoteObject))
        elsewhere = {p.object_id: p for p in request.peer_refs} if request.peer_refs else {}
        objects: dict[str, HeldObject] = {}
        waiting = {}
        for ref in dict.fromkeys(request.refs) if request.refs else ():
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
            self.tasks.dispatch(task)
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

    def cancel(self, session_id: str, task_id: str) -> list[Action]:
        session = self.sessions.get(session_id)
        task = session.tasks.get(task_id) if session is not None else None
        if task is None or task.cancel_requested:
            return []  # unknown or finished: nothing to do (its terminal event is sent)
        task.cancel_requested = True
        if task.waiting or task.queued:  # for a pull, or for room: not in a pool yet
            if task.queued:
                self.tasks.unqueue(task)
            self.tasks.finish(
                task,
                Failed(task.task_id, self.name, ErrorInfo("cancelled", "TaskCancelled", _QUEUED)),
            )
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
            self.tasks.object_dies(
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

    # ---- pulls ---------------------------------------------------------------------------

    def pulled(self, pull_id: int, pulled: Pulled, seconds: float) -> list[Action]:
        """A pull brought its object: the tasks that wait for it use it (a replica)."""
        ended = self.pulls.end(pull_id)
        if ended is None:  # cancelled meanwhile
            self.tasks.unlink(pulled.value.shm_names())
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
            self.tasks.unlink(pulled.value.shm_names())
            return self._take()
        # No session owns a replica: it goes when the last task using it ends.
        held = self.held.add_replica(ref.object_id, pulled)
        for task in waiters:
            del task.waiting[ref.object_id]
            task.objects[ref.object_id] = held
            held.users += 1
            if not task.waiting:
                self.tasks.dispatch(task)
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
            self.tasks.finish(
                task,
                Failed(
                    task.task_id, self.name, ErrorInfo("internal", "ObjectUnavailable", message)
                ),
            )

    # ---- remote objects ------------------------------------------------------------------

    def object_worker_exited(self, object_id: str, pid: int, how: str) -> list[Action]:
        """The object's worker has died; the failures of the calls it ran come next."""
        obj = self.objects.alive.get(object_id)
        if obj is None:
            return []
        outcome = RemoteObjects.worker_exited(obj, pid, how)
        if isinstance(outcome, str):
            self.tasks.object_dies(obj, outcome, event="object_lost")
            return self._take()
        return outcome

    def rebuilt(
        self, object_id: str, pool_id: str, result: list[ResultValue] | ErrorInfo
    ) -> list[Action]:
        obj = self.objects.alive.get(object_id)
        if obj is None or pool_id != obj.rebuild_id:
            return []
        outcome = RemoteObjects.rebuilt(obj, result)
        if isinstance(outcome, str):
            self.tasks.object_dies(obj, outcome, event="object_lost")
            return self._take()
        return outcome

    def rebuild_failed(self, object_id: str, pool_id: str, error: ErrorInfo) -> list[Action]:
        obj = self.objects.alive.get(object_id)
        if obj is None or pool_id != obj.rebuild_id:
            return []
        why = RemoteObjects.rebuild_failed(obj, error)
        if why:
            self.tasks.object_dies(obj, why, event="object_lost")
        return self._take()

    def object_start_failed(self, object_id: str, error: str) -> list[Action]:
        """The object's worker cannot start."""
        obj = self.objects.alive.get(object_id)
        if obj is not None:
            self.tasks.object_dies(obj, f"could not be created: its worker cannot start: {error}")
        return self._take()

    def destroy_objects(self, why: str) -> list[Action]:
        for obj in list(self.objects.alive.values()):
            self.tasks.object_dies(obj, why)
        return self._take()

    def _close_object(self, session: SessionState, task_id: str, object_id: str) -> None:
        """A "close" task: destroy the object now (if it is still alive), and succeed; or
        fail, if it is another session's unnamed object (it lives on)."""
        obj = self.objects.alive.get(object_id)
        refused = self.objects.refuse_close(obj, session, task_id) if obj is not None else None
        if refused is not None:
            self.tasks.record(session, refused)
            return
        if obj is not None:
            why = "was closed (proxy.close()): create a new one"
            self.tasks.object_dies(obj, why, event="object_closed", closed_by=session)
        self.tasks.record(session, Done(task_id, self.name, (CLOSED,)))
