"""Calls of a remote object made by this client, sent straight to the object's worker when
both are on one host (the worker's side: :mod:`sperse._pool.direct`).

A call through the server crosses it twice each way; a direct one goes to the object's
worker and comes back, as a Ray actor call does. The server's session is still the way for
everything else: the creation, calls whose arguments hold remote values or big buffers, or
that retry or ask for an environment, the close, and every call once the worker's
connection is gone (a rebuilt object has a new worker, reached through the server).

Invariants:

- **Order.** An object's calls run in the order they were made, whichever way each takes:
  a call goes one way only when none of that object's calls is in flight the other way;
  otherwise it waits here, in order, with the ones behind it (``_Route.held``). Every
  object this client creates is tracked from its creation on, so a call sent through the
  server before the direct way opened is waited for too.
- **Bounds.** At most ``WINDOW`` calls and ``WINDOW_BYTES`` of them in flight directly per
  object (one always), each at most ``DIRECT_BYTES``: together they fit in the socket's
  buffer, so a user's thread never waits on a busy object to send (the worker reads what
  arrives even while a call runs, to see a cancel).
- **Ends.** A direct call ends with the worker's answer; a cancel is sent to the worker
  (one not started is dropped, the running one interrupted, as through the server). If the
  connection closes first, the object is gone: its calls in flight go to the server, which
  fails them saying why (closed, killed), as it would have; for a ``restart=True`` object
  (rebuilt on a new worker) they fail with ``ObjectLost`` here, and with the session's error
  when the session is lost. A held call that can no longer go directly goes through the
  server.
- Events (``Started``, ``Output``, ``Done``, ``Failed``) are the sink's, on the I/O thread,
  as the session's are: a direct call's ``Started`` comes with its first output or its end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sperse._core import (
    Done,
    ErrorInfo,
    EventSink,
    Failed,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    Output,
    Started,
    TaskSpec,
)
from sperse._exec.runner import dumps_work_oob
from sperse._pool.pipe import HEADER, Msg, frame
from sperse._pool.worker import decode_text
from sperse._serialize import loads_oob
from sperse._serialize import shm as _shm
from sperse._server.actor_runner import DIRECT
from sperse._server.envelope import (
    Envelope,
    PickledBytes,
    ShmBuffer,
    pack_envelope,
    unpack_result,
)
from sperse.errors import ServerLost

__all__ = ["DirectCalls"]

WINDOW = 64  # calls of one object in flight directly
WINDOW_BYTES = 128 << 10  # their bytes (with one more call, within the socket's buffer)
SEND_TIMEOUT = 30.0  # seconds a send may wait for the worker to read (then: connection lost)
_TASK_ID = struct.Struct("!H")  # a RUN's body: the task id's length, the task id, the envelope
DIRECT_BYTES = 64 << 10  # a call's pickle and buffers, at most (bigger: the server's way)
SEND_BUFFER = 1 << 20  # the socket's: WINDOW_BYTES + DIRECT_BYTES fit, so sends never wait
INLINE_LIMIT = 1 << 20  # a direct result's buffers from this size come in shared memory files


@dataclass(slots=True, eq=False)
class _Call:
    spec: TaskSpec
    object_id: str
    payload: bytes  # the envelope ("" for a call that goes through the server)
    started: bool = False
    cancelled: bool = False


@dataclass(slots=True, eq=False)
class _Route:
    """One object's calls: which way they are in flight, and those waiting to go."""

    channel: _Channel | None = None  # usable once welcomed
    direct: dict[int, _Call] = field(default_factory=dict)  # by the channel's call number
    direct_bytes: int = 0
    server: set[str] = field(default_factory=set)  # task ids in flight through the server
    held: collections.deque[_Call] = field(default_factory=collections.deque)
    released: bool = False  # the object is gone: the route goes with its connection
    restart: bool = False  # created with restart=True: rebuilt by its server if its worker dies


