"""``sperse.state()`` on Ray: the per-server store is one store actor per node.

On Ray a server is a node, so each node has one store: a Ray actor of ``_NodeStore``, named
after the node's id in the namespace ``STATE_NAMESPACE``, pinned to its node (node affinity,
``soft=False``), taking no CPU. The first ``sperse.state()`` call on a node creates it
(``get_if_exists``: every worker of the node gets the same one). It is detached: it lives as
long as its node, not as long as the worker or the client that happened to create it. Ray
restarts it (empty) if its process dies.

The actor is a shell around the store's one table (:mod:`sperse._state.table`), as a sperse
server's store is: what it keeps and how it answers are the table's, and its replies are in
the wire format (:mod:`sperse._state.wire`). The worker's side is a ``Link`` of
:mod:`sperse._state.client`, so ``sperse.state()`` on Ray is the same ``State`` code as on a
server, over one actor call per request instead of a socket:

    hello()                                   -> (the store's instance id, max value size)
    call(instance, connection, process, op, key, values)
                                              -> the table's reply, or None: the connection
                                                 is closed (dropped, or the store restarted)
    drop(connection)                          -> None: release its locks, withdraw its request
    stats()                                   -> counts (see ``_NodeStore.stats``)

A *connection* is a random id made by one thread of one worker process, the table's holder
of key locks; ``process`` is that process (Ray worker id, pid, start time, pid namespace).
A thread waits for each reply before it sends the next request.

Invariants:

- A lock never outlives its holder's process. A request that waits for a lock checks every
  ``HOLDER_CHECK`` seconds whether the process of the lock's holder is alive: from ``/proc``
  when the holder is in the actor's pid namespace (callers of a store are always processes
  of its node), else from Ray's record of the worker (the GCS's worker table, which Ray
  marks dead as soon as the raylet sees the worker go). Every connection of a dead holder's
  worker is dropped, and its locks go to the next in line. A request that got a lock after
  waiting for it checks its own process likewise, and is dropped if that died meanwhile.
  Nobody waits, nobody checks: an uncontended lock costs nothing.
- A caller interrupted in the middle of an exchange (a cancel raises ``KeyboardInterrupt``
  in the task) closes its connection, as a socket closing does for a server's store: it
  sends ``drop``, which releases the connection's locks and withdraws its waiting request.
  Calls of one caller may start out of order on an async actor: a ``drop`` that comes first
  is remembered, and the connection's request is refused when it comes.
- Requests of a connection made with an earlier instance of the store (it restarted, empty)
  are refused: the locks the connection took went with that instance.
- The actor runs everything on its event loop: each request is atomic; only waiting for a
  lock (and asking Ray whether a worker is alive) awaits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
import threading
import uuid
from typing import Any, Final

from sperse._backends.ray.errors import first_line
from sperse._backends.ray.imports import import_ray
from sperse._state.client import PROVIDERS, Connection, State, _store_error
from sperse._state.table import (
    BadRequest,
    Holder,
    Reply,
    Request,
    Table,
    Value,
    error,
    read_reply,
    wire_value,
)
from sperse._state.wire import ErrorCode, Status
from sperse.errors import SperseError

__all__ = ["HOLDER_CHECK", "STATE_NAMESPACE", "RayState", "node_state"]

log = logging.getLogger("sperse.ray")

STATE_NAMESPACE: Final = "sperse-state"  # the Ray namespace of the store actors, named by node id
HOLDER_CHECK: Final = 1.0  # a request waiting for a lock checks its holder this often
MAX_CONCURRENCY: Final = 10_000  # requests the store actor serves at once (waiting ones too)
MAX_VALUE: Final = sys.maxsize  # no max value size on Ray (docs/state.md, "On Ray")
_REMEMBERED: Final = 10_000  # connections dropped, dead workers

Process = tuple[str, int, int, str]  # (Ray worker id, pid, start time, pid namespace)


# ==== the store actor ============================================================================


def _pid_namespace() -> str:
    """This process's pid namespace (Linux), or "" where there is no ``/proc``."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if it is gone or a
    zombie (dead, not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
    except (OSError, ValueError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _ray_worker_alive(worker_id: str) -> bool:
    """Whether Ray's record (the GCS's worker table) says the worker is alive; True when it
    has no record or cannot say (a lock is never taken from a live holder)."""
    try:
        from ray._private.state import state
        from ray._raylet import WorkerID
        from ray.core.generated import gcs_pb2

        record = state._connect_and_get_accessor().get_worker_info(WorkerID.from_hex(worker_id))
        if record is None:
            return True
        table = gcs_pb2.WorkerTableData  # type: ignore[attr-defined]  # generated, untyped
        return bool(table.FromString(record).is_alive)
    except Exception:
        log.warning("cannot ask Ray whether worker %s is alive", worker_id[:8], exc_info=True)
        return True


class _Caller(Holder):
    """One connection (one thread of a worker process): a holder of the table's key locks,
    with the reply to its one request in flight."""

    __slots__ = ("answer", "answered", "id", "process")

    def __init__(self, connection: str, process: Process) -> None:
        super().__init__()
        self.id = connection
        self.process = process
        self.answer: Reply | None = None
        self.answered = asyncio.Event()  # the answer came, or the connection was dropped


class _NodeStore:
    """The store actor of one node (async: every method runs on the actor's event loop).
    The requests and replies are the table's (see the module's docstring)."""

    def __init__(self) -> None:
        self._instance = uuid.uuid4().hex
        self._table: Table[_Caller] = Table(MAX_VALUE, self._reply, self._resumed)
        self._callers: dict[str, _Caller] = {}  # those that hold a lock or wait for one
        self._dropped: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._dead: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._namespace = _pid_namespace()
        self._parked = 0  # requests (lock requests and writes) waiting for a lock now
        self._checks = 0  # holders checked by a waiting request

    async def hello(self) -> tuple[str, int]:
        """A connection's first call: this instance of the store, and the max value size."""
        return self._instance, MAX_VALUE

    async def call(
        self,
        instance: str,
        connection: str,
        process: Process,
        op: int,
        key: bytes,
        values: list[Value],
    ) -> Reply | None:
        """One request of ``connection``, answered once it is (it may wait for a key lock);
        None when the connection is closed."""
        if instance != self._instance or connection in self._dropped:
            return None
        caller = self._callers.get(connection)
        if caller is None:
            caller = _Caller(connection, process)
        elif caller.parked or caller.answer is not None:
            self._drop(caller)
            return error(ErrorCode.PROTOCOL, "a request while the last one waits")
        caller.answered.clear()
        try:
            self._table.request(Request(caller, op, key, values))
        except BadRequest as exc:
            self._drop(caller)
            return error(ErrorCode.PROTOCOL, f"malformed request: {exc}")
        if caller.parked:
            self._callers[connection] = caller
            try:
                await self._wait(caller, key)
                if key in caller.held and not await self._alive(process):
                    self._drop(caller)  # it died while it waited: the lock goes on
            except asyncio.CancelledError:  # nobody will take the answer
                self._drop(caller)
                raise
        answer, caller.answer = caller.answer, None
        if caller.closed:
            return None
        if caller.held:
            self._callers[connection] = caller
        else:  # nothing held, nothing waits: a new one is the same
            self._callers.pop(connection, None)
        return answer

    async def drop(self, connection: str) -> None:
        """Close ``connection``: release its locks, withdraw its waiting request; refuse its
        requests that come after this."""
        caller = self._callers.get(connection)
        if caller is None:
            _remember(self._dropped, connection)
        else:
            self._drop(caller)

    async def stats(self) -> dict[str, int]:
        """A snapshot: ``keys`` held, ``locks`` held, requests ``waiting`` for a lock,
        holders ``checked`` by waiting requests, workers found ``dead`` (holders or
        requesters), ``ops`` requests answered."""
        return {
            "keys": self._table.keys,
            "locks": self._table.locks,
            "waiting": self._parked,
            "checked": self._checks,
            "dead": len(self._dead),
            "ops": self._table.ops,
        }

    # ---- inside the actor -----------------------------------------------------------------------

    def _reply(self, caller: _Caller, answer: Reply) -> None:
        caller.answer = answer
        caller.answered.set()

    def _resumed(self, caller: _Caller) -> None:
        """Nothing queued behind: a connection sends its next request after this answer."""

    def _drop(self, caller: _Caller) -> None:
        if not caller.closed:
            self._table.drop(caller)
        caller.answered.set()
        self._callers.pop(caller.id, None)
        _remember(self._dropped, caller.id)

    async def _wait(self, caller: _Caller, key: bytes) -> None:
        """Wait until ``caller``'s request is answered or the caller is dropped; meanwhile,
        check every ``HOLDER_CHECK`` seconds that the holder of ``key``'s lock is alive."""
        self._parked += 1
        try:
            while not caller.answered.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOLDER_CHECK):
                        await caller.answered.wait()
                if not caller.answered.is_set():
                    await self._check(key)
        finally:
            self._parked -= 1

    async def _check(self, key: bytes) -> None:
        """Drop every connection of the worker that holds ``key``'s lock if it is dead."""
        holder = self._table.lock_holder(key)
        if holder is None:
            return
        self._checks += 1
        if await self._alive(holder.process):
            return
        dead = holder.process[0]
        log.warning("releasing the state locks of Ray worker %s: its process died", dead[:8])
        for caller in [c for c in self._callers.values() if c.process[0] == dead]:
            self._drop(caller)

    async def _alive(self, process: Process) -> bool:
        worker_id, pid, started, namespace = process
        if worker_id in self._dead:
            return False
        if namespace and namespace == self._namespace:  # a process of this node: look
            alive = _start_time(pid) == started
        else:  # ask Ray (a call to the GCS: off the event loop)
            alive = await asyncio.to_thread(_ray_worker_alive, worker_id)
        if not alive:
            _remember(self._dead, worker_id)
        return alive


def _remember(seen: collections.OrderedDict[str, None], item: str) -> None:
    seen[item] = None
    if len(seen) > _REMEMBERED:
        seen.popitem(last=False)


# ==== the worker side ============================================================================


_actor: Any = None  # this process's handle of its node's store actor
_process: Process | None = None
_actor_lock = threading.Lock()


def node_state() -> State | None:
    """This node's store when this process is a Ray worker (remote code on Ray), else None."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    try:
        worker = ray._private.worker
        if worker.global_worker.mode != worker.WORKER_MODE:
            return None  # a driver: not remote code
    except AttributeError:
        return None
    return _RAY_STATE


def _store() -> tuple[Any, Process]:
    """The store actor of this node (created if there is none yet), and this process."""
    global _actor, _process
    actor, process = _actor, _process
    if actor is not None and process is not None and process[1] == os.getpid():
        return actor, process
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    with _actor_lock:
        if _actor is None or _process is None or _process[1] != os.getpid():
            context = ray.get_runtime_context()
            node_id = context.get_node_id()
            pid = os.getpid()
            started = _start_time(pid)
            # No start time to check by (no /proc): the store asks Ray instead (no namespace).
            namespace = _pid_namespace() if started is not None else ""
            _process = (context.get_worker_id(), pid, started or 0, namespace)
            _actor = (
                ray.remote(_NodeStore)
                .options(
                    name=node_id,
                    namespace=STATE_NAMESPACE,
                    get_if_exists=True,
                    lifetime="detached",
                    num_cpus=0,
                    max_concurrency=MAX_CONCURRENCY,
                    max_restarts=-1,
                    max_task_retries=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                )
                .remote()
            )
        return _actor, _process


def _forget_store(actor: Any) -> None:
    global _actor
    with _actor_lock:
        if _actor is actor:
            _actor = None


def _result(actor: Any, ref: Any) -> Any:
    """The answer of a call of the store actor; ``SperseError`` if the call failed."""
    ray = import_ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        if isinstance(exc, ray.exceptions.RayActorError):
            _forget_store(actor)  # a new handle next time (Ray may be restarting the store)
        raise SperseError(
            f"the state store of this Ray node failed ({first_line(exc)}); the node may be "
            "stopping, or the store's process died and Ray restarts it empty. The operation "
            "may or may not have been applied. (The store is the actor named by the node's "
            f"id in the Ray namespace {STATE_NAMESPACE!r}.)"
        ) from exc


class _Connection:
    """One thread's connection to its node's store (a ``Connection`` of
    :mod:`sperse._state.client`): one actor call per request. Closed on any failure of an
    exchange, telling the store to drop it."""

    __slots__ = ("actor", "closed", "id", "instance", "max_value", "process")

    def __init__(self, actor: Any, process: Process, instance: str, max_value: int) -> None:
        self.actor = actor
        self.process = process
        self.instance = instance
        self.max_value = max_value
        self.id = uuid.uuid4().hex
        self.closed = False

    def call(
        self, op: int, key: bytes, values: tuple[tuple[int, bytes], ...] = ()
    ) -> tuple[int, bytes]:
        """Send one request, return the reply's (kind, bytes); a store error raises."""
        if self.closed:
            raise ConnectionResetError("this thread's connection to the store was closed")
        decoded = [wire_value(kind, data) for kind, data in values]
        try:
            ref = self.actor.call.remote(self.instance, self.id, self.process, op, key, decoded)
            answer: Reply | None = _result(self.actor, ref)
        except BaseException:  # a cancel, or Ray failed: the exchange is lost
            self.close()
            raise
        if answer is None:
            self.closed = True
            raise ConnectionResetError(
                "the state store of this Ray node closed this thread's connection: the store "
                "restarted (empty), or took this worker for dead"
            )
        status, kind, data = read_reply(answer)
        if status != Status.OK:
            if kind == ErrorCode.PROTOCOL:  # the store dropped the connection
                self.closed = True
            raise _store_error(kind, data)
        return kind, data

    def close(self) -> None:
        """Tell the store to drop this connection (it releases the connection's locks);
        errors are not raised (a store that failed took its locks with it)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            _result(self.actor, self.actor.drop.remote(self.id))  # applied even if interrupted


class _Link:
    """How a ``State`` reaches this node's store: this thread's connection (a ``Link`` of
    :mod:`sperse._state.client`), made on demand."""

    def __init__(self) -> None:
        self._local = threading.local()

    def connection(self) -> tuple[Connection, bool]:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and conn.process[1] == os.getpid():
            return conn, False
        actor, process = _store()  # (a forked child makes its own, leaving the parent's be)
        instance, max_value = _result(actor, actor.hello.remote())
        conn = _Connection(actor, process, instance, max_value)
        self._local.conn = conn
        return conn, True

    def drop(self) -> None:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.process[1] == os.getpid():
            conn.close()


class RayState(State):
    """``sperse.state()`` in remote code on Ray: the store of this node (see the module's
    docstring). The same operations and semantics as on a sperse server: ``State``'s own
    code, over this node's store actor."""

    __slots__ = ()

    # The one override: ``State`` cannot tell a node's store from a server's.
    def __repr__(self) -> str:
        return "<sperse.state(): the store of this Ray node>"


_RAY_STATE: Final = RayState(_Link())
PROVIDERS.append(node_state)  # sperse.state() in a Ray worker: the store of its node
