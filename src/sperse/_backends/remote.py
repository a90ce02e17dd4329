"""``SperseBackend``: the client of one ``sperse server``, over gRPC.

One asyncio loop on a background thread ("the I/O thread") owns the gRPC
channel and the session stream. Callers on other threads only enqueue
messages (``submit``, ``cancel``, ``release``) or wait on a future
(``fetch``, ``stats``); events go to the sink on the I/O thread.

Errors of grpc are translated here, and only here, into Sperse's own:
a refused token is ``AuthenticationError``; no answer at the address is
``ServerUnavailable``; a stream that breaks and cannot be resumed within
``reconnect_timeout`` ends every unfinished task with ``ServerLost``.

A client on the server's host (the embedded server always; one on loopback
usually) proves it in ``Hello`` (a probe file in /dev/shm, see
:mod:`sperse._wire`). Then:

- each big out-of-band buffer of a task's arguments is written once into a
  shared memory file that the server owns from then on, and a fetched value's
  big buffers are mapped from the server's files copy-on-write (by the thread
  that asked, never the I/O thread): a numpy array arrives without a copy, and
  writable;
- the session moves from gRPC to the server's same-host socket
  (``_LocalStream``), where the thread that submits a task writes it itself,
  and the I/O thread handles each server message as it is read: no gRPC
  threads, and no wake-up of the I/O thread on the way out. A broken
  same-host stream is resumed like a gRPC one (there first, then over gRPC).

``shm=False`` (as a server elsewhere) keeps every byte on gRPC.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import os
import platform
import select
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio

from sperse._core import (
    Done,
    ErrorInfo,
    ErrorKind,
    EventSink,
    Failed,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    ObjectInfo,
    Output,
    ServerInfo,
    Started,
    StatementTask,
    TaskSpec,
    Work,
)
from sperse._core.callbacks import callback_destination, callback_destination_reset, deliver
from sperse._exec.runner import dumps_work_oob
from sperse._serialize import RemoteRef, RemoteValue, dumps_oob, loads_oob
from sperse._serialize import shm as _shm
from sperse._tokens import new_token
from sperse._version import __version__
from sperse._wire import (
    MAX_MESSAGE,
    PROTOCOL,
    BlobReceiver,
    BlobSender,
    FrameReader,
    local_frame,
    local_socket_name,
    pb,
)
from sperse._wire.sperse_pb2_grpc import SperseStub
from sperse._wire.urls import parse_url
from sperse.errors import (
    AuthenticationError,
    ClientGone,
    ProtocolError,
    SerializationError,
    ServerLost,
    ServerUnavailable,
    SperseError,
)

__all__ = ["EmbeddedServer", "SperseBackend", "parse_url"]

log = logging.getLogger("sperse.client")
T = TypeVar("T")

DEFAULT_INLINE_LIMIT = 1 << 20


async def _refused_at_once(address: str, timeout: float) -> None:
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


@dataclass(frozen=True, slots=True)
class TaskOutputLog:
    """What a task printed, as its server kept it: ``(stream, text)`` in order."""

    chunks: tuple[tuple[str, str], ...]
    running: bool
    truncated: bool

    def text(self, stream: str | None = None) -> str:
        return "".join(t for s, t in self.chunks if stream is None or s == stream)


@dataclass(slots=True)
class _Task:
    spec: TaskSpec
    is_statement: bool  # its result is a dict of the names a remote statement defined


class SperseBackend:
    """Runs tasks on one ``sperse server``."""

    def __init__(
        self,
        address: str,
        *,
        token: str,
        tls_ca: bytes | None = None,
        tls: bool = False,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 5.0,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        process: EmbeddedServer | None = None,
        client_name: str = "",
        python_version: str | None = None,
        shm: bool | None = None,
        locate: Callable[[str], str | None] | None = None,
    ) -> None:
        """``shm``: None, use shared memory when the server turns out to be on this host;
        False, never (every byte over gRPC). ``locate``: a server's address by its name,
        for a many-servers backend (values held by other servers travel to this one as
        PeerRefs)."""
        self.address = parse_url(address)
        self._token = token
        self._tls = tls or tls_ca is not None
        self._tls_ca = tls_ca
        self._connect_timeout = connect_timeout
        self._reconnect_timeout = reconnect_timeout
        self._inline_limit = inline_limit
        self._process = process
        self._client_name = client_name or f"{platform.node()}:{os.getpid()}"
        self._python_version = python_version or platform.python_version()
        self._sink: EventSink | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="sperse-io", daemon=True)
        self._sender = BlobSender()
        self._tasks: dict[str, _Task] = {}
        self._tasks_lock = threading.Lock()
        self._requests = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Any]] = {}
        # Messages for the I/O thread (tasks with their approximate size, merged into
        # Submits there), and whether a wake-up of it is already on its way.
        self._outbox: collections.deque[pb.ClientMessage | tuple[pb.Task, int]] = (
            collections.deque()
        )
        self._outbox_lock = threading.Lock()
        self._outbox_ready: asyncio.Event | None = None
        self._wake_scheduled = False
        self._welcome: pb.Welcome | None = None
        self._session_id = ""
        self._shm_wanted = shm is not False
        self._shm_prefix = ""  # non-empty: this stream may name shared memory files
        self._local_address = ""  # the server's same-host socket, once it offered one
        self._last_send = 0.0  # time.monotonic() of the last _send
        self._channel: grpc.aio.Channel | None = None
        self._stream: Any = None
        self._closed = False
        self._lost: SperseError | None = None
        self._main: asyncio.Task[None] | None = None
        self._locate = locate
        self._info: ServerInfo | None = None  # the server as the Welcome describes it

    # ---- lifecycle -----------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        """Connect and authenticate; raises AuthenticationError, ServerUnavailable, ..."""
        self._sink = sink
        self._thread.start()
        try:
            self._call(self._open(), self._connect_timeout + 1)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._shutdown(), 5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if self._process is not None:
            self._process.stop()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    # ---- the protocol (I/O thread) ----------------------------------------------

    async def _open(self) -> None:
        self._outbox_ready = asyncio.Event()
        await self._connect(resume=False)
        self._main = asyncio.create_task(self._serve())

    async def _connect(self, *, resume: bool) -> None:
        """Open the session's stream (a new session, or ``resume`` this one): on the
        server's same-host socket when it offered one, else over gRPC."""
        if self._local_address:
            try:
                await self._connect_local(resume=resume)
                return
            except (OSError, TimeoutError) as exc:  # gone: gRPC says whether the server is
                log.info("same-host stream to %s failed (%s); using gRPC", self.address, exc)
                self._local_address = ""
        await self._connect_grpc(resume=resume)
        if self._local_address:
            try:  # the session moves to the same-host socket; the server ends the gRPC call
                await self._connect_local(resume=True)
            except (OSError, TimeoutError, SperseError) as exc:
                log.info("same-host stream to %s failed (%s); using gRPC", self.address, exc)
                self._local_address = ""
                return
            channel, self._channel = self._channel, None
            if channel is not None:
                await channel.close()

    async def _connect_grpc(self, *, resume: bool) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ]
        if self._tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self._tls_ca)
            channel = grpc.aio.secure_channel(self.address, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(self.address, options=options)
        self._channel = channel
        if not resume:
            await _refused_at_once(self.address, self._connect_timeout)
        try:
            await asyncio.wait_for(channel.channel_ready(), self._connect_timeout)
        except TimeoutError:
            await channel.close()
            raise ServerUnavailable(
                f"no sperse server answered at {self.address} within {self._connect_timeout} s: "
                "is it running (sperse server --port PORT), and is the address right?"
            ) from None
        stream = SperseStub(channel).Session()  # type: ignore[no-untyped-call]
        try:
            await self._hello(stream, resume=resume)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, self.address) from exc

    async def _connect_local(self, *, resume: bool) -> None:
        stream = await asyncio.wait_for(
            _LocalStream.open(self._local_address), self._connect_timeout
        )
        try:
            await self._hello(stream, resume=resume)
        except BaseException:
            stream.close()
            raise

    async def _hello(self, stream: Any, *, resume: bool) -> None:
        """Hello on ``stream`` (with the same-host probe), Welcome back; the stream is the
        session's from then on."""
        hello = pb.Hello(
            token=self._token,
            protocol=PROTOCOL,
            client_version=_version(),
            python_version=self._python_version,
            session_id=self._session_id if resume else "",
            client_name=self._client_name,
        )
        probe = ""
        if self._shm_wanted and _shm.available():
            with contextlib.suppress(OSError):
                probe, nonce = _shm.make_probe()
                hello.shm_probe, hello.shm_nonce = probe, nonce
        try:
            await stream.write(pb.ClientMessage(hello=hello))
            reply = await asyncio.wait_for(stream.read(), self._connect_timeout)
        finally:
            if probe:
                _shm.unlink([probe])
        if reply is grpc.aio.EOF or reply is None:
            raise ServerLost(f"the server at {self.address} closed the session at once")
        kind = reply.WhichOneof("kind")
        if kind == "error":
            raise _error_from(reply.error, self.address)
        if kind != "welcome":
            raise ProtocolError(f"the server at {self.address} answered {kind!r} to hello")
        welcome = reply.welcome
        if resume and not welcome.resumed:
            raise ServerLost(f"the server at {self.address} no longer has this session")
        self._welcome = welcome
        self._session_id = welcome.session_id
        shm_on = welcome.shm and bool(probe)
        self._shm_prefix = welcome.shm_prefix if shm_on else ""
        if shm_on and welcome.local_address and _local_streams():
            self._local_address = welcome.local_address
        old, self._stream = self._stream, stream
        if isinstance(old, _LocalStream) and old is not stream:
            old.close()

    async def _serve(self) -> None:
        """Run the session; on a broken stream, resume it or end everything in ServerLost."""
        while not self._closed:
            receiver = BlobReceiver()
            sender = asyncio.create_task(self._send_loop(self._stream))
            try:
                await self._receive_loop(self._stream, receiver)
                error: BaseException | None = None
            except (grpc.aio.AioRpcError, OSError) as exc:
                error = exc
            except SperseError as exc:
                error = exc
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
            if self._closed:
                return
            if isinstance(error, AuthenticationError | ProtocolError):
                self._fail_everything(error)
                return
            if not await self._resume():
                reason = "" if error is None else f" ({_describe_grpc(error)})"
                self._fail_everything(
                    ServerLost(
                        f"lost the connection to server {self.name!r} at {self.address}{reason} "
                        f"and could not resume within {self._reconnect_timeout} s"
                    )
                )
                return

    async def _resume(self) -> bool:
        if self._process is not None and not self._process.alive():
            return False
        deadline = time.monotonic() + self._reconnect_timeout
        delay = 0.05
        while time.monotonic() < deadline and not self._closed:
            with contextlib.suppress(Exception):
                if self._channel is not None:
                    await self._channel.close()
            try:
                # Each attempt within what is left of the budget: a dying server must not
                # hold the client for a whole connect_timeout.
                budget = max(0.05, deadline - time.monotonic())
                await asyncio.wait_for(self._connect(resume=True), budget)
                log.info("resumed session %s with %s", self._session_id, self.address)
                self._ask_again()
                return True
            except (ServerUnavailable, ServerLost, grpc.aio.AioRpcError, OSError, TimeoutError):
                if self._process is not None and not self._process.alive():
                    return False
            except SperseError:
                return False
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay *= 2
        return False

    def _ask_again(self) -> None:
        """After a resume: an event written just before the break may be lost, so name every
        unfinished task again (with no work): the server re-sends the outcome of finished
        ones and ignores running ones."""
        with self._tasks_lock:
            ids = list(self._tasks)
        if ids:
            self._send([(pb.Task(task_id=task_id), 64) for task_id in ids])

    async def _send_loop(self, stream: Any) -> None:
        ready = self._outbox_ready
        assert ready is not None
        while True:
            await ready.wait()
            ready.clear()
            if isinstance(stream, _LocalStream):
                with stream.lock:  # atomically with the batch's removal: order is kept
                    stream.send_frames(b"".join(map(local_frame, self._take_outbox())))
                continue
            for message in self._take_outbox():
                await stream.write(message)

    def _take_outbox(self) -> list[pb.ClientMessage]:
        with self._outbox_lock:
            batch = list(self._outbox)
            self._outbox.clear()
            self._wake_scheduled = False
        return _merge_submits(batch)

    async def _receive_loop(self, stream: Any, receiver: BlobReceiver) -> None:
        if isinstance(stream, _LocalStream):  # messages are handled as they are read
            stream.handler = functools.partial(self._take, receiver)
        while True:
            message = await stream.read()
            if message is grpc.aio.EOF:
                return
            if not self._take(receiver, message):
                raise _error_from(message.error, self.address)

    def _take(self, receiver: BlobReceiver, message: pb.ServerMessage) -> bool:
        """Handle one server message (on the I/O thread). False: it is an ``Error``."""
        kind = message.WhichOneof("kind")
        if kind == "blob":
            receiver.add(message.blob)
        elif kind == "events":
            for event in message.events.events:
                self._on_event(event, receiver)
        elif kind == "callback":
            self._on_callback(message.callback, receiver)
        elif kind in ("fetch_reply", "stats", "objects", "callback_reply", "logs"):
            reply = getattr(message, kind)
            future = self._replies.pop(reply.request_id, None)
            if future is not None and not future.done():
                if kind == "fetch_reply" and not reply.error:
                    try:  # files are mapped by the caller's thread, not this one
                        future.set_result(_received(reply.value, receiver))
                    except KeyError as exc:
                        future.set_exception(
                            SperseError(f"cannot read the value fetched from {self.name}: {exc}")
                        )
                else:
                    future.set_result(reply)
        elif kind == "error":
            return False
        return True

    def _on_event(self, event: pb.Event, receiver: BlobReceiver) -> None:
        sink = self._sink
        assert sink is not None
        task_id = event.task_id
        where = self.name
        kind = event.WhichOneof("kind")
        if kind == "started":
            sink(Started(task_id, where))
        elif kind == "output":
            stderr = event.output.stream == "stderr"
            sink(Output(task_id, where, "stderr" if stderr else "stdout", event.output.text))
        elif kind == "done":
            with self._tasks_lock:
                task = self._tasks.pop(task_id, None)
            try:
                values = {v.name: self._value(v, receiver) for v in event.done.values}
            except SperseError as exc:
                sink(
                    Failed(task_id, where, ErrorInfo("serialization", type(exc).__name__, str(exc)))
                )
                return
            if task is not None and task.is_statement:
                sink(Done(task_id, where, values))
            else:
                sink(Done(task_id, where, values.get("")))
        elif kind == "failed":
            with self._tasks_lock:
                self._tasks.pop(task_id, None)
            f = event.failed
            info = ErrorInfo(_kind(f.kind), f.type_name, f.message, f.traceback)
            sink(Failed(task_id, where, info))

    def _on_callback(self, message: pb.Callback, receiver: BlobReceiver) -> None:
        """Remote code called one of this client's callbacks: run it on the user's thread."""
        try:
            data, buffers = _writable(*_received(message.args, receiver))
            args, kwargs = loads_oob(data, buffers, what="the arguments of a callback")
        except Exception as exc:  # not ours to raise on the I/O thread: say it
            log.warning("a callback from %s could not be read: %s", self.name, exc)
            return
        if not deliver(message.callback_id, args, kwargs):
            log.warning("remote code called back callback %s, which is gone", message.callback_id)

    def call_back(
        self,
        session_id: str,
        callback_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        what: str = "a callback",
        timeout: float | None = 30.0,
    ) -> None:
        """Hand ``(args, kwargs)`` to the client of ``session_id`` on this server, which runs
        its callback ``callback_id`` (remote code calling back its client)."""
        data, buffers, _ = dumps_oob((args, kwargs), what=f"the arguments of callback {what}")
        blobs: list[pb.Blob] = []
        raws = [b.raw() for b in buffers]
        pickled = pb.Pickled(
            data=self._sender.encode(data, blobs),
            buffers=[self._sender.encode(r, blobs) for r in raws],
        )
        call = pb.CallbackCall(session_id=session_id, callback_id=callback_id, args=pickled)
        reply = self._call(self._request("callback", call=call, blobs=blobs), timeout)
        if reply.error:
            raise ClientGone(f"callback {what}: {reply.error}")

    def _value(self, value: pb.Value, receiver: BlobReceiver) -> Any:
        if value.WhichOneof("kind") == "ref":
            r = value.ref
            ref = RemoteRef(r.object_id, self.name, r.type_name, r.size, r.repr)
            handle = RemoteValue(ref, self._fetch)
            weakref.finalize(handle, self._release_one, r.object_id)
            return handle
        try:
            data, buffers = _writable(*_received(value.inline, receiver))
        except (OSError, KeyError) as exc:
            raise SperseError(f"cannot read a result from {self.name}: {exc}") from exc
        return loads_oob(data, buffers, what=f"a result from {self.name}")

    def _fail_everything(self, error: SperseError) -> None:
        if isinstance(self._stream, _LocalStream):
            self._stream.close()
        with self._tasks_lock:  # with submit's check: a task is either failed here or refused
            self._lost = error
            tasks, self._tasks = self._tasks, {}
        for future in self._replies.values():
            if not future.done():
                future.set_exception(error)
        self._replies.clear()
        sink = self._sink
        if sink is None:
            return
        kind: ErrorKind = "server_lost" if isinstance(error, ServerLost) else "internal"
        for task_id in tasks:
            sink(Failed(task_id, self.name, ErrorInfo(kind, type(error).__name__, str(error))))

    async def _shutdown(self) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        if self._stream is not None:
            with contextlib.suppress(Exception):  # the session is over: free it at once
                await self._stream.write(pb.ClientMessage(goodbye=pb.Goodbye()))
                await self._stream.done_writing()
        if isinstance(self._stream, _LocalStream):
            await self._stream.closed()
        if self._channel is not None:
            await self._channel.close()

    # ---- the Backend protocol (any thread) ----------------------------------------

    @property
    def name(self) -> str:
        return self._welcome.server_name if self._welcome is not None else self.address

    @property
    def shm(self) -> bool:
        """Whether big buffers travel through shared memory files (the server is here)."""
        return bool(self._shm_prefix)

    @property
    def transport(self) -> str:
        """``"local"`` (the server's same-host socket) or ``"grpc"``."""
        return "local" if isinstance(self._stream, _LocalStream) else "grpc"

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        if self._lost is not None:
            raise self._lost
        items: list[pb.ClientMessage | tuple[pb.Task, int]] = []
        uploads: list[str] = []
        prefix = self._shm_prefix
        destination = callback_destination(self.address, self._session_id)
        try:
            for spec in specs:
                data, buffers, refs = dumps_work_oob(spec.work, spec.label or "the task")
                blobs: list[pb.Blob] = []
                size = len(data) + 64
                if buffers:
                    fields = []
                    for buffer in buffers:
                        raw = buffer.raw()
                        field = _upload(raw, prefix, uploads) if prefix else None
                        if field is None:
                            field = self._sender.encode(raw, blobs)
                            size += raw.nbytes
                        fields.append(field)
                    pickled = pb.Pickled(data=self._sender.encode(data, blobs), buffers=fields)
                else:
                    pickled = pb.Pickled(data=self._sender.encode(data, blobs))
                fields_of: dict[str, Any] = {}
                if refs:
                    fields_of["refs"] = [r.object_id for r in refs]
                    fields_of["peer_refs"] = self._peer_refs(refs, spec.label or spec.task_id)
                op = _object_op(spec.work)
                if op is not None:
                    fields_of["object"] = op
                if spec.pip:
                    fields_of["pip"] = spec.pip
                task = pb.Task(
                    task_id=spec.task_id,
                    work=pickled,
                    retries=spec.retries,
                    inline_limit=self._inline_limit,
                    label=spec.label,
                    **fields_of,
                )
                items.extend(pb.ClientMessage(blob=b) for b in blobs)
                items.append((task, size))
            with self._tasks_lock:
                if self._lost is not None:  # lost while these were prepared: never sent
                    raise self._lost
                for spec in specs:
                    work = spec.work
                    returns_names = isinstance(work, StatementTask) and not work.is_expression
                    self._tasks[spec.task_id] = _Task(spec, returns_names)
            self._send(items)
        except BaseException:
            _shm.unlink(uploads)  # not sent: still ours
            raise
        finally:
            callback_destination_reset(destination)

    def _peer_refs(self, refs: Sequence[RemoteRef], what: str) -> list[pb.PeerRef]:
        """Where the values held by other servers of the cluster are: this server pulls them."""
        out: list[pb.PeerRef] = []
        name = self.name
        for ref in refs:
            if ref.server == name:
                continue
            address = self._locate(ref.server) if self._locate is not None else None
            if address is None:
                raise SerializationError(
                    f"{what}: an input is a value held on server {ref.server!r}, which is not "
                    f"part of this cluster (any more): fetch it first, or compute it again"
                )
            out.append(pb.PeerRef(object_id=ref.object_id, server=ref.server, address=address))
        return out

    def cancel(self, task_id: str) -> None:
        self._send([pb.ClientMessage(cancel=pb.Cancel(task_ids=[task_id]))])

    def release(self, object_ids: Iterable[str]) -> None:
        ids = list(object_ids)
        if ids and not self._closed and self._lost is None:
            # Through the I/O thread: a release may come from a finalizer, at any moment.
            self._send([pb.ClientMessage(release=pb.Release(object_ids=ids))], direct=False)

    def _release_one(self, object_id: str) -> None:
        with contextlib.suppress(Exception):
            self.release([object_id])

    def _send(
        self, messages: Sequence[pb.ClientMessage | tuple[pb.Task, int]], *, direct: bool = True
    ) -> None:
        """Send messages (any thread): on a same-host stream, written by this thread at once
        (``direct``), unless others wait in the queue or they come in a burst (a send right
        after another: many tasks submitted in a row); else queued for the I/O thread, which
        is woken once per batch and writes the batch at once. Messages that cannot be
        written now are queued: they go out on the stream that resumes the session."""
        ready = self._outbox_ready
        if ready is None or self._closed:
            raise ServerLost(f"the connection to {self.address} is closed")
        stream = self._stream
        now = time.monotonic()
        burst, self._last_send = now - self._last_send < _BURST, now
        if direct and not burst and isinstance(stream, _LocalStream) and stream.writable:
            with stream.lock:
                if not self._outbox and not stream.sending:  # else order says: queue
                    stream.sending = True
                    try:
                        frames = b"".join(map(local_frame, _merge_submits(list(messages))))
                        stream.send_frames(frames)
                        return
                    except OSError:
                        pass
                    finally:
                        stream.sending = False
        with self._outbox_lock:
            self._outbox.extend(messages)
            wake = not self._wake_scheduled
            self._wake_scheduled = True
        if wake:
            self._loop.call_soon_threadsafe(ready.set)

    def _fetch(self, ref: RemoteRef, timeout: float | None) -> Any:
        received = self._call(self._request("fetch", object_id=ref.object_id), timeout)
        what = f"{ref.type_name} fetched from {ref.server}"
        try:
            # Mapped here, so that the mapping is undone where the value is dropped, never
            # on the I/O thread (unmapping 100 MB takes milliseconds).
            data, buffers = _writable(*received)
        except OSError as exc:
            raise SperseError(f"cannot read {what}: {exc}") from exc
        return loads_oob(data, buffers, what=what)

    def stats(self, timeout: float | None = 10.0) -> dict[str, int]:
        """The server's counters (objects held, tasks done, workers...)."""
        reply = self._call(self._request("stats"), timeout)
        fields = reply.DESCRIPTOR.fields
        return {f.name: getattr(reply, f.name) for f in fields if f.name != "request_id"}

    async def _request(self, kind: str, **fields: Any) -> Any:
        if self._lost is not None:
            raise self._lost
        request_id = next(self._requests)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._replies[request_id] = future
        if kind == "fetch":
            message = pb.ClientMessage(fetch=pb.Fetch(request_id=request_id, **fields))
        elif kind == "objects":
            message = pb.ClientMessage(objects=pb.ObjectsRequest(request_id=request_id, **fields))
        elif kind == "logs":
            message = pb.ClientMessage(logs=pb.LogsRequest(request_id=request_id, **fields))
        elif kind == "callback":
            call = fields["call"]
            call.request_id = request_id
            blobs = [pb.ClientMessage(blob=b) for b in fields["blobs"]]
            self._send([*blobs, pb.ClientMessage(callback=call)])
            return await future
        else:
            message = pb.ClientMessage(stats=pb.StatsRequest(request_id=request_id))
        self._send([message])
        reply = await future
        if kind == "fetch" and isinstance(reply, pb.FetchReply):
            raise SperseError(f"fetch of {fields.get('object_id')} failed: {reply.error}")
        return reply

    def log_id(self, task_id: str, server: str = "") -> str:
        """The key of a task's log on this server (``SESSION/TASK``): what ``sperse logs``
        takes. A capability: the session id is this client's secret."""
        return f"{self._session_id}/{task_id}"

    def logs(self, task: str, timeout: float | None = 10.0) -> TaskOutputLog | None:
        """What a task printed, as this server keeps it (``task``: ``SESSION/TASK``, or a
        task id of this session); None if the server has no log of it (unknown, or ended
        more than ten minutes ago)."""
        reply = self._call(self._request("logs", task=task), timeout)
        if not reply.found:
            return None
        chunks = tuple(("stderr" if c.stderr else "stdout", c.text) for c in reply.chunks)
        return TaskOutputLog(chunks, reply.running, reply.truncated)

    def objects(self, name: str = "", timeout: float | None = 10.0) -> list[ObjectInfo]:
        """The remote objects this server holds (only the one called ``name``, if given)."""
        reply = self._call(self._request("objects", name=name), timeout)
        return [
            ObjectInfo(
                o.object_id,
                self.name,
                o.name,
                o.type_name,
                tuple(o.methods),
                o.max_concurrency,
                o.restart,
                o.calls,
                o.restarts,
                o.pid,
            )
            for o in reply.objects
        ]

    def servers(self) -> list[ServerInfo]:
        w = self._welcome
        if w is None:
            return []
        with self._tasks_lock:
            busy = len(self._tasks)
        info = self._info
        if info is None or info.name != w.server_name:  # once per Welcome, not per call
            info = self._info = ServerInfo(
                w.server_name,
                frozenset(w.tags),
                dict(w.resources),
                workers=w.workers,
                address=self.address,
            )
        return [
            ServerInfo(
                info.name, info.tags, info.resources, info.workers, busy, address=info.address
            )
        ]


