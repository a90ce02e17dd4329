"""A remote object's worker, reached directly by the client on its host that made the object.

A call through the server crosses it twice each way (client, server, worker, server,
client); one sent here goes to the object's worker and its answer straight back. The worker
serves both: its pipe (every other client's calls, and the server's own requests) and these
connections, in the order the calls arrive; the client keeps its own calls in order across
the two ways (see :mod:`sperse._backends.sperse.direct`).

Standard library only, imported by a worker when its object opens the channel
(:func:`sperse._pool.worker.open_direct`). Everything runs on the worker's main thread, the
one that runs the object's code; a ``SIGIO`` handler, on that thread too, reads what arrives
while a direct call runs, so that a ``CANCEL`` of it interrupts it as the server's
``SIGUSR1`` would.

The frames are the pipe's (``HEADER``: tag, seq, body length), on a Unix socket in the
abstract namespace whose name is random. A connection's first frame is ``HELLO`` with the
secret (the name and the secret reach the client in the creation's result, through its
session); anything else, or a wrong secret, closes it before a byte of it is unpickled. Then
``RUN`` (seq: the client's number for the call; body: the task id's length as 2 bytes, the
task id, and the envelope) and ``CANCEL`` go in;
``WELCOME`` (seq: the worker's pid), ``OUTPUT``, ``DONE``, ``CANCELLED`` and
``RUNNER_ERROR`` come out, with the client's number. Bounds: ``MAX_CONNECTIONS``, and
``MAX_FRAME`` bytes a frame (the client sends bigger calls through the server).

The server keeps its books of these calls too: once the worker has been idle for
``REPORT_IDLE`` (and after every ``REPORT_CALLS`` calls, or ``REPORT_BYTES`` of output, in a
long burst; not after each call: that would wake the server at every call), it sends its pipe a
``REPORT``: how many calls ended, and what they printed by task id, which the server counts
as the object's calls and keeps as their logs (``sperse logs``), as for calls it sent.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import secrets
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable
from types import FrameType

from sperse._pool.pipe import HEADER, Msg, frame

__all__ = ["MAX_FRAME", "Direct"]

MAX_FRAME = 4 << 20  # bytes of one frame from a client
MAX_CONNECTIONS = 8
SEND_TIMEOUT = 60.0  # seconds a client may take to read an answer before it is cut off
_READ_SIZE = 1 << 16
REPORT_CALLS = 1000
REPORT_IDLE = 0.05  # seconds idle after which the calls ended are reported
REPORT_BYTES = 256 << 10
_TASK_ID = struct.Struct("!H")  # a RUN's body starts with its task id's length


class _Connection:
    __slots__ = ("buffer", "sock", "welcomed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.welcomed = False


class Direct:
    """The listening socket, its connections, and which call of which connection is which
    of the worker's sequence numbers (negative: the pipe's are positive)."""

    def __init__(
        self,
        waiting: collections.OrderedDict[int, bytes],
        running: Callable[[], int],
        interrupt: Callable[[], None],
        report: Callable[[bytes], None],
    ) -> None:
        self._waiting = waiting  # the worker's queue of calls to run, pipe's and ours
        self._running = running  # the worker's seq of the call that runs now (0: none)
        self._interrupt = interrupt  # raises TaskInterrupted (or defers it): on this thread
        self._report = report  # sends a REPORT's body to the server
        self._ended = 0  # calls ended since the last report
        self._printed: list[tuple[str, int, str]] = []  # (task id, stream, text) since then
        self._printed_bytes = 0
        self.secret = secrets.token_bytes(32)
        self.name = f"sperse-direct-{os.getpid()}-{secrets.token_hex(12)}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.name)
        self._listener.listen(MAX_CONNECTIONS)
        self._listener.setblocking(False)
        self._connections: dict[int, _Connection] = {}  # by file descriptor
        # worker seq -> (connection, the client's number, task id)
        self._calls: dict[int, tuple[_Connection, int, str]] = {}
        self._next = 0
        self._poller: select.poll | None = None
        self._busy = False  # this module's own code reads or writes: the handler stays out
        self._main = threading.get_ident()  # the thread that runs the calls, and the handler
        self._send_lock = threading.Lock()
        signal.signal(signal.SIGIO, self._on_sigio)

    @property
    def address(self) -> str:
        return self.name

    # ---- what the worker's loop calls ---------------------------------------------------

    def wait(self, pipe: int) -> bool:
        """Block until the pipe is readable (True) or a direct call waits to run."""
        while True:
            self.take()
            if self._waiting:
                return False
            if self._poller is None:  # made anew when the connections change
                self._poller = select.poll()
                for fd in (pipe, self._listener.fileno(), *self._connections):
                    self._poller.register(fd, select.POLLIN)
            unreported = bool(self._ended or self._printed)
            ready = {fd for fd, _ in self._poller.poll(REPORT_IDLE * 1000 if unreported else None)}
            if not ready:  # idle a while: the server's books now, then wait on
                self.report()
            if pipe in ready:
                return True
            if self._listener.fileno() in ready:
                self._accept()

    def take(self) -> None:
        """Read what has arrived (without waiting): calls join the worker's queue, a
        cancelled one that waits there leaves it, answered ``CANCELLED``."""
        busy, self._busy = self._busy, True
        try:
            for conn in list(self._connections.values()):
                self._read(conn)
                self._frames(conn)
        finally:
            self._busy = busy

    def answer(self, tag: int, seq: int, body: bytes = b"") -> None:
        """The end of direct call ``seq``: to its connection (gone: dropped)."""
        call = self._calls.pop(seq, None)
        if call is not None:
            self._ended += 1
            self._send(call[0], tag, call[1], body)
            if self._ended >= REPORT_CALLS or self._printed_bytes >= REPORT_BYTES:
                self.report()

    def output(self, seq: int, body: bytes) -> None:
        call = self._calls.get(seq)
        if call is not None and body:
            self._send(call[0], Msg.OUTPUT, call[1], body)
            text = body[1:].decode("utf-8", "surrogatepass")
            self._printed.append((call[2], body[0], text))
            self._printed_bytes += len(body)

    def report(self) -> None:
        """Tell the server what ended since the last report, if anything did."""
        if not self._ended and not self._printed:
            return
        ended, printed = self._ended, self._printed  # a task's thread may print meanwhile
        self._ended, self._printed, self._printed_bytes = 0, [], 0
        self._report(json.dumps({"calls": ended, "output": printed}).encode())

    # ---- connections -----------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)  # reads never wait; sends wait in _write, bounded
            fd = sock.fileno()
            fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
            self._connections[fd] = _Connection(sock)
            self._poller = None

    def _read(self, conn: _Connection) -> None:
        while True:
            try:
                chunk = conn.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            if not chunk:
                self._close(conn)
                return
            conn.buffer += chunk
            if len(chunk) < _READ_SIZE:
                return

    def _frames(self, conn: _Connection) -> None:
        """Act on the whole frames read; a cancel of the running call interrupts it once
        they all are (and the buffer is cut: the interrupt may leave by an exception)."""
        buffer = conn.buffer
        start, size, interrupt = 0, len(buffer), False
        try:
            while size - start >= HEADER.size:
                tag, theirs, length = HEADER.unpack_from(buffer, start)
                if length > (MAX_FRAME if conn.welcomed else 64):
                    self._close(conn)
                    return
                end = start + HEADER.size + length
                if size < end:
                    break  # the rest of it is still coming
                body = bytes(buffer[start + HEADER.size : end])
                start = end
                if not conn.welcomed:
                    if tag != Msg.HELLO or not secrets.compare_digest(body, self.secret):
                        self._close(conn)
                        return
                    conn.welcomed = True
                    self._send(conn, Msg.WELCOME, os.getpid())
                elif tag == Msg.RUN and len(body) >= _TASK_ID.size:
                    (n,) = _TASK_ID.unpack_from(body)
                    task_id = body[_TASK_ID.size : _TASK_ID.size + n].decode("utf-8", "replace")
                    self._next -= 1
                    self._calls[self._next] = (conn, theirs, task_id)
                    self._waiting[self._next] = body[_TASK_ID.size + n :]
                elif tag == Msg.CANCEL:
                    interrupt = self._cancel(conn, theirs) or interrupt
                else:  # not our protocol
                    self._close(conn)
                    return
        finally:
            del buffer[:start]
        if interrupt:
            self._interrupt()

    def _cancel(self, conn: _Connection, theirs: int) -> bool:
        """Drop the call if it waits; True if it is the one running (to interrupt)."""
        for seq, call in self._calls.items():
            if call[0] is conn and call[1] == theirs:
                if seq in self._waiting:
                    del self._waiting[seq]
                    self.answer(Msg.CANCELLED, seq)
                    return False
                return seq == self._running()
        return False

    def _send(self, conn: _Connection, tag: int, seq: int, body: bytes = b"") -> None:
        """One whole frame. Any thread (a thread of the running call may print): frames
        are written under a lock; the main thread also keeps its signal handler out (it
        could otherwise write a frame into the middle of this one, or wait on the lock
        this thread holds)."""
        main = threading.get_ident() == self._main
        if main:
            busy, self._busy = self._busy, True
        try:
            with self._send_lock:
                if len(body) < 1 << 20:
                    _write(conn.sock, frame(tag, seq, body))
                else:
                    _write(conn.sock, HEADER.pack(tag, seq, len(body)))
                    _write(conn.sock, body)
        except OSError:  # gone, or too slow to read: its calls' answers are dropped
            if main:
                self._close(conn)
            else:  # the main thread closes it, at its next read
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
        finally:
            if main:
                self._busy = busy

    def _close(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._connections.pop(fd, None)
            self._poller = None
        conn.sock.close()
        for seq in [s for s, call in self._calls.items() if call[0] is conn]:
            if seq != self._running():  # the running one is popped by its answer
                self._waiting.pop(seq, None)
                del self._calls[seq]

    def close(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        self._listener.close()

    # ---- while a direct call runs ----------------------------------------------------

    def _on_sigio(self, signum: int, frame: FrameType | None) -> None:
        """Data arrived on a connection: while a call runs (and none of this module's code
        is reading), read it now, so that a cancel of a direct call interrupts it, and the
        client's socket never fills."""
        if not self._busy and self._running():
            self.take()


def _write(sock: socket.socket, data: bytes) -> None:
    """All of ``data`` on a non-blocking socket, waiting at most ``SEND_TIMEOUT`` for room."""
    view = memoryview(data)
    poller: select.poll | None = None
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            if poller is None:
                poller = select.poll()
                poller.register(sock.fileno(), select.POLLOUT)
            if not poller.poll(SEND_TIMEOUT * 1000):
                raise TimeoutError("the client does not read its answers") from None
