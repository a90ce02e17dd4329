"""Remote objects (actors) of a server: their registry and life cycle, pure.

See :mod:`sperse._server.core` for the rules. This part decides; the server's state machine
(:mod:`sperse._server.state`) fails the calls of an object that dies, and its driver runs
the object's one-worker pool (``StartObject``, ``SubmitToObject``, ``StopObject``).

Invariants: an unnamed object is listed only to the session that created it (its owner),
and only its owner may close it (its id is a capability to call it); a named object is
listed to every session and any session may close it. An object id is used once per server (ids and names of live objects are unique;
the end of the last ``GONE_KEPT`` destroyed ones is remembered, for the calls that come
later); a dead object never comes back; a restart object is rebuilt from its kept create
envelope, whose held values stay pinned and whose uploads stay on disk until it dies.

Each live object is a process (a worker of its own), so there are at most ``max_objects``
(``--max-objects``) on the server, and at most ``max_session_objects``
(``--max-session-objects``) created by one session: a create past either fails, saying
which limit and how to make room, and the calls sent after it are told so.
"""

from __future__ import annotations

import collections
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sperse._core import Done, ErrorInfo, Failed
from sperse._pool.events import Reported
from sperse._server.actions import (
    Action,
    EndTaskLog,
    Log,
    SubmitToObject,
    TaskLogOutput,
    Unlink,
    log,
)
from sperse._server.envelope import PickledBytes, ResultValue
from sperse._server.model import GONE_KEPT, HeldObject, InlineValue, ObjectOp, RemoteObjectInfo

if TYPE_CHECKING:
    from sperse._server.sessions import SessionState, TaskState

__all__ = ["CLOSED", "REBUILD", "RemoteObject", "RemoteObjects"]

REBUILD = "rebuild/"  # the pool ids of rebuilds start so (those of tasks: session/attempt)
CLOSED = InlineValue("", PickledBytes(pickle.dumps(None, protocol=5)))  # a close's value


