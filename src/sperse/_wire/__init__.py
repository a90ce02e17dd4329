"""The wire protocol between a client and a ``sperse server`` ("sperse/1").

The schema is ``sperse.proto`` beside this file; ``scripts/gen_proto.sh``
generates ``sperse_pb2*.py`` from it (committed, checked by a test). Only this
package, the server and the client transport import grpc or the generated code. A failed
call's gRPC error is classified by :mod:`sperse._wire.errors`, the one map of status codes.

One bidirectional ``Session`` stream per client::

    client                                   server
      Hello(token, protocol, versions, shm probe) ──►
                                       ◄──  Welcome(name, tags, session_id, shm) | Error(auth|version)
      Submit(tasks...)  Cancel  Fetch  ──►
      Release  StatsRequest            ──►
                                       ◄──  Events(Started | Output | Done | Failure ...)
                                       ◄──  FetchReply  StatsReply
      Goodbye                          ──►  (the session ends: tasks cancelled, objects freed)

Rules:

- Authentication first: the server reads nothing but ``Hello`` until the token
  checks out, and never unpickles anything itself: pickles (``Pickled``) are
  opened only inside worker processes, for an authenticated session.
- Byte strings above ``INLINE_MAX`` travel as ``Blob`` pieces of at most
  ``PIECE`` bytes, sent just before the message that names them by ``blob_id``;
  so a value of any size fits gRPC's message limit. Blob ids are per sender and
  per stream. A receiver refuses a blob larger than its ``max_value`` limit.
- Protocol-5 out-of-band buffers (numpy arrays) travel as separate byte strings
  (``Pickled.buffers``), never copied into the pickle stream.
- Same host: ``Hello`` names a file ``sperse-probe-*`` in /dev/shm that the client made,
  holding ``shm_nonce``. After the token checks out (never before), the server reads it;
  if it holds the nonce and belongs to the server's own user, ``Welcome.shm`` is on and
  ``Welcome.shm_prefix`` names the prefix of the client's files. The client removes the
  probe. Then an out-of-band buffer of at least ``SHM_MIN`` bytes may travel as a file name
  (``Bytes.shm``) instead of bytes, each way (see :mod:`sperse._serialize.shm`):
  a client writes each big buffer of a task's work once, into a new file named with the
  prefix, and names it in the ``Task``: from then on the file is the server's, unlinked
  when the task has ended (or at once if the task is refused). The server never opens it;
  the worker maps it. A ``FetchReply`` to such a client names the files of the object,
  which stay the server's (freed on ``Release``): the client maps them copy-on-write. A
  name in a stream without ``Welcome.shm``, or one without the session's prefix, is a
  protocol error. ``Done`` events carry bytes only.
- Same-host stream: a ``Welcome`` with ``shm`` on may name ``local_address``, a Unix socket
  (``@name``: in the abstract namespace, so no file is left behind). A client may open it
  and speak the same protocol there, from ``Hello`` on (the token again; the session id
  to take the session over from its gRPC stream, which the server then ends): each
  message is a 4-byte big-endian length, then the serialized ``ClientMessage`` or
  ``ServerMessage``, at most ``MAX_MESSAGE`` bytes. It saves gRPC's threads (several
  thread wake-ups per message on each side); everything else is as over gRPC.
- A task's ``Started`` may be held back a few milliseconds, so that a short task's
  ``Started`` and ``Done`` share one ``Events`` message; it always comes before the
  task's first ``Output`` and its end.
- Every task gets exactly one ``Done`` or ``Failure`` unless cancelled (then at
  most one ``Failure(kind="cancelled")``). Results of at least the task's
  ``inline_limit`` bytes stay on the server as ``ObjectRef`` until fetched or
  released.
- A fatal ``Error`` ends the stream; after any protocol error the stream is
  closed, so a stale reply is never read as the next answer.
- Only ``Goodbye`` ends a session. A stream that ends otherwise (the server
  cannot tell a half-close from a broken connection) leaves the session, its
  running tasks and its held objects for the server's grace period; a new
  stream whose ``Hello.session_id`` names it resumes it and first receives the
  events buffered meanwhile. An event in flight at the break may still be
  lost, so after a resume the client names every unfinished task again in a
  ``Submit`` with no work: the server re-sends the outcome of a finished one
  and ignores a running one. Task ids are unique within a session.
"""

