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
  per stream. The first piece of a blob of several says the blob's ``size``: a hint (a
  server writing it into a file takes one made ahead of that size); the pieces are the
  blob. A receiver refuses a blob larger than its ``max_value`` limit.
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
import contextlib
import itertools
import mmap
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sperse._wire import sperse_pb2 as pb

__all__ = [
    "HUGE_MIN",
    "INLINE_MAX",
    "PIECE",
    "PROTOCOL",
    "RECEIVE_BUFFER",
    "BlobReceiver",
    "BlobSender",
    "FrameReader",
    "Piece",
    "local_frame",
    "local_socket_name",
    "pb",
    "piece_message",
    "pull_data_message",
    "read_client_message",
    "read_piece",
    "read_pull_chunk",
    "read_server_message",
    "serialize",
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
        """As :meth:`encode`, the pieces appended to ``out`` as the wire bytes of ``wrap``
        messages (``ClientMessage`` or ``ServerMessage``: :func:`piece_message`), or as
        ``Blob`` messages when ``wrap`` is None."""
        view = memoryview(data).cast("B")
        if view.nbytes <= INLINE_MAX:
            return pb.Bytes(data=view.tobytes())
        blob_id = next(self._ids)
        whole = view.nbytes if view.nbytes > PIECE else 0  # (said on the first of several)
        for start in range(0, view.nbytes, PIECE):
            end = min(start + PIECE, view.nbytes)
            last = end == view.nbytes
            size = whole if start == 0 else 0
            if wrap is None:
                data = view[start:end].tobytes()
                out.append(pb.Blob(blob_id=blob_id, data=data, last=last, size=size))
            else:
                out.append(piece_message(wrap, blob_id, view[start:end], last, size))
        return pb.Bytes(blob_id=blob_id)

    def pickled(self, data: bytes, buffers: Sequence[Any], blobs: list[pb.Blob]) -> pb.Pickled:
        return pb.Pickled(
            data=self.encode(data, blobs), buffers=[self.encode(b, blobs) for b in buffers]
        )


class BlobReceiver:
    """Assembles ``Blob`` pieces and resolves ``Bytes`` fields that name them."""

    def __init__(self, max_value: int = 1 << 40) -> None:
        self._partial: dict[int, list[bytes | memoryview]] = {}
        self._sizes: dict[int, int] = {}
        self._complete: dict[int, list[bytes | memoryview]] = {}  # pieces, joined when used
        self._pending = 0  # bytes of the partial and complete blobs held
        self.max_value = max_value

    def add(self, blob: pb.Blob | Piece) -> None:
        """Take one piece. Raises ValueError for a blob over ``max_value`` or a reused id."""
        self.add_piece(blob.blob_id, blob.data, blob.last)

    def add_piece(self, blob_id: int, data: builtins.bytes | memoryview, last: bool) -> None:
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
            first = pieces[0]
            return first if len(pieces) == 1 and type(first) is builtins.bytes else b"".join(pieces)
        if kind == "shm":
            raise KeyError(f"shared memory file {field.shm!r} where bytes were expected")
        return field.data

    def writable(self, field: pb.Bytes) -> bytearray | mmap.mmap:
        """:meth:`bytes` as a new writable buffer, joined from the pieces at once: one copy
        for a value its receiver may change in place, not two. From ``HUGE_MIN`` bytes (on
        Linux), anonymous memory the kernel may back with huge pages: faulting in a new
        buffer's pages was most of the time of assembling it (100 MB, here: 63 ms in
        4 KiB pages, 15 ms in 2 MiB ones)."""
        if field.WhichOneof("kind") == "blob_id":
            pieces = self._take(field.blob_id)
            size = sum(map(len, pieces))
            if size >= HUGE_MIN and _MADV_HUGEPAGE is not None:
                return _huge_pages_buffer(pieces, size)
            return bytearray().join(pieces)
        return bytearray(self.bytes(field))

    def _take(self, blob_id: int) -> list[builtins.bytes | memoryview]:
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

    def take_partial(self, blob_id: int) -> list[builtins.bytes | memoryview]:
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


HUGE_MIN = 8 << 20  # bytes of a received buffer from which it is assembled in huge pages
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only


def _huge_pages_buffer(pieces: Sequence[builtins.bytes | memoryview], size: int) -> mmap.mmap:
    """``pieces`` joined into new anonymous memory advised for transparent huge pages."""
    assert _MADV_HUGEPAGE is not None
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages
        buffer.madvise(_MADV_HUGEPAGE)
    at = 0
    for piece in pieces:
        buffer[at : at + len(piece)] = piece
        at += len(piece)
    return buffer


def _varint(n: int) -> builtins.bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return builtins.bytes(out)


def _tag(message: Any, field: str, wire_type: int) -> builtins.bytes:
    return _varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | wire_type)