@dataclass(slots=True, eq=False)
class RemoteObject:
    """A remote object: what its listing and a rebuild need."""

    object_id: str
    owner: SessionState
    name: str
    type_name: str
    methods: tuple[str, ...]
    max_concurrency: int
    restart: bool
    create_payload: bytes = b""  # restart only: the create's envelope, for a rebuild ...
    pinned: dict[str, HeldObject] = field(default_factory=dict)  # ... the values it names
    uploads: tuple[str, ...] = ()  # ... and its uploads
    alive: bool = True
    built: bool = False  # its constructor returned in its current worker
    calls: int = 0  # that ended
    restarts: int = 0
    rebuild_id: str = ""  # pool id of the rebuild in flight
    rebuilt_after: str = ""  # how the worker it was rebuilt after died
    # By session id: its calls in its pool, and those that wait for room (see
    # TaskTable.dispatch), in order.
    calls_in_pool: collections.Counter[str] = field(default_factory=collections.Counter)
    waiting_calls: dict[str, collections.deque[TaskState]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.object_id[:12]


def _objects(count: int) -> str:
    return f"{count} live remote object{'' if count == 1 else 's'}"


class RemoteObjects:
    """The live remote objects of server ``server``, and the end of the recent dead ones."""

    def __init__(self, server: str, max_objects: int, max_session_objects: int) -> None:
        self._server = server
        self.max_objects = max_objects
        self.max_session_objects = max_session_objects
        self.alive: dict[str, RemoteObject] = {}  # by id
        self.named: dict[str, RemoteObject] = {}  # by name, those with one
        self._gone: collections.OrderedDict[str, str] = collections.OrderedDict()  # id: why

    def create(
        self, session: SessionState, task_id: str, op: ObjectOp, what: str
    ) -> RemoteObject | Failed:
        """Register the object a "create" names, owned by ``session``; or why the task
        (``what``) is refused."""
        object_id = op.object_id
        if not object_id or object_id in self.alive or object_id in self._gone:
            return Failed(
                task_id,
                self._server,
                ErrorInfo(
                    "internal",
                    "DuplicateObject",
                    f"{what}: remote object id {object_id!r} is empty or was used before on server "
                    f"{self._server!r}: every remote object needs an id of its own",
                ),
            )
        if op.name and op.name in self.named:
            return Failed(
                task_id,
                self._server,
                ErrorInfo(
                    "raised",
                    "ValueError",
                    f"a remote object named {op.name!r} exists on server {self._server!r} "
                    f"already: pick another name, or reach that one with "
                    f"sperse.get_object({op.name!r})",
                ),
            )
        full = self._full(session)
        if full:
            label = repr(op.name) if op.name else f"(id {object_id})"
            self._gone[object_id] = (
                f"remote object {label} ({op.type_name or 'of unknown type'}) on server "
                f"{self._server!r} was not created: {full}"
            )
            return Failed(task_id, self._server, ErrorInfo("internal", "LimitExceeded", full))
        obj = RemoteObject(
            object_id,
            session,
            op.name,
            op.type_name,
            op.methods,
            max(1, op.max_concurrency),
            op.restart,
        )
        self.alive[object_id] = obj
        if obj.name:
            self.named[obj.name] = obj
        session.remote_objects[object_id] = obj
        return obj

    def _full(self, session: SessionState) -> str:
        """Why no more objects can be created by ``session`` ("": they can)."""
        mine = len(session.remote_objects)
        if mine >= self.max_session_objects:
            return (
                f"this client has {_objects(mine)} on server {self._server!r}, the "
                f"most one session may have (--max-session-objects {self.max_session_objects}; "
                "each is a process). Close those you no longer need (proxy.close(), or let "
                "go of their last proxy), create it on another server, or ask for a larger "
                "--max-session-objects"
            )
        if len(self.alive) >= self.max_objects:
            return (
                f"server {self._server!r} has {_objects(len(self.alive))}, its limit "
                f"(--max-objects {self.max_objects}; each is a process). Close those you no "
                "longer need (proxy.close(), or let go of their last proxy), create it on "
                "another server, or ask for a larger --max-objects"
            )
        return ""

    @staticmethod
    def created(obj: RemoteObject) -> Log:
        return log(
            logging.INFO,
            "object_created",
            session=obj.owner.session_id,
            object=obj.object_id,
            name=obj.name or "-",
            type=obj.type_name or "-",
            max_concurrency=obj.max_concurrency,
            restart=obj.restart,
        )

    def infos(
        self, name: str, pid: Callable[[str], int], viewer: SessionState | None = None
    ) -> list[RemoteObjectInfo]:
        """The live objects (``name``: only the one of that name), as listings show them;
        ``pid(object_id)``: its worker's pid. ``viewer``: only those that session may see
        (the named ones and its own); None: all (for the server itself)."""
        if name:
            named = self.named.get(name)
            listed = [named] if named is not None else []
        elif viewer is None:
            listed = list(self.alive.values())
        else:
            listed = [o for o in self.alive.values() if o.name or o.owner is viewer]
        return [
            RemoteObjectInfo(
                obj.object_id,
                obj.name,
                obj.type_name,
                obj.methods,
                obj.max_concurrency,
                obj.restart,
                obj.calls,
                obj.restarts,
                pid(obj.object_id),
            )
            for obj in listed
        ]

    def refuse_close(self, obj: RemoteObject, session: SessionState, task_id: str) -> Failed | None:
        """Why ``session`` may not close ``obj`` (None: it may). An unnamed object's id is a
        capability to call it; closing it takes its owner. A named one is shared by name:
        any session may close it."""
        if obj.name or obj.owner is session:
            return None
        message = (
            f"{self.describe(obj)} was created by another client's session: only that client "
            "may close it (or release its last proxy); a named object may be closed by any "
            "client"
        )
        return Failed(task_id, self._server, ErrorInfo("raised", "PermissionError", message))

    def describe(self, obj: RemoteObject) -> str:
        named = f"remote object {obj.name!r}" if obj.name else "remote object"
        kind = obj.type_name or "of unknown type"
        return f"{named} ({kind}, id {obj.object_id}) on server {self._server!r}"

    def gone_reason(self, obj: RemoteObject) -> str:
        return self._gone.get(obj.object_id, f"{self.describe(obj)} is gone")

    def calls_reported(self, object_id: str, report: Reported) -> list[Action]:
        """The object's worker ran calls its owner sent it directly: counted as the
        object's calls, and what they printed kept as any task's log (in the owner's
        session: only the owner sends directly, whatever the worker says)."""
        obj = self.alive.get(object_id)
        if obj is None:
            return []
        obj.calls += max(0, report.calls)
        session = obj.owner.session_id
        out: list[Action] = []
        ended: dict[str, None] = {}
        for task_id, stream, text in report.output:
            out.append(TaskLogOutput(f"{session}/{task_id}", stream, text))
            ended[task_id] = None
        out.extend(EndTaskLog(f"{session}/{task_id}") for task_id in ended)
        return out

    def lost(self, task_id: str, object_id: str) -> Failed:
        """The failure of a call of an object that is not alive here."""
        message = self._gone.get(object_id) or (
            f"server {self._server!r} has no remote object {object_id!r}: it never existed "
            "here, or was destroyed long ago (a proxy reaches its object on the server that "
            "created it)"
        )
        return Failed(task_id, self._server, ErrorInfo("object_lost", "ObjectLost", message))

    def unregister(self, obj: RemoteObject, why: str, event: str) -> Log:
        """``obj`` is dead from now on (``obj.alive`` was True): why is remembered."""
        obj.alive = False
        object_id = obj.object_id
        self.alive.pop(object_id, None)
        if obj.name and self.named.get(obj.name) is obj:
            del self.named[obj.name]
        obj.owner.remote_objects.pop(object_id, None)
        self._gone[object_id] = f"{self.describe(obj)} {why}"
        while len(self._gone) > GONE_KEPT:
            self._gone.popitem(last=False)
        return log(
            logging.WARNING if event == "object_lost" else logging.INFO,
            event,
            object=object_id,
            name=obj.name or "-",
            type=obj.type_name or "-",
            calls=obj.calls,
            reason=why,
        )

    @staticmethod
    def keep_create(obj: RemoteObject, task: TaskState, payload: bytes) -> None:
        """A restart object keeps its create for a rebuild, with what it names (pinned)."""
        obj.create_payload = payload
        obj.pinned = dict(task.objects)
        for held in obj.pinned.values():
            held.users += 1
        obj.uploads, task.uploads = task.uploads, ()

    @staticmethod
    def worker_exited(obj: RemoteObject, pid: int, how: str) -> str | list[Action]:
        """Its worker died: why it is lost (a str), or the actions of its rebuild."""
        died = f"its worker (pid {pid}) died ({how})"
        if not obj.built:  # the constructor runs (or was about to): not retried
            when = (
                f"while it was rebuilt after {obj.rebuilt_after}"
                if obj.restarts
                else "before it was built"
            )
            return f"is lost: {died} {when}"
        if not obj.restart:
            return (
                f"is lost: {died}. Create it again; created with restart=True, an object is "
                "rebuilt when its worker dies"
            )
        obj.built = False
        obj.restarts += 1
        obj.rebuilt_after = died
        obj.rebuild_id = f"{REBUILD}{obj.object_id}/{obj.restarts}"
        return [
            log(
                logging.WARNING,
                "object_rebuilding",
                object=obj.object_id,
                name=obj.name or "-",
                reason=died,
                restarts=obj.restarts,
            ),
            SubmitToObject(obj.object_id, obj.rebuild_id, obj.create_payload, front=True),
        ]

    @staticmethod
    def rebuilt(obj: RemoteObject, result: list[ResultValue] | ErrorInfo) -> str | list[Action]:
        """Its rebuild returned: why it is lost, or what to do (the value's files go)."""
        obj.rebuild_id = ""
        if isinstance(result, ErrorInfo):
            return (
                f"is lost: it was rebuilt after {obj.rebuilt_after}, and its constructor "
                f"raised {result.type_name}: {result.message}"
            )
        obj.built = True
        names = tuple(name for v in result for name in v.value.shm_names())
        return [
            Unlink(names, soon=False),
            log(logging.INFO, "object_rebuilt", object=obj.object_id),
        ]

    @staticmethod
    def rebuild_failed(obj: RemoteObject, error: ErrorInfo) -> str:
        """Its rebuild failed without a result (the pool's ``error``): why it is lost (""
        if the worker died: its exit says what happens)."""
        obj.rebuild_id = ""
        if error.kind == "worker_died":
            return ""
        return f"is lost: rebuilding it after {obj.rebuilt_after} failed: {error.message}"

    @staticmethod
    def task_ended(obj: RemoteObject, task: TaskState, event: Done | Failed) -> str:
        """A create or a call of the live ``obj`` has ended: why it dies now ("": it lives)."""
        if not task.creates:
            obj.calls += 1
            return ""
        if isinstance(event, Done):
            obj.built = True
            return ""
        error = event.error
        if error.kind == "raised":
            return f"was never built: its constructor raised {error.type_name}: {error.message}"
        if error.kind == "cancelled":
            return "was never built: its creation was cancelled"
        return f"was never built: {error.message}"