from __future__ import annotations

import builtins
import itertools
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from sperse._wire import sperse_pb2 as pb

__all__ = [
    "INLINE_MAX",
    "PIECE",
    "PROTOCOL",
    "RECEIVE_BUFFER",
    "BlobReceiver",
    "BlobSender",
    "FrameReader",
    "blob_piece",
    "local_frame",
    "local_socket_name",
    "pb",
]

PROTOCOL = "sperse/1"
INLINE_MAX = 1 << 20  # byte strings up to this size travel inside their message
PIECE = 1 << 20  # the size of one Blob piece
MAX_MESSAGE = 8 << 20  # gRPC message limit both sides configure: well above PIECE
RECEIVE_BUFFER = 256 << 10  # what one read of a same-host stream takes at most (as asyncio's)


class BlobSender:
    """Turns byte strings into ``Bytes`` fields, emitting ``Blob`` pieces for large ones."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def encode(self, data: bytes | memoryview | Any, blobs: list[pb.Blob]) -> pb.Bytes:
        """``data`` as a ``Bytes`` field; pieces of a large one are appended to ``blobs``."""
        return self.encode_as(data, blobs, None)

    def encode_as(
        self, data: bytes | memoryview | Any, out: list[Any], wrap: type[Any] | None
    ) -> pb.Bytes:
        """As :meth:`encode`, the pieces appended to ``out`` already wrapped in ``wrap``
        (``ClientMessage`` or ``ServerMessage``). Each piece is built in place: its bytes are
        copied once (a ``Blob`` made first, then wrapped, would be copied twice more)."""
        view = memoryview(data).cast("B")
        if view.nbytes <= INLINE_MAX:
            return pb.Bytes(data=view.tobytes())
        blob_id = next(self._ids)
        for start in range(0, view.nbytes, PIECE):
            end = min(start + PIECE, view.nbytes)
            out.append(blob_piece(wrap, blob_id, view[start:end].tobytes(), end == view.nbytes))
        return pb.Bytes(blob_id=blob_id)

    def pickled(self, data: bytes, buffers: Sequence[Any], blobs: list[pb.Blob]) -> pb.Pickled:
        return pb.Pickled(
            data=self.encode(data, blobs), buffers=[self.encode(b, blobs) for b in buffers]
        )


class BlobReceiver:
    """Assembles ``Blob`` pieces and resolves ``Bytes`` fields that name them."""

    def __init__(self, max_value: int = 1 << 40) -> None:
        self._partial: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        self._complete: dict[int, list[bytes]] = {}  # pieces, joined when used
        self._pending = 0  # bytes of the partial and complete blobs held
        self.max_value = max_value

    def add(self, blob: pb.Blob) -> None:
        """Take one piece. Raises ValueError for a blob over ``max_value`` or a reused id."""
        self.add_piece(blob.blob_id, blob.data, blob.last)

    def add_piece(self, blob_id: int, data: builtins.bytes, last: bool) -> None:
        """:meth:`add`, given the piece's fields (each read of ``Blob.data`` is a copy)."""
        if blob_id in self._complete:
            raise ValueError(f"blob {blob_id} sent twice")
        size = self._sizes.get(blob_id, 0) + len(data)
        if size > self.max_value:
            self.discard(blob_id)
            raise ValueError(f"blob {blob_id} exceeds the limit of {self.max_value} bytes")
        self._sizes[blob_id] = size
        self._pending += len(data)
        partial = self._partial.setdefault(blob_id, [])
        partial.append(data)
        if last:
            del self._partial[blob_id], self._sizes[blob_id]
            self._complete[blob_id] = partial

    def bytes(self, field: pb.Bytes) -> builtins.bytes:
        """The byte string of a ``Bytes`` field (consuming its blob). KeyError if unknown, or
        if it names a shared memory file (the caller resolves those)."""
        kind = field.WhichOneof("kind")
        if kind == "blob_id":
            pieces = self._take(field.blob_id)
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if kind == "shm":
            raise KeyError(f"shared memory file {field.shm!r} where bytes were expected")
        return field.data

    def writable(self, field: pb.Bytes) -> bytearray:
        """:meth:`bytes` as a new ``bytearray``, joined from the pieces at once: one copy
        for a value its receiver may change in place, not two."""
        if field.WhichOneof("kind") == "blob_id":
            return bytearray().join(self._take(field.blob_id))
        return bytearray(self.bytes(field))

    def _take(self, blob_id: int) -> list[builtins.bytes]:
        try:
            pieces = self._complete.pop(blob_id)
        except KeyError:
            raise KeyError(f"unknown or incomplete blob {blob_id}") from None
        self._pending -= sum(map(len, pieces))
        return pieces

    def pickled(self, field: pb.Pickled) -> tuple[builtins.bytes, list[builtins.bytes]]:
        return self.bytes(field.data), [self.bytes(b) for b in field.buffers]

    def partial_size(self, blob_id: int) -> int:
        """Bytes of ``blob_id`` taken so far (0: none, or it is complete)."""
        return self._sizes.get(blob_id, 0)

    def take_partial(self, blob_id: int) -> list[builtins.bytes]:
        """The pieces of an unfinished blob so far, handed over (the caller goes on with it:
        this receiver forgets it)."""
        pieces = self._partial.pop(blob_id, [])
        self._pending -= self._sizes.pop(blob_id, 0)
        return pieces

    def discard(self, blob_id: int) -> None:
        self._partial.pop(blob_id, None)
        complete = self._complete.pop(blob_id, [])
        self._pending -= self._sizes.pop(blob_id, 0) + sum(map(len, complete))

    @property
    def pending_bytes(self) -> int:
        """Bytes of the blobs taken and not used yet: partial, or complete and not named."""
        return self._pending


