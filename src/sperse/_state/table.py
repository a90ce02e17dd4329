"""The state store's semantics, as one pure table: values, key locks and their holders.

Every store is this table behind a shell that carries requests to it: the server's store
(:mod:`sperse._server.store`, a socket per worker thread), the Ray backend's store actor
(:mod:`sperse._backends.ray.state`, an actor call per request), and any backend that keeps
the store in-process (:mod:`sperse._state.local`). The table does no I/O and reads no clock; it hears ``Request``s and
answers each through ``reply(holder, reply)`` exactly once, in the order of that holder's
requests.

- A *holder* is what may hold key locks: one connection (one worker thread). When it goes
  (``drop``), the locks it held go with it, and the next waiter in line gets each.
- A write (``SET``, ``DELETE``, ``INCR``, ``SETDEFAULT``, ``CAS``) of a key another holder
  has locked waits for the lock, as a ``LOCK_GET`` or ``ONCE_GET`` does: the request is
  *parked* (``holder.parked``), and the holder's later requests wait behind it (the shell
  keeps them). Once it is answered the table calls ``resumed(holder)``.
- Values are ints, floats (kept as numbers: ``incr`` and the numeric ``cas`` happen here)
  or bytes (a pickle the table never opens, compared by its bytes); a pickle over
  ``max_value`` bytes is refused with ``ErrorCode.TOO_LARGE``.
- Replies are in the wire format (:mod:`sperse._state.wire`): the shells send them as
  they are, or read them back (``read_reply``); a shell that gets values as the wire
  carries them turns them into the table's with ``wire_value``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from sperse._state.wire import DOUBLE, LENGTH, REPLY, VALUE, ErrorCode, Kind, Op, Status, int_bytes

__all__ = [
    "BadRequest",
    "Holder",
    "Reply",
    "Request",
    "Table",
    "Value",
    "read_reply",
    "wire_value",
]

Value = int | float | bytes  # bytes: a pickle the table does not open
Reply = bytes | tuple[bytes, bytes]  # (header, data): a big value, not joined

WRITE_APART: Final = 1 << 16  # a value at least this big is replied as (header, data)
WRITES: Final = frozenset({Op.SET, Op.DELETE, Op.INCR, Op.SETDEFAULT, Op.CAS})
ARITY: Final[dict[int, int]] = {
    Op.SET: 1,
    Op.INCR: 1,
    Op.SETDEFAULT: 1,
    Op.CAS: 2,
    Op.SET_UNLOCK: 1,
}


class BadRequest(Exception):
    """A request that cannot be one (an unknown op, the wrong number of values): the shell
    answers it with ``ErrorCode.PROTOCOL`` and closes the holder's connection."""


class Holder:
    """What may hold key locks: one connection of a worker thread (shells subclass it)."""

    __slots__ = ("closed", "held", "parked")

    def __init__(self) -> None:
        self.held: set[bytes] = set()
        self.parked = False  # a request of this holder waits for a key lock
        self.closed = False  # nothing more is answered (set by the shell)


H = TypeVar("H", bound=Holder)


class Request(Generic[H]):
    __slots__ = ("holder", "key", "op", "values")

    def __init__(self, holder: H, op: int, key: bytes, values: list[Value]) -> None:
        self.holder = holder
        self.op = op
        self.key = key
        self.values = values


class _Lock(Generic[H]):
    __slots__ = ("owner", "waiters")

    def __init__(self, owner: H) -> None:
        self.owner = owner
        self.waiters: collections.deque[Request[H]] = collections.deque()


def reply(status: int, kind: int, data: bytes = b"") -> bytes:
    return REPLY.pack(status, kind, len(data)) + data


OK_MISSING: Final = reply(Status.OK, Kind.MISSING)
_TRUE: Final = reply(Status.OK, Kind.INT, b"\x01")
_FALSE: Final = reply(Status.OK, Kind.INT, b"\x00")


def value_reply(value: Value | None) -> Reply:
    if value is None:
        return OK_MISSING
    if isinstance(value, bytes):
        header = REPLY.pack(Status.OK, Kind.PICKLE, len(value))
        return (header, value) if len(value) >= WRITE_APART else header + value
    if isinstance(value, int):
        return reply(Status.OK, Kind.INT, int_bytes(value))
    return reply(Status.OK, Kind.FLOAT, DOUBLE.pack(value))


def error(code: ErrorCode, message: str) -> bytes:
    return reply(Status.ERROR, code, message.encode("utf-8", "replace"))


