"""Driver side of remote objects (DESIGN §5, docs/ray.md "Remote objects"): their actors
(:mod:`.actors`), as this backend creates, calls, closes, finds and lists them.

Each actor is named ``OBJECT_ID/TYPE/NAME`` in ``OBJECTS_NAMESPACE`` (:mod:`.protocol`), so
that any process of the cluster finds it. A creation, a call and a close are tasks to the
rest of the driver (``Prepared``): a creation and a call return a summary and a slot as a
task does; a close, or a call of an object known to be gone, ends at once.

Invariants: an object is live (in ``_live``) or gone (in ``_gone``, with what became of it,
for the calls still to come), never both; the actors this backend created are killed when
released or closed, and when the backend closes (``close``).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Any, Final

from sperse._backends.ray.actors import _ObjectActor
from sperse._backends.ray.errors import first_line
from sperse._backends.ray.inflight import Prepared, RemoteObject
from sperse._backends.ray.protocol import (
    INFO_GROUP,
    OBJECTS_NAMESPACE,
    ActorName,
    actor_name,
    describe_object,
    parse_actor_name,
)
from sperse._core import (
    Done,
    ErrorInfo,
    Failed,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    ObjectInfo,
    TaskSpec,
)
from sperse.errors import ServerLost

__all__ = ["INFO_TIMEOUT", "ObjectTable"]

INFO_TIMEOUT: Final = 5.0  # the longest objects() waits for an object's actor to answer
_GONE_KEPT: Final = 10_000  # objects remembered as gone, to say why a later call fails
_ONCE: Final = {"max_task_retries": 0}  # a call's options: never retried (prepare_create)

Header = tuple[list[Any], list[Any]]  # a task's header and the held values it refers to


class ObjectTable:
    """The remote objects a backend knows: those it created (owned) or found (borrowed by
    a proxy), and what became of those gone. Any thread."""

    def __init__(self, ray: Any, where: Callable[[str], str]) -> None:
        self._ray = ray
        self._where = where  # a node id's server name
        self._lock = threading.Lock()
        self._live: dict[str, RemoteObject] = {}  # object id -> a live remote object
        self._gone: dict[str, str] = {}  # object id -> what became of it (for messages)
        self._actor_class: Any = None

    def listing(self, name: str = "") -> list[ObjectInfo]:
        """The remote objects of the Ray cluster, every client's (only the one called
        ``name``, if given): the actors in ``OBJECTS_NAMESPACE``, as each describes itself.
        One that does not answer within ``INFO_TIMEOUT`` (being created, or dying) is left
        out."""
        ray = self._ray
        asked: list[tuple[ActorName, Any, Any]] = []
        for entry in self._actors():
            if (name and entry.name != name) or self.gone_reason(entry.object_id):
                continue
            try:
                handle = ray.get_actor(entry.actor_name, namespace=OBJECTS_NAMESPACE)
            except ValueError:  # gone since it was listed
                continue
            asked.append(
                (entry, handle, handle.info.options(concurrency_group=INFO_GROUP, **_ONCE).remote())
            )
        if asked:
            refs = [ref for _, _, ref in asked]
            ray.wait(refs, num_returns=len(refs), timeout=INFO_TIMEOUT)
        found: list[ObjectInfo] = []
        for entry, handle, ref in asked:
            try:
                pid, calls, built, node_id, methods, concurrency, restart = ray.get(ref, timeout=0)
            except Exception:  # it died, or has not answered yet
                continue
            if built:
                found.append(
                    ObjectInfo(
                        entry.object_id,
                        self._where(node_id),
                        entry.name,
                        entry.type_name,
                        tuple(methods),
                        concurrency,
                        restart,
                        calls,
                        _restarts(handle),
                        pid,
                    )
                )
        return found

    def prepare_create(
        self,
        spec: TaskSpec,
        work: ObjectCreate,
        placed: dict[str, Any],
        header_of: Callable[[], Header],
    ) -> Prepared:
        """An actor placed as a task would be (``placed``: its Ray options), whose creation
        reports like a task (``created`` returns a task's summary). Without ``resources`` it
        takes Ray's default for actors: a CPU to be placed, none while it lives."""
        task_id, object_id = spec.task_id, work.object_id
        obj = RemoteObject(object_id, work.type_name, work.name, work.restart, owned=True)
        refused = self.gone_reason(object_id)
        if not refused and work.name:
            twin = next((e for e in self._actors() if e.name == work.name), None)
            if twin is not None and not self.gone_reason(twin.object_id):
                refused = (
                    f"a remote object named {work.name!r} exists already in this Ray cluster "
                    f"({twin.type_name} {twin.object_id[:8]}): close it, or choose another name"
                )
        if refused:
            info = ErrorInfo("raised", "ValueError", refused)
            return Prepared(task_id, lambda: Failed(task_id, "", info))
        header, held = header_of()
        actor_options = {
            "name": actor_name(object_id, work.type_name, work.name),
            "namespace": OBJECTS_NAMESPACE,
            "max_concurrency": max(1, work.max_concurrency),
            "max_restarts": -1 if work.restart else 0,
            # Ray fails at once the calls made while it rebuilds an actor whose own
            # max_task_retries is 0 (ActorUnavailableError "The actor is restarting"): -1
            # has them wait for the rebuild. Each call still has max_task_retries=0
            # (_ONCE): one in flight when the process dies fails, it never runs twice.
            "max_task_retries": -1 if work.restart else 0,
            **placed,
        }

        def send() -> Any:
            if self._actor_class is None:
                concurrency_groups = {INFO_GROUP: 1}
                self._actor_class = self._ray.remote(concurrency_groups=concurrency_groups)(
                    _ObjectActor
                )
            obj.handle = self._actor_class.options(**actor_options).remote(header, *held)
            with self._lock:
                self._live[object_id] = obj
            return obj.handle.created.options(num_returns=2, **_ONCE).remote()

        return Prepared(task_id, send, obj=obj, creating=True)

    def prepare_call(self, spec: TaskSpec, work: ObjectCall, arguments: Header) -> Prepared:
        """A method call of the actor, which answers as a task does; or, for an object
        known to be gone, the failure that ends the task at once."""
        task_id = spec.task_id
        header, held = arguments
        obj, gone = self._object_of(work.object_id)
        if obj is None:
            info = ErrorInfo("object_lost", "ObjectLost", gone)
            return Prepared(task_id, lambda: Failed(task_id, "", info))
        method = obj.handle.call.options(num_returns=2, **_ONCE)
        return Prepared(task_id, functools.partial(method.remote, header, *held), obj=obj)

    def prepare_close(self, spec: TaskSpec, work: ObjectClose) -> Prepared:
        """Kill the actor (whoever created it), and end the task at once."""
        task_id = spec.task_id
        obj, _ = self._object_of(work.object_id)

        def send() -> Done:
            if obj is None:
                return Done(task_id, "", None)  # gone already
            self.forget(obj, "was closed", True)
            return Done(task_id, obj.where, None)

        return Prepared(task_id, send)

    def release(self, object_id: str) -> None:
        """Kill the actor of an object this backend created, when its proxy is released."""
        with self._lock:
            obj = self._live.get(object_id)
            if obj is None and object_id not in self._gone:
                # An object released before its creation was sent: it never will be.
                self._remember(object_id, f"{describe_object(object_id, '', '')} was released")
        if obj is not None and obj.owned:
            self.forget(obj, "was released (its proxy was garbage-collected)", True)

    def close(self) -> None:
        """The backend closes: kill the actors of the objects it created."""
        with self._lock:
            owned = [o for o in self._live.values() if o.owned]
        for obj in owned:  # a shared cluster keeps no object of a client that left
            self.forget(obj, "is gone: the client that created it closed its cluster", True)

    def owned(self) -> int:
        """How many live objects this backend created."""
        with self._lock:
            return sum(o.owned for o in self._live.values())

    def _object_of(self, object_id: str) -> tuple[RemoteObject | None, str]:
        """The live object ``object_id`` (one this backend does not know yet is looked up in
        Ray by its actor's name), or None and what became of it."""
        with self._lock:
            obj = self._live.get(object_id)
            gone = self._gone.get(object_id, "")
        if obj is not None or gone:
            return obj, gone
        missing = (
            f"{describe_object(object_id, '', '')} does not exist in this Ray cluster: it was "
            "closed or released, its process died, or the client that created it left"
        )
        entry = next((e for e in self._actors() if e.object_id == object_id), None)
        if entry is None:
            return None, missing
        try:
            handle = self._ray.get_actor(entry.actor_name, namespace=OBJECTS_NAMESPACE)
        except ValueError:  # gone since it was listed
            return None, missing
        found = RemoteObject(
            object_id, entry.type_name, entry.name, False, owned=False, handle=handle
        )
        with self._lock:
            return self._live.setdefault(object_id, found), ""

    def _actors(self) -> list[ActorName]:
        """The actors of remote objects in the Ray cluster (every client's)."""
        try:
            listed = self._ray.util.list_named_actors(all_namespaces=True)
        except Exception as exc:
            raise ServerLost(f"cannot list the remote objects of the Ray cluster: {exc}") from exc
        found = []
        for entry in listed:
            if entry.get("namespace") == OBJECTS_NAMESPACE:
                parsed = parse_actor_name(str(entry.get("name", "")))
                if parsed is not None:
                    found.append(parsed)
        return found

    def forget(self, obj: RemoteObject, reason: str, kill: bool) -> None:
        """``obj`` is gone (``reason`` says how, after its description): later calls fail
        with that at once; ``kill``: end its actor (never to be restarted)."""
        with self._lock:
            if self._live.get(obj.object_id) is obj:
                del self._live[obj.object_id]
            self._remember(obj.object_id, f"{obj.describe()} {reason}")
            handle, obj.handle = obj.handle, None
        if kill and handle is not None:
            with contextlib.suppress(Exception):  # dead already
                self._ray.kill(handle, no_restart=True)

    def _remember(self, object_id: str, message: str) -> None:
        """(Under the lock.) What became of a gone object, for the calls still to come."""
        gone = self._gone
        gone.pop(object_id, None)
        gone[object_id] = message
        while len(gone) > _GONE_KEPT:
            del gone[next(iter(gone))]

    def gone_reason(self, object_id: str) -> str:
        with self._lock:
            return self._gone.get(object_id, "")

    def object_lost(self, obj: RemoteObject, creating: bool, exc: BaseException) -> ErrorInfo:
        """A call's (or the creation's, ``creating``) ``RayActorError`` as Sperse's error: the
        object is gone, or (restarted) has lost its state; the message names it."""
        known = self.gone_reason(obj.object_id)
        if known:
            return ErrorInfo("object_lost", "ObjectLost", known)
        errors = self._ray.exceptions
        cause = first_line(exc)
        if isinstance(exc, errors.ActorUnavailableError) and (obj.restart or not obj.owned):
            message = (
                f"{obj.describe()} lost this call and its state: its process died while the "
                f"call ran ({cause}). Created with restart=True, it is rebuilt from its "
                "constructor's arguments, its state reset; later calls go to the new one"
            )
            return ErrorInfo("object_lost", "ObjectLost", message)
        text = str(exc)
        if creating:
            reason = f"could not be created: its process died ({cause})"
        elif "ray.kill" in text:
            reason = "was closed or released (by the client that created it, or a proxy of it)"
        elif "owner" in text:
            reason = "is gone: the client that created it left"
        else:
            reason = (
                f"is lost: its process died ({cause}). Create it with restart=True to have it "
                "rebuilt when that happens"
            )
        self.forget(obj, reason, obj.owned)
        return ErrorInfo("object_lost", "ObjectLost", f"{obj.describe()} {reason}")


def _restarts(handle: Any) -> int:
    """How often Ray rebuilt an actor (from the GCS's actor table; 0 if it cannot say)."""
    try:
        from ray._private import state

        record = state.actors(handle._actor_id.hex())
        return int(record.get("NumRestarts", 0))
    except Exception:
        return 0
