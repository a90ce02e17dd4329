"""``sperse.state()``, ``sperse.worker_cache()``: state that remote code keeps on its server.

``state()`` is the key-value store of the server a task runs on, shared by all of that
server's worker processes (the store itself is :mod:`sperse._server.store`, on the server's
event loop). In a Ray worker it is the store actor of the worker's node instead, the same
table behind a ``Link`` of its own (:mod:`sperse._backends.ray.state`; what follows is the
sperse-server side).
``worker_cache()`` is a dict of this process, for what cannot be pickled. ``shared()``
(:mod:`sperse._state.shared`) is both.

Invariants:

- Values cross to the store as plain ints and floats (kept as numbers there, so ``incr``
  and ``cas`` work in the store) or as pickles made here; the store never opens a pickle.
  Pickles are opened here, in the worker that reads the value.
- One connection per thread (usually one per worker process: a task runs on its main
  thread). A key lock belongs to the connection that took it, so a thread that waits for a
  lock never holds up the other threads, and a worker that dies, or a connection dropped in
  the middle of an exchange (a cancel), releases every lock it held.
- Any failure during an exchange closes the connection, so a late reply is never read as
  the answer to the next request. The next call connects again; a read, ``set``, ``delete``
  or ``setdefault`` whose connection turned out to be broken is sent once more, on a new one.
- ``worker_cache`` runs a factory once per process and key, even when threads ask at the
  same time; a process forked from this one starts with an empty cache and no connection.

The wire format is :mod:`sperse._state.wire`; the store's semantics, one table for every
backend, :mod:`sperse._state.table`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Protocol, TypeVar

from sperse._serialize import dumps, loads
from sperse._state.wire import (
    ADDRESS_ENV,
    DOUBLE,
    HELLO,
    KEY_ENV,
    KEY_MAX,
    LENGTH,
    MAGIC,
    REPLY,
    REQUEST,
    VALUE,
    ErrorCode,
    Kind,
    Op,
    Status,
    int_bytes,
)
from sperse.errors import SperseError

__all__ = [
    "PROVIDERS",
    "Connection",
    "Link",
    "State",
    "snapshot",
    "state",
    "worker_cache",
]

T = TypeVar("T")

_READ_SIZE = 1 << 16

# Sent again, once, on a new connection when an old one turned out to be broken: they mean
# the same the second time (a lock taken on the broken connection went with it).
_RETRIED = frozenset(
    {Op.GET, Op.SET, Op.DELETE, Op.SETDEFAULT, Op.KEYS, Op.ITEMS, Op.LOCK_GET, Op.ONCE_GET}
)

_OUTSIDE = (
    "sperse.state() works only inside remote code: a task running on a sperse server, a "
    "LocalBackend worker or a Ray worker. This process is not one of their workers. Call it "
    "in a @sperse.remote function; to look at a server's store from here, run a small task "
    "on that server that returns what you need (cluster.state(server) does)."
)


def _recv_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    """One reply: (status, kind or error code, bytes). ``ConnectionError`` at the end of
    the stream."""
    data = sock.recv(_READ_SIZE)
    while len(data) < REPLY.size:
        if not data:
            raise ConnectionResetError("the server's state store closed the connection")
        more = sock.recv(_READ_SIZE)
        if not more:
            raise ConnectionResetError("the server's state store closed the connection")
        data += more
    status, kind, length = REPLY.unpack_from(data)
    end = REPLY.size + length
    if len(data) == end:
        return status, kind, data[REPLY.size :]
    if len(data) > end:  # one request, one reply: nothing may follow it
        raise ConnectionResetError("the server's state store sent more than one reply")
    body = bytearray(length)
    have = len(data) - REPLY.size
    body[:have] = data[REPLY.size :]
    view = memoryview(body)
    while have < length:
        n = sock.recv_into(view[have:])
        if not n:
            raise ConnectionResetError("the server's state store closed the connection")
        have += n
    return status, kind, bytes(body)


class _Connection:
    """One thread's connection to the store. Closed on any failure of an exchange."""

    __slots__ = ("__weakref__", "closed", "max_value", "sock")

    def __init__(self, sock: socket.socket, max_value: int) -> None:
        self.sock = sock
        self.max_value = max_value
        self.closed = False
        weakref.finalize(self, sock.close)  # a thread that ends drops its connection

    def call(
        self, op: int, key: bytes, values: tuple[tuple[int, bytes], ...] = ()
    ) -> tuple[int, bytes]:
        """Send one request, return the reply's (kind, bytes); a store error raises."""
        if values:
            parts = [key]
            size = len(key)
            for kind, data in values:
                parts.append(VALUE.pack(kind, len(data)))
                parts.append(data)
                size += VALUE.size + len(data)
            frame = [REQUEST.pack(size, op, len(key)), *parts]
        else:
            size = len(key)
            frame = [REQUEST.pack(size, op, len(key)), key]
        try:
            if size < _READ_SIZE:
                self.sock.sendall(b"".join(frame))
            else:  # no copy of a big value
                for part in frame:
                    self.sock.sendall(part)
            status, kind, data = _recv_reply(self.sock)
        except BaseException:  # a cancel or a broken socket: the exchange is lost
            self.close()
            raise
        if status != Status.OK:
            raise _store_error(kind, data)
        return kind, data

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def _store_error(code: int, data: bytes) -> Exception:
    message = data.decode("utf-8", "replace")
    if code == ErrorCode.TYPE:
        return TypeError(message)
    return SperseError(message)


