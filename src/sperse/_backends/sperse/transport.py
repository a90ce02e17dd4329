"""The session's stream: gRPC, or the server's same-host socket, and the way out to it.

- ``LocalStream`` is the client's end of a same-host stream (framing: see
  :mod:`sperse._wire`), with the ``read``/``write``/``done_writing`` of a gRPC stream-stream
  call, so that the session runs on either.
- ``Outbox`` takes messages from any thread. On a same-host stream the caller's thread
  writes them itself when nothing is queued before them; otherwise they are queued and the
  I/O thread, woken once per batch, writes the batch (``send_loop``), adjacent tasks merged
  into Submits. Order is kept: a direct write happens only with an empty queue, under the
  stream's lock.
- grpc's errors (classified by :mod:`sperse._wire.errors`), and a server's ``Error``
  message, become Sperse's here and only here, worded for a client of a server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import grpc
import grpc.aio

from sperse._wire import (
    MAX_MESSAGE,
    RECEIVE_BUFFER,
    FrameReader,
    Piece,
    local_frame,
    local_socket_name,
    pb,
    read_server_message,
)
from sperse._wire.errors import GrpcErrorKind, classify
from sperse.errors import (
    AuthenticationError,
    ProtocolError,
    ServerLost,
    ServerUnavailable,
    SperseError,
)

__all__ = [
    "Compression",
    "LocalStream",
    "Outbox",
    "describe_grpc",
    "error_from",
    "grpc_compression",
    "local_streams",
    "merge_submits",
    "refused_at_once",
    "translate",
]

# Compression of what a client sends over gRPC (None: off, the default).
Compression = Literal["gzip", "deflate"] | None

# A message for the stream: a task goes with its approximate size, merged into a Submit.
Outgoing = pb.ClientMessage | bytes | tuple[pb.Task, int]  # bytes: a Blob piece's message

_BURST = 200e-6  # seconds between sends under which they are batched, not sent one by one
_SUBMIT_BYTES = MAX_MESSAGE // 2
_SUBMIT_TASKS = 256  # tasks of one Submit: the server starts on them while more are read


def grpc_compression(compression: Compression) -> grpc.Compression | None:
    if compression is None:
        return None
    if compression == "gzip":
        return grpc.Compression.Gzip
    if compression == "deflate":
        return grpc.Compression.Deflate
    raise ValueError(f"compression must be None, 'gzip' or 'deflate', not {compression!r}")


async def refused_at_once(address: str, timeout: float) -> None:
    """Raise ``ServerUnavailable`` now if nothing listens at ``address`` (the connection is
    refused), instead of waiting ``timeout`` for gRPC to give up; anything else (no answer,
    no route) is left to gRPC, which waits and says so."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), timeout
        )
    except ConnectionRefusedError:
        raise ServerUnavailable(
            f"nothing listens at {address} (the connection was refused): start a server there "
            "(sperse server --port PORT, or sperse up), or check the host and port"
        ) from None
    except (OSError, TimeoutError):
        return
    writer.close()


def local_streams() -> bool:
    return sys.platform.startswith("linux")


class LocalStream(asyncio.BufferedProtocol):
    """The client's end of a same-host stream (see :mod:`sperse._wire`), with the
    ``read``/``write``/``done_writing`` of a gRPC stream-stream call. ``read`` returns
    ``grpc.aio.EOF`` when the server has ended the stream, and raises ``ConnectionError``
    when the connection broke.

    Reading is the event loop's. Writing is not: any thread writes whole frames with
    :meth:`send_frames`, holding ``lock``, on a duplicate of the socket's descriptor that
    only :meth:`close` closes (so a descriptor number reused after the loop closed the
    socket is never written to). A user's thread sends its task itself: no wake-up of the
    I/O thread on the way out. Reading is into one buffer of its own (``recv_into``): no
    buffer is allocated, nor freed, per read.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader(MAX_MESSAGE)
        self._received = memoryview(bytearray(RECEIVE_BUFFER))
        self._inbox: collections.deque[pb.ServerMessage | Piece] = collections.deque()
        self._readable: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lock = threading.RLock()
        self.sending = False  # a frame is being written (by the thread holding `lock`)
        # Set by the backend: handles a message as it is read (False: queue it for read()).
        self.handler: Callable[[pb.ServerMessage | Piece], bool] | None = None
        self._fd = -1
        self._broken = False

    @classmethod
    async def open(cls, address: str) -> LocalStream:
        loop = asyncio.get_running_loop()
        _, stream = await loop.create_unix_connection(cls, local_socket_name(address))
        return stream

    @property
    def writable(self) -> bool:
        return self._fd >= 0 and not self._broken

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._fd = os.dup(transport.get_extra_info("socket").fileno())
        os.set_blocking(self._fd, False)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._received

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._received[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            for frame in self._reader.feed(data):
                message = read_server_message(frame)
                handler = self.handler
                if handler is None or self._inbox or not handler(message):
                    self._inbox.append(message)
        except Exception as exc:  # not our protocol, or a bug: the stream is broken
            self._error = ConnectionResetError(f"while reading from the server: {exc!r}")
            self.handler = None
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self._error is None:
            self._error = exc
        self._eof = True
        self._broken = True
        self._wake()
        if not self._closed.done():
            self._closed.set_result(None)

    def _wake(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    async def read(self) -> Any:
        while not self._inbox:
            if self._error is not None:
                raise ConnectionResetError(f"the same-host stream broke: {self._error}")
            if self._eof:
                return grpc.aio.EOF
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable
        return self._inbox.popleft()

    def send_frames(self, data: bytes) -> None:
        """Write ``data`` (whole frames) now, waiting while the server does not read. Call
        holding ``lock``. Raises ``ConnectionError`` when the stream is closed or broken."""
        view = memoryview(data)
        while view:
            if not self.writable:
                raise ConnectionResetError("the same-host stream is closed")
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                select.select([], [self._fd], [], 1.0)
            except OSError as exc:
                self._broken = True
                raise ConnectionResetError(f"the same-host stream broke: {exc}") from exc

    async def write(self, message: pb.ClientMessage | bytes) -> None:
        with self.lock:
            self.send_frames(local_frame(message))

    async def done_writing(self) -> None:
        with self.lock:
            if self.writable:
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._fd)) as sock:
                    sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self.lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        if self._transport is not None:
            self._transport.close()

    async def closed(self, timeout: float = 2.0) -> None:
        """Wait until the server has closed its end (it has read what we sent), then close."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        self.close()


