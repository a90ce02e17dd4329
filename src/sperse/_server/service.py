"""The ``Sperse.Session`` stream: authentication, then client messages in, events out.

Protocol rules are in :mod:`sperse._wire`; what this module adds:

- Before ``Hello`` checks out, nothing but that first message is read: no blob is kept, no
  task looked at. A first message that is not ``Hello``, a missing or wrong token (compared
  with ``hmac.compare_digest``), or no ``Hello`` within ``hello_timeout``: ``Error("auth")``
  and the stream ends. Then the protocol and the Python major.minor must match, else
  ``Error("version")``.
- A stream has two tasks: a reader that turns client messages into calls on the
  :class:`~sperse._server.core.ServerCore` (synchronously, in arrival order), and a writer
  that sends ``Welcome``, then replies and the session's queued events. Events ready
  together go in one ``Events`` message, whose inline bytes stay under ``BATCH_BYTES``:
  values beyond that budget travel as blobs, so every message stays well under
  ``MAX_MESSAGE``.
- A same-host stream (:mod:`sperse._server.local`) skips the tasks when it can: a message is
  handled as soon as it is read (unless the reader has some queued, or it is a big
  ``Submit``), and while the writer waits, what the session queues is written at once (after
  each batch of worker events). The order of messages is the same either way, and only one
  of the two writes at a time: the writer when it runs, ``_flush_now`` while it waits.
- A malformed or unexpected message after ``Hello`` (a second ``Hello``, an empty message, a
  reused blob id, a ``Bytes`` naming a blob never sent, a shared memory file named without
  the probe or outside the session's prefix): ``Error("protocol")``, and that stream ends. Its session stays for the grace period like any other broken stream.
- A blob over ``max_value_size`` is dropped as it arrives; the task that uses it fails with
  ``serialization`` (its session carries on). So does a task that names a shared memory
  file that is gone or over that size (the server only ``stat``s it).
- A ``Submit`` of many tasks is handled a chunk of ``SUBMIT_CHUNK`` tasks at a time, the
  loop turning in between, so the workers are fed while the rest is read.
- The stream ends: after ``Goodbye`` (the session ends too); when another stream resumes the
  session; when the server stops (after sending what is queued); or when the client goes
  away (half-close, cancel, broken connection: the session waits for a resume).
- ``ObjectsRequest`` is answered with an ``ObjectsReply`` listing this server's live remote
  objects (of every session), or the one of the name asked for. A ``Task`` with ``object``
  set creates, calls or closes a remote object (see :mod:`sperse._server.core`); a
  ``Release`` naming a remote object its session created destroys it.
- ``Pull`` (server to server): the token first (wrong: ``UNAUTHENTICATED``, nothing else is
  read), then the object of any session of this server, as a ``PullHeader`` and chunks of
  at most ``PULL_CHUNK`` bytes, or one ``PullChunk(error)`` when it is unknown. The object
  is pinned while it is sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import os
import platform
import stat
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from sperse._serialize import shm
from sperse._server import core
from sperse._server.config import ServerConfig
from sperse._server.envelope import Buffer, PickledBytes, ShmBuffer
from sperse._server.local import LocalCall
from sperse._server.logs import log_event
from sperse._server.peers import PULL_CHUNK, PeerClient
from sperse._version import __version__
from sperse._wire import INLINE_MAX, PIECE, PROTOCOL, BlobReceiver, BlobSender, pb

__all__ = ["BATCH_BYTES", "BATCH_EVENTS", "SUBMIT_CHUNK", "SessionService"]

BATCH_BYTES = 4 << 20  # inline bytes of one Events message (MAX_MESSAGE is 8 MiB)
BATCH_EVENTS = 1000
SUBMIT_CHUNK = 100  # tasks of a Submit handled before the loop turns


def _version() -> str:
    return __version__


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _is_broken_call(exc: BaseException) -> bool:
    """Whether ``exc`` (or all of a group) says the call is over, rather than a bug."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_broken_call(e) for e in exc.exceptions)
    return isinstance(exc, asyncio.InvalidStateError | ConnectionError) or type(
        exc
    ).__module__.startswith("grpc")


