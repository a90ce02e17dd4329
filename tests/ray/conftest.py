"""Fixtures of the Ray tests (each module is marked ``ray``): a cluster on the session's Ray
(``ray_session`` in tests/conftest.py), and a sink that records a backend's events."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sperse
from sperse._core import BackendEvent, Done, Failed

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # ray_head
sys.path.insert(0, str(HERE.parent / "repl"))  # terminal: the REPL in a pseudo-terminal


@pytest.fixture(scope="module")
def ray_cluster(ray_session: str) -> Iterator[sperse.Cluster]:
    """A cluster on the session's Ray, current inside the module's tests."""
    from sperse._backends.ray import RayBackend

    with sperse.Cluster(RayBackend()) as cluster:
        yield cluster


class Recorder:
    """A backend's sink: records events, and waits for them with a deadline."""

    def __init__(self) -> None:
        self.events: list[BackendEvent] = []
        self.threads: set[int] = set()
        self._cond = threading.Condition()

    def __call__(self, event: BackendEvent) -> None:
        with self._cond:
            self.events.append(event)
            self.threads.add(threading.get_ident())
            self._cond.notify_all()

    def of(self, task_id: str) -> list[BackendEvent]:
        with self._cond:
            return [e for e in self.events if e.task_id == task_id]

    def wait_for(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; events so far: {self.events}"
                self._cond.wait(left)

    def end_of(self, task_id: str, timeout: float = 30.0) -> Done | Failed:
        def ended() -> bool:
            return any(isinstance(e, Done | Failed) for e in self.of(task_id))

        self.wait_for(ended, timeout)
        (end,) = [e for e in self.of(task_id) if isinstance(e, Done | Failed)]
        return end


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
