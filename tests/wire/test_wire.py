"""The generated protocol code is current, and blobs round-trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sperse._wire import INLINE_MAX, PIECE, BlobReceiver, BlobSender, pb

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
    receiver = BlobReceiver()
    for blob in blobs:
        receiver.add(blob)
    assert receiver.bytes(field) == data
    assert receiver.pending_bytes == 0


def test_receiver_refuses_oversized_and_unknown_blobs() -> None:
    receiver = BlobReceiver(max_value=10)
    with pytest.raises(ValueError, match="exceeds the limit"):
        receiver.add(pb.Blob(blob_id=1, data=b"x" * 11, last=True))
    with pytest.raises(KeyError, match="unknown or incomplete blob 7"):
        receiver.bytes(pb.Bytes(blob_id=7))
