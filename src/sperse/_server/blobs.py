"""Bytes on a ``Session`` stream: blobs in (:class:`StreamReceiver`), blobs out
(:class:`StreamSender`, :class:`OutBlob`), and shared memory files read for a client on
another host (:class:`OpenFile`).

Invariants:

- A blob going out is cut into ``Blob`` pieces one piece at a time, as it is written: sending
  a large object never copies it whole.
- A shared memory file is read with ``pread`` from a descriptor opened when it was asked for:
  a later release cannot take it away, and a file that shrinks is an ``OSError``, never a
  crash.
- A blob coming in over ``max_value_size`` is dropped as it arrives, and the ``Bytes`` field
  that names it raises :class:`Refused` (the task fails; the session carries on). A reused
  blob id, or a ``Bytes`` naming a blob never sent, raises :class:`Violation`.
- The blobs a stream holds, unfinished or not yet named by a message, are at most
  ``max_pending`` bytes (``--max-blob-bytes``): a piece that takes them past it raises
  :class:`Violation` (the stream ends). A client sends the blobs of a message just before
  it, so a well-behaved one holds there the values of one message at most.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator

from sperse._core.values import value
from sperse._serialize import shm
from sperse._server.envelope import Buffer, PickledBytes, ShmBuffer
from sperse._server.held import mib
from sperse._wire import INLINE_MAX, PIECE, BlobReceiver, BlobSender, Piece, pb, piece_message

__all__ = [
    "BlobTotal",
    "OpenFile",
    "OutBlob",
    "Refused",
    "StreamReceiver",
    "StreamSender",
    "Violation",
]


class Violation(Exception):
    """The client broke the protocol: the stream ends with ``Error("protocol")``."""


class Refused(Exception):
    """A Bytes field names a blob that was dropped for its size."""


@value
class OutBlob:
    """A byte string to send as ``Blob`` pieces, cut one piece at a time as it is written
    (so sending a large object never copies it whole): bytes, or a shared memory file open
    for reading (read with ``pread``, so a file that shrinks is an error, not a crash)."""

    blob_id: int
    data: bytes | OpenFile

    def pieces(self) -> Iterator[bytes]:
        """Each piece as the wire bytes of its ``ServerMessage`` (``piece_message``)."""
        source = self.data
        size = source.size if isinstance(source, OpenFile) else len(source)
        view = memoryview(source) if isinstance(source, bytes) else None
        for start in range(0, max(size, 1), PIECE):
            end = min(start + PIECE, size)
            data: bytes | memoryview
            if view is not None:
                data = view[start:end]
            else:
                assert isinstance(source, OpenFile)
                data = source.read(start, end - start)
                if end == size:
                    source.close()
            yield piece_message(pb.ServerMessage, self.blob_id, data, end == size)


class OpenFile:
    """A shared memory file opened when a client fetched it (a later release cannot take it
    away); closed once sent, or when garbage-collected (a reply never sent)."""

    __slots__ = ("__weakref__", "_close", "fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._close = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, buffer: ShmBuffer) -> OpenFile:
        return cls(shm.open_read(buffer.name, buffer.size), buffer.size)

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise OSError(f"a shared memory file shrank while it was sent (fd {self.fd})")
        return data

    def close(self) -> None:
        self._close()


class StreamSender(BlobSender):
    """A ``BlobSender`` whose blobs are cut lazily (``OutBlob``), and which also sends a small
    byte string as a blob when one message's inline budget is spent (``BlobSender.encode``
    inlines everything up to INLINE_MAX)."""

    def encode_within(self, data: bytes, blobs: list[OutBlob], budget: int) -> tuple[pb.Bytes, int]:
        """``data`` as a ``Bytes`` field, and the inline bytes it used out of ``budget``."""
        if not data or len(data) <= min(INLINE_MAX, budget):
            return pb.Bytes(data=data), len(data)
        blob_id = next(self._ids)  # the base class's sequence: ids stay unique per stream
        blobs.append(OutBlob(blob_id, data))
        return pb.Bytes(blob_id=blob_id), 0

    def pickled_within(
        self,
        value: PickledBytes,
        blobs: list[OutBlob],
        budget: int,
        files: dict[str, OpenFile] | None = None,
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
                    blobs.append(OutBlob(blob_id, opened))
                    buffers.append(pb.Bytes(blob_id=blob_id))
                continue
            field, n = self.encode_within(buffer, blobs, budget - used)
            buffers.append(field)
            used += n
        return pb.Pickled(data=data, buffers=buffers), used


class _Spill:
    """A blob being written into a new shared memory file of the server's, piece by piece:
    the file made ahead for the size its first piece said, when one fits (``shm.Standby``).
    """

    __slots__ = ("capacity", "fd", "name", "prefix", "size")

    def __init__(self, prefix: str, said: int) -> None:
        self.prefix = prefix
        self.name, self.fd, self.capacity = shm.open_to_write(prefix, said)
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.size += len(data)

    def finish(self) -> ShmBuffer:
        shm.close_written(self.prefix, self.fd, self.capacity, self.size)
        self.fd = -1
        return ShmBuffer(self.name, self.size)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        shm.unlink([self.name])


class BlobTotal:
    """The bytes every stream of a server holds ahead of the messages that use them, against
    ``limit`` (the server's ``--max-blob-total``), and how many streams share it."""

    __slots__ = ("bytes", "limit", "streams")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self.streams = 0

    def share(self) -> int:
        return self.limit // max(1, self.streams)


class StreamReceiver:
    """A ``BlobReceiver`` that drops (rather than refuses) a blob over the size limit and
    treats a reused blob id as a protocol error.

    With ``spill_prefix`` (the server uses shared memory), a blob that reaches ``shm.SHM_MIN``
    bytes goes on into a new shared memory file of the server's, named ``spill_prefix`` +
    random, as its pieces arrive: a big value from a client on another host is never held in
    the server's memory, and its worker maps the file rather than receiving the bytes. A
    file becomes the task's that names it (``pickled``'s ``files``: unlinked with its
    uploads); one no message named is unlinked when the stream ends (``close``)."""

    def __init__(
        self,
        max_value: int,
        max_pending: int = 1 << 62,
        spill_prefix: str = "",
        total: BlobTotal | None = None,
    ) -> None:
        self._blobs = BlobReceiver(max_value)
        self._total = total if total is not None else BlobTotal(1 << 62)
        self._total.streams += 1
        self._counted = 0  # what this stream adds to the total
        self._max_value = max_value
        self._max_pending = max_pending
        self._spill_prefix = spill_prefix
        self._spilling: dict[int, _Spill] = {}  # blob id -> its file, being written
        self._spilled: dict[int, ShmBuffer] = {}  # complete, named by no message yet
        self._spilled_bytes = 0  # of both
        self._complete: set[int] = set()  # ids whose last piece has arrived
        self._refused: dict[int, str] = {}

    def add(self, blob: pb.Blob | Piece) -> None:
        blob_id = blob.blob_id
        if blob_id in self._refused:
            return
        if blob_id in self._complete:
            raise Violation(f"blob id {blob_id} was used twice on this stream")
        data = blob.data  # (a Blob's: each read of it is a copy; a Piece's: a view)
        spill = self._spilling.get(blob_id)
        if spill is None and self._spill_prefix:
            spill = self._maybe_spill(blob_id, len(data), blob.size)
        try:
            if spill is not None:
                if spill.size + len(data) > self._max_value:
                    self._drop_spill(blob_id)
                    raise ValueError("too big")
                spill.write(data)
                self._spilled_bytes += len(data)
                if blob.last:
                    self._spilled[blob_id] = spill.finish()
                    del self._spilling[blob_id]
            else:
                self._blobs.add_piece(blob_id, data, blob.last)
        except ValueError:
            self._refused[blob_id] = (
                f"a value of more than {self._max_value} bytes was sent; this server "
                "refuses values that large (its --max-value-size): keep the data where it is "
                "and compute there, or send it in parts"
            )
            return
        except OSError as exc:  # /dev/shm is full: the value is refused, the stream goes on
            self._drop_spill(blob_id)
            self._refused[blob_id] = (
                f"a value sent could not be written into shared memory on this server "
                f"({exc.strerror}): free memory on it ({shm.SHM_DIR}), or send less at once"
            )
            return
        if blob.last:
            self._complete.add(blob_id)
        pending = self._count()
        total = self._total
        if total.bytes > total.limit and pending > total.share():
            raise Violation(
                f"the blobs sent on this stream that no message has used yet hold "
                f"{mib(pending)}, past this stream's share of this server's limit for all "
                f"streams together, {mib(total.limit)} (--max-blob-total), which they are "
                "past: send fewer or smaller values per task, or later"
            )
        if pending > self._max_pending:
            raise Violation(
                f"the blobs sent on this stream that no message has used yet (unfinished, or "
                f"never named) hold {mib(pending)}, past this server's limit of "
                f"{mib(self._max_pending)} (--max-blob-bytes). A client sends the values of a "
                "message just before it: send fewer or smaller values per task (big data can "
                "stay on the server between tasks), or run the server with a larger "
                "--max-blob-bytes"
            )

    def _count(self) -> int:
        """This stream's pending bytes, brought into the server's total."""
        pending = self._blobs.pending_bytes + self._spilled_bytes
        self._total.bytes += pending - self._counted
        self._counted = pending
        return pending

    def _maybe_spill(self, blob_id: int, more: int, said: int) -> _Spill | None:
        """Start writing ``blob_id`` into a file once it reaches ``shm.SHM_MIN`` bytes (its
        pieces so far first); None: it stays in memory (small, or /dev/shm refused)."""
        if self._blobs.partial_size(blob_id) + more < shm.SHM_MIN:
            return None
        try:
            spill = _Spill(self._spill_prefix, said)
        except OSError:
            return None  # kept in memory, as before
        pieces = self._blobs.take_partial(blob_id)
        self._spilling[blob_id] = spill
        try:
            for piece in pieces:
                spill.write(piece)
        except OSError:
            self._drop_spill(blob_id)
            raise
        self._spilled_bytes += spill.size
        return spill

    def _drop_spill(self, blob_id: int) -> None:
        spill = self._spilling.pop(blob_id, None)
        if spill is not None:
            self._spilled_bytes -= spill.size
            spill.discard()
            self._count()

    def bytes(self, field: pb.Bytes) -> bytes:
        if field.WhichOneof("kind") == "blob_id":
            if field.blob_id in self._refused:
                raise Refused(self._refused.pop(field.blob_id))
            spilled = self._spilled.pop(field.blob_id, None)
            if spilled is not None:  # wanted as bytes (a pickle's stream): read back
                self._spilled_bytes -= spilled.size
                try:
                    return shm.map_copy(spilled.name, spilled.size).tobytes()
                except OSError as exc:
                    raise Refused(f"a value sent could not be read back: {exc}") from None
                finally:
                    shm.unlink([spilled.name])
                    self._count()
        try:
            data: bytes = self._blobs.bytes(field)
        except KeyError as exc:
            raise Violation(str(exc.args[0])) from None
        self._count()
        return data

    def pickled(
        self,
        field: pb.Pickled,
        upload: Callable[[str], ShmBuffer],
        files: list[str] | None = None,
    ) -> PickledBytes:
        """The pickle's bytes, its buffers as bytes or (``upload``) shared memory files.
        With ``files``: a buffer that was spilled into a file stays one, and its name is
        added to ``files`` (the caller's to unlink); without, it is read back as bytes."""
        data = self.bytes(field.data)
        buffers: list[Buffer] = []
        for b in field.buffers:
            kind = b.WhichOneof("kind")
            spilled = self._spilled.get(b.blob_id) if kind == "blob_id" else None
            if spilled is not None and files is not None:
                del self._spilled[b.blob_id]
                self._spilled_bytes -= spilled.size
                files.append(spilled.name)
                buffers.append(spilled)
                self._count()
            else:
                buffers.append(upload(b.shm) if kind == "shm" else self.bytes(b))
        return PickledBytes(data, tuple(buffers))

    def close(self) -> None:
        """The stream ended: unlink the files of blobs no message named."""
        for blob_id in list(self._spilling):
            self._drop_spill(blob_id)
        names = [buffer.name for buffer in self._spilled.values()]
        self._spilled.clear()
        self._spilled_bytes = 0
        shm.unlink(names)
        self._total.bytes -= self._counted
        self._total.streams -= 1
        self._counted = 0