_VARINT, _LENGTH_DELIMITED = 0, 2
_BLOB_TAG = {
    pb.ClientMessage: _tag(pb.ClientMessage, "blob", _LENGTH_DELIMITED),
    pb.ServerMessage: _tag(pb.ServerMessage, "blob", _LENGTH_DELIMITED),
}
_BLOB_ID = pb.Blob.DESCRIPTOR.fields_by_name["blob_id"].number
_DATA = pb.Blob.DESCRIPTOR.fields_by_name["data"].number
_LAST_FIELD = pb.Blob.DESCRIPTOR.fields_by_name["last"].number
_BLOB_ID_TAG = _tag(pb.Blob, "blob_id", _VARINT)
_DATA_TAG = _tag(pb.Blob, "data", _LENGTH_DELIMITED)
_LAST = _tag(pb.Blob, "last", _VARINT) + b"\x01"
_SIZE = pb.Blob.DESCRIPTOR.fields_by_name["size"].number
_SIZE_TAG = _tag(pb.Blob, "size", _VARINT)
_BLOB_FIELDS = 8  # fields read_piece reads at most (a piece's writer writes up to 4)


def piece_message(
    wrap: type[Any],
    blob_id: int,
    data: builtins.bytes | memoryview,
    last: bool,
    whole: int = 0,
) -> builtins.bytes:
    """The wire bytes of a ``wrap`` (``ClientMessage`` or ``ServerMessage``) whose ``blob``
    is one piece (``whole``: the blob's ``size``, said on its first piece): the bytes
    protobuf writes for it, written here, where ``data`` (bytes, or a view of bytes) is
    copied once. protobuf's own serialization of a new message holding a 1 MiB piece took
    1.7 ms (its buffer grows in the message's arena, which is freed after: new pages every
    time), 30 times this; ``serialize`` lets these bytes through."""
    size = len(data)
    head = (_BLOB_ID_TAG + _varint(blob_id) if blob_id else b"") + (
        _DATA_TAG + _varint(size) if size else b""
    )
    tail = (_LAST if last else b"") + (_SIZE_TAG + _varint(whole) if whole else b"")
    length = _varint(len(head) + size + len(tail))
    return b"".join((_BLOB_TAG[wrap], length, head, data, tail))


@dataclass(frozen=True, slots=True)
class Piece:
    """A ``Blob`` piece read by :func:`read_piece`: ``data`` is a view of the message's bytes."""

    blob_id: int
    data: memoryview
    last: bool
    size: int = 0  # the whole blob's, said on its first piece (0: not said)