_PIP_MAX = 64  # requirements of one task's environment
_PIP_TEXT_MAX = 1000  # characters of one requirement


class _Violation(Exception):
    """The client broke the protocol: the stream ends with ``Error("protocol")``."""


class _Refused(Exception):
    """A Bytes field names a blob that was dropped for its size."""


@dataclass(frozen=True, slots=True)
class _OutBlob:
    """A byte string to send as ``Blob`` pieces, cut one piece at a time as it is written
    (so sending a large object never copies it whole): bytes, or a shared memory file open
    for reading (read with ``pread``, so a file that shrinks is an error, not a crash)."""

    blob_id: int
    data: bytes | _OpenFile

    def pieces(self) -> Iterator[pb.ServerMessage]:
        source = self.data
        size = source.size if isinstance(source, _OpenFile) else len(source)
        view = memoryview(source) if isinstance(source, bytes) else None
        for start in range(0, max(size, 1), PIECE):
            end = min(start + PIECE, size)
            if view is not None:
                data = view[start:end].tobytes()
            else:
                assert isinstance(source, _OpenFile)
                data = source.read(start, end - start)
                if end == size:
                    source.close()
            piece = pb.Blob(blob_id=self.blob_id, data=data, last=end == size)
            yield pb.ServerMessage(blob=piece)


class _OpenFile:
    """A shared memory file opened when a client fetched it (a later release cannot take it
    away); closed once sent, or when garbage-collected (a reply never sent)."""

    __slots__ = ("__weakref__", "_close", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._close = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, buffer: ShmBuffer) -> _OpenFile:
        return cls(shm.open_read(buffer.name, buffer.size), buffer.size)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"a shared memory file shrank while it was sent (fd {self.fd})")
        return data

    def close(self) -> None:
        self._close()


class _Sender(BlobSender):
    """A ``BlobSender`` whose blobs are cut lazily (``_OutBlob``), and which also sends a small
    byte string as a blob when one message's inline budget is spent (``BlobSender.encode``
    inlines everything up to INLINE_MAX)."""

    def encode_within(
        self, data: bytes, blobs: list[_OutBlob], budget: int
    ) -> tuple[pb.Bytes, int]:
        """``data`` as a ``Bytes`` field, and the inline bytes it used out of ``budget``."""
        if not data or len(data) <= min(INLINE_MAX, budget):
            return pb.Bytes(data=data), len(data)
        blob_id = next(self._ids)  # the base class's sequence: ids stay unique per stream
        blobs.append(_OutBlob(blob_id, data))
        return pb.Bytes(blob_id=blob_id), 0

    def pickled_within(
        self,
        value: PickledBytes,
        blobs: list[_OutBlob],
        budget: int,
        files: dict[str, _OpenFile] | None = None,
    ) -> tuple[pb.Pickled, int]:
        """``value`` as a ``Pickled``; its shared memory files by name, or (those in
        ``files``, for a client on another host) as blobs read from the file."""
        data, used = self.encode_within(value.data, blobs, budget)
        buffers = []
        for buffer in value.buffers:
            if isinstance(buffer, ShmBuffer):
                opened = files.get(buffer.name) if files is not None else None
                if opened is None:
                    buffers.append(pb.Bytes(shm=buffer.name))
                else:
                    blob_id = next(self._ids)
                    blobs.append(_OutBlob(blob_id, opened))
                    buffers.append(pb.Bytes(blob_id=blob_id))
                continue
            field, n = self.encode_within(buffer, blobs, budget - used)
            buffers.append(field)
            used += n
        return pb.Pickled(data=data, buffers=buffers), used


