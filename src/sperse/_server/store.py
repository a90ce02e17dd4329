"""``StateStore``: the per-server key-value store behind ``sperse.state()``.

The store listens on an abstract Unix socket and serves it on a thread of its own; its
owner's workers connect to it (:mod:`sperse._state.client` is their side, and
:mod:`sperse._state.wire` the wire format); what it keeps and how it answers is the pure
table of :mod:`sperse._state.table`. The owner starts it before its worker pool, so the workers inherit its address
and key through the environment (see "Finding the store").

Why a thread and not the owner's event loop: a request is a few microseconds of work, and
asyncio's machinery around each message (selector, handle, transport) costs several times
that; on a 2-core machine an asyncio echo server alone answers fewer ``incr``-sized
round trips than the 20,000/s the store is meant to serve. The thread runs a plain epoll
loop, and also keeps the store's latency apart from a busy server loop. Everything of the
store is touched by that thread only, except ``stats()`` (plain counters) and the
environment (under a lock).

Invariants:

- Nothing a peer sends is read before it authenticates: the first frame must carry the
  store's random key, and the peer (its pid, from ``SO_PEERCRED``, which the kernel vouches
  for) must be one of the owner's worker processes or a process they started. Anyone else
  is refused and disconnected; a peer that does not say hello in time is disconnected.
- The store never unpickles: plain ints and floats are kept as numbers (``incr``, and the
  numeric comparison of ``cas``, happen here); every other value is the bytes of a pickle
  made in a worker, kept and sent back as they came, compared by those bytes in ``cas``.
- Every request gets exactly one reply, in the order of the requests of its connection.
  A request that cannot be answered yet (it waits for a key lock) holds up the later
  requests of its connection only.
- A key lock belongs to the connection that took it; the connection closing (its worker
  died, or its task was cancelled in the middle of an exchange) releases it, and the next
  waiter in line gets it. Writes of a locked key by other connections wait for it.
- A value over ``max_value_size`` bytes is refused with an error; a frame that cannot be a
  request (or the hello) closes the connection.

Finding the store
-----------------
A process may host several stores (a client with two ``LocalBackend``s; tests run servers
in one process), and a pool replaces a dead worker at any time, with the environment of
that moment. So ``SPERSE_STATE_ADDRESS`` and ``SPERSE_STATE_KEY`` list every live store of
this process (newest first), then those this process inherited; a worker tries them in
order, and the one whose owner it works for accepts it. The variables are set in
``os.environ`` of the owner's process, from where spawned workers inherit them: the pool
has no other way to give its workers an environment.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import logging
import os
import secrets
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sperse._state.table import BadRequest, Holder, Reply, Request, Table, Value, error, reply
from sperse._state.wire import (
    ADDRESS_ENV,
    DOUBLE,
    HELLO,
    KEY_ENV,
    MAGIC,
    REQUEST,
    VALUE,
    ErrorCode,
    Kind,
    Status,
    int_bytes,
)

if TYPE_CHECKING:
    import asyncio

__all__ = ["StateStats", "StateStore", "start_state_store"]

_log = logging.getLogger("sperse.server")

_KEY_SIZE_MAX = 256  # bytes of the hello's key
_HELLO_TIMEOUT = 10.0  # seconds a peer has to say hello
_LINEAGE_DEPTH = 16  # parents looked at to find a worker among a peer's ancestors
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_READ_SIZE = 1 << 16  # into a buffer made once: recv(n) would allocate n bytes each time
_STOP_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class StateStats:
    """A snapshot: ``ops`` requests answered, ``keys`` held, ``bytes`` (pickles by their
    size, numbers as 8), ``connections`` open, ``locks`` held and ``waiting`` requests."""

    ops: int
    keys: int
    bytes: int
    connections: int
    locks: int
    waiting: int


def _lineage(pid: int) -> Iterator[int]:
    """``pid``, its parent, its grandparent... (Linux ``/proc``), up to this process."""
    me = os.getpid()
    for _ in range(_LINEAGE_DEPTH):
        if pid <= 1 or pid == me:
            return
        yield pid
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                stat = file.read()
            pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            return


class _Peer(Holder):
    """One connection (one thread of a worker): a holder of key locks in the table."""

    __slots__ = (
        "authenticated",
        "buffer",
        "checking",
        "fd",
        "hello_deadline",
        "pid",
        "sock",
        "unsent",
    )

    def __init__(self, sock: socket.socket, pid: int, hello_deadline: float) -> None:
        super().__init__()
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = pid
        self.hello_deadline = hello_deadline
        self.buffer = bytearray()
        self.unsent = bytearray()
        self.authenticated = False
        self.checking = False  # its hello waits for the owner to say whether it is a worker

    @property
    def waiting(self) -> bool:
        return self.parked or self.checking or self.closed


class StateStore:
    """A key-value store for the workers of one owner (see the module's docstring).

    ``members()`` gives the pids of the owner's worker processes (None: any peer that has
    the key); it is called on ``loop`` when one is given (the owner's, whose state it
    reads), else on the store's thread (it must then be thread-safe).
    """

    def __init__(
        self,
        *,
        max_value_size: int,
        members: Callable[[], Collection[int]] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.address = f"@sperse-state-{os.getpid()}-{secrets.token_hex(8)}"
        self._key = secrets.token_hex(16)  # a secret: never logged, not in the repr
        self._max_value = max_value_size
        self._frame_max = 2 * (max_value_size + VALUE.size) + 0xFFFF
        self._members = members
        self._members_loop = loop
        self._peers: dict[int, _Peer] = {}  # by file descriptor
        self._listener: socket.socket | None = None
        self._epoll: select.epoll | None = None
        self._wake_r = self._wake_w = -1
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        self._resumable: collections.deque[_Peer] = collections.deque()
        self._thread: threading.Thread | None = None
        self._running = False
        self._scratch = memoryview(bytearray(_READ_SIZE))
        self._greeting: set[_Peer] = set()  # connected, not welcomed yet
        self._table: Table[_Peer] = Table(max_value_size, self._send, self._resumable.append)

    # ---- life cycle (from the owner's thread) -------------------------------------------

    def start(self) -> None:
        """Listen, serve on a new thread, and list this store in the environment that new
        workers inherit."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind("\0" + self.address[1:])
            sock.listen(128)
            sock.setblocking(False)
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._epoll = select.epoll()
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            self._epoll.register(self._wake_r, select.EPOLLIN)
        except OSError:
            sock.close()
            if self._epoll is not None:
                self._epoll.close()
            self._close_pipe()
            raise
        self._listener = sock
        self._running = True
        self._thread = threading.Thread(target=self._run, name="sperse-state", daemon=True)
        self._thread.start()
        _publish(self, live=True)

    def stop(self) -> None:
        """Stop serving and close every connection. Idempotent; blocks for a moment."""
        _publish(self, live=False)
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        self._post(self._shutdown)
        thread.join(_STOP_TIMEOUT)
        if thread.is_alive():  # its pipe stays open: a late wake-up writes nowhere else
            _log.error("event=state_store_stuck address=%s", self.address)
        else:
            self._close_pipe()

    def stats(self) -> StateStats:
        """A snapshot (from any thread)."""
        return StateStats(
            ops=self._table.ops,
            keys=self._table.keys,
            bytes=self._table.bytes,
            connections=len(self._peers),
            locks=self._table.locks,
            waiting=self._table.waiting,
        )

    def __repr__(self) -> str:
        return f"<StateStore {self.address} keys={self._table.keys}>"

    def _post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the store's thread (from any thread)."""
        self._posted.append(fn)
        with contextlib.suppress(BlockingIOError, OSError):  # full: it is awake anyway
            os.write(self._wake_w, b"\0")

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # ---- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        epoll = self._epoll
        listener = self._listener
        assert epoll is not None and listener is not None
        listen_fd = listener.fileno()
        peers = self._peers
        try:
            while self._running:
                timeout = 1.0 if self._greeting else -1.0
                for fd, events in epoll.poll(timeout):
                    if fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        while self._posted:
                            self._posted.popleft()()
                    elif fd == listen_fd:
                        self._accept(listener)
                    else:
                        peer = peers.get(fd)
                        if peer is not None:
                            self._on_events(peer, events)
                while self._resumable:
                    peer = self._resumable.popleft()
                    if not peer.waiting and peer.buffer:
                        self._guarded(self._serve, peer)
                if timeout > 0:
                    self._expire_hellos()
        except Exception:
            _log.exception("event=state_store_failed address=%s", self.address)
        finally:
            for peer in list(peers.values()):
                peer.sock.close()
            peers.clear()
            epoll.close()
            listener.close()

    def _shutdown(self) -> None:
        self._running = False

    def _guarded(self, fn: Callable[[_Peer], None], peer: _Peer) -> None:
        try:
            fn(peer)
        except Exception:  # a bug of ours: that connection ends, the store goes on
            _log.exception("event=state_request_failed pid=%d", peer.pid)
            self._close(peer, now=True)

    def _accept(self, listener: socket.socket) -> None:
        assert self._epoll is not None
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: the peer waits, or gives up
                _log.warning("event=state_accept_failed error=%r", str(exc))
                return
            sock.setblocking(False)
            pid = 0
            with contextlib.suppress(OSError):
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
                pid = _CREDENTIALS.unpack(creds)[0]
            peer = _Peer(sock, pid, time.monotonic() + _HELLO_TIMEOUT)
            self._peers[peer.fd] = peer
            self._greeting.add(peer)
            self._epoll.register(peer.fd, select.EPOLLIN)

    def _on_events(self, peer: _Peer, events: int) -> None:
        if events & select.EPOLLOUT:
            self._guarded(self._flush, peer)
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and not peer.closed:
            scratch = self._scratch
            try:
                n = peer.sock.recv_into(scratch)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                n = 0
            if not n:  # the worker closed it, or died
                self._close(peer, now=True)
                return
            peer.buffer += scratch[:n]
            if not peer.waiting:
                self._guarded(self._serve, peer)
        elif events & (select.EPOLLHUP | select.EPOLLERR):
            self._close(peer, now=True)

    def _send(self, peer: _Peer, reply: Reply) -> None:
        if peer.closed or peer.sock.fileno() < 0:
            return
        if peer.unsent:  # behind what is waiting already
            peer.unsent += reply if isinstance(reply, bytes) else b"".join(reply)
            return
        try:
            if isinstance(reply, bytes):
                sent = peer.sock.send(reply)
                total = len(reply)
            else:
                sent = peer.sock.sendmsg(reply)
                total = len(reply[0]) + len(reply[1])
        except (BlockingIOError, InterruptedError):
            sent, total = 0, 1
        except OSError:  # gone: reading will say so
            return
        if sent < total:
            whole = reply if isinstance(reply, bytes) else b"".join(reply)
            peer.unsent += memoryview(whole)[sent:]
            assert self._epoll is not None
            self._epoll.modify(peer.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, peer: _Peer) -> None:
        try:
            sent = peer.sock.send(peer.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peer.unsent.clear()
            sent = 0
        del peer.unsent[:sent]
        if not peer.unsent:
            if peer.closed:
                self._close(peer, now=True)
            else:
                assert self._epoll is not None
                self._epoll.modify(peer.fd, select.EPOLLIN)

    def _close(self, peer: _Peer, *, now: bool = False) -> None:
        """End ``peer``: it is answered no more, its locks go now; the socket closes once
        what was sent to it is out (or ``now``)."""
        assert self._epoll is not None
        self._greeting.discard(peer)
        if not peer.closed:
            peer.closed = True
            self._table.drop(peer)
        if (now or not peer.unsent) and self._peers.pop(peer.fd, None) is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(peer.fd)
            peer.sock.close()
        elif peer.unsent:  # read no more: only the flush is left
            with contextlib.suppress(OSError):
                self._epoll.modify(peer.fd, select.EPOLLOUT)

    def _expire_hellos(self) -> None:
        now = time.monotonic()
        for peer in list(self._greeting):
            if not peer.checking and now > peer.hello_deadline:
                self._close(peer, now=True)

    # ---- requests ------------------------------------------------------------------------

    def _serve(self, peer: _Peer) -> None:
        """Answer the complete requests in ``peer``'s buffer, until one has to wait."""
        buffer = peer.buffer
        start = 0
        size = len(buffer)
        while not peer.waiting:
            if not peer.authenticated:
                if size - start < HELLO.size:
                    break
                magic, length = HELLO.unpack_from(buffer, start)
                if magic != MAGIC or length > _KEY_SIZE_MAX:
                    self._close(peer, now=True)
                    return
                end = start + HELLO.size + length
                if size < end:
                    break
                self._hello(peer, bytes(buffer[start + HELLO.size : end]))
                start = end
                continue
            if size - start < REQUEST.size:
                break
            length, op, key_length = REQUEST.unpack_from(buffer, start)
            if length > self._frame_max or key_length > length:
                self._protocol_error(peer, f"a request of {length} bytes")
                return
            end = start + REQUEST.size + length
            if size < end:
                break
            at = start + REQUEST.size + key_length
            key = bytes(buffer[start + REQUEST.size : at])
            values: list[Value] = []
            while at < end:
                if end - at < VALUE.size:
                    self._protocol_error(peer, "a truncated value")
                    return
                kind, value_length = VALUE.unpack_from(buffer, at)
                at += VALUE.size
                if at + value_length > end:
                    self._protocol_error(peer, "a truncated value")
                    return
                data = bytes(buffer[at : at + value_length])
                at += value_length
                if kind == Kind.INT:
                    values.append(int.from_bytes(data, "big", signed=True))
                elif kind == Kind.FLOAT and value_length == DOUBLE.size:
                    values.append(DOUBLE.unpack(data)[0])
                elif kind == Kind.PICKLE:
                    values.append(data)
                else:
                    self._protocol_error(peer, f"a value of kind {kind}")
                    return
            start = end
            self._request(Request(peer, op, key, values))
        if start:
            del buffer[:start]

    def _hello(self, peer: _Peer, key: bytes) -> None:
        if not hmac.compare_digest(key, self._key.encode("ascii")):
            self._refuse(peer, "wrong key")
        elif self._members is None:
            self._welcome(peer)
        elif self._members_loop is None:
            self._checked(peer, frozenset(self._members()))
        else:
            peer.checking = True
            try:
                self._members_loop.call_soon_threadsafe(self._ask_members, peer)
            except RuntimeError:  # the owner's loop is closed: it is stopping
                peer.checking = False
                self._refuse(peer, "the server is stopping")

    def _ask_members(self, peer: _Peer) -> None:
        """On the owner's loop."""
        assert self._members is not None
        try:
            pids = frozenset(self._members())
        except Exception:
            _log.exception("event=state_members_failed")
            pids = frozenset()
        self._post(lambda: self._checked(peer, pids))

    def _checked(self, peer: _Peer, pids: frozenset[int]) -> None:
        peer.checking = False
        if peer.closed:
            return
        if any(pid in pids for pid in _lineage(peer.pid)):
            self._welcome(peer)
            self._resumable.append(peer)  # requests may have come behind the hello
        else:
            self._refuse(peer, f"process {peer.pid} is not a worker of this store's server")

    def _welcome(self, peer: _Peer) -> None:
        peer.authenticated = True
        self._greeting.discard(peer)
        self._send(peer, reply(Status.OK, Kind.INT, int_bytes(self._max_value)))

    def _refuse(self, peer: _Peer, why: str) -> None:
        _log.debug("event=state_refused pid=%d why=%r", peer.pid, why)
        self._send(peer, error(ErrorCode.REFUSED, why))
        self._close(peer)

    def _protocol_error(self, peer: _Peer, what: str) -> None:
        _log.warning("event=state_protocol_error pid=%d what=%r", peer.pid, what)
        self._send(peer, error(ErrorCode.PROTOCOL, f"malformed request: {what}"))
        self._close(peer)

    def _request(self, request: Request[_Peer]) -> None:
        try:
            self._table.request(request)
        except BadRequest as exc:
            self._protocol_error(request.holder, str(exc))


# ---- the environment workers inherit ---------------------------------------------------

_env_lock = threading.Lock()
_live: list[StateStore] = []  # this process's stores, newest first


def _inherited(name: str) -> list[str]:
    return [part for part in os.environ.get(name, "").split(",") if part]


_INHERITED = list(zip(_inherited(ADDRESS_ENV), _inherited(KEY_ENV), strict=False))


def _publish(store: StateStore, *, live: bool) -> None:
    with _env_lock:
        if live:
            _live.insert(0, store)
        elif store in _live:
            _live.remove(store)
        entries = [(s.address, s._key) for s in _live] + _INHERITED
        if entries:
            os.environ[ADDRESS_ENV] = ",".join(address for address, _ in entries)
            os.environ[KEY_ENV] = ",".join(key for _, key in entries)
        else:
            os.environ.pop(ADDRESS_ENV, None)
            os.environ.pop(KEY_ENV, None)


def start_state_store(
    max_value_size: int,
    members: Callable[[], Collection[int]] | None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> StateStore | None:
    """A started store, or None where there are no abstract Unix sockets (not Linux) or
    it cannot listen (logged): tasks then get a clear error from ``sperse.state()``."""
    if not sys.platform.startswith("linux"):
        return None
    store = StateStore(max_value_size=max_value_size, members=members, loop=loop)
    try:
        store.start()
    except OSError as exc:
        _log.warning("event=state_store_failed error=%r", str(exc))
        return None
    return store