def merge_submits(
    batch: list[Outgoing],
) -> list[pb.ClientMessage | bytes]:
    """Adjacent tasks go in one Submit (the server takes many per message), within limits."""
    out: list[pb.ClientMessage | bytes] = []
    tasks: list[pb.Task] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if tasks:
            out.append(pb.ClientMessage(submit=pb.Submit(tasks=tasks)))
            tasks.clear()
        size = 0

    for item in batch:
        if isinstance(item, tuple):
            task, task_size = item
            if tasks and (size + task_size >= _SUBMIT_BYTES or len(tasks) >= _SUBMIT_TASKS):
                flush()
            tasks.append(task)
            size += task_size
        else:
            flush()
            out.append(item)
    flush()
    return out


class Outbox:
    """Messages for the session's stream, from any thread (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[Outgoing] = collections.deque()
        self._lock = threading.Lock()
        self._ready: asyncio.Event | None = None  # set on the I/O thread by `open`
        self._wake_scheduled = False  # a wake-up of the I/O thread is on its way
        self._last_send = 0.0  # time.monotonic() of the last send

    def open(self) -> None:
        """On the I/O thread, before the first send."""
        self._ready = asyncio.Event()

    @property
    def opened(self) -> bool:
        return self._ready is not None

    def send(self, messages: Sequence[Outgoing], stream: Any, *, direct: bool = True) -> None:
        """Send messages (any thread): on a same-host stream, written by this thread at once
        (``direct``), unless others wait in the queue or they come in a burst (a send right
        after another: many tasks submitted in a row); else queued for the I/O thread, which
        is woken once per batch and writes the batch at once. Messages that cannot be
        written now are queued: they go out on the stream that resumes the session."""
        ready = self._ready
        assert ready is not None
        now = time.monotonic()
        burst, self._last_send = now - self._last_send < _BURST, now
        if direct and not burst and isinstance(stream, LocalStream) and stream.writable:
            with stream.lock:
                if not self._items and not stream.sending:  # else order says: queue
                    stream.sending = True
                    try:
                        frames = b"".join(map(local_frame, merge_submits(list(messages))))
                        stream.send_frames(frames)
                        return
                    except OSError:
                        pass
                    finally:
                        stream.sending = False
        with self._lock:
            self._items.extend(messages)
            wake = not self._wake_scheduled
            self._wake_scheduled = True
        if wake:
            self._loop.call_soon_threadsafe(ready.set)

    async def send_loop(self, stream: Any) -> None:
        """Write what is queued to ``stream`` as it comes (on the I/O thread), until cancelled."""
        ready = self._ready
        assert ready is not None
        while True:
            await ready.wait()
            ready.clear()
            if isinstance(stream, LocalStream):
                with stream.lock:  # atomically with the batch's removal: order is kept
                    stream.send_frames(b"".join(map(local_frame, self._take())))
                continue
            for message in self._take():
                await stream.write(message)

    def _take(self) -> list[pb.ClientMessage | bytes]:
        with self._lock:
            batch = list(self._items)
            self._items.clear()
            self._wake_scheduled = False
        return merge_submits(batch)


def error_from(error: pb.Error, address: str) -> SperseError:
    if error.code == "auth":
        return AuthenticationError(
            f"the server at {address} refused the token: {error.message}. Pass the server's "
            "token (connect(url, token=...), SPERSE_TOKEN, or a token file)."
        )
    if error.code == "version":
        return ProtocolError(f"version mismatch with the server at {address}: {error.message}")
    return ProtocolError(
        f"the server at {address} ended the session: {error.code}: {error.message}"
    )


class NotAServer(ServerUnavailable):
    """Something answers at the address, but not the ``Sperse`` service (a coordinator
    that started after ``connect`` asked what was there, or another gRPC server)."""


def translate(exc: grpc.aio.AioRpcError, address: str) -> SperseError:
    failure = classify(exc)
    if failure.kind is GrpcErrorKind.WRONG_SERVICE:
        return NotAServer(
            f"{address} answers, but is not a sperse server ({failure.details}): give the "
            "address of a sperse server or coordinator"
        )
    if failure.kind is GrpcErrorKind.UNREACHABLE:
        return ServerUnavailable(f"the server at {address} is unavailable: {failure.details}")
    if failure.kind is GrpcErrorKind.REFUSED_TOKEN:
        return AuthenticationError(f"the server at {address} refused the token: {failure.details}")
    if failure.kind is GrpcErrorKind.TOO_LARGE:
        return ProtocolError(
            f"the server at {address} refused an oversized message: {failure.details}"
        )
    return ServerLost(f"the session with {address} failed: {failure}")


def describe_grpc(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return str(classify(error))
    return str(error)