class _Receiver:
    """A ``BlobReceiver`` that drops (rather than refuses) a blob over the size limit and
    treats a reused blob id as a protocol error."""

    def __init__(self, max_value: int) -> None:
        self._blobs = BlobReceiver(max_value)
        self._max_value = max_value
        self._complete: set[int] = set()  # ids whose last piece has arrived
        self._refused: dict[int, str] = {}

    def add(self, blob: pb.Blob) -> None:
        blob_id = blob.blob_id
        if blob_id in self._refused:
            return
        if blob_id in self._complete:
            raise _Violation(f"blob id {blob_id} was used twice on this stream")
        try:
            self._blobs.add(blob)
        except ValueError:
            self._refused[blob_id] = (
                f"a value of more than {self._max_value} bytes was sent; this server "
                "refuses values that large (its --max-value-size): keep the data where it is "
                "and compute there, or send it in parts"
            )
            return
        if blob.last:
            self._complete.add(blob_id)

    def bytes(self, field: pb.Bytes) -> bytes:
        if field.WhichOneof("kind") == "blob_id" and field.blob_id in self._refused:
            raise _Refused(self._refused.pop(field.blob_id))
        try:
            data: bytes = self._blobs.bytes(field)
        except KeyError as exc:
            raise _Violation(str(exc.args[0])) from None
        return data

    def pickled(self, field: pb.Pickled, upload: Callable[[str], ShmBuffer]) -> PickledBytes:
        """The pickle's bytes, its buffers as bytes or (``upload``) shared memory files."""
        data = self.bytes(field.data)
        buffers: list[Buffer] = []
        for b in field.buffers:
            buffers.append(upload(b.shm) if b.WhichOneof("kind") == "shm" else self.bytes(b))
        return PickledBytes(data, tuple(buffers))


def _buffer_size(buffer: Buffer) -> int:
    return buffer.size if isinstance(buffer, ShmBuffer) else len(buffer)


def _pull_pieces(value: PickledBytes) -> Generator[bytes, None, None]:
    """The pickle stream, then each buffer, in pieces of at most ``PULL_CHUNK`` bytes; a
    shared memory file is read a piece at a time (``pread``: a file that shrank is an
    ``OSError``, never a crash)."""
    for part in (value.data, *value.buffers):
        if isinstance(part, bytes):
            view = memoryview(part)
            for start in range(0, len(part), PULL_CHUNK):
                yield view[start : start + PULL_CHUNK].tobytes()
            continue
        opened = _OpenFile.open(part)
        try:
            for start in range(0, part.size, PULL_CHUNK):
                yield opened.read(start, min(PULL_CHUNK, part.size - start))
        finally:
            opened.close()


def _object_op(op: pb.ObjectOp) -> core.ObjectOp:
    return core.ObjectOp(
        object_id=op.object_id,
        kind=op.kind,
        name=op.name,
        max_concurrency=op.max_concurrency,
        restart=op.restart,
        type_name=op.type_name,
        methods=tuple(op.methods),
    )


@dataclass(frozen=True, slots=True)
class _FetchReply:
    request_id: int
    value: PickledBytes | None
    error: str = ""
    files: dict[str, _OpenFile] = field(default_factory=dict)  # sent as blobs


