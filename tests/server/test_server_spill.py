"""Big blobs go into the server's shared memory files as they arrive (``StreamReceiver``
with a ``spill_prefix``), and no file outlives what named it or the stream."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from sperse._serialize import shm
from sperse._server.blobs import BlobTotal, Refused, StreamReceiver, Violation
from sperse._server.envelope import ShmBuffer
from sperse._wire import pb

PIECE = 100_000


def files(prefix: str) -> set[str]:
    return {name for name in os.listdir(shm.SHM_DIR) if name.startswith(prefix)}


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"{shm.server_prefix()}t{secrets.token_hex(4)}-"
    yield name
    shm.unlink(files(name))


def send(receiver: StreamReceiver, blob_id: int, data: bytes, last: bool = True) -> None:
    for start in range(0, len(data), PIECE):
        end = start + PIECE
        receiver.add(pb.Blob(blob_id=blob_id, data=data[start:end], last=last and end >= len(data)))


def test_a_big_buffer_becomes_a_file_and_a_small_one_stays_bytes(prefix: str) -> None:
    receiver = StreamReceiver(1 << 30, spill_prefix=prefix)
    big, small = os.urandom(shm.SHM_MIN + 12345), b"small"
    send(receiver, 1, big)
    send(receiver, 2, small)
    assert len(files(prefix)) == 1
    taken: list[str] = []
    field = pb.Pickled(
        data=pb.Bytes(data=b"pickle"), buffers=[pb.Bytes(blob_id=1), pb.Bytes(blob_id=2)]
    )
    value = receiver.pickled(field, lambda name: ShmBuffer(name, 0), taken)
    spilled, kept = value.buffers
    assert isinstance(spilled, ShmBuffer) and spilled.size == len(big) and kept == small
    assert taken == [spilled.name] and files(prefix) == {spilled.name}
    assert bytes(shm.map_copy(spilled.name)) == big
    receiver.close()
    assert files(prefix) == {spilled.name}  # the task's now: its uploads go with it


def test_a_big_pickle_stream_is_read_back_and_its_file_goes(prefix: str) -> None:
    receiver = StreamReceiver(1 << 30, spill_prefix=prefix)
    stream = os.urandom(shm.SHM_MIN * 2)
    send(receiver, 1, stream)
    value = receiver.pickled(pb.Pickled(data=pb.Bytes(blob_id=1)), lambda n: ShmBuffer(n, 0), [])
    assert value.data == stream and files(prefix) == set()


def test_no_file_outlives_the_stream_or_a_refusal(prefix: str) -> None:
    receiver = StreamReceiver(shm.SHM_MIN * 2, spill_prefix=prefix)
    send(receiver, 1, os.urandom(shm.SHM_MIN + 1))  # never named
    send(receiver, 2, os.urandom(shm.SHM_MIN + 1), last=False)  # never finished
    send(receiver, 3, os.urandom(shm.SHM_MIN * 3))  # over --max-value-size
    assert len(files(prefix)) == 2
    with pytest.raises(Refused, match="--max-value-size"):
        receiver.bytes(pb.Bytes(blob_id=3))
    receiver.close()
    assert files(prefix) == set()


def test_without_a_prefix_nothing_is_written() -> None:
    receiver = StreamReceiver(1 << 30)
    data = os.urandom(shm.SHM_MIN * 2)
    send(receiver, 1, data)
    assert receiver.bytes(pb.Bytes(blob_id=1)) == data


def test_past_the_servers_total_a_stream_holding_more_than_its_share_ends() -> None:
    """``--max-blob-total``: streams each under ``--max-blob-bytes``, together past the
    server's total: the one that holds more than its share ends (a protocol error); the
    others go on; what a stream held leaves the total when it ends."""
    total = BlobTotal(limit=3 * PIECE)
    big, small = StreamReceiver(1 << 30, total=total), StreamReceiver(1 << 30, total=total)
    send(small, 1, os.urandom(PIECE // 2), last=False)
    send(big, 1, os.urandom(PIECE * 2), last=False)
    assert total.bytes == PIECE * 5 // 2 and total.share() == PIECE * 3 // 2
    with pytest.raises(Violation, match="--max-blob-total"):
        send(big, 2, os.urandom(PIECE * 2), last=False)
    send(small, 2, os.urandom(PIECE // 2), last=False)  # under its share: goes on
    big.close()
    small.close()
    assert total.bytes == 0 and total.streams == 0
