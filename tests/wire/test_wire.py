"""The generated protocol code is current, and blobs round-trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sperse._wire import (
    HUGE_MIN,
    INLINE_MAX,
    PIECE,
    BlobReceiver,
    BlobSender,
    FrameReader,
    Piece,
    local_frame,
    local_socket_name,
    pb,
    piece_message,
    pull_data_message,
    read_piece,
    read_pull_chunk,
    serialize,
)

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", "scripts/gen_proto.sh", str(tmp_path)],
        cwd=ROOT,
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    for name in ("sperse_pb2.py", "sperse_pb2.pyi", "sperse_pb2_grpc.py"):
        fresh = (tmp_path / "sperse" / "_wire" / name).read_text()
        committed = (ROOT / "src" / "sperse" / "_wire" / name).read_text()
        assert fresh == committed, f"{name} is stale: run scripts/gen_proto.sh"


@given(size=st.integers(0, 3 * PIECE + 7))
def test_blobs_round_trip(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    blobs: list[pb.Blob] = []
    field = BlobSender().encode(data, blobs)
    assert (field.WhichOneof("kind") == "data") == (size <= INLINE_MAX)
    assert all(len(b.data) <= PIECE for b in blobs)
    said = [size] + [0] * (len(blobs) - 1) if len(blobs) > 1 else [0] * len(blobs)
    assert [b.size for b in blobs] == said, "the first of several pieces says the size"
    receiver = BlobReceiver()
    for blob in blobs:
        receiver.add(blob)
    assert receiver.bytes(field) == data
    assert receiver.pending_bytes == 0


@given(size=st.sampled_from([0, 5, INLINE_MAX, INLINE_MAX + 1, 2 * PIECE, 2 * PIECE + 3]))
def test_wrapped_blobs_round_trip_into_bytes_or_a_bytearray(size: int) -> None:
    """Pieces built already wrapped (written as wire bytes, one copy each) read back the same,
    parsed by protobuf or as views (``read_piece``), as bytes or as the writable bytearray a
    received array needs."""
    data = os.urandom(size)
    for writable in (False, True):
        for viewed in (False, True):
            messages: list[bytes] = []
            field = BlobSender().encode_as(data, messages, pb.ClientMessage)
            receiver = BlobReceiver()
            for message in messages:
                piece = read_piece(pb.ClientMessage, serialize(message))
                assert isinstance(piece, Piece)
                receiver.add(piece if viewed else pb.ClientMessage.FromString(message).blob)
            out = receiver.writable(field) if writable else receiver.bytes(field)
            assert out == data and isinstance(out, bytearray if writable else bytes)
            assert receiver.pending_bytes == 0


@given(
    wrap=st.sampled_from([pb.ClientMessage, pb.ServerMessage]),
    blob_id=st.sampled_from([0, 1, 127, 128, 300, 2**40]),
    size=st.sampled_from([0, 1, 127, 128, 16383, 16384, PIECE]),
    last=st.booleans(),
    whole=st.sampled_from([0, 1, PIECE + 1, 100_000_000, 2**50]),
)
def test_a_piece_is_written_as_protobuf_writes_it_and_read_back(
    wrap: type, blob_id: int, size: int, last: bool, whole: int
) -> None:
    data = os.urandom(size)
    written = piece_message(wrap, blob_id, memoryview(data), last, whole)
    expected = wrap(blob=pb.Blob(blob_id=blob_id, data=data, last=last, size=whole))
    assert written == expected.SerializeToString()
    assert serialize(written) is written
    piece = read_piece(wrap, written)
    assert piece is not None
    read = (piece.blob_id, bytes(piece.data), piece.last, piece.size)
    assert read == (blob_id, data, last, whole)


@given(size=st.sampled_from([0, 1, 127, 128, 16384, PIECE]))
def test_a_pull_chunk_of_data_is_written_as_protobuf_writes_it(size: int) -> None:
    data = os.urandom(size)
    written = pull_data_message(memoryview(data))
    assert written == pb.PullChunk(data=data).SerializeToString()
    assert pb.PullChunk.FromString(written).data == data
    read = read_pull_chunk(written)
    assert isinstance(read, memoryview) and read.tobytes() == data
    for other in (pb.PullChunk(error="gone"), pb.PullChunk(header=pb.PullHeader(data_size=3))):
        assert read_pull_chunk(other.SerializeToString()) == other
    # More after the data (here an error, which protobuf says wins): left to protobuf.
    assert read_pull_chunk(written + b"\x1a\x01x") == pb.PullChunk(error="x")


def test_only_a_message_holding_just_a_piece_is_read_as_one() -> None:
    """Anything else is left to protobuf's parse: another kind of message, a piece with more
    after it, bytes cut short, a field of a wire type a Blob has not."""
    other = pb.ServerMessage(events=pb.Events()).SerializeToString()
    assert read_piece(pb.ServerMessage, other) is None
    piece = piece_message(pb.ServerMessage, 3, b"abc", True)
    assert read_piece(pb.ServerMessage, piece + other) is None
    for cut in range(1, len(piece)):
        assert read_piece(pb.ServerMessage, piece[:cut]) is None
    fixed64 = b"\x12\x09\x09" + bytes(8)  # a Blob holding field 1 as fixed64
    assert read_piece(pb.ServerMessage, fixed64) is None
    # An unknown varint field in the Blob is skipped, as protobuf does.
    unknown = b"\x12\x06\x08\x05\x78\x01\x18\x01"  # blob_id 5, field 15 = 1, last
    read = read_piece(pb.ServerMessage, unknown)
    assert read is not None and (read.blob_id, bytes(read.data), read.last) == (5, b"", True)
    parsed = pb.ServerMessage.FromString(unknown).blob
    assert (parsed.blob_id, parsed.data, parsed.last) == (5, b"", True)


def test_reading_a_piece_is_bounded_whatever_the_bytes() -> None:
    """A message is read before the token is checked: a varint longer than protobuf's 10
    bytes, or more fields than a piece has, is left to protobuf's parse (in C), not read on."""
    long_varint = b"\x08" + b"\xff" * 1000 + b"\x01"
    assert read_piece(pb.ClientMessage, b"\x12" + varint(len(long_varint)) + long_varint) is None
    many_fields = b"\x08\x01" * 100_000
    assert read_piece(pb.ClientMessage, b"\x12" + varint(len(many_fields)) + many_fields) is None
    ten = b"\x08" + b"\xff" * 9 + b"\x01"  # the longest varint protobuf writes: 2**64 - 1
    read = read_piece(pb.ClientMessage, b"\x12" + varint(len(ten)) + ten)
    assert read is not None and read.blob_id == 2**64 - 1