class _Stream:
    """One authenticated ``Session`` call, attached to one session (a ``core.Listener``)."""

    def __init__(
        self,
        service: SessionService,
        session: core.Session,
        context: Any,
        peer: str,
        shm_on: bool,
    ) -> None:
        self.service = service
        self.core = service.core
        self.session = session
        self.context = context
        self.peer = peer
        self.shm = shm_on  # the client shares this host's /dev/shm
        self.sender = _Sender()
        self.receiver = _Receiver(service.config.max_value_size)
        self.replies: collections.deque[_FetchReply | pb.ServerMessage] = collections.deque()
        self.violation = ""
        self.kicked = False
        self.said_goodbye = False
        self._wake = asyncio.Event()
        # What is being sent: one iterator of messages per reply, batch of events or blob.
        self._carry: collections.deque[Iterator[pb.ServerMessage]] = collections.deque()
        # A same-host call is served without its coroutines when it can be: a message is
        # handled as it is read, and events are written as they are queued (see _take_now
        # and _flush_now); the coroutines take over for what must wait.
        self._direct = isinstance(context, LocalCall)
        self._parked = False  # the writer waits for a wake-up
        self._reading = False  # the read loop is handling a message (see _read_loop)
        self._flush_scheduled = False
        if isinstance(context, LocalCall):
            context.handler = self._take_now

    # ---- core.Listener -----------------------------------------------------------------

    def wake(self) -> None:
        if self._direct and self._parked:
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.service.flushes.append(self)
                if not self.core.in_pool_batch:  # else the batch's end flushes: no extra turn
                    asyncio.get_running_loop().call_soon(self.service.flush)
            return
        self._wake.set()

    def kick(self) -> None:
        self.kicked = True
        self._wake.set()

    # ---- the two halves --------------------------------------------------------------------

    async def run(self, welcome: pb.ServerMessage) -> None:
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(self._read_loop())
            await self._write_loop(welcome)
            reader.cancel()

    async def _read_loop(self) -> None:
        while True:
            message = await self.context.read()
            if message is grpc.aio.EOF:
                return  # no more requests; events still go out until the call ends
            if self.violation or self.said_goodbye:
                return  # (ended by a message handled as it was read: see _take_now)
            # While this message is handled (a big Submit yields between its chunks), later
            # ones wait behind it: tasks, and the calls of a remote object, keep their order.
            self._reading = True
            try:
                if message.WhichOneof("kind") == "submit":
                    await self._submit(message.submit.tasks)
                else:
                    self._handle(message)
            except _Violation as exc:
                self._protocol_error(exc)
                return
            finally:
                self._reading = False
            if self.said_goodbye:
                self.wake()
                return

    def _protocol_error(self, exc: _Violation) -> None:
        self.violation = str(exc)
        log_event(
            logging.WARNING,
            "protocol_error",
            session=self.session.session_id,
            peer=self.peer,
            error=self.violation,
        )
        self._wake.set()

    def _take_now(self, message: pb.ClientMessage) -> bool:
        """Handle a message of a same-host call as it is read (on the loop, from the
        socket's callback). False: the read loop must (a big Submit, or after the end)."""
        if self.violation or self.said_goodbye or self._reading:
            return False
        tasks = message.submit.tasks if message.WhichOneof("kind") == "submit" else None
        if tasks is not None and len(tasks) > SUBMIT_CHUNK:
            return False
        try:
            if tasks is not None:
                self._submit_chunk(tasks)
            else:
                self._handle(message)
        except _Violation as exc:
            self._protocol_error(exc)
        if self.said_goodbye:
            self._wake.set()
        return True

    async def _write_loop(self, welcome: pb.ServerMessage) -> None:
        await self.context.write(welcome)
        while True:
            if self.violation:
                error = pb.Error(code="protocol", message=self.violation)
                await self.context.write(pb.ServerMessage(error=error))
                return
            if self.kicked or self.said_goodbye:
                return
            if self._fill():
                for message in self._carry[0]:
                    await self.context.write(message)
                self._carry.popleft()
                continue
            if self.service.stopping:
                return
            self._wake.clear()
            self._parked = True
            try:
                await self._wake.wait()
            finally:
                self._parked = False

    def _fill(self) -> bool:
        """Whether there is something to send (in ``_carry``), taking the next reply or
        batch of events when it is empty."""
        if not self._carry:
            for item in self._next_messages():
                self._carry.append(item.pieces() if isinstance(item, _OutBlob) else iter((item,)))
        return bool(self._carry)

    def _flush_now(self) -> None:
        """Write what is queued, synchronously, while the same-host client reads; hand the
        rest (and any ending) to the writer."""
        if not self._flush_scheduled:
            return  # flushed already
        self._flush_scheduled = False
        context = self.context
        if not self._parked:
            return  # the writer runs: it sends what is queued
        assert isinstance(context, LocalCall)
        if not (self.violation or self.kicked or self.said_goodbye or self.service.stopping):
            try:
                while not context.write_blocked and self._fill():
                    for message in self._carry[0]:
                        context.write_now(message)
                        if context.write_blocked:
                            break
                    else:
                        self._carry.popleft()
            except ConnectionError:
                pass  # the writer finds out, and the call ends
            if not context.write_blocked and not self._carry:
                return
        self._wake.set()

    # ---- client messages -----------------------------------------------------------------

    async def _submit(self, tasks: Any) -> None:
        count = len(tasks)
        for start in range(0, count, SUBMIT_CHUNK):
            self._submit_chunk(tasks[start : start + SUBMIT_CHUNK])
            if start + SUBMIT_CHUNK < count:
                await asyncio.sleep(0)  # let the workers' results and the writer through

    def _submit_chunk(self, tasks: Any) -> None:
        requests: list[core.TaskRequest] = []
        try:
            for task in tasks:
                requests.append(self._task_request(task))
        except _Violation:
            shm.unlink(name for request in requests for name in request.uploads)
            raise
        self.core.submit(self.session, requests)

    def _handle(self, message: pb.ClientMessage) -> None:
        kind = message.WhichOneof("kind")
        session = self.session
        if kind == "blob":
            self.receiver.add(message.blob)
        elif kind == "cancel":
            self.core.cancel(session, list(message.cancel.task_ids))
        elif kind == "fetch":
            fetch = message.fetch
            held = self.core.fetch(session, fetch.object_id)
            if held is None:
                error = (
                    f"server {self.core.name!r} holds no object {fetch.object_id!r} for this "
                    "session: it was released, or the session expired"
                )
                self.replies.append(_FetchReply(fetch.request_id, None, error))
            else:
                self.replies.append(self._fetch_reply(fetch.request_id, held.value))
            self.wake()
        elif kind == "release":
            self.core.release(session, list(message.release.object_ids))
        elif kind == "stats":
            self.replies.append(self._stats_reply(message.stats.request_id))
            self.wake()
        elif kind == "objects":
            self.replies.append(self._objects_reply(message.objects))
            self.wake()
        elif kind == "logs":
            self.replies.append(self._logs_reply(session, message.logs))
            self.wake()
        elif kind == "callback":
            call = message.callback
            try:
                args = self.receiver.pickled(call.args, self._upload_size)
                error = self.core.call_back(call.session_id, call.callback_id, args)
            except _Refused as exc:
                error = str(exc)
            reply = pb.CallbackReply(request_id=call.request_id, error=error)
            self.replies.append(pb.ServerMessage(callback_reply=reply))
            self.wake()
        elif kind == "goodbye":
            self.core.close_session(session, "session_closed", reason="goodbye")
            self.said_goodbye = True
        elif kind == "hello":
            raise _Violation("a second Hello on one stream: open a new stream to resume")
        else:
            raise _Violation(
                "an empty client message, or one of a kind this server does not know "
                f"(it speaks {PROTOCOL})"
            )

    def _fetch_reply(self, request_id: int, value: PickledBytes) -> _FetchReply:
        """A client on this host gets the object's files by name; another gets their bytes,
        read from files opened now (a release after this cannot take them away)."""
        files: dict[str, _OpenFile] = {}
        if not self.shm:
            try:
                for buffer in value.buffers:
                    if isinstance(buffer, ShmBuffer):
                        files[buffer.name] = _OpenFile.open(buffer)
            except OSError as exc:
                return _FetchReply(request_id, None, f"server {self.core.name!r}: {exc}")
        return _FetchReply(request_id, value, files=files)

    def _task_request(self, task: pb.Task) -> core.TaskRequest:
        if not task.task_id:
            raise _Violation("a Task without a task_id")
        uploads = self._uploads(task.work)
        try:
            work: PickledBytes | None = self.receiver.pickled(task.work, self._upload_size)
            refused = ""
        except _Refused as exc:
            work, refused = None, str(exc)
        except _Violation:
            shm.unlink(uploads)
            raise
        if len(task.pip) > _PIP_MAX or any(len(r) > _PIP_TEXT_MAX for r in task.pip):
            work = None
            refused = (
                f"an environment of at most {_PIP_MAX} pip requirements of at most "
                f"{_PIP_TEXT_MAX} characters each (this one has {len(task.pip)})"
            )
        return core.TaskRequest(
            task_id=task.task_id,
            work=work,
            refs=tuple(task.refs),
            retries=task.retries,
            inline_limit=task.inline_limit,
            label=task.label,
            refused=refused,
            uploads=uploads,
            peer_refs=tuple(core.PeerRef(p.object_id, p.server, p.address) for p in task.peer_refs),
            object=_object_op(task.object) if task.HasField("object") else None,
            pip=tuple(task.pip),
        )

    def _uploads(self, work: pb.Pickled) -> tuple[str, ...]:
        """The shared memory files a task's work names: checked, and the task's from now."""
        names = tuple(b.shm for b in work.buffers if b.WhichOneof("kind") == "shm")
        if not names:
            return names
        if not self.shm:
            raise _Violation(
                "a shared memory file named by a client whose Hello did not pass the "
                "same-host probe"
            )
        prefix = self.session.shm_prefix
        ours = tuple(n for n in names if n.startswith(prefix) and shm.valid_name(n))
        if len(ours) != len(names):
            shm.unlink(ours)
            wrong = next(n for n in names if n not in ours)
            raise _Violation(
                f"shared memory file {wrong!r} does not start with this session's prefix "
                f"{prefix!r} (Welcome.shm_prefix)"
            )
        return names

    def _upload_size(self, name: str) -> ShmBuffer:
        """The upload's size (the server looks at nothing else of it)."""
        try:
            info = os.lstat(os.path.join(shm.SHM_DIR, name))
        except OSError as exc:
            raise _Refused(
                f"the shared memory file {name} the client wrote is gone or unreadable on "
                f"server {self.core.name!r}: {exc.strerror}"
            ) from None
        if not stat.S_ISREG(info.st_mode):
            raise _Refused(f"{name} in {shm.SHM_DIR} is not a regular file")
        if info.st_size > self.service.config.max_value_size:
            raise _Refused(
                f"a value of more than {self.service.config.max_value_size} bytes was sent; "
                "this server refuses values that large (its --max-value-size): keep the data "
                "where it is and compute there, or send it in parts"
            )
        return ShmBuffer(name, info.st_size)

    def _stats_reply(self, request_id: int) -> pb.ServerMessage:
        s = self.core.stats(self.session)
        return pb.ServerMessage(
            stats=pb.StatsReply(
                request_id=request_id,
                objects=s.objects,
                object_bytes=s.object_bytes,
                objects_total=s.objects_total,
                tasks_done=s.tasks_done,
                tasks_failed=s.tasks_failed,
                workers=s.workers,
                busy=s.busy,
                workers_replaced=s.workers_replaced,
                sessions=s.sessions,
                objects_pulled=s.objects_pulled,
                bytes_pulled=s.bytes_pulled,
                objects_served=s.objects_served,
                bytes_served=s.bytes_served,
                remote_objects=s.remote_objects,
            )
        )

    def _logs_reply(self, session: core.Session, request: pb.LogsRequest) -> pb.ServerMessage:
        key = request.task if "/" in request.task else f"{session.session_id}/{request.task}"
        log = self.core.task_logs.get(key)
        reply = pb.LogsReply(request_id=request.request_id, found=log is not None)
        if log is not None:
            reply.running = log.ended is None
            reply.truncated = log.truncated
            reply.chunks.extend(
                pb.LogChunk(stderr=stream == "stderr", text=text) for stream, text in log.chunks
            )
        return pb.ServerMessage(logs=reply)

    def _objects_reply(self, request: pb.ObjectsRequest) -> pb.ServerMessage:
        infos = [
            pb.ObjectInfo(
                object_id=o.object_id,
                name=o.name,
                type_name=o.type_name,
                methods=o.methods,
                max_concurrency=o.max_concurrency,
                restart=o.restart,
                calls=o.calls,
                restarts=o.restarts,
                pid=o.pid,
            )
            for o in self.core.remote_objects(request.name)
        ]
        reply = pb.ObjectsReply(request_id=request.request_id, objects=infos)
        return pb.ServerMessage(objects=reply)

    # ---- server messages -----------------------------------------------------------------

    def _next_messages(self) -> list[_OutBlob | pb.ServerMessage]:
        """The next reply or batch of events, after the blobs they name; or nothing."""
        blobs: list[_OutBlob] = []
        if self.replies:
            reply = self.replies.popleft()
            if isinstance(reply, _FetchReply):
                fetch_reply = pb.FetchReply(request_id=reply.request_id, error=reply.error)
                if reply.value is not None:
                    value, _ = self.sender.pickled_within(
                        reply.value, blobs, BATCH_BYTES, reply.files
                    )
                    fetch_reply.value.CopyFrom(value)
                reply = pb.ServerMessage(fetch_reply=fetch_reply)
            return [*blobs, reply]
        callbacks = self.session.callbacks
        if callbacks:
            callback_id, args = callbacks.popleft()
            pickled, _ = self.sender.pickled_within(args, blobs, BATCH_BYTES)
            call = pb.Callback(callback_id=callback_id, args=pickled)
            return [*blobs, pb.ServerMessage(callback=call)]
        outbox = self.session.outbox
        if not outbox:
            return []
        events: list[pb.Event] = []
        budget = BATCH_BYTES
        while outbox and len(events) < BATCH_EVENTS and budget > 0:
            event, used = self._encode(outbox.popleft(), blobs, budget)
            events.append(event)
            budget -= used
        return [*blobs, pb.ServerMessage(events=pb.Events(events=events))]

    def _encode(
        self, event: core.TaskEvent, blobs: list[_OutBlob], budget: int
    ) -> tuple[pb.Event, int]:
        if isinstance(event, core.Started):
            return pb.Event(task_id=event.task_id, started=pb.Started(worker=event.worker)), 64
        if isinstance(event, core.Output):
            output = pb.Output(stream=event.stream, text=event.text)
            return pb.Event(task_id=event.task_id, output=output), len(event.text.encode())
        if isinstance(event, core.Failed):
            failure = pb.Failure(
                kind=event.kind,
                type_name=event.type_name,
                message=event.message,
                traceback=event.traceback,
            )
            size = len(event.message.encode()) + len(event.traceback.encode())
            return pb.Event(task_id=event.task_id, failed=failure), size
        values = []
        used = 0
        for v in event.values:
            if isinstance(v, core.InlineValue):
                pickled, n = self.sender.pickled_within(v.value, blobs, budget - used)
                values.append(pb.Value(name=v.name, inline=pickled))
                used += n
            else:
                ref = pb.ObjectRef(
                    object_id=v.object_id, type_name=v.type_name, size=v.size, repr=v.repr
                )
                values.append(pb.Value(name=v.name, ref=ref))
                used += 256
        return pb.Event(task_id=event.task_id, done=pb.Done(values=values)), used