def read_reply(answer: Reply) -> tuple[int, int, bytes]:
    """A reply as (status, kind or error code, bytes), without joining a big one."""
    if isinstance(answer, bytes):
        status, kind, length = REPLY.unpack_from(answer)
        return status, kind, answer[REPLY.size : REPLY.size + length]
    header, data = answer
    status, kind, _ = REPLY.unpack(header)
    return status, kind, data


def wire_value(kind: int, data: bytes) -> Value:
    """A value as the wire carries it (kind, bytes), as the table keeps it."""
    if kind == Kind.INT:
        return int.from_bytes(data, "big", signed=True)
    if kind == Kind.FLOAT:
        number: float = DOUBLE.unpack(data)[0]
        return number
    return data


def _show(key: bytes) -> str:
    return repr(key.decode("utf-8", "replace"))


def _size(value: Value) -> int:
    return len(value) if isinstance(value, bytes) else 8


class Table(Generic[H]):
    """The values, the locks and their waiters of one store (see the module docstring)."""

    def __init__(
        self,
        max_value: int,
        reply: Callable[[H, Reply], None],
        resumed: Callable[[H], None],
    ) -> None:
        self.max_value = max_value
        self._reply = reply
        self._resumed = resumed
        self._values: dict[bytes, Value] = {}
        self._locks: dict[bytes, _Lock[H]] = {}
        self.bytes = 0  # pickles by their size, numbers as 8
        self.ops = 0  # requests answered
        self._handlers: dict[int, Callable[[Request[H]], Reply | None]] = {
            Op.GET: self._get,
            Op.SET: self._set,
            Op.DELETE: self._delete,
            Op.INCR: self._incr,
            Op.SETDEFAULT: self._setdefault,
            Op.CAS: self._cas,
            Op.KEYS: self._keys,
            Op.ITEMS: self._items,
            Op.LOCK_GET: self._lock_get,
            Op.ONCE_GET: self._once_get,
            Op.SET_UNLOCK: self._set_unlock,
            Op.UNLOCK: self._unlock,
        }

    @property
    def keys(self) -> int:
        return len(self._values)

    @property
    def locks(self) -> int:
        return len(self._locks)

    @property
    def waiting(self) -> int:
        return sum(len(lock.waiters) for lock in self._locks.values())

    def lock_holder(self, key: bytes) -> H | None:
        """Who holds the lock of ``key`` now (None: nobody): whom its waiters wait for."""
        lock = self._locks.get(key)
        return None if lock is None else lock.owner

    def request(self, request: Request[H]) -> None:
        """Answer ``request`` now, or park it until the key lock it waits for is released.
        ``BadRequest`` for a request that cannot be one (nothing changed then)."""
        handler = self._handlers.get(request.op)
        if handler is None:
            raise BadRequest(f"unknown op {request.op}")
        if len(request.values) != ARITY.get(request.op, 0):
            raise BadRequest(f"op {request.op} with {len(request.values)} values")
        self._run(request, handler)

    def drop(self, holder: H) -> None:
        """``holder`` is gone (its connection closed): release every lock it held; its
        parked request, if any, is skipped."""
        holder.closed = True
        for key in list(holder.held):
            self._release(key)

    def _run(self, request: Request[H], handler: Callable[[Request[H]], Reply | None]) -> None:
        holder = request.holder
        if request.op in WRITES:
            lock = self._locks.get(request.key)
            if lock is not None and lock.owner is not holder:
                self._park(lock, request)
                return
        answer = handler(request)
        if answer is not None:
            self.ops += 1
            self._reply(holder, answer)

    def _park(self, lock: _Lock[H], request: Request[H]) -> None:
        request.holder.parked = True
        lock.waiters.append(request)

    def _release(self, key: bytes) -> None:
        """Release the lock of ``key``; its waiters go on in order, until one locks it."""
        lock = self._locks.pop(key)
        lock.owner.held.discard(key)
        waiters = lock.waiters
        while waiters:
            request = waiters.popleft()
            holder = request.holder
            if holder.closed:
                continue
            holder.parked = False
            self._run(request, self._handlers[request.op])
            if not holder.parked:
                self._resumed(holder)  # the requests behind it, if any
            relocked = self._locks.get(key)
            if relocked is not None:
                relocked.waiters.extend(waiters)  # the rest wait for the new holder
                break

    # ---- operations (each returns its reply, or None when the request waits) ------------

    def _put(self, key: bytes, value: Value) -> None:
        old = self._values.get(key)
        self.bytes += _size(value) - (0 if old is None else _size(old))
        self._values[key] = value

    def _too_large(self, request: Request[H]) -> bytes | None:
        for value in request.values:
            if type(value) is bytes and len(value) > self.max_value:
                return error(
                    ErrorCode.TOO_LARGE,
                    f"the value of state key {_show(request.key)} is {len(value)} bytes, more "
                    f"than this server's max value size ({self.max_value} bytes)",
                )
        return None

    def _get(self, request: Request[H]) -> Reply:
        return value_reply(self._values.get(request.key))

    def _set(self, request: Request[H]) -> bytes:
        refused = self._too_large(request)
        if refused is not None:
            return refused
        self._put(request.key, request.values[0])
        return OK_MISSING

    def _delete(self, request: Request[H]) -> bytes:
        old = self._values.pop(request.key, None)
        if old is None:
            return _FALSE
        self.bytes -= _size(old)
        return _TRUE

    def _incr(self, request: Request[H]) -> Reply:
        key = request.key
        old = self._values.get(key, 0)
        n = request.values[0]
        if type(old) is bytes or type(n) is bytes:
            return error(
                ErrorCode.TYPE,
                f"state key {_show(key)} holds a value that is not a number: incr() adds to "
                "an int or a float only",
            )
        new = old + n  # type: ignore[operator]
        self._put(key, new)
        return value_reply(new)

    def _setdefault(self, request: Request[H]) -> Reply:
        held = self._values.get(request.key)
        if held is None:
            refused = self._too_large(request)
            if refused is not None:
                return refused
            held = request.values[0]
            self._put(request.key, held)
        return value_reply(held)

    def _cas(self, request: Request[H]) -> bytes:
        refused = self._too_large(request)
        if refused is not None:
            return refused
        expected, new = request.values
        held = self._values.get(request.key)
        if held is None:
            equal = False
        elif type(held) is bytes or type(expected) is bytes:
            equal = type(held) is type(expected) and held == expected
        else:
            equal = held == expected
        if not equal:
            return _FALSE
        self._put(request.key, new)
        return _TRUE

    def _keys(self, request: Request[H]) -> bytes:
        parts = []
        for key in self._values:
            parts.append(LENGTH.pack(len(key)))
            parts.append(key)
        return reply(Status.OK, Kind.LIST, b"".join(parts))

    def _items(self, request: Request[H]) -> bytes:
        parts = []
        for key, value in self._values.items():
            parts.append(LENGTH.pack(len(key)))
            parts.append(key)
            if type(value) is bytes:
                kind, data = Kind.PICKLE, value
            elif type(value) is int:
                kind, data = Kind.INT, int_bytes(value)
            else:
                kind, data = Kind.FLOAT, DOUBLE.pack(value)
            parts.append(VALUE.pack(kind, len(data)))
            parts.append(data)
        return reply(Status.OK, Kind.LIST, b"".join(parts))

    def _take_lock(self, request: Request[H]) -> bytes | None:
        """Lock the key for the request's holder: None when done, else the reply (an
        error); the request waits (``parked``) when another holder has it."""
        key, holder = request.key, request.holder
        lock = self._locks.get(key)
        if lock is None:
            self._locks[key] = _Lock(holder)
            holder.held.add(key)
            return None
        if lock.owner is holder:
            return error(
                ErrorCode.LOCK,
                f"state key {_show(key)} is already locked by this thread: update() or once() "
                "of a key cannot be called inside update() or once() of the same key",
            )
        self._park(lock, request)
        return None

    def _lock_get(self, request: Request[H]) -> Reply | None:
        refused = self._take_lock(request)
        if refused is not None or request.holder.parked:
            return refused
        return value_reply(self._values.get(request.key))

    def _once_get(self, request: Request[H]) -> Reply | None:
        held = self._values.get(request.key)
        if held is not None:
            return value_reply(held)
        refused = self._take_lock(request)
        if refused is not None or request.holder.parked:
            return refused
        return OK_MISSING  # the asker makes the value, holding the lock

    def _held(self, request: Request[H]) -> bytes | None:
        lock = self._locks.get(request.key)
        if lock is None or lock.owner is not request.holder:
            return error(
                ErrorCode.LOCK, f"state key {_show(request.key)} is not locked by this thread"
            )
        return None

    def _set_unlock(self, request: Request[H]) -> bytes:
        refused = self._held(request) or self._too_large(request)
        if refused is not None:
            return refused
        self._put(request.key, request.values[0])
        self._release(request.key)
        return OK_MISSING

    def _unlock(self, request: Request[H]) -> bytes:
        refused = self._held(request)
        if refused is not None:
            return refused
        self._release(request.key)
        return OK_MISSING
