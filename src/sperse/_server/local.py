"""Same-host streams: the ``Session`` protocol over a Unix socket, beside gRPC.

A client that passed the same-host probe learns the server's local address from
``Welcome.local_address`` and may run its session there instead (the format is in
:mod:`sperse._wire`). What that saves is gRPC's threads: a message read or written here
wakes the server's event loop and nothing else.

Invariants:

- The stream is served by :meth:`SessionService.Session` itself, which sees it through
  :class:`LocalCall`, a context with the ``read``/``write``/``peer`` of a gRPC call: the
  same authentication (the token first, nothing read before it checks out), the same
  session rules, the same messages.
- The socket is in the abstract namespace (Linux): no file to remove, and reachable from
  this host's network namespace only. Anyone there may connect; the token decides.
- A message that is not one (undecodable, or over ``MAX_MESSAGE``) ends the stream, as a
  protocol error does over gRPC. A connection that is lost cancels its ``Session`` call,
  as gRPC does, so the session starts its grace period.
- The client's end closing (EOF) is the client gone: a killed client's socket only says
  EOF, and nothing would notice it before a write failed, an idle session never. Once the
  messages read before it are handled, the connection is dropped and the call cancelled,
  as above. (Sperse's clients close their end only after ``Goodbye``.)
- Flow control both ways: reading pauses while many messages wait to be handled, and a
  write waits while the client does not read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import socket
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc.aio

from sperse._server.logs import log_event
from sperse._wire import (
    MAX_MESSAGE,
    RECEIVE_BUFFER,
    FrameReader,
    Piece,
    local_frame,
    local_socket_name,
    pb,
    read_client_message,
)

if TYPE_CHECKING:
    from sperse._server.service import SessionService

__all__ = ["LocalCall", "LocalServer", "available"]

_PAUSE_AT = 512  # messages waiting to be handled: stop reading the socket
_RESUME_AT = 64


def available() -> bool:
    """Whether this platform has abstract Unix sockets."""
    return sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")


class LocalCall(asyncio.BufferedProtocol):
    """One same-host connection, as a ``Session`` call. Reads into one buffer of its own
    (``recv_into``): no buffer is allocated, nor freed, per read."""

    def __init__(self, server: LocalServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader(MAX_MESSAGE)
        self._received = memoryview(bytearray(RECEIVE_BUFFER))
        self._inbox: collections.deque[pb.ClientMessage | Piece] = collections.deque()
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._eof = False  # no more messages: read() says EOF once the inbox is empty
        self._hung_up = False  # the client closed its end
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._peer = "unix"
        self._task: asyncio.Task[None] | None = None
        # Set by the session's stream: handles a message as it is read (False: queue it).
        self.handler: Callable[[pb.ClientMessage | Piece], bool] | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, _, _ = struct.unpack("3i", creds)
            self._peer = f"unix:pid={pid}"
        self._task = asyncio.get_running_loop().create_task(self._serve())
        self._server.calls.add(self._task)
        self._task.add_done_callback(self._server.calls.discard)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._received

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._received[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        try:
            frames = self._reader.feed(data)
        except ValueError:
            self._inbox.append(pb.ClientMessage())  # the service says "protocol", then ends
            self._stop_reading()
            self._wake_reader()
            return
        for frame in frames:
            try:
                message = read_client_message(frame)
            except Exception:  # undecodable: seen as an empty message, a protocol error
                message = pb.ClientMessage()
            if self.handler is not None and not self._inbox and self._handle(message):
                continue
            self._inbox.append(message)
        if len(self._inbox) >= _PAUSE_AT and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._hung_up = True
        self._wake_reader()
        return True  # kept open until what was read before is handled (see read)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self._wake_reader()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # as gRPC cancels the handler of a broken call

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _handle(self, message: pb.ClientMessage | Piece) -> bool:
        assert self.handler is not None
        try:
            return self.handler(message)
        except Exception as exc:  # a bug of ours: the stream ends, the session waits
            log_event(logging.ERROR, "stream_error", exc_info=True, peer=self._peer, error=exc)
            self.handler = None
            if self._transport is not None:
                self._transport.close()
            return True

    # ---- the call, as SessionService sees it -------------------------------------------

    async def read(self) -> Any:
        while not self._inbox:
            if self._eof:
                if self._hung_up and self._transport is not None:
                    self._transport.abort()  # the client is gone: the call ends (see above)
                return grpc.aio.EOF
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable
        message = self._inbox.popleft()
        if self._reading_paused and len(self._inbox) <= _RESUME_AT and not self._lost:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        return message

    async def write(self, message: pb.ServerMessage | bytes) -> None:
        if self._lost or self._transport is None:
            raise ConnectionResetError("the same-host stream is closed")
        self._transport.write(local_frame(message))
        while self._writing_paused and not self._lost:
            self._writable = asyncio.get_running_loop().create_future()
            await self._writable

    def peer(self) -> str:
        return self._peer

    @property
    def write_blocked(self) -> bool:
        """Whether a write would have to wait (the client does not read), or fail."""
        return self._writing_paused or self._lost

    def write_now(self, message: pb.ServerMessage | bytes) -> None:
        """Write without waiting (the transport buffers). ``ConnectionError`` if lost."""
        if self._lost or self._transport is None:
            raise ConnectionResetError("the same-host stream is closed")
        self._transport.write(local_frame(message))

    # ---- inside ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            await self._server.service.Session(None, self)
        finally:
            if self._transport is not None:
                self._transport.close()

    def _wake_reader(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)

    def _stop_reading(self) -> None:
        self._eof = True
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            self._transport.pause_reading()


class LocalServer:
    """The server's same-host listener: an abstract Unix socket, one ``LocalCall`` per
    connection."""

    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.address = f"@sperse-{os.getpid()}-{secrets.token_hex(8)}"
        self.calls: set[asyncio.Task[None]] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(local_socket_name(self.address))
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: LocalCall(self), sock=sock)

    async def stop(self, grace: float | None) -> None:
        """Stop listening; calls end once their queued events are sent (the service is
        stopping), or are cancelled after ``grace`` seconds."""
        if self._server is not None:
            self._server.close()
        calls = list(self.calls)
        if calls:
            _, pending = await asyncio.wait(calls, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