class SessionService:
    """The servicer of ``Sperse``: one :class:`_Stream` per authenticated call."""

    def __init__(self, config: ServerConfig, token: str, server_core: core.ServerCore) -> None:
        self.config = config
        self.core = server_core
        self._token = token.encode()
        self.stopping = False
        self.local_address = ""  # of the same-host listener, offered with shared memory
        self._streams: set[_Stream] = set()
        self.flushes: list[_Stream] = []  # same-host streams with events to write
        server_core.after_pool_events = self.flush
        # Closed by the core when it closes (the server stops).
        server_core.peers = PeerClient(config, token, server_core.name)

    def flush(self) -> None:
        """Write the events queued for same-host streams: after a batch of events from the
        workers (at once), or on the loop's next turn (any other event)."""
        streams, self.flushes = self.flushes, []
        for stream in streams:
            stream._flush_now()

    def stop(self) -> None:
        """Streams send what is queued and end."""
        self.stopping = True
        for stream in list(self._streams):
            stream.wake()

    async def Session(self, request_iterator: Any, context: Any) -> None:
        peer = str(context.peer())
        try:
            async with asyncio.timeout(self.config.hello_timeout):
                first = await context.read()
        except TimeoutError:
            await self._refuse(
                context,
                peer,
                "auth",
                f"no Hello within {self.config.hello_timeout:g}s: send Hello with the token first",
            )
            return
        if first is grpc.aio.EOF:
            return
        code, message = self._check_hello(first)
        if code:
            await self._refuse(context, peer, code, message)
            return
        hello = first.hello
        session, resumed = self.core.open_session(hello.session_id, hello.client_name, peer)
        shm_on = (
            self.config.shm
            and bool(hello.shm_probe)
            and shm.check_probe(hello.shm_probe, hello.shm_nonce)
        )
        stream = _Stream(self, session, context, peer, shm_on)
        self._streams.add(stream)
        self.core.attach(session, stream)
        try:
            await stream.run(self._welcome(session, resumed, shm_on))
        except Exception as exc:  # the session lives on, for a resume
            broken = _is_broken_call(exc)  # else a bug of ours: say so loudly
            log_event(
                logging.DEBUG if broken else logging.ERROR,
                "stream_broken" if broken else "stream_error",
                exc_info=not broken,
                session=session.session_id,
                peer=peer,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._streams.discard(stream)
            self.core.detach(session, stream)

    async def Pull(self, request: pb.PullRequest, context: Any) -> AsyncIterator[pb.PullChunk]:
        """Another server of the cluster pulls an object of any session of this one, for a
        task of its own. The token is checked first; the object is pinned while it is sent,
        so that a release meanwhile waits for the end."""
        peer = str(context.peer())
        name = self.core.name
        if not hmac.compare_digest(request.token.encode(), self._token):
            log_event(logging.WARNING, "auth_failed", peer=peer, code="pull", server=request.server)
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"server {name!r} refused the token of server {request.server or peer!r}: "
                "servers of one cluster must share a token",
            )
            return
        held = self.core.find(request.object_id)
        if held is None:
            yield pb.PullChunk(
                error=f"server {name!r} holds no object {request.object_id!r}: it was "
                "released, or the session that held it ended"
            )
            return
        value = held.value
        self.core.pin(held)
        try:
            yield pb.PullChunk(
                header=pb.PullHeader(
                    type_name=held.type_name,
                    repr=held.repr,
                    data_size=len(value.data),
                    buffer_sizes=[_buffer_size(b) for b in value.buffers],
                )
            )
            with contextlib.closing(_pull_pieces(value)) as pieces:
                for piece in pieces:
                    yield pb.PullChunk(data=piece)
        except OSError as exc:  # a file of the object cannot be read
            yield pb.PullChunk(error=f"server {name!r} cannot read the object: {exc}")
            return
        finally:
            self.core.unpin(held)
        self.core.objects_served += 1
        self.core.bytes_served += value.size
        log_event(
            logging.INFO,
            "object_served",
            object=request.object_id,
            to=request.server or peer,
            bytes=value.size,
        )

    def _check_hello(self, message: pb.ClientMessage) -> tuple[str, str]:
        """("", "") when the Hello is good, else the error code and message."""
        kind = message.WhichOneof("kind")
        if kind != "hello":
            return "auth", (
                f"the first message must be Hello with the server's token, not {kind or 'empty'}"
            )
        hello = message.hello
        if not hello.token:
            return "auth", (
                "no token given: the server's token was printed when it started (or is in the "
                "file given to --token-file); pass it when connecting"
            )
        if not hmac.compare_digest(hello.token.encode(), self._token):
            return "auth", (
                "wrong token: use the token this server was started with (printed at its start, "
                "or in its --token-file)"
            )
        name = self.core.name
        if hello.protocol != PROTOCOL:
            return "version", (
                f"the client speaks protocol {hello.protocol or '(none)'!r} and server {name!r} "
                f"speaks {PROTOCOL!r} (sperse {_version()}): install the same sperse version on "
                "both sides"
            )
        server_python = platform.python_version()
        if _major_minor(hello.python_version) != _major_minor(server_python):
            return "version", (
                f"the client runs Python {hello.python_version or '(unknown)'} and server "
                f"{name!r} runs Python {server_python}: code and values are pickled, which "
                f"needs the same major.minor version; run the server with Python "
                f"{_major_minor(hello.python_version) or 'of the client'} (or the client with "
                f"Python {_major_minor(server_python)})"
            )
        return "", ""

    async def _refuse(self, context: Any, peer: str, code: str, message: str) -> None:
        log_event(
            logging.WARNING,
            "auth_failed" if code == "auth" else "hello_refused",
            peer=peer,
            code=code,
            reason=message,
        )
        with contextlib.suppress(Exception):  # the peer may be gone already
            await context.write(pb.ServerMessage(error=pb.Error(code=code, message=message)))

    def _welcome(self, session: core.Session, resumed: bool, shm_on: bool) -> pb.ServerMessage:
        config = self.config
        return pb.ServerMessage(
            welcome=pb.Welcome(
                server_name=self.core.name,
                server_version=_version(),
                python_version=platform.python_version(),
                tags=sorted(config.tags),
                resources=dict(config.resources),
                workers=config.worker_count,
                session_id=session.session_id,
                resumed=resumed,
                shm=shm_on,
                shm_prefix=session.shm_prefix if shm_on else "",
                local_address=self.local_address if shm_on else "",
            )
        )
