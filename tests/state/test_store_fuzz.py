"""The store's wire protocol under random frames (issue 17: fuzz "the store's protocol"):
whatever one connection sends, before its hello or after, the store answers or closes that
connection, keeps nothing it should not, and serves the next connection.

``SPERSE_FUZZ_EXAMPLES`` sets how many sequences each test tries (``make soak``: more).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sperse._server.store import StateStore
from sperse._state.wire import HELLO, MAGIC, REPLY, REQUEST, VALUE, Kind, Op, Status

WAIT = 30.0  # a deadline, never a delay
MAX_VALUE = 64
FUZZ = settings(
    max_examples=int(os.environ.get("SPERSE_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def store() -> Iterator[StateStore]:
    s = StateStore(max_value_size=MAX_VALUE, members=None)
    s.start()
    yield s
    s.stop()


def opened(store: StateStore, hello: bool) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    sock.connect("\0" + store.address[1:])
    if hello:
        secret = store._key.encode()
        sock.sendall(HELLO.pack(MAGIC, len(secret)) + secret)
        assert read_reply(sock)[0] == Status.OK
    return sock


def read_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    data = b""
    while len(data) < REPLY.size:
        chunk = sock.recv(4096)
        assert chunk, "the store closed the connection"
        data += chunk
    status, kind, length = REPLY.unpack_from(data)
    while len(data) < REPLY.size + length:
        data += sock.recv(4096)
    return status, kind, data[REPLY.size :]


def drain(sock: socket.socket) -> None:
    """Read what the store answers until it closes the connection or the deadline passes
    (a frame cut short waits for its bytes: the store may keep the connection open)."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(2.0)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, ConnectionResetError):
        pass
    finally:
        sock.close()


def still_serves(store: StateStore) -> None:
    sock = opened(store, hello=True)
    try:
        key = b"canary"
        body = key + VALUE.pack(Kind.PICKLE, 3) + b"abc"
        sock.sendall(REQUEST.pack(len(body), Op.SET, len(key)) + body)
        assert read_reply(sock)[0] == Status.OK
        sock.sendall(REQUEST.pack(len(key), Op.GET, len(key)) + key)
        assert read_reply(sock) == (Status.OK, Kind.PICKLE, b"abc")
    finally:
        sock.close()


u64 = st.integers(0, 2**64 - 1)
values = st.builds(
    lambda kind, length, data: VALUE.pack(kind, length) + data,
    st.integers(0, 255),
    st.one_of(st.integers(0, MAX_VALUE + 1), u64),
    st.binary(max_size=80),
)
requests = st.builds(
    lambda length, op, key_length, key, vals: (
        REQUEST.pack(length, op, key_length) + key + b"".join(vals)
    ),
    st.one_of(st.integers(0, 256), u64),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.binary(max_size=16),
    st.lists(values, max_size=3),
)
frames = st.lists(st.one_of(requests, st.binary(max_size=64)), max_size=6)


@FUZZ
@given(before=st.binary(max_size=64), after=frames)
def test_before_its_hello_a_connection_gets_nothing(
    store: StateStore, before: bytes, after: list[bytes]
) -> None:
    keys = store.stats().keys
    sock = opened(store, hello=False)
    sock.sendall(before + b"".join(after))
    drain(sock)
    still_serves(store)
    assert store.stats().keys == max(keys, 1)  # nothing but the canary was ever written


@FUZZ
@given(sent=frames)
def test_whatever_a_worker_sends_the_store_serves_the_next_connection(
    store: StateStore, sent: list[bytes]
) -> None:
    sock = opened(store, hello=True)
    sock.sendall(b"".join(sent))
    drain(sock)
    still_serves(store)
    assert store.stats().bytes <= (MAX_VALUE + 0xFFFF) * store.stats().keys