def _connect() -> _Connection:
    addresses = [a for a in os.environ.get(ADDRESS_ENV, "").split(",") if a]
    keys = os.environ.get(KEY_ENV, "").split(",")
    if not addresses:
        raise SperseError(_OUTSIDE)
    reasons: list[str] = []
    for address, key in zip(addresses, keys, strict=False):
        name = "\0" + address[1:] if address.startswith("@") else address
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(name)
            secret = key.encode("ascii")
            sock.sendall(HELLO.pack(MAGIC, len(secret)) + secret)
            status, kind, data = _recv_reply(sock)
        except (OSError, UnicodeError) as exc:
            sock.close()
            reasons.append(f"{address}: {exc}")
            continue
        if status == Status.OK and kind == Kind.INT:
            return _Connection(sock, int.from_bytes(data, "big", signed=True))
        sock.close()
        reasons.append(f"{address}: {data.decode('utf-8', 'replace')}")
    raise SperseError(f"{_OUTSIDE} (Stores tried: {'; '.join(reasons)}.)")


_local = threading.local()


class Connection(Protocol):
    """One thread's way to the store: a request, its reply's (kind, bytes)."""

    max_value: int
    closed: bool

    def call(
        self, op: int, key: bytes, values: tuple[tuple[int, bytes], ...] = ()
    ) -> tuple[int, bytes]: ...

    def close(self) -> None: ...


class Link(Protocol):
    """How a ``State`` reaches its store: this thread's connection, made on demand."""

    def connection(self) -> tuple[Connection, bool]:
        """This thread's connection, and whether it was made just now."""
        ...

    def drop(self) -> None:
        """Close this thread's connection: the store releases every lock it held."""
        ...


class _SocketLink:
    """The server's store, over the abstract Unix socket its workers inherit."""

    def connection(self) -> tuple[Connection, bool]:
        conn: _Connection | None = getattr(_local, "conn", None)
        if conn is not None and not conn.closed:
            return conn, False
        conn = _connect()
        _local.conn = conn
        return conn, True

    def drop(self) -> None:
        conn: _Connection | None = getattr(_local, "conn", None)
        if conn is not None:
            conn.close()


def _lost(exc: BaseException) -> SperseError:
    return SperseError(
        f"the connection to this server's state store was lost ({exc}); the server may be "
        "stopping. The operation may or may not have been applied"
    )


def _exchange(
    link: Link, op: Op, key: bytes, values: tuple[tuple[int, bytes], ...] = ()
) -> tuple[Connection, int, bytes]:
    """One request on this thread's connection: the connection, and the reply."""
    conn, fresh = link.connection()
    try:
        return conn, *conn.call(op, key, values)
    except OSError as exc:
        if fresh or op not in _RETRIED:
            raise _lost(exc) from exc
    conn, _ = link.connection()
    try:
        return conn, *conn.call(op, key, values)
    except OSError as exc:
        raise _lost(exc) from exc


def _call(
    link: Link, op: Op, key: bytes, values: tuple[tuple[int, bytes], ...] = ()
) -> tuple[int, bytes]:
    _, kind, data = _exchange(link, op, key, values)
    return kind, data


def _key(key: str) -> bytes:
    if type(key) is not str:
        raise TypeError(f"a state key is a str, not {type(key).__name__}: {key!r}")
    data = key.encode("utf-8", "surrogatepass")
    if len(data) > KEY_MAX:
        raise ValueError(f"a state key is at most {KEY_MAX} bytes (UTF-8), not {len(data)}")
    return data


def _encode(value: Any, key: str, max_value: int) -> tuple[int, bytes]:
    kind = type(value)
    if kind is int:
        return Kind.INT, int_bytes(value)
    if kind is float:
        return Kind.FLOAT, DOUBLE.pack(value)
    data = dumps(value, what=f"the value of state key {key!r}")
    if len(data) > max_value:
        raise SperseError(
            f"the value of state key {key!r} is {len(data)} bytes pickled, more than this "
            f"server's max value size ({max_value} bytes). Keep big values in a file or in "
            "the task's result; start the server with a larger --max-value-size"
        )
    return Kind.PICKLE, data


