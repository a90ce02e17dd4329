"""Fixtures: real servers on port 0, each stopped (and its workers checked gone) by its test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from server_helpers import TOKEN, ServerThread

from sperse._server import ServerConfig


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    """A server shared by a module's tests: two workers, the test token."""
    thread = ServerThread(ServerConfig(token=TOKEN, workers=2, name="test-server"))
    try:
        yield thread
    finally:
        thread.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    """Servers with a configuration of the test's own, stopped when the test ends."""
    started: list[ServerThread] = []

    def make(**config: Any) -> ServerThread:
        config.setdefault("token", TOKEN)
        config.setdefault("workers", 1)
        thread = ServerThread(ServerConfig(**config))
        started.append(thread)
        return thread

    try:
        yield make
    finally:
        for thread in started:
            thread.close()
