"""``sperse.connect(backend=...)``: the names it takes, and a clear error for others."""

from __future__ import annotations

import pytest

import sperse


def test_local_names_the_in_process_pool() -> None:
    cluster = sperse.connect(backend="local", workers=1)
    try:
        assert type(cluster.backend).__name__ == "LocalBackend"
        assert sperse.remote(abs)(-3).result(timeout=60) == 3
    finally:
        cluster.close()


def test_an_unknown_name_says_which_are_known() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'lokal'.*'ray', 'local' or 'memory'"):
        sperse.connect(backend="lokal")  # type: ignore[arg-type]
