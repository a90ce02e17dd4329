"""Big buffers between this client and a server on its host: shared memory files.

A buffer of a task's arguments from ``SHM_MIN`` bytes is written once into a new file under
the server's prefix, which the server owns from the moment the task is sent (until then it is
ours: a task that is not sent unlinks its files). A received value names its files; they are
mapped copy-on-write by the thread that asked for the value, never the I/O thread.
"""

from __future__ import annotations

import mmap
from typing import Any

from sperse._core.values import value
from sperse._serialize import shm as _shm
from sperse._wire import BlobReceiver, pb

__all__ = ["ShmName", "received", "upload", "writable"]


def upload(raw: memoryview, prefix: str, uploads: list[str]) -> pb.Bytes | None:
    """A big buffer written into a new shared memory file (None: small, or it failed)."""
    if raw.nbytes < _shm.SHM_MIN:
        return None
    try:
        name = _shm.write(prefix, raw)
    except _shm.ShmError:
        return None  # /dev/shm is full, say: gRPC it is
    uploads.append(name)
    return pb.Bytes(shm=name)


@value
class ShmName:
    name: str


def received(
    field: pb.Pickled, receiver: BlobReceiver
) -> tuple[bytes, list[bytearray | mmap.mmap | ShmName]]:
    """The stream and buffers of a received value (on the I/O thread: its blobs are this
    stream's), shared memory files by name. Buffers are writable (arrays the user may change
    in place): a blob's pieces are joined into a new writable buffer, its one copy here
    (``BlobReceiver.writable``)."""
    data = receiver.bytes(field.data)
    parts: list[bytearray | mmap.mmap | ShmName] = []
    for b in field.buffers:
        parts.append(ShmName(b.shm) if b.WhichOneof("kind") == "shm" else receiver.writable(b))
    return data, parts


def writable(data: bytes, parts: list[bytearray | mmap.mmap | ShmName]) -> tuple[bytes, list[Any]]:
    """Writable buffers: shared memory files mapped copy-on-write (by the caller's thread)."""
    return data, [_shm.map_copy(p.name) if isinstance(p, ShmName) else p for p in parts]
