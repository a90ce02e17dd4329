"""The writing side of a ``Session`` stream: replies, callbacks and the session's queued
events, encoded as ``ServerMessage``\\ s.

Invariants:

- Replies go first, then callbacks, then events; each is preceded by the blobs it names.
- Events ready together go in one ``Events`` message of at most ``BATCH_EVENTS`` events,
  whose inline bytes stay under ``BATCH_BYTES``: values beyond that budget travel as blobs,
  so every message stays well under ``MAX_MESSAGE``. Its events and blobs together are
  about ``BATCH_BYTES`` (one event more at most): what is taken out of the session's outbox
  (its unread bytes, :mod:`sperse._server.outgoing`) is what is being sent.
- A fetched object's shared memory files go by name to a client on this host; for one on
  another host they are opened when the fetch is answered (a later release cannot take them
  away) and sent as blobs.
"""

from __future__ import annotations

import collections
from dataclasses import field

from sperse._core import BackendEvent, ErrorInfo, Failed, Output, Started
from sperse._core.values import value
from sperse._server import core
from sperse._server.blobs import OpenFile, OutBlob, StreamSender
from sperse._server.envelope import PickledBytes, ShmBuffer
from sperse._wire import pb

__all__ = [
    "BATCH_BYTES",
    "BATCH_EVENTS",
    "FetchReply",
    "StreamOutput",
    "failure_message",
    "logs_reply",
    "objects_reply",
    "stats_reply",
]

BATCH_BYTES = 4 << 20  # inline bytes of one Events message (MAX_MESSAGE is 8 MiB)
BATCH_EVENTS = 1000


@value
class FetchReply:
    request_id: int
    value: PickledBytes | None
    error: str = ""
    files: dict[str, OpenFile] = field(default_factory=dict)  # sent as blobs


class StreamOutput:
    """What one stream has to send, as the messages to write next."""

    def __init__(self, server_core: core.ServerCore, session: core.Session, shm_on: bool):
        self.core = server_core
        self.session = session
        self.shm = shm_on  # the client shares this host's /dev/shm
        self.sender = StreamSender()
        self.replies: collections.deque[FetchReply | pb.ServerMessage] = collections.deque()

    def fetch_reply(self, request_id: int, value: PickledBytes) -> FetchReply:
        """A client on this host gets the object's files by name; another gets their bytes,
        read from files opened now (a release after this cannot take them away)."""
        files: dict[str, OpenFile] = {}
        if not self.shm:
            try:
                for buffer in value.buffers:
                    if isinstance(buffer, ShmBuffer):
                        files[buffer.name] = OpenFile.open(buffer)
            except OSError as exc:
                return FetchReply(request_id, None, f"server {self.core.name!r}: {exc}")
        return FetchReply(request_id, value, files=files)

    def next_messages(self) -> list[OutBlob | pb.ServerMessage]:
        """The next reply or batch of events, after the blobs they name; or nothing."""
        blobs: list[OutBlob] = []
        if self.replies:
            reply = self.replies.popleft()
            if isinstance(reply, FetchReply):
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
        session = self.session
        if not session.outbox:
            return []
        events: list[pb.Event] = []
        budget = BATCH_BYTES
        unread = session.unread
        # Values beyond the budget go as blobs: those count too, so that what one batch
        # takes out of the outbox (then no longer counted) stays about BATCH_BYTES.
        while session.outbox and len(events) < BATCH_EVENTS and budget > 0:
            if unread - session.unread >= BATCH_BYTES:
                break
            event, used = self._encode(session.take(), blobs, budget)
            events.append(event)
            budget -= used
        self.core.taken(session)
        return [*blobs, pb.ServerMessage(events=pb.Events(events=events))]

    def _encode(
        self, event: BackendEvent, blobs: list[OutBlob], budget: int
    ) -> tuple[pb.Event, int]:
        if isinstance(event, Started):
            return pb.Event(task_id=event.task_id, started=pb.Started(worker=event.worker)), 64
        if isinstance(event, Output):
            output = pb.Output(stream=event.stream, text=event.text)
            return pb.Event(task_id=event.task_id, output=output), len(event.text.encode())
        if isinstance(event, Failed):
            error = event.error
            size = len(error.message.encode()) + len(error.traceback.encode())
            return pb.Event(task_id=event.task_id, failed=failure_message(error)), size
        values = []
        used = 0
        done: core.Values = event.value
        for v in done:
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


def failure_message(error: ErrorInfo) -> pb.Failure:
    """The one place a task's error becomes its wire form (read back into an ``ErrorInfo``
    by the client)."""
    return pb.Failure(
        kind=error.kind,
        type_name=error.type_name,
        message=error.message,
        traceback=error.traceback,
    )


def stats_reply(
    server_core: core.ServerCore, session: core.Session, request_id: int
) -> pb.ServerMessage:
    s = server_core.stats(session)
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


def logs_reply(
    server_core: core.ServerCore, session: core.Session, request: pb.LogsRequest
) -> pb.ServerMessage:
    key = request.task if "/" in request.task else f"{session.session_id}/{request.task}"
    log = server_core.task_logs.get(key)
    reply = pb.LogsReply(request_id=request.request_id, found=log is not None)
    if log is not None:
        reply.running = log.ended is None
        reply.truncated = log.truncated
        reply.chunks.extend(
            pb.LogChunk(stderr=stream == "stderr", text=text) for stream, text in log.chunks
        )
    return pb.ServerMessage(logs=reply)


def objects_reply(
    server_core: core.ServerCore, session: core.Session, request: pb.ObjectsRequest
) -> pb.ServerMessage:
    """The remote objects ``session`` may see: the named ones and its own."""
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
        for o in server_core.remote_objects(request.name, session)
    ]
    reply = pb.ObjectsReply(request_id=request.request_id, objects=infos)
    return pb.ServerMessage(objects=reply)