def read_piece(wrap: type[Any], raw: builtins.bytes) -> Piece | None:
    """``raw``, the wire bytes of a ``wrap`` (``ClientMessage`` or ``ServerMessage``), as a
    ``Piece`` if it holds a ``Blob``, without copying its data (protobuf's parse copies it,
    and each read of ``Blob.data`` again); None for any other message, or one this does not
    read (protobuf's parse says what is wrong with it). It reads at most ``_BLOB_FIELDS``
    fields, a varint of at most 10 bytes: its work is bounded whatever ``raw`` holds (it
    reads a message before the token is checked, too)."""
    tag = _BLOB_TAG[wrap]
    if not raw.startswith(tag):
        return None
    try:
        length, at = _read_varint(raw, len(tag))
        if at + length != len(raw):
            return None
        blob_id, data, last, whole = 0, memoryview(b""), False, 0
        view = memoryview(raw)
        for _ in range(_BLOB_FIELDS):
            if at == len(raw):
                break
            key, at = _read_varint(raw, at)
            field, wire_type = key >> 3, key & 7
            if wire_type == _VARINT:
                number, at = _read_varint(raw, at)
                if field == _BLOB_ID:
                    blob_id = number
                elif field == _LAST_FIELD:
                    last = bool(number)
                elif field == _SIZE:
                    whole = number
            elif wire_type == _LENGTH_DELIMITED:
                size, at = _read_varint(raw, at)
                if at + size > len(raw):
                    return None
                if field == _DATA:
                    data = view[at : at + size]
                at += size
            else:
                return None
        else:
            return None  # more fields than a piece has: protobuf's
    except ValueError:  # a varint cut short, or too long
        return None
    return Piece(blob_id, data, last, whole)


def read_client_message(raw: builtins.bytes) -> pb.ClientMessage | Piece:
    """A ``ClientMessage`` from its wire bytes, a ``Blob`` piece as a ``Piece``."""
    return read_piece(pb.ClientMessage, raw) or pb.ClientMessage.FromString(raw)


def read_server_message(raw: builtins.bytes) -> pb.ServerMessage | Piece:
    """A ``ServerMessage`` from its wire bytes, a ``Blob`` piece as a ``Piece``."""
    return read_piece(pb.ServerMessage, raw) or pb.ServerMessage.FromString(raw)


def _read_varint(raw: builtins.bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` in ``raw``, and where it ends. ValueError: cut short, or longer
    than protobuf's 10 bytes."""
    number = 0
    for shift in range(0, 70, 7):
        if at >= len(raw):
            break
        byte = raw[at]
        at += 1
        number |= (byte & 0x7F) << shift
        if byte < 0x80:
            return number, at
    raise ValueError("a varint cut short or too long")


_PULL_DATA_TAG = _tag(pb.PullChunk, "data", _LENGTH_DELIMITED)


def pull_data_message(data: builtins.bytes | memoryview) -> builtins.bytes:
    """The wire bytes of a ``PullChunk`` holding ``data`` (as :func:`piece_message`)."""
    return b"".join((_PULL_DATA_TAG, _varint(len(data)), data))


def read_pull_chunk(raw: builtins.bytes) -> pb.PullChunk | memoryview:
    """A ``PullChunk`` from its wire bytes; one of data as a view of its bytes (not copied)."""
    if raw.startswith(_PULL_DATA_TAG):
        try:
            size, at = _read_varint(raw, len(_PULL_DATA_TAG))
        except ValueError:
            size, at = -1, 0
        if at + size == len(raw):
            return memoryview(raw)[at:]
    chunk: pb.PullChunk = pb.PullChunk.FromString(raw)
    return chunk


def serialize(message: Any) -> builtins.bytes:
    """The wire bytes of a message of ``Session`` (either way) or ``Pull``: a message's
    serialization, or bytes as they are (made by :func:`piece_message` or
    :func:`pull_data_message`)."""
    if type(message) is builtins.bytes:
        return message
    data: builtins.bytes = message.SerializeToString()
    return data


def with_blobs(blobs: list[pb.Blob], wrap: type[Any], message: Any) -> Iterator[Any]:
    """The Blob messages, then ``message``, each wrapped in ``wrap`` (Client/ServerMessage)."""
    for blob in blobs:
        yield wrap(blob=blob)
    yield message


# ---- the same-host stream --------------------------------------------------------------

_LENGTH = struct.Struct("!I")


def local_frame(message: Any) -> bytes:
    """``message`` framed for the same-host stream: its length, then its bytes."""
    data = serialize(message)
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
