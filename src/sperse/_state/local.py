"""A store in this process: the one table (:mod:`sperse._state.table`) behind a lock, for
backends whose tasks run in this process's threads (the in-memory backend).

Each thread is a holder of the table, as a connection is for the server's store: a lock it
takes is its own, a request that waits for a lock waits in that thread only, and dropping
the thread's connection (a cancel in the middle of an ``update``) releases its locks.
Values cross as they do over the socket (numbers as numbers, the rest as pickles), so
``sperse.state()`` means the same here as on a server.
"""

from __future__ import annotations

import threading

from sperse._state.client import Connection, State, _store_error
from sperse._state.table import Holder, Reply, Request, Table, read_reply, wire_value
from sperse._state.wire import Status

__all__ = ["LocalStore"]


class _Connection(Holder):
    """One thread's connection: a holder of the table's locks."""

    __slots__ = ("_store", "answer", "max_value")

    def __init__(self, store: LocalStore) -> None:
        super().__init__()
        self._store = store
        self.max_value = store.max_value
        self.answer: Reply | None = None

    def call(
        self, op: int, key: bytes, values: tuple[tuple[int, bytes], ...] = ()
    ) -> tuple[int, bytes]:
        if self.closed:
            raise ConnectionResetError("this thread's connection to the store was dropped")
        decoded = [wire_value(kind, data) for kind, data in values]
        with self._store.cond:
            self._store.table.request(Request(self, op, key, decoded))
            while self.answer is None:
                self._store.cond.wait()
            answer, self.answer = self.answer, None
        status, kind, body = read_reply(answer)
        if status != Status.OK:
            raise _store_error(kind, body)
        return kind, body

    def close(self) -> None:
        with self._store.cond:
            if not self.closed:
                self._store.table.drop(self)


class LocalStore:
    """The store of one in-process backend; ``state`` is its ``sperse.state()``."""

    def __init__(self, max_value: int) -> None:
        self.max_value = max_value
        self.cond = threading.Condition()
        self.table: Table[_Connection] = Table(max_value, self._reply, self._resumed)
        self._local = threading.local()
        self.state = State(self)

    def connection(self) -> tuple[Connection, bool]:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed:
            return conn, False
        conn = _Connection(self)
        self._local.conn = conn
        return conn, True

    def drop(self) -> None:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()

    def _reply(self, holder: _Connection, reply: Reply) -> None:
        holder.answer = reply  # under self.cond: every table call is
        self.cond.notify_all()

    def _resumed(self, holder: _Connection) -> None:
        """Nothing queued behind: each thread waits for its one request's answer."""
