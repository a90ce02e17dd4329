"""The store's wire protocol, against a ``StateStore`` in this process over a raw socket:
authentication, limits, malformed frames, and locks that go with their connection.

(``tests/state/test_state.py`` covers ``sperse.state()`` itself, on real servers.)
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from sperse._server.store import StateStore
from sperse._state.wire import HELLO, MAGIC, REPLY, REQUEST, VALUE, ErrorCode, Kind, Op, Status

WAIT = 30.0  # a deadline, never a delay


@pytest.fixture
def store() -> Iterator[StateStore]:
    s = StateStore(max_value_size=64, members=None)
    s.start()
    yield s
    s.stop()


Connect = Callable[..., socket.socket]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """``connect(store, key=None, hello=True)``: a socket to ``store``, closed at the end."""
    opened: list[socket.socket] = []

    def make(store: StateStore, key: str | None = None, hello: bool = True) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        opened.append(sock)
        sock.settimeout(WAIT)
        sock.connect("\0" + store.address[1:])
        if hello:
            secret = (store._key if key is None else key).encode()
            sock.sendall(HELLO.pack(MAGIC, len(secret)) + secret)
        return sock

    yield make
    for sock in opened:
        sock.close()


def _reply(sock: socket.socket) -> tuple[int, int, bytes]:
    data = b""
    while len(data) < REPLY.size:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed")
        data += chunk
    status, kind, length = REPLY.unpack_from(data)
    while len(data) < REPLY.size + length:
        data += sock.recv(4096)
    return status, kind, data[REPLY.size :]


def _request(sock: socket.socket, op: Op, key: bytes, *values: tuple[int, bytes]) -> None:
    body = key + b"".join(VALUE.pack(kind, len(data)) + data for kind, data in values)
    sock.sendall(REQUEST.pack(len(body), op, len(key)) + body)


def _wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def test_a_wrong_key_is_refused_and_nothing_after_it_is_read(
    store: StateStore, connect: Connect
) -> None:
    sock = connect(store, hello=False)
    secret = b"0" * 32
    body = b"k" + VALUE.pack(Kind.INT, 1) + b"\x01"
    sock.sendall(  # the hello and a request behind it, at once
        HELLO.pack(MAGIC, len(secret)) + secret + REQUEST.pack(len(body), Op.SET, 1) + body
    )
    status, code, message = _reply(sock)
    assert (status, code) == (Status.ERROR, ErrorCode.REFUSED)
    assert b"wrong key" in message
    assert _closed(sock)
    assert store.stats().keys == 0


def test_a_process_that_is_not_a_worker_is_refused(connect: Connect) -> None:
    s = StateStore(max_value_size=64, members=lambda: ())
    s.start()
    try:
        sock = connect(s)
        status, code, message = _reply(sock)
        assert (status, code) == (Status.ERROR, ErrorCode.REFUSED)
        assert b"not a worker" in message
        assert _closed(sock)
    finally:
        s.stop()


def test_a_first_frame_that_is_no_hello_closes_the_connection(
    store: StateStore, connect: Connect
) -> None:
    sock = connect(store, hello=False)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert _closed(sock)


def test_a_value_over_the_max_size_is_refused_and_the_connection_goes_on(
    store: StateStore, connect: Connect
) -> None:
    sock = connect(store)
    assert _reply(sock)[:2] == (Status.OK, Kind.INT)
    _request(sock, Op.SET, b"big", (Kind.PICKLE, b"x" * 65))
    status, code, message = _reply(sock)
    assert (status, code) == (Status.ERROR, ErrorCode.TOO_LARGE)
    assert b"'big'" in message and b"65 bytes" in message
    _request(sock, Op.SET, b"small", (Kind.PICKLE, b"x" * 64))
    assert _reply(sock) == (Status.OK, Kind.MISSING, b"")
    assert store.stats().keys == 1


def test_a_malformed_request_closes_the_connection(store: StateStore, connect: Connect) -> None:
    sock = connect(store)
    _reply(sock)
    _request(sock, Op.SET, b"k", (Kind.LIST, b""))  # no value is a LIST
    assert _reply(sock)[:2] == (Status.ERROR, ErrorCode.PROTOCOL)
    assert _closed(sock)


def test_a_lock_is_released_when_its_connection_closes(store: StateStore, connect: Connect) -> None:
    holder, waiter, writer = connect(store), connect(store), connect(store)
    for sock in (holder, waiter, writer):
        _reply(sock)
    _request(holder, Op.LOCK_GET, b"k")
    assert _reply(holder) == (Status.OK, Kind.MISSING, b"")
    _request(writer, Op.SET, b"k", (Kind.INT, b"\x05"))  # a write waits for the lock too
    _wait_until(lambda: store.stats().waiting == 1)
    _request(waiter, Op.LOCK_GET, b"k")
    _wait_until(lambda: store.stats().waiting == 2)
    holder.close()  # as if its worker died
    assert _reply(writer) == (Status.OK, Kind.MISSING, b"")
    assert _reply(waiter) == (Status.OK, Kind.INT, b"\x05")  # it holds the lock now
    _request(waiter, Op.SET_UNLOCK, b"k", (Kind.INT, b"\x06"))
    assert _reply(waiter)[:2] == (Status.OK, Kind.MISSING)
    assert store.stats().locks == 0


def test_store_counts_ops_keys_and_bytes(store: StateStore, connect: Connect) -> None:
    sock = connect(store)
    _reply(sock)
    _request(sock, Op.SET, b"a", (Kind.PICKLE, b"p" * 10))
    assert _reply(sock) == (Status.OK, Kind.MISSING, b"")
    _request(sock, Op.INCR, b"b", (Kind.INT, b"\x02"))
    assert _reply(sock) == (Status.OK, Kind.INT, b"\x02")
    stats = store.stats()
    assert (stats.ops, stats.keys, stats.bytes, stats.connections) == (2, 2, 18, 1)