class _Channel(asyncio.BufferedProtocol):
    """The connection to one object's worker: read on the I/O loop, written by any thread
    (holding the routes' lock) on a duplicate of the socket whose sends wait at most
    ``SEND_TIMEOUT`` (the window keeps them from waiting at all)."""

    def __init__(self, calls: DirectCalls, object_id: str, sock: socket.socket) -> None:
        self._calls = calls
        self.object_id = object_id
        self._writer = socket.socket(fileno=os.dup(sock.fileno()))
        self._writer.settimeout(SEND_TIMEOUT)
        self._buffer = bytearray()
        self._view = memoryview(bytearray(1 << 16))
        self.welcomed = False
        self.broken = False
        self.pid = 0
        self._next = 0
        self._transport: asyncio.BaseTransport | None = None

    @property
    def usable(self) -> bool:
        return self.welcomed and not self.broken

    def number(self) -> int:
        self._next += 1
        return self._next

    def send(self, tag: int, seq: int, body: bytes = b"") -> bool:
        """False: the connection is gone (or the worker stopped reading)."""
        if self.broken:
            return False
        try:
            self._writer.sendall(frame(tag, seq, body))
        except OSError:
            self.broken = True
            if self._transport is not None:
                self._calls.loop.call_soon_threadsafe(self._transport.close)
            return False
        return True

    def close(self) -> None:
        self.broken = True
        self._writer.close()
        if self._transport is not None:
            self._transport.close()

    # ---- asyncio.BufferedProtocol (the I/O loop) --------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        buffer += self._view[:nbytes]
        start, size = 0, len(buffer)
        while size - start >= HEADER.size:
            tag, seq, length = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + length
            if size < end:
                break
            body = bytes(buffer[start + HEADER.size : end])
            start = end
            if tag == Msg.WELCOME:
                self.pid = seq
                self.welcomed = True
            else:
                self._calls.answer(self, tag, seq, body)
        del buffer[:start]  # once per read: many small answers come in one

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._writer.close()
        self._calls.lost_channel(self)


