"""``sperse.state()`` on Ray: the per-server store is one store actor per node.

On Ray a server is a node, so each node has one store: a Ray actor of ``_NodeStore``, named
after the node's id in the namespace ``STATE_NAMESPACE``, pinned to its node (node affinity,
``soft=False``), taking no CPU. The first ``sperse.state()`` call on a node creates it
(``get_if_exists``: every worker of the node gets the same one). It is detached: it lives as
long as its node, not as long as the worker or the client that happened to create it. Ray
restarts it (empty) if its process dies.

Worker side (``RayState``, what ``sperse.state()`` returns in a Ray worker): one actor call
per operation. Values cross as :mod:`sperse._state` sends them to a sperse server's store:
ints and floats as numbers (``incr`` and the numeric comparison of ``cas`` happen in the
actor), everything else as a pickle made here with Sperse's serializer; the actor never
unpickles, and compares pickles by their bytes.

Locks (``update``, ``once``): the actor keeps a lock per key, held by one thread of one
worker process; that thread runs ``fn``/``factory`` and then sets and releases in one call.
Other locks and writes of the key wait in the actor (an ``asyncio.Event``: no polling).

Invariants:

- A lock never outlives its holder's process. A lock records its holder's Ray worker id,
  pid, process start time and pid namespace. A request that waits for a lock checks every
  ``HOLDER_CHECK`` seconds whether the holder's process is alive: from ``/proc`` when the
  holder is in the actor's pid namespace (callers of a store are always processes of its
  node), else from Ray's record of the worker (the GCS's worker table, which Ray marks dead
  as soon as the raylet sees the worker go). A dead holder's locks are released and the
  next in line goes on. Nobody waits, nobody checks: an uncontended lock costs nothing.
- A caller interrupted while it asks for a lock or holds one (a cancel raises
  ``KeyboardInterrupt`` in the task) sends ``unlock`` with the request's token: it releases
  the lock if the request got it, or withdraws the request if it still waits (calls of one
  caller may start out of order on an async actor: an ``unlock`` that comes first is
  remembered, and the request is refused when it comes).
- The actor runs everything on its event loop: each operation is atomic; only waiting for
  a lock awaits.
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
from collections.abc import Callable
from typing import Any, Final, TypeVar

from sperse._backends.ray.imports import import_ray
from sperse._serialize import dumps, loads
from sperse._state import PROVIDERS, State, _key
from sperse.errors import SperseError

__all__ = ["HOLDER_CHECK", "STATE_NAMESPACE", "RayState", "node_state"]

T = TypeVar("T")

log = logging.getLogger("sperse.ray")

STATE_NAMESPACE: Final = "sperse-state"  # the Ray namespace of the store actors, named by node id
HOLDER_CHECK: Final = 1.0  # a request waiting for a lock checks its holder this often
MAX_CONCURRENCY: Final = 10_000  # requests the store actor serves at once (waiting ones too)
_REMEMBERED: Final = 10_000  # unlocks that came before their request, dead workers

Value = int | float | bytes  # bytes: a pickle the actor does not open
Caller = str  # "RAY_WORKER_ID:THREAD_IDENT": who holds a lock, or writes
Process = tuple[str, int, int, str]  # (Ray worker id, pid, start time, pid namespace)

_NESTED = (
    "state key {key!r} is already locked by this thread: update() or once() of a key cannot "
    "be called inside update() or once() of the same key"
)


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


class _Lock:
    __slots__ = ("caller", "process", "released", "token")

    def __init__(self, token: str, caller: Caller, process: Process) -> None:
        self.token = token
        self.caller = caller
        self.process = process
        self.released = asyncio.Event()


class _NodeStore:
    """The store actor of one node (async: every method runs on the actor's event loop).

    Values are numbers or pickles (bytes); None stands for a missing key. The methods that
    can fail answer ``[ok, value or message]``: errors are data, not Ray task errors.
    """

    def __init__(self) -> None:
        self._values: dict[str, Value] = {}
        self._locks: dict[str, _Lock] = {}
        self._waiting: set[str] = set()  # tokens of lock requests waiting now
        self._withdrawn: set[str] = set()  # ... and those of them whose caller gave up
        self._early: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._dead: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._namespace = _pid_namespace()
        self._parked = 0  # requests (lock requests and writes) waiting for a lock now
        self._checks = 0  # holders checked by a waiting request

    # ---- plain operations --------------------------------------------------------------------

    async def get(self, key: str) -> Value | None:
        return self._values.get(key)

    async def set(self, key: str, value: Value, caller: Caller) -> None:
        await self._turn(key, caller)
        self._values[key] = value

    async def delete(self, key: str, caller: Caller) -> bool:
        await self._turn(key, caller)
        return self._values.pop(key, None) is not None

    async def incr(self, key: str, n: int | float, caller: Caller) -> list[Any]:
        await self._turn(key, caller)
        old = self._values.get(key, 0)
        if isinstance(old, bytes):
            return [False, f"state key {key!r} holds a value that is not a number"]
        new = old + n
        self._values[key] = new
        return [True, new]

    async def setdefault(self, key: str, value: Value, caller: Caller) -> Value:
        await self._turn(key, caller)
        return self._values.setdefault(key, value)

    async def cas(self, key: str, expected: Value, new: Value, caller: Caller) -> bool:
        await self._turn(key, caller)
        held = self._values.get(key)
        if held is None:
            return False
        if type(held) is bytes or type(expected) is bytes:
            equal = type(held) is type(expected) and held == expected
        else:
            equal = held == expected
        if equal:
            self._values[key] = new
        return equal

    async def keys(self) -> list[str]:
        return list(self._values)

    async def items(self) -> list[tuple[str, Value]]:
        return list(self._values.items())

    async def stats(self) -> dict[str, int]:
        """A snapshot: ``keys`` held, ``locks`` held, requests ``waiting`` for a lock,
        holders ``checked`` by waiting requests, workers found ``dead`` (holders or
        requesters)."""
        return {
            "keys": len(self._values),
            "locks": len(self._locks),
            "waiting": self._parked,
            "checked": self._checks,
            "dead": len(self._dead),
        }

    # ---- locks ----------------------------------------------------------------------------------

    async def lock(
        self, key: str, token: str, caller: Caller, process: Process, once: bool
    ) -> list[Any]:
        """Lock ``key`` for ``caller``: ``["locked", value or None]``. With ``once``, a key
        that has a value is not locked: ``["value", value]``. ``["error", message]`` for a
        lock the caller holds already; ``["withdrawn", None]`` if the caller gave up."""
        if once and key in self._values:
            return ["value", self._values[key]]
        if token in self._early:  # its caller gave up before it started
            del self._early[token]
            return ["withdrawn", None]
        self._waiting.add(token)
        try:
            waited = False
            while (lock := self._locks.get(key)) is not None:
                if lock.caller == caller:
                    return ["error", _NESTED.format(key=key)]
                waited = True
                await self._wait(lock)
            if token in self._withdrawn or (waited and not await self._alive(process)):
                return ["withdrawn", None]
            if once and key in self._values:  # made while this request waited
                return ["value", self._values[key]]
            self._locks[key] = _Lock(token, caller, process)
            return ["locked", self._values.get(key)]
        finally:
            self._waiting.discard(token)
            self._withdrawn.discard(token)

    async def set_unlock(self, key: str, token: str, value: Value) -> list[Any]:
        """Set ``key`` and release its lock, held by the request ``token``."""
        lock = self._locks.get(key)
        if lock is None or lock.token != token:
            return [
                False,
                f"the lock of state key {key!r} was lost (its store restarted, or took its "
                "holder for dead): the value was not set",
            ]
        self._values[key] = value
        self._release(key)
        return [True, None]

    async def unlock(self, key: str, token: str) -> None:
        """Release the lock of request ``token``, or withdraw that request."""
        lock = self._locks.get(key)
        if lock is not None and lock.token == token:
            self._release(key)
        elif token in self._waiting:
            self._withdrawn.add(token)
        else:  # its request has not started yet: it will be refused when it does
            _remember(self._early, token)

    # ---- inside the actor -----------------------------------------------------------------------

    async def _turn(self, key: str, caller: Caller) -> None:
        """Wait until ``key`` is not locked by another caller than ``caller``."""
        while (lock := self._locks.get(key)) is not None and lock.caller != caller:
            await self._wait(lock)

    async def _wait(self, lock: _Lock) -> None:
        """Wait until ``lock`` is released, or its holder is found dead (then release it)."""
        self._parked += 1
        try:
            async with asyncio.timeout(HOLDER_CHECK):
                await lock.released.wait()
        except TimeoutError:
            pass
        finally:
            self._parked -= 1
        if lock.released.is_set():
            return
        self._checks += 1
        if await self._alive(lock.process):
            return
        dead = lock.process[0]
        log.warning("releasing the state locks of Ray worker %s: its process died", dead[:8])
        for key in [k for k, held in self._locks.items() if held.process[0] == dead]:
            self._release(key)

    def _release(self, key: str) -> None:
        self._locks.pop(key).released.set()

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


def _caller(process: Process) -> Caller:
    return f"{process[0]}:{threading.get_ident()}"


def _result(actor: Any, ref: Any) -> Any:
    """The answer of a call of the store actor; ``SperseError`` if the call failed."""
    ray = import_ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        if isinstance(exc, ray.exceptions.RayActorError):
            _forget_store(actor)  # a new handle next time (Ray may be restarting the store)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SperseError(
            f"the state store of this Ray node failed ({first}); the node may be stopping, or "
            "the store's process died and Ray restarts it empty. The operation may or may "
            f"not have been applied. (The store is the actor named by the node's id in the "
            f"Ray namespace {STATE_NAMESPACE!r}.)"
        ) from exc


def _stored(value: Any, key: str) -> Value:
    kind = type(value)
    if kind is int or kind is float:
        number: int | float = value
        return number
    return dumps(value, what=f"the value of state key {key!r}")


def _loaded(value: Value | None, key: str, default: Any = None) -> Any:
    if value is None:
        return default
    if type(value) is bytes:
        return loads(value, what=f"the value of state key {key!r}")
    return value


class RayState(State):
    """``sperse.state()`` in remote code on Ray: the store of this node (see the module's
    docstring). The same operations and semantics as on a sperse server."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:
        _key(key)
        actor, _ = _store()
        return _loaded(_result(actor, actor.get.remote(key)), key, default)

    def set(self, key: str, value: Any) -> None:
        _key(key)
        actor, process = _store()
        _result(actor, actor.set.remote(key, _stored(value, key), _caller(process)))

    def delete(self, key: str) -> bool:
        _key(key)
        actor, process = _store()
        return bool(_result(actor, actor.delete.remote(key, _caller(process))))

    def incr(self, key: str, n: int | float = 1) -> int | float:
        _key(key)
        if type(n) is not int and type(n) is not float:
            raise TypeError(f"incr() adds an int or a float, not {type(n).__name__}")
        actor, process = _store()
        ok, new = _result(actor, actor.incr.remote(key, n, _caller(process)))
        if not ok:
            held = type(self.get(key)).__name__
            raise TypeError(
                f"state key {key!r} holds a {held}, not a number: incr() adds to an int or "
                "a float only"
            )
        number: int | float = new
        return number

    def setdefault(self, key: str, value: Any) -> Any:
        _key(key)
        actor, process = _store()
        held = _result(actor, actor.setdefault.remote(key, _stored(value, key), _caller(process)))
        return _loaded(held, key)

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        _key(key)
        values = _stored(expected, key), _stored(new, key)
        actor, process = _store()
        return bool(_result(actor, actor.cas.remote(key, *values, _caller(process))))

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        _key(key)
        lock = _KeyLock(key)
        try:
            found = lock.take(once=False)
            new = fn(_loaded(found, key, default))
            lock.set_release(_stored(new, key))
        except BaseException:  # fn raised, or a cancel, at any moment: nothing changes
            lock.release()
            raise
        return new

    def once(self, key: str, factory: Callable[[], T]) -> T:
        _key(key)
        lock = _KeyLock(key)
        try:
            found = lock.take(once=True)
            if not lock.held:  # made already: no lock was taken
                made: T = _loaded(found, key)
                return made
            value = factory()
            lock.set_release(_stored(value, key))
        except BaseException:  # the next once() of the key runs its factory
            lock.release()
            raise
        return value

    def keys(self) -> list[str]:
        actor, _ = _store()
        keys: list[str] = _result(actor, actor.keys.remote())
        return keys

    def items(self) -> list[tuple[str, Any]]:
        actor, _ = _store()
        found: list[tuple[str, Value]] = _result(actor, actor.items.remote())
        return [(key, _loaded(value, key)) for key, value in found]

    def __repr__(self) -> str:
        return "<sperse.state(): the store of this Ray node>"


_RAY_STATE: Final = RayState()
PROVIDERS.append(node_state)  # sperse.state() in a Ray worker: the store of its node


class _KeyLock:
    """One ``update``/``once`` of a key by this thread: its lock request and the lock.

    ``release`` is safe at any moment (a cancel may come anywhere): it releases the lock if
    the store gave it, withdraws the request if it was sent and not answered, and does
    nothing when the store answered without a lock.
    """

    __slots__ = ("actor", "held", "key", "sent", "token")

    def __init__(self, key: str) -> None:
        self.key = key
        self.token = uuid.uuid4().hex
        self.actor: Any = None
        self.sent = False  # the request went to the store, and its answer has not come
        self.held = False

    def take(self, *, once: bool) -> Value | None:
        """Lock the key: its value (None: missing). With ``once``, a key that has a value
        is not locked (``held`` stays False)."""
        actor, process = _store()
        self.actor = actor
        self.sent = True
        status, found = _result(
            actor, actor.lock.remote(self.key, self.token, _caller(process), process, once)
        )
        self.held = status == "locked"
        self.sent = False
        if status == "error":
            raise SperseError(found)
        if status == "withdrawn":
            raise SperseError(f"the lock request of state key {self.key!r} was withdrawn")
        value: Value | None = found
        return value

    def release(self) -> None:
        """Release the lock, or withdraw the request; errors are not raised (a store that
        failed took its locks with it)."""
        if self.held or self.sent:
            with contextlib.suppress(Exception):
                sent = self.actor.unlock.remote(self.key, self.token)
                self.held = self.sent = False
                _result(self.actor, sent)  # (it is applied even if this wait is interrupted)

    def set_release(self, value: Value) -> None:
        """Set the key to ``value`` and release the lock, in one call."""
        sent = self.actor.set_unlock.remote(self.key, self.token, value)
        self.held = False  # (after the call is sent: a cancel before it releases the lock)
        ok, message = _result(self.actor, sent)
        if not ok:
            raise SperseError(message)
