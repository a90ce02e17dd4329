"""The reading side of a ``Session`` stream: each ``ClientMessage`` after ``Hello`` turned
into calls on the :class:`~sperse._server.core.ServerCore`, synchronously, in arrival order.

Invariants:

- A malformed or unexpected message (a second ``Hello``, an empty message, a reused blob id,
  a ``Bytes`` naming a blob never sent, a shared memory file named without the same-host
  probe or outside the session's prefix) raises :class:`~sperse._server.blobs.Violation`;
  the shared memory files the offending tasks named are unlinked first.
- A blob over ``max_value_size`` is dropped as it arrives; the task that uses it fails with
  ``serialization`` (its session carries on). So does a task that names a shared memory
  file that is gone or over that size (the server only ``stat``\\ s it).
- A task over a bound of :mod:`sperse._core.limits` (checked by
  :mod:`sperse._server.bounds`, before anything of it is queued) fails alone with a
  ``ValueError`` that names the bound; a ``Task`` without an id or with one too long is a
  violation.
- A request (fetch, stats, objects, logs, callback) is answered by queueing its reply on the
  writing side and waking it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from sperse._core.limits import MAX_TEXT
from sperse._serialize import shm
from sperse._server import core
from sperse._server.blobs import Refused, StreamReceiver, Violation
from sperse._server.bounds import task_over, task_violation
from sperse._server.envelope import PickledBytes, ShmBuffer
from sperse._server.stream_out import (
    FetchReply,
    StreamOutput,
    logs_reply,
    objects_reply,
    stats_reply,
)
from sperse._wire import PROTOCOL, Piece, pb

__all__ = ["StreamInput"]


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


class StreamInput:
    """The client messages of one stream, handled for its session."""

    def __init__(
        self,
        server_core: core.ServerCore,
        session: core.Session,
        max_value_size: int,
        output: StreamOutput,
        wake: Callable[[], None],
    ) -> None:
        self.core = server_core
        self.session = session
        self.shm = output.shm  # the client shares this host's /dev/shm
        self.receiver = StreamReceiver(
            max_value_size,
            server_core.config.max_blob_bytes,
            # Big values sent as blobs go into the server's files (blobs.StreamReceiver).
            spill_prefix=f"{server_core.shm_prefix}u" if server_core.config.shm else "",
            total=server_core.blob_total,
        )
        self._max_value_size = max_value_size
        self._output = output
        self._wake = wake  # the writing side has something to send
        self.said_goodbye = False

    def submit_chunk(self, tasks: Any) -> None:
        requests: list[core.TaskRequest] = []
        try:
            for task in tasks:
                requests.append(self._task_request(task))
        except Violation:
            shm.unlink(name for request in requests for name in request.uploads)
            raise
        self.core.submit(self.session, requests)

    def handle(self, message: pb.ClientMessage | Piece) -> None:
        """Any message but a ``Submit`` (see :meth:`submit_chunk`)."""
        if isinstance(message, Piece):  # a Blob's, read without copying its data
            self.receiver.add(message)
            return
        kind = message.WhichOneof("kind")
        session = self.session
        replies = self._output.replies
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
                replies.append(FetchReply(fetch.request_id, None, error))
            else:
                replies.append(self._output.fetch_reply(fetch.request_id, held.value))
            self._wake()
        elif kind == "release":
            self.core.release(session, list(message.release.object_ids))
        elif kind == "stats":
            replies.append(stats_reply(self.core, session, message.stats.request_id))
            self._wake()
        elif kind == "objects":
            replies.append(objects_reply(self.core, session, message.objects))
            self._wake()
        elif kind == "logs":
            replies.append(logs_reply(self.core, session, message.logs))
            self._wake()
        elif kind == "callback":
            call = message.callback
            try:
                args = self.receiver.pickled(call.args, self._upload_size)
                error = self.core.call_back(call.session_id, call.callback_id, args)
            except Refused as exc:
                error = str(exc)
            reply = pb.CallbackReply(request_id=call.request_id, error=error)
            replies.append(pb.ServerMessage(callback_reply=reply))
            self._wake()
        elif kind == "goodbye":
            self.core.close_session(session, "session_closed", reason="goodbye")
            self.said_goodbye = True
        elif kind == "hello":
            raise Violation("a second Hello on one stream: open a new stream to resume")
        else:
            raise Violation(
                "an empty client message, or one of a kind this server does not know "
                f"(it speaks {PROTOCOL})"
            )

    def _task_request(self, task: pb.Task) -> core.TaskRequest:
        violation = task_violation(task)
        if violation:
            raise Violation(violation)
        uploads = self._uploads(task.work)
        spilled: list[str] = []  # the server's files of big values sent as blobs
        try:
            work: PickledBytes | None = self.receiver.pickled(task.work, self._upload_size, spilled)
            refused = ""
        except Refused as exc:
            work, refused = None, str(exc)
        except Violation:
            shm.unlink([*uploads, *spilled])
            raise
        uploads += tuple(spilled)
        over = task_over(task)
        if over:  # it fails with that: nothing of it is kept
            label = task.label[:MAX_TEXT]
            return core.TaskRequest(task.task_id, None, label=label, over=over, uploads=uploads)
        return core.TaskRequest(
            task_id=task.task_id,
            work=work,
            refs=tuple(task.refs),
            retries=task.retries,
            inline_limit=task.inline_limit,
            label=task.label,
            refused=refused,
            uploads=uploads,
            peer_refs=(
                tuple(core.PeerRef(p.object_id, p.server, p.address) for p in task.peer_refs)
                if task.peer_refs
                else ()
            ),
            object=_object_op(task.object) if task.HasField("object") else None,
            pip=tuple(task.pip),
            put=core.PutInfo(task.put.type_name, task.put.repr) if task.HasField("put") else None,
        )

    def _uploads(self, work: pb.Pickled) -> tuple[str, ...]:
        """The shared memory files a task's work names: checked, and the task's from now."""
        if not work.buffers:  # the common case: the task's pickle only
            return ()
        names = tuple(b.shm for b in work.buffers if b.WhichOneof("kind") == "shm")
        if not names:
            return names
        if not self.shm:
            raise Violation(
                "a shared memory file named by a client whose Hello did not pass the "
                "same-host probe"
            )
        prefix = self.session.shm_prefix
        ours = tuple(n for n in names if n.startswith(prefix) and shm.valid_name(n))
        if len(ours) != len(names):
            shm.unlink(ours)
            wrong = next(n for n in names if n not in ours)
            raise Violation(
                f"shared memory file {wrong!r} does not start with this session's prefix "
                f"{prefix!r} (Welcome.shm_prefix)"
            )
        return names

    def _upload_size(self, name: str) -> ShmBuffer:
        """The upload's size (the server looks at nothing else of it)."""
        try:
            info = os.lstat(os.path.join(shm.SHM_DIR, name))
        except OSError as exc:
            raise Refused(
                f"the shared memory file {name} the client wrote is gone or unreadable on "
                f"server {self.core.name!r}: {exc.strerror}"
            ) from None
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{name} in {shm.SHM_DIR} is not a regular file")
        if info.st_size > self._max_value_size:
            raise Refused(
                f"a value of more than {self._max_value_size} bytes was sent; "
                "this server refuses values that large (its --max-value-size): keep the data "
                "where it is and compute there, or send it in parts"
            )
        return ShmBuffer(name, info.st_size)
