"""Fixtures: coordinators on a background loop and child processes, each stopped (by its pid,
for a process) when its test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from coordinator_helpers import Child, CoordinatorThread


@pytest.fixture
def make_coordinator() -> Iterator[Callable[..., CoordinatorThread]]:
    started: list[CoordinatorThread] = []

    def make(**config: Any) -> CoordinatorThread:
        thread = CoordinatorThread(**config)
        started.append(thread)
        return thread

    try:
        yield make
    finally:
        for thread in started:
            thread.close()


@pytest.fixture
def coordinator(make_coordinator: Callable[..., CoordinatorThread]) -> CoordinatorThread:
    return make_coordinator()


@pytest.fixture
def start_child(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start ``python -m MODULE ARGS``; every process is stopped when the test ends."""
    started: list[Child] = []

    def start(module: str, args: list[str], **kwargs: Any) -> Child:
        child = Child(module, args, tmp_path / f"stderr-{len(started)}.txt", **kwargs)
        started.append(child)
        return child

    try:
        yield start
    finally:
        for child in started:
            child.stop()