def _decode(kind: int, data: bytes, key: str) -> Any:
    if kind == Kind.INT:
        return int.from_bytes(data, "big", signed=True)
    if kind == Kind.FLOAT:
        return DOUBLE.unpack(data)[0]
    if kind == Kind.PICKLE:
        return loads(data, what=f"the value of state key {key!r}")
    raise SperseError(f"the state store sent a value of unknown kind {kind} for key {key!r}")


def _number(n: int | float) -> tuple[int, bytes]:
    kind = type(n)
    if kind is int:
        return Kind.INT, int_bytes(n)  # type: ignore[arg-type]
    if kind is float:
        return Kind.FLOAT, DOUBLE.pack(n)
    raise TypeError(f"incr() adds an int or a float, not {type(n).__name__}")


class State:
    """The key-value store of the server this code runs on: ``sperse.state()``.

    Shared by every task on that server, in all of its worker processes; every operation
    is atomic. Keys are strings. Values are any picklable object; ints and floats are kept
    as numbers by the store, so ``incr`` and ``cas`` on them happen there. The store lives
    as long as the server; values are not persisted.
    """

    __slots__ = ("_link",)

    def __init__(self, link: Link | None = None) -> None:
        """``link``: how to reach the store (default: the server's, over its socket)."""
        self._link: Link = link if link is not None else _SOCKETS

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it has none."""
        kind, data = _call(self._link, Op.GET, _key(key))
        return default if kind == Kind.MISSING else _decode(kind, data, key)

    def set(self, key: str, value: Any) -> None:
        conn, _ = self._link.connection()
        _call(self._link, Op.SET, _key(key), (_encode(value, key, conn.max_value),))

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        _, data = _call(self._link, Op.DELETE, _key(key))
        return data == b"\x01"

    def incr(self, key: str, n: int | float = 1) -> int | float:
        """Add ``n`` to the number ``key`` holds (a missing key holds 0); the new number.

        ``TypeError`` if the key holds anything else than an int or a float.
        """
        encoded, number = _key(key), _number(n)
        try:
            kind, data = _call(self._link, Op.INCR, encoded, (number,))
        except TypeError as exc:
            held = type(self.get(key)).__name__
            raise TypeError(
                f"state key {key!r} holds a {held}, not a number: incr() adds to an int or "
                "a float only"
            ) from exc
        new: int | float = _decode(kind, data, key)
        return new

    def setdefault(self, key: str, value: Any) -> Any:
        """Set ``key`` to ``value`` unless it has a value; the value it holds now."""
        conn, _ = self._link.connection()
        kind, data = _call(
            self._link, Op.SETDEFAULT, _key(key), (_encode(value, key, conn.max_value),)
        )
        return _decode(kind, data, key)

    def cas(self, key: str, expected: Any, new: Any) -> bool:
        """Compare and set: if ``key`` holds ``expected``, set it to ``new`` and return True.

        Numbers (int, float) compare as numbers. Anything else compares by its pickle: two
        values are equal when they pickle to the same bytes, which holds for str, bytes,
        and tuples of them, but not always for dicts or sets built in different orders.
        A missing key matches nothing (create a key with ``setdefault``).
        """
        conn, _ = self._link.connection()
        values = (_encode(expected, key, conn.max_value), _encode(new, key, conn.max_value))
        _, data = _call(self._link, Op.CAS, _key(key), values)
        return data == b"\x01"

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Set ``key`` to ``fn(value)`` atomically (``fn(default)`` when it has no value), and
        return the new value.

        ``fn`` runs here, while the key is locked: other ``update``/``once`` calls and
        writes of the key wait for it. If ``fn`` raises, nothing changes and the error
        propagates; if this process dies meanwhile, the lock is released.
        """
        encoded = _key(key)
        conn: Connection | None = None
        try:
            conn, kind, data = _exchange(self._link, Op.LOCK_GET, encoded)  # the lock is conn's
            old = default if kind == Kind.MISSING else _decode(kind, data, key)
            new = fn(old)
            value = _encode(new, key, conn.max_value)
        except Exception:
            if conn is not None:
                _unlock(conn, encoded)
            raise
        except BaseException:  # a cancel, at any moment: the lock goes with the connection
            self._link.drop()
            raise
        try:
            conn.call(Op.SET_UNLOCK, encoded, (value,))
        except OSError as exc:
            raise _lost(exc) from exc
        return new

    def once(self, key: str, factory: Callable[[], T]) -> T:
        """The value of ``key``, made by ``factory()`` if it has none: once per server.

        When many tasks ask at the same time, one runs ``factory`` and the others wait and
        get its value. If ``factory`` raises, the error goes to that task only, and the next
        one to ask runs its factory. The value must be picklable (for what is not, use
        :func:`worker_cache`).
        """
        encoded = _key(key)
        conn: Connection | None = None
        try:
            conn, kind, data = _exchange(self._link, Op.ONCE_GET, encoded)
            if kind != Kind.MISSING:  # made already: no lock was taken
                found: T = _decode(kind, data, key)
                return found
            value = factory()
            payload = _encode(value, key, conn.max_value)
        except Exception:
            if conn is not None and kind == Kind.MISSING:
                _unlock(conn, encoded)
            raise
        except BaseException:  # a cancel, at any moment: the lock goes with the connection
            self._link.drop()
            raise
        try:
            conn.call(Op.SET_UNLOCK, encoded, (payload,))
        except OSError as exc:
            raise _lost(exc) from exc
        return value

    def keys(self) -> list[str]:
        """The keys, as they are now."""
        _, data = _call(self._link, Op.KEYS, b"")
        keys: list[str] = []
        view = memoryview(data)
        at = 0
        while at < len(view):
            (length,) = LENGTH.unpack_from(view, at)
            at += LENGTH.size
            keys.append(bytes(view[at : at + length]).decode("utf-8", "surrogatepass"))
            at += length
        return keys

    def items(self) -> list[tuple[str, Any]]:
        """The keys and their values, as they are now."""
        _, data = _call(self._link, Op.ITEMS, b"")
        items: list[tuple[str, Any]] = []
        view = memoryview(data)
        at = 0
        while at < len(view):
            (length,) = LENGTH.unpack_from(view, at)
            at += LENGTH.size
            key = bytes(view[at : at + length]).decode("utf-8", "surrogatepass")
            at += length
            kind, size = VALUE.unpack_from(view, at)
            at += VALUE.size
            items.append((key, _decode(kind, bytes(view[at : at + size]), key)))
            at += size
        return items

    def __repr__(self) -> str:
        return "<sperse.state(): the store of this server>"