class DirectCalls:
    """The routes of the objects this backend created. ``sink()``: the backend's sink;
    ``send(specs)``: send through the server (the session); ``name()``: the server's name;
    ``lost()``: the session's error, None while it lives."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        sink: Callable[[], EventSink | None],
        send: Callable[[Sequence[TaskSpec]], None],
        name: Callable[[], str],
        lost: Callable[[], Exception | None],
        local: Callable[[], bool],
        shm_prefix: Callable[[], str],
    ) -> None:
        self.loop = loop
        self._sink = sink
        self._send = send
        self._name = name
        self._lost = lost
        self._local = local
        self._shm_prefix = shm_prefix
        self._lock = threading.RLock()
        self._routes: dict[str, _Route] = {}  # by object id
        self._creates: dict[str, str] = {}  # the creation's task id -> object id
        self._tracked: dict[str, tuple[str, bool]] = {}  # through the server: object, a close?
        self._connecting: set[asyncio.Task[None]] = set()

    # ---- the user's threads --------------------------------------------------------------

    def route(self, specs: Sequence[TaskSpec]) -> list[TaskSpec]:
        """Send what goes directly, hold what must wait; the rest, for the server, in order."""
        out: list[TaskSpec] = []
        for spec in specs:
            work = spec.work
            object_id: str = getattr(work, "object_id", "")
            if isinstance(work, ObjectCreate):
                if self._local() and work.max_concurrency == 1:
                    with self._lock:
                        self._routes[work.object_id] = _Route(restart=work.restart)
                        self._creates[spec.task_id] = work.object_id
                    spec = dataclasses.replace(spec, work=dataclasses.replace(work, direct=True))
                out.append(spec)
                continue
            route = self._routes.get(object_id) if object_id else None
            if route is None:
                out.append(spec)
                continue
            call = _Call(spec, object_id, self._payload(spec, route))
            with self._lock:
                if route.held or not self._may_go(route, call):
                    route.held.append(call)
                elif call.payload:
                    self._send_direct(route, call)
                else:
                    self._track(spec, call.object_id)
                    out.append(spec)
        return out

    def cancel(self, task_id: str) -> bool:
        """True: the call is (or was) this module's, and is being cancelled."""
        with self._lock:
            for route in self._routes.values():
                for call in route.held:
                    if call.spec.task_id == task_id:
                        route.held.remove(call)
                        error = ErrorInfo("cancelled", "TaskCancelled", "cancelled while queued")
                        self.loop.call_soon_threadsafe(self._emit, Failed(task_id, "", error))
                        return True
                for number, call in route.direct.items():
                    if call.spec.task_id == task_id:
                        if not call.cancelled and route.channel is not None:
                            call.cancelled = True
                            route.channel.send(Msg.CANCEL, number)
                        return True
        return False

    def release(self, object_id: str) -> None:
        """The object is destroyed: its connection goes (its calls in flight fail)."""
        with self._lock:
            route = self._routes.get(object_id)
            if route is None:
                return
            route.released = True
            channel = route.channel
            if channel is None:
                del self._routes[object_id]
        if channel is not None:
            self.loop.call_soon_threadsafe(channel.close)

    def close(self) -> None:
        """The backend closes (any thread): every connection, on the I/O loop."""
        with self._lock:
            channels = [r.channel for r in self._routes.values() if r.channel is not None]
        for channel in channels:
            with contextlib.suppress(RuntimeError):  # the loop is closed: gone with it
                self.loop.call_soon_threadsafe(channel.close)

    # ---- the I/O thread ----------------------------------------------------------------

    def event(self, event: Any) -> Any:
        """A session event, seen before the sink: a creation's direct address is taken out
        of its result; a tracked call's end may let the calls held behind it go."""
        task_id = event.task_id
        if isinstance(event, Done | Failed):
            object_id = self._creates.pop(task_id, None)
            if object_id is not None:
                value = event.value if isinstance(event, Done) else None
                if isinstance(value, tuple) and len(value) == 3 and value[0] == DIRECT:
                    self._open(object_id, value[1], value[2])
                    return Done(task_id, event.where, None)
                with self._lock:  # failed, or no direct way: the server's way only
                    route = self._routes.get(object_id)
                    if route is not None and route.channel is None:
                        del self._routes[object_id]
                return event
            tracked = self._tracked.pop(task_id, None)
            if tracked is not None:
                object_id, closes = tracked
                with self._lock:
                    route = self._routes.get(object_id)
                    if route is not None:
                        route.server.discard(task_id)
                        self._release_held(route)
                        if closes and isinstance(event, Done):
                            self._routes.pop(object_id, None)
                            if route.channel is not None:
                                route.channel.close()
        return event

    def answer(self, channel: _Channel, tag: int, number: int, body: bytes) -> None:
        with self._lock:
            route = self._routes.get(channel.object_id)
            call = route.direct.get(number) if route is not None else None
        if route is None or call is None:
            return
        task_id = call.spec.task_id
        where = self._name()
        if not call.started:
            call.started = True
            self._emit(Started(task_id, where, channel.pid))
        if tag == Msg.OUTPUT:
            stream, text = body[0], decode_text(body[1:], 1)[0]
            self._emit(Output(task_id, where, "stderr" if stream == 2 else "stdout", text))
            return
        with self._lock:
            del route.direct[number]
            route.direct_bytes -= len(call.payload)
        if tag == Msg.DONE:
            self._emit(_result(task_id, where, body))
        elif tag == Msg.CANCELLED:
            error = ErrorInfo("cancelled", "TaskCancelled", "cancelled")
            self._emit(Failed(task_id, where, error))
        else:
            message, trace = decode_text(body, 2)
            self._emit(Failed(task_id, where, ErrorInfo("internal", "RunnerError", message, trace)))
        with self._lock:
            self._release_held(route)

    def lost_channel(self, channel: _Channel) -> None:
        with self._lock:
            route = self._routes.get(channel.object_id)
            if route is None or route.channel is not channel:
                return
            calls, route.direct, route.direct_bytes = list(route.direct.values()), {}, 0
            lost = self._lost()
            if lost is None and not route.restart and not route.released:
                # Its worker is gone, and so is the object: the server says why (closed by
                # another client, killed, ...), as to any of its calls. Nothing runs twice:
                # the server runs no call of a dead object.
                for call in reversed(calls):
                    call.payload = b""
                    route.held.appendleft(call)
                calls = []
            elif route.released and not route.held and not route.server:
                del self._routes[channel.object_id]
        where = self._name()
        for call in calls:
            if lost is not None:
                error = ErrorInfo("server_lost", type(lost).__name__, str(lost))
            else:
                error = ErrorInfo(
                    "object_lost",
                    "ObjectLost",
                    f"remote object {channel.object_id[:8]} on server {where!r}: its worker "
                    f"(pid {channel.pid}) ended while this call ran, so the call did not "
                    "complete"
                    + (" (the object is rebuilt: its state was reset)" if route.restart else ""),
                )
            self._emit(Failed(call.spec.task_id, where, error))
        with self._lock:
            self._release_held(route)

    # ---- inside ----------------------------------------------------------------------

    def _payload(self, spec: TaskSpec, route: _Route) -> bytes:
        """The envelope of a call that may go directly; b"" if it goes through the server."""
        work = spec.work
        channel = route.channel
        if (
            channel is None
            or not channel.usable
            or not isinstance(work, ObjectCall)
            or spec.retries
            or spec.pip
        ):
            return b""
        data, buffers, refs = dumps_work_oob(work, spec.label or "the call")  # may raise
        raws = [b.raw() for b in buffers]
        if refs or len(data) + sum(r.nbytes for r in raws) > DIRECT_BYTES:
            return b""  # remote values, or big buffers (shared memory files): the server's
        pickled = PickledBytes(data, tuple(map(bytes, raws)))
        prefix = self._shm_prefix()
        envelope = Envelope(
            spec.task_id, spec.label, self._name(), INLINE_LIMIT, pickled, {}, prefix
        )
        task_id = spec.task_id.encode()
        return _TASK_ID.pack(len(task_id)) + task_id + pack_envelope(envelope)

    def _may_go(self, route: _Route, call: _Call) -> bool:
        if call.payload:
            return not route.server and (
                not route.direct
                or (len(route.direct) < WINDOW and route.direct_bytes < WINDOW_BYTES)
            )
        return not route.direct

    def _send_direct(self, route: _Route, call: _Call) -> None:
        channel = route.channel
        assert channel is not None
        number = channel.number()
        route.direct[number] = call
        route.direct_bytes += len(call.payload)
        channel.send(Msg.RUN, number, call.payload)  # if lost: connection_lost fails it

    def _track(self, spec: TaskSpec, object_id: str) -> None:
        route = self._routes[object_id]
        route.server.add(spec.task_id)
        self._tracked[spec.task_id] = (object_id, isinstance(spec.work, ObjectClose))

    def _release_held(self, route: _Route) -> None:
        """Send the held calls that may go now, in order (holding the lock)."""
        to_server: list[TaskSpec] = []
        while route.held:
            call = route.held[0]
            if call.payload and (route.channel is None or not route.channel.usable):
                call.payload = b""  # the direct way is gone: through the server
            if not self._may_go(route, call):
                break
            route.held.popleft()
            if call.payload:
                self._send_direct(route, call)
            else:
                self._track(call.spec, call.object_id)
                to_server.append(call.spec)
        if to_server:
            try:
                self._send(to_server)
            except Exception as exc:  # the session is gone (or a call cannot be encoded)
                self.forget(to_server)
                for spec in to_server:
                    error = ErrorInfo(_lost_kind(exc), type(exc).__name__, str(exc))
                    self.loop.call_soon_threadsafe(self._emit, Failed(spec.task_id, "", error))

    def forget(self, specs: Sequence[TaskSpec]) -> None:
        """Calls meant for the server that were not sent after all."""
        with self._lock:
            for spec in specs:
                tracked = self._tracked.pop(spec.task_id, None)
                route = self._routes.get(tracked[0]) if tracked is not None else None
                if route is not None:
                    route.server.discard(spec.task_id)
                    self._release_held(route)

    def _open(self, object_id: str, name: str, secret: bytes) -> None:
        """Connect to the object's worker; until it welcomes us, calls go the server's way.
        If it cannot be reached, the object is the server's only."""
        with self._lock:
            route = self._routes.get(object_id)
        if route is None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if not self._local():  # another host's worker (or forced gRPC)
                raise ConnectionRefusedError
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            sock.connect("\0" + name)
            sock.sendall(frame(Msg.HELLO, 0, secret))
        except OSError:
            sock.close()
            with self._lock:
                del self._routes[object_id]
            return
        sock.setblocking(False)
        channel = _Channel(self, object_id, sock)
        route.channel = channel

        async def connect() -> None:
            await self.loop.create_unix_connection(lambda: channel, sock=sock)

        task = self.loop.create_task(connect())
        self._connecting.add(task)  # held: the loop keeps only a weak reference
        task.add_done_callback(self._connecting.discard)

    def _emit(self, event: Any) -> None:
        sink = self._sink()
        if sink is not None:
            if isinstance(event, Failed) and not event.where:
                event = Failed(event.task_id, self._name(), event.error)
            sink(event)


def _lost_kind(exc: Exception) -> Any:
    return "server_lost" if isinstance(exc, ServerLost) else "internal"


def _result(task_id: str, where: str, body: bytes) -> Done | Failed:
    try:
        result = unpack_result(body)
        if isinstance(result, ErrorInfo):
            return Failed(task_id, where, result)
        pickled = {v.name: v.value for v in result}[""]
        files = list(pickled.shm_names())
        try:  # a big buffer is in a file the worker wrote for this client: mapped, then gone
            buffers = [
                _shm.map_copy(b.name) if isinstance(b, ShmBuffer) else bytearray(b)
                for b in pickled.buffers
            ]
        finally:
            _shm.unlink(files)
        value = loads_oob(pickled.data, buffers, what=f"a result from {where}")  # type: ignore[arg-type]
    except Exception as exc:
        return Failed(task_id, where, ErrorInfo("serialization", type(exc).__name__, str(exc)))
    return Done(task_id, where, value)
