"""The in-memory backend keeps the backend seam's promise: events come from its threads."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Sequence

import sperse
from sperse._backends.memory import MemoryBackend
from sperse._core import BackendEvent, Failed, TaskSpec

WAIT = 60.0  # a deadline, never a delay


class Gate:
    def hold(self, started: int, fd: int) -> bool:
        """Say so on ``started``, then wait until a byte can be read from ``fd`` (pipes of
        this process: the backend runs objects in it)."""
        os.write(started, b"x")
        return bool(select.select([fd], [], [], WAIT)[0])


class Threads:
    """A watcher: which thread each task's failure came from."""

    def __init__(self) -> None:
        self.of: dict[str, int] = {}

    def submitted(self, specs: Sequence[TaskSpec]) -> None:
        pass

    def event(self, event: BackendEvent) -> None:
        if isinstance(event, Failed):
            self.of[event.task_id] = threading.get_ident()


def test_the_calls_a_close_drops_fail_from_a_thread_of_the_backend() -> None:
    # A close of an object with queued calls fails them. It did so on the caller's
    # thread, inside submit: a listener that took a lock the caller held then hung it.
    cluster = sperse.Cluster(MemoryBackend(2))
    threads = Threads()
    cluster.watch(threads)
    read, write = os.pipe()
    started_read, started = os.pipe()
    try:
        with cluster:
            obj = sperse.remote(Gate)()
            first = obj.hold(started, read)  # runs, and holds the object's one thread
            queued = obj.hold(started, read)  # waits behind it
            assert select.select([started_read], [], [], WAIT)[0]
            obj.close().result(WAIT)
            os.write(write, b"x")
            assert first.result(WAIT)
            error = queued.exception(WAIT)
        assert isinstance(error, sperse.ObjectLost), error
        assert threads.of and threading.get_ident() not in threads.of.values()
    finally:
        os.write(write, b"x")
        cluster.close()
        for fd in (read, write, started_read, started):
            os.close(fd)