def _unlock(conn: Connection, key: bytes) -> None:
    if conn.closed:
        return  # the store released the lock with the connection
    with contextlib.suppress(OSError):  # closed: released with it
        conn.call(Op.UNLOCK, key)


_SOCKETS = _SocketLink()
_STATE = State()

# Stores of backends whose workers run remote code in-process, each asked in turn before the
# server's: a provider returns this process's store, or None when it is not one of its
# workers. The Ray backend's store registers itself (sperse._backends.ray.state).
PROVIDERS: list[Callable[[], State | None]] = []


def state() -> State:
    """The key-value store of the server this remote code runs on (see :class:`State`).

    ``SperseError`` outside remote code, where there is no such store. In a Ray worker it
    is the store of the worker's node (:mod:`sperse._backends.ray.state`).
    """
    for provider in PROVIDERS:
        found = provider()
        if found is not None:
            return found
    try:
        _SOCKETS.connection()
    except OSError as exc:
        raise _lost(exc) from exc
    return _STATE


def snapshot() -> dict[str, Any]:
    """All keys and values of this server's store (run it as a task to look at a store)."""
    return dict(state().items())


_MISSING: Any = object()
_cache: dict[Hashable, Any] = {}
_cache_lock = threading.Lock()
_building: dict[Hashable, tuple[threading.Lock, int]] = {}  # key -> (lock, builder's thread)


def worker_cache(key: Hashable, factory: Callable[[], T]) -> T:
    """``factory()``, made once in this process for ``key`` and kept: for what cannot be
    pickled or sent (a database connection, a loaded model).

    Threads that ask while the factory runs wait for its value; if it raises, the error
    propagates and the next call runs it again. Each worker process has its own cache.
    """
    value = _cache.get(key, _MISSING)
    if value is not _MISSING:
        return value  # type: ignore[no-any-return]
    me = threading.get_ident()
    with _cache_lock:
        value = _cache.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        lock, builder = _building.get(key, (None, 0))
        if lock is None:
            lock = threading.Lock()
            _building[key] = (lock, me)
            lock.acquire()
            builder = me
        elif builder == me:
            raise RuntimeError(
                f"worker_cache({key!r}) was called again by its own factory: it would wait "
                "for itself forever"
            )
    if builder != me:
        with lock:  # the builder releases it when done, made or failed
            pass
        return worker_cache(key, factory)
    try:
        made = factory()
        with _cache_lock:
            _cache[key] = made
        return made
    finally:
        with _cache_lock:
            _building.pop(key, None)
        lock.release()


def _after_fork_in_child() -> None:
    global _local, _cache_lock
    _local = threading.local()
    _cache_lock = threading.Lock()
    _cache.clear()
    _building.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
