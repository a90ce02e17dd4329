"""Fixtures of the client tests against real servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from shm_helpers import all_files

from sperse._backends.sperse import EmbeddedServer


@pytest.fixture
def shm_server() -> Iterator[EmbeddedServer]:
    """An embedded server of 2 workers on this host; none of its files is left after it."""
    process = EmbeddedServer(workers=2, name="here")
    try:
        yield process
    finally:
        process.stop()
        assert all_files(process) == set(), "files left after the server stopped"
