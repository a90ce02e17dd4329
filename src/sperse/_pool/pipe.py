"""The worker's end of its pipe to the pool: the frames, read and written.

The frame format is documented in :mod:`sperse._pool.pool`; the tags are :class:`Msg`.
Standard library only (every worker imports it at its start). Writes are serialized and
shielded from the cancel signal: an interrupt raised in the middle of a frame would corrupt
the pipe, so it is deferred until the write is complete (see :mod:`sperse._pool.worker`).
"""

from __future__ import annotations

import enum
import os
import select
import struct
import threading
from multiprocessing.connection import Connection
from types import TracebackType

__all__ = ["HEADER", "Channel", "Msg", "Reader", "TaskInterrupted", "frame"]

HEADER = struct.Struct("!BQQ")  # tag, seq, body length
_READ_SIZE = 1 << 16
_LARGE = 1 << 20  # a body at least this big is read straight into its own buffer


class Msg(enum.IntEnum):
    """The tag of every frame on a worker's pipe."""

    # parent -> worker
    RUN = 1
    STOP = 2
    CANCEL = 3
    CONFIGURE = 4
    HELLO = 5  # a client to a remote object's worker (sperse._pool.direct): the secret
    # worker -> parent
    READY = 10
    INIT_FAILED = 11
    OUTPUT = 12
    DONE = 13
    CANCELLED = 14
    RUNNER_ERROR = 15
    REPORT = 17  # calls a client sent directly that ended (sperse._pool.direct)
    WELCOME = 16  # a remote object's worker to a client (sperse._pool.direct)


class TaskInterrupted(BaseException):
    """Raised in the worker's main thread to stop a task the parent cancelled.

    A ``BaseException`` so that ``except Exception`` in user code lets it through.
    """


def frame(tag: int, seq: int = 0, body: bytes = b"") -> bytes:
    """One frame: the header, then the body."""
    return HEADER.pack(tag, seq, len(body)) + body


class Reader:
    """Frames from the parent, over a blocking file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN)

    def ready(self) -> bool:
        """Whether a frame (or the end of the pipe) can be read without waiting."""
        return self.buffered() or bool(self.poller.poll(0))

    def buffered(self) -> bool:
        """Whether a whole frame has been read already."""
        buffer = self.buffer
        if len(buffer) < HEADER.size:
            return False
        length: int = HEADER.unpack_from(buffer)[2]
        return len(buffer) >= HEADER.size + length

    def read(self) -> tuple[int, int, bytes] | None:
        """The next frame, waiting for it; None when the parent has closed the pipe."""
        buffer = self.buffer
        while len(buffer) < HEADER.size:
            if not self._fill():
                return None
        tag, seq, length = HEADER.unpack_from(buffer)
        end = HEADER.size + length
        if length >= _LARGE and len(buffer) < end:
            body = bytearray(length)
            have = len(buffer) - HEADER.size
            body[:have] = buffer[HEADER.size :]
            buffer.clear()
            view = memoryview(body)
            while have < length:
                n = os.readv(self.fd, [view[have:]])
                if not n:
                    return None
                have += n
            return tag, seq, bytes(body)
        while len(buffer) < end:
            if not self._fill():
                return None
        data = bytes(buffer[HEADER.size : end])
        del buffer[:end]
        return tag, seq, data

    def _fill(self) -> bool:
        chunk = os.read(self.fd, _READ_SIZE)
        self.buffer += chunk
        return bool(chunk)


class Channel:
    """The worker's end of the pipe: sends are serialized and shielded from interrupts."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn  # kept open: it owns the file descriptor
        self.fd = conn.fileno()
        self.reader = Reader(self.fd)
        self._lock = threading.Lock()
        self._main = threading.main_thread().ident
        # Touched by the main thread only (the signal handler runs there too).
        self.shield_depth = 0
        self.deferred = False

    def __enter__(self) -> None:
        if threading.get_ident() == self._main:
            self.shield_depth += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if threading.get_ident() == self._main:
            self.shield_depth -= 1
            if self.shield_depth == 0 and self.deferred:
                self.deferred = False
                raise TaskInterrupted

    def send(self, tag: int, seq: int = 0, body: bytes = b"") -> None:
        with self, self._lock:
            if len(body) < _LARGE:
                self._write(frame(tag, seq, body))
            else:  # no copy of a large body
                self._write(HEADER.pack(tag, seq, len(body)))
                self._write(body)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
