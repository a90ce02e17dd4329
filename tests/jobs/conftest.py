"""Fixtures of the job tests (see ``job_helpers``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import wasmtime
from job_helpers import BEHAVE_WAT, embedded_cluster

import sperse


@pytest.fixture(scope="session")
def behave_wasm() -> bytes:
    """The module of ``BEHAVE_WAT``, compiled by wasmtime here."""
    return bytes(wasmtime.wat2wasm(BEHAVE_WAT))


@pytest.fixture(scope="module")
def two_servers() -> Iterator[list[sperse.Cluster]]:
    """Two embedded servers, ``s1`` and ``s2``, one worker each: one cluster each."""
    first, _ = embedded_cluster("s1")
    try:
        second, _ = embedded_cluster("s2")
    except BaseException:
        first.close()
        raise
    try:
        yield [first, second]
    finally:
        first.close()
        second.close()


@pytest.fixture
def make_inputs(tmp_path: Path) -> Callable[..., Path]:
    """``make_inputs({"a": b"...", ...})`` → a directory holding those files."""
    counter = [0]

    def make(files: dict[str, bytes]) -> Path:
        counter[0] += 1
        root = tmp_path / f"in{counter[0]}"
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root

    return make
