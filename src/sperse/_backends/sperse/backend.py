"""``SperseBackend``: the client of one ``sperse server``, over gRPC (the adapter).

One asyncio loop on a background thread ("the I/O thread") owns the gRPC channel and the
session stream (:mod:`~sperse._backends.sperse.session`). Callers on other threads only send
messages (``submit``, ``cancel``, ``release``) or wait on a future (``fetch``, ``stats``);
events go to the sink on the I/O thread (:mod:`~sperse._backends.sperse.events`).

Each big out-of-band buffer of a task's arguments goes into a shared memory file when the
server is on this host (:mod:`~sperse._backends.sperse.uploads`); ``shm=False`` (as a server
elsewhere) keeps every byte on gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from sperse._backends.sperse.direct import DirectCalls
from sperse._backends.sperse.embedded import EmbeddedServer
from sperse._backends.sperse.events import Decoder, TaskTable
from sperse._backends.sperse.session import Session
from sperse._backends.sperse.transport import (
    Compression,
    LocalStream,
    Outgoing,
    grpc_compression,
)
from sperse._backends.sperse.uploads import upload, writable
from sperse._core import (
    EventSink,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    ObjectInfo,
    Put,
    ServerInfo,
    TaskSpec,
    Work,
)
from sperse._core.callbacks import callback_destination, callback_destination_reset
from sperse._core.values import value
from sperse._exec.runner import dumps_work_oob
from sperse._serialize import RemoteRef, dumps_oob, loads_oob
from sperse._serialize import shm as _shm
from sperse._wire import BlobSender, pb
from sperse._wire.urls import parse_url
from sperse.errors import ClientGone, SerializationError, ServerLost, SperseError

__all__ = ["DEFAULT_INLINE_LIMIT", "SperseBackend", "TaskOutputLog"]

T = TypeVar("T")

DEFAULT_INLINE_LIMIT = 1 << 20


@value
class TaskOutputLog:
    """What a task printed, as its server kept it: ``(stream, text)`` in order."""

    chunks: tuple[tuple[str, str], ...]
    running: bool
    truncated: bool

    def text(self, stream: str | None = None) -> str:
        return "".join(t for s, t in self.chunks if stream is None or s == stream)


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
        compression: Compression = None,
    ) -> None:
        """``shm``: None, use shared memory when the server turns out to be on this host;
        False, never (every byte over gRPC). ``locate``: a server's address by its name,
        for a many-servers backend (values held by other servers travel to this one as
        PeerRefs). ``compression``: of the messages this client sends over gRPC (off by
        default: on a fast network it costs more CPU than it saves; see bench/README.md)."""
        self.address = parse_url(address)
        self._token = token
        self._connect_timeout = connect_timeout
        self._inline_limit = inline_limit
        self._process = process
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="sperse-io", daemon=True)
        self._sender = BlobSender()
        self._tasks = TaskTable()
        self._decoder = Decoder(
            self._tasks, name=lambda: self.name, fetch=self._fetch, release=self._release_one
        )
        self._session = Session(
            self.address,
            loop=self._loop,
            tasks=self._tasks,
            decoder=self._decoder,
            token=token,
            tls=tls or tls_ca is not None,
            tls_ca=tls_ca,
            connect_timeout=connect_timeout,
            reconnect_timeout=reconnect_timeout,
            process=process,
            client_name=client_name or f"{platform.node()}:{os.getpid()}",
            python_version=python_version or platform.python_version(),
            shm=shm is not False,
            compression=grpc_compression(compression),
        )
        self._closed = False
        self._locate = locate
        self._info: ServerInfo | None = None  # the server as the Welcome describes it
        self._sink: EventSink | None = None
        self._direct = DirectCalls(
            self._loop,
            sink=lambda: self._sink,
            send=self._send,
            name=lambda: self.name,
            lost=lambda: self._tasks.lost,
            local=lambda: self.transport == "local",
            shm_prefix=lambda: self._session.shm_prefix,
        )

    # ---- lifecycle -----------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        """Connect and authenticate; raises AuthenticationError, ServerUnavailable, ..."""
        self._sink = sink
        direct = self._direct
        self._decoder.sink = lambda event: sink(direct.event(event))
        self._thread.start()
        try:
            self._call(self._session.open(), self._connect_timeout + 1)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = self._session.closed = True
        self._direct.close()
        if self._session.shm_prefix:
            _shm.standby.drop(self._session.shm_prefix)  # its server sweeps the rest
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._session.shutdown(), 5, closing=True)
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

    def _call(
        self, coro: Coroutine[Any, Any, T], timeout: float | None, *, closing: bool = False
    ) -> T:
        """Run ``coro`` on the I/O loop. Once this connection is closed (by its client, or
        by a many-servers client that gave its server up), the error it ended in."""
        if self._closed and not closing:
            coro.close()  # never scheduled: no "never awaited" warning
            raise self._gone()
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:  # the loop closed meanwhile
            coro.close()
            raise self._gone() from None
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def _gone(self) -> SperseError:
        """What a request on this closed connection raises: the error it was lost in, or
        ``ServerLost``."""
        if self._tasks.lost is not None:
            return self._tasks.lost  # as a request on the lost session raises it
        return ServerLost(
            f"the connection to server {self.name!r} at {self.address} is closed (its client "
            "closed it, or gave the server up as lost): what it holds cannot be reached from "
            "here any more; compute it again"
        )

    # ---- the Backend protocol (any thread) ----------------------------------------

    @property
    def name(self) -> str:
        return self._session.name

    @property
    def shm(self) -> bool:
        """Whether big buffers travel through shared memory files (the server is here)."""
        return bool(self._session.shm_prefix)

    @property
    def transport(self) -> str:
        """``"local"`` (the server's same-host socket) or ``"grpc"``."""
        return "local" if isinstance(self._session.stream, LocalStream) else "grpc"

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        if self._tasks.lost is not None:
            raise self._tasks.lost
        specs = self._direct.route(specs)  # an object's calls may go to its worker directly
        if specs:
            try:
                self._send(specs)
            except BaseException:
                self._direct.forget(specs)
                raise

    def _send(self, specs: Sequence[TaskSpec]) -> None:
        items: list[Outgoing] = []
        uploads: list[str] = []
        prefix = self._session.shm_prefix
        destination = callback_destination(self.address, self._session.session_id)
        try:
            for spec in specs:
                items.extend(self._encode(spec, prefix, uploads))
            self._tasks.add(specs)
            self._session.send(items)
        except BaseException:
            _shm.unlink(uploads)  # not sent: still ours
            raise
        finally:
            callback_destination_reset(destination)

    def _encode(self, spec: TaskSpec, prefix: str, uploads: list[str]) -> list[Outgoing]:
        """A task as the messages that carry it: its blobs, then the task with its size.
        Big buffers go into shared memory files when ``prefix`` (named in ``uploads``)."""
        work = spec.work
        if isinstance(work, Put):  # the value itself, which the server holds at once
            data, buffers, refs = dumps_oob(work.value, what=spec.label or "the value")
            if refs:
                raise SerializationError(
                    f"{spec.label or 'sperse.put'}: the value holds remote values (Pending or "
                    "RemoteValue results kept on a server); put them one by one, or fetch them "
                    "first"
                )
        else:
            data, buffers, refs = dumps_work_oob(work, spec.label or "the task")
        blobs: list[bytes] = []  # the pieces of big byte strings, as ClientMessages' bytes
        size = len(data) + 64
        if buffers:
            fields = []
            for buffer in buffers:
                raw = buffer.raw()
                field = upload(raw, prefix, uploads) if prefix else None
                if field is None:
                    field = self._sender.encode_as(raw, blobs, pb.ClientMessage)
                    size += raw.nbytes
                fields.append(field)
            pickled = pb.Pickled(
                data=self._sender.encode_as(data, blobs, pb.ClientMessage), buffers=fields
            )
        else:
            pickled = pb.Pickled(data=self._sender.encode_as(data, blobs, pb.ClientMessage))
        fields_of: dict[str, Any] = {}
        if refs:
            fields_of["refs"] = [r.object_id for r in refs]
            fields_of["peer_refs"] = self._peer_refs(refs, spec.label or spec.task_id)
        op = _object_op(work)
        if op is not None:
            fields_of["object"] = op
        if isinstance(work, Put):
            fields_of["put"] = pb.Put(type_name=work.type_name, repr=work.repr)
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
        return [*blobs, (task, size)]

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
        if self._direct.cancel(task_id):
            return
        self._session.send([pb.ClientMessage(cancel=pb.Cancel(task_ids=[task_id]))])

    def release(self, object_ids: Iterable[str]) -> None:
        ids = list(object_ids)
        for object_id in ids:
            self._direct.release(object_id)
        if ids and not self._closed and self._tasks.lost is None:
            # Through the I/O thread: a release may come from a finalizer, at any moment.
            self._session.send([pb.ClientMessage(release=pb.Release(object_ids=ids))], direct=False)

    def _release_one(self, object_id: str) -> None:
        with contextlib.suppress(Exception):
            self.release([object_id])

    def _fetch(self, ref: RemoteRef, timeout: float | None) -> Any:
        received = self._call(self._session.request("fetch", object_id=ref.object_id), timeout)
        what = f"{ref.type_name} fetched from {ref.server}"
        try:
            # Mapped here, so that the mapping is undone where the value is dropped, never
            # on the I/O thread (unmapping 100 MB takes milliseconds).
            data, buffers = writable(*received)
        except OSError as exc:
            raise SperseError(f"cannot read {what}: {exc}") from exc
        return loads_oob(data, buffers, what=what)

    def stats(self, timeout: float | None = 10.0) -> dict[str, int]:
        """The server's counters (objects held, tasks done, workers...)."""
        reply = self._call(self._session.request("stats"), timeout)
        fields = reply.DESCRIPTOR.fields
        return {f.name: getattr(reply, f.name) for f in fields if f.name != "request_id"}

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
        blobs: list[bytes] = []  # its pieces, as wire bytes of ClientMessages
        raws = [b.raw() for b in buffers]
        pickled = pb.Pickled(
            data=self._sender.encode_as(data, blobs, pb.ClientMessage),
            buffers=[self._sender.encode_as(r, blobs, pb.ClientMessage) for r in raws],
        )
        call = pb.CallbackCall(session_id=session_id, callback_id=callback_id, args=pickled)
        reply = self._call(self._session.request("callback", call=call, blobs=blobs), timeout)
        if reply.error:
            raise ClientGone(f"callback {what}: {reply.error}")

    def log_id(self, task_id: str, server: str = "") -> str:
        """The key of a task's log on this server (``SESSION/TASK``): what ``sperse logs``
        takes. A capability: the session id is this client's secret."""
        return f"{self._session.session_id}/{task_id}"

    def logs(self, task: str, timeout: float | None = 10.0) -> TaskOutputLog | None:
        """What a task printed, as this server keeps it (``task``: ``SESSION/TASK``, or a
        task id of this session); None if the server has no log of it (unknown, or ended
        more than ten minutes ago)."""
        reply = self._call(self._session.request("logs", task=task), timeout)
        if not reply.found:
            return None
        chunks = tuple(("stderr" if c.stderr else "stdout", c.text) for c in reply.chunks)
        return TaskOutputLog(chunks, reply.running, reply.truncated)

    def objects(self, name: str = "", timeout: float | None = 10.0) -> list[ObjectInfo]:
        """The remote objects this server holds (only the one called ``name``, if given)."""
        reply = self._call(self._session.request("objects", name=name), timeout)
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
        w = self._session.welcome
        if w is None:
            return []
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