def blob_piece(wrap: type[Any] | None, blob_id: int, data: bytes, last: bool) -> Any:
    """One ``Blob`` piece, wrapped in ``wrap`` unless None, set field by field: the bytes
    are not copied again (a ``Blob`` passed to ``wrap(blob=...)`` would be)."""
    message = pb.Blob() if wrap is None else wrap()
    blob = message if wrap is None else message.blob
    blob.blob_id = blob_id
    blob.data = data
    blob.last = last
    return message


def with_blobs(blobs: list[pb.Blob], wrap: type[Any], message: Any) -> Iterator[Any]:
    """The Blob messages, then ``message``, each wrapped in ``wrap`` (Client/ServerMessage)."""
    for blob in blobs:
        yield wrap(blob=blob)
    yield message


# ---- the same-host stream --------------------------------------------------------------

_LENGTH = struct.Struct("!I")


def local_frame(message: Any) -> bytes:
    """``message`` framed for the same-host stream: its length, then its bytes."""
    data: bytes = message.SerializeToString()
    return _LENGTH.pack(len(data)) + data


def local_socket_name(address: str) -> str:
    """The name to connect or bind a ``local_address`` with (``@x``: abstract socket)."""
    return "\0" + address[1:] if address.startswith("@") else address


class FrameReader:
    """Splits the bytes of a same-host stream into messages' bytes."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: builtins.bytes | memoryview) -> list[builtins.bytes]:
        """The messages completed by ``data``. ValueError for one over the limit."""
        buffer = self._buffer
        buffer += data
        out = []
        start = 0
        size = len(buffer)
        while size - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length > self._limit:
                raise ValueError(f"a message of {length} bytes (the limit is {self._limit})")
            end = start + _LENGTH.size + length
            if end > size:
                break
            out.append(builtins.bytes(buffer[start + _LENGTH.size : end]))
            start = end
        if start:
            del buffer[:start]
        return out