def _object_op(work: Work) -> pb.ObjectOp | None:
    """What the server needs to know of a remote object's task without unpickling it."""
    if isinstance(work, ObjectCreate):
        return pb.ObjectOp(
            object_id=work.object_id,
            kind="create",
            name=work.name,
            max_concurrency=work.max_concurrency,
            restart=work.restart,
            type_name=work.type_name,
            methods=work.methods,
        )
    if isinstance(work, ObjectCall):
        return pb.ObjectOp(object_id=work.object_id, kind="call")
    if isinstance(work, ObjectClose):
        return pb.ObjectOp(object_id=work.object_id, kind="close")
    return None


def _local_streams() -> bool:
    return sys.platform.startswith("linux")


class _LocalStream(asyncio.Protocol):
    """The client's end of a same-host stream (see :mod:`sperse._wire`), with the
    ``read``/``write``/``done_writing`` of a gRPC stream-stream call. ``read`` returns
    ``grpc.aio.EOF`` when the server has ended the stream, and raises ``ConnectionError``
    when the connection broke.

    Reading is the event loop's. Writing is not: any thread writes whole frames with
    :meth:`send_frames`, holding ``lock``, on a duplicate of the socket's descriptor that
    only :meth:`close` closes (so a descriptor number reused after the loop closed the
    socket is never written to). A user's thread sends its task itself: no wake-up of the
    I/O thread on the way out.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader(MAX_MESSAGE)
        self._inbox: collections.deque[pb.ServerMessage] = collections.deque()
        self._readable: asyncio.Future[None] | None = None
        self._eof = False
        self._error: BaseException | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lock = threading.RLock()
        self.sending = False  # a frame is being written (by the thread holding `lock`)
        # Set by the backend: handles a message as it is read (False: queue it for read()).
        self.handler: Callable[[pb.ServerMessage], bool] | None = None
        self._fd = -1
        self._broken = False

    @classmethod
    async def open(cls, address: str) -> _LocalStream:
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

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self._reader.feed(data):
                message = pb.ServerMessage.FromString(frame)
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

    async def write(self, message: pb.ClientMessage) -> None:
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


_BURST = 200e-6  # seconds between sends under which they are batched, not sent one by one
_SUBMIT_BYTES = MAX_MESSAGE // 2
_SUBMIT_TASKS = 256  # tasks of one Submit: the server starts on them while more are read


def _merge_submits(
    batch: list[pb.ClientMessage | tuple[pb.Task, int]],
) -> list[pb.ClientMessage]:
    """Adjacent tasks go in one Submit (the server takes many per message), within limits."""
    out: list[pb.ClientMessage] = []
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


def _upload(raw: memoryview, prefix: str, uploads: list[str]) -> pb.Bytes | None:
    """A big buffer written into a new shared memory file (None: small, or it failed)."""
    if raw.nbytes < _shm.SHM_MIN:
        return None
    try:
        name = _shm.write(prefix, raw)
    except _shm.ShmError:
        return None  # /dev/shm is full, say: gRPC it is
    uploads.append(name)
    return pb.Bytes(shm=name)


@dataclass(frozen=True, slots=True)
class _ShmName:
    name: str


def _received(field: pb.Pickled, receiver: BlobReceiver) -> tuple[bytes, list[bytes | _ShmName]]:
    """The stream and buffers of a received value (on the I/O thread: its blobs are this
    stream's), shared memory files by name."""
    data = receiver.bytes(field.data)
    parts: list[bytes | _ShmName] = []
    for b in field.buffers:
        parts.append(_ShmName(b.shm) if b.WhichOneof("kind") == "shm" else receiver.bytes(b))
    return data, parts


def _writable(data: bytes, parts: list[bytes | _ShmName]) -> tuple[bytes, list[Any]]:
    """Writable buffers for arrays the user may change in place: bytes are copied, shared
    memory files mapped copy-on-write."""
    return data, [_shm.map_copy(p.name) if isinstance(p, _ShmName) else bytearray(p) for p in parts]


def _kind(kind: str) -> Any:
    known = {
        "raised",
        "worker_died",
        "cancelled",
        "serialization",
        "missing_module",
        "object_lost",
        "environment",
        "internal",
    }
    return kind if kind in known else "internal"


def _error_from(error: pb.Error, address: str) -> SperseError:
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


def _translate(exc: grpc.aio.AioRpcError, address: str) -> SperseError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(f"the server at {address} is unavailable: {exc.details()}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(f"the server at {address} refused the token: {exc.details()}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ProtocolError(
            f"the server at {address} refused an oversized message: {exc.details()}"
        )
    return ServerLost(f"the session with {address} failed: {code.name}: {exc.details()}")


def _describe_grpc(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def _version() -> str:
    return __version__


# ---- the embedded server ---------------------------------------------------------------


def _server_log_path(name: str) -> str | None:
    """Where an embedded server logs: ``SPERSE_SERVER_LOG`` (``-``: None, our stderr), else a
    file of its own under the user's state directory."""
    chosen = os.environ.get("SPERSE_SERVER_LOG", "")
    if chosen == "-":
        return None
    if chosen:
        return chosen
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    folder = os.path.join(state, "sperse", "logs")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return os.path.join(folder, f"server-{safe}-{os.getpid()}.log")


def _tail(path: str | None, lines: int = 20) -> str:
    """The last ``lines`` of the log at ``path``, to quote in an error ("" if none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as file:
            text = file.read()[-8192:].decode(errors="replace")
    except OSError:
        return ""
    last = text.strip().splitlines()[-lines:]
    return (":\n" + "\n".join(last)) if last else ""


class EmbeddedServer:
    """A ``sperse server`` child process on a random loopback port, owned by this client.

    The token goes to it on its stdin, never on a command line (where ``ps``
    shows it). It keeps reading stdin: when this process dies, stdin closes
    and the server stops by itself, so no orphan survives its client.

    Its log (and its workers' stray output) goes to ``log_path``, not to this process's
    terminal, where it would land before the exception it describes: by default
    ``$XDG_STATE_HOME/sperse/logs/server-NAME-PID.log`` (``~/.local/state/...``), removed
    at ``stop`` when empty. ``SPERSE_SERVER_LOG`` names another file, or ``-`` for this
    process's standard error.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        name: str = "local",
        tags: Iterable[str] = (),
        resources: dict[str, float] | None = None,
        ready_timeout: float = 30.0,
        log_level: str = "warning",
        token: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """``token``: the cluster's (default: a new random one). ``extra_args``: more
        ``sperse server`` options (``--join``, ...)."""
        self.token = token or new_token()
        args = [sys.executable, "-m", "sperse.server", "--host", "127.0.0.1", "--port", "0"]
        args += ["--token-stdin", "--name", name, "--log-level", log_level]
        if workers:
            args += ["--workers", str(workers)]
        for tag in tags:
            args += ["--tag", tag]
        for key, value in (resources or {}).items():
            args += ["--resource", f"{key}={value}"]
        args += extra_args
        self.log_path = _server_log_path(name)
        log = None if self.log_path is None else open(self.log_path, "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # Ctrl-C at the prompt is ours, not the server's
            )
        finally:
            if log is not None:
                log.close()  # the child has its own descriptor
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self.token.encode() + b"\n")
        self.process.stdin.flush()
        self.address = self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.stop()
                where = "above" if self.log_path is None else f"in {self.log_path}"
                raise ServerUnavailable(
                    "the embedded sperse server did not start (exit code "
                    f"{self.process.returncode}); its log is {where}{_tail(self.log_path)}"
                )
            ready, _, _ = select.select([stdout], [], [], remaining)
            if ready:
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        text = line.decode().strip()
        if " ready at " not in text:
            self.stop()
            raise ServerUnavailable(f"the embedded sperse server said {text!r} instead of ready")
        return parse_url(text.rsplit(" ready at ", 1)[1])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Close its stdin (it stops itself), then terminate, then kill: by its own pid. Then
        sweep the shared memory files it left (it sweeps its own, unless it was killed)."""
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _shm.sweep(_shm.server_prefix(self.process.pid))
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                if os.path.getsize(self.log_path) == 0:
                    os.unlink(self.log_path)