def varint(n: int) -> bytes:
    return pb.Blob(blob_id=n).SerializeToString()[1:]


def test_a_big_blob_is_assembled_writable_from_pieces_and_views() -> None:
    """Past ``HUGE_MIN`` (where it goes into memory advised for huge pages, on Linux)."""
    data = os.urandom(HUGE_MIN + PIECE // 2)
    messages: list[bytes] = []
    field = BlobSender().encode_as(data, messages, pb.ServerMessage)
    receiver = BlobReceiver()
    for message in messages:
        piece = read_piece(pb.ServerMessage, message)
        assert piece is not None
        receiver.add(piece)
    out = receiver.writable(field)
    view = memoryview(out)
    assert not view.readonly and view.nbytes == len(data) and view.tobytes() == data
    assert receiver.pending_bytes == 0


def test_receiver_refuses_oversized_and_unknown_blobs() -> None:
    receiver = BlobReceiver(max_value=10)
    with pytest.raises(ValueError, match="exceeds the limit"):
        receiver.add(pb.Blob(blob_id=1, data=b"x" * 11, last=True))
    with pytest.raises(KeyError, match="unknown or incomplete blob 7"):
        receiver.bytes(pb.Bytes(blob_id=7))


@given(sizes=st.lists(st.integers(0, 3000), max_size=20), cut=st.integers(1, 97))
def test_same_host_frames_round_trip(sizes: list[int], cut: int) -> None:
    messages = [
        pb.ClientMessage(blob=pb.Blob(blob_id=i, data=b"x" * n)) for i, n in enumerate(sizes)
    ]
    stream = b"".join(local_frame(m) for m in messages)
    reader = FrameReader()
    frames: list[bytes] = []
    for start in range(0, len(stream), cut):  # in pieces, as a socket delivers them
        frames += reader.feed(stream[start : start + cut])
    assert [pb.ClientMessage.FromString(f) for f in frames] == messages


def test_a_frame_over_the_limit_is_refused() -> None:
    reader = FrameReader(limit=10)
    with pytest.raises(ValueError, match="limit is 10"):
        reader.feed(local_frame(pb.ClientMessage(blob=pb.Blob(data=b"x" * 20))))


def test_abstract_socket_names() -> None:
    assert local_socket_name("@sperse-1-ab") == "\0sperse-1-ab"
    assert local_socket_name("/run/sperse.sock") == "/run/sperse.sock"


def test_bytes_naming_a_file_are_not_taken_for_bytes() -> None:
    with pytest.raises(KeyError, match="shared memory file"):
        BlobReceiver().bytes(pb.Bytes(shm="sperse-1-s0-00"))
