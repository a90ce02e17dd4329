"""The shared memory files of a server, on the driver's side: results read, files unlinked.

Unlinking waits for the loop's next turn (``Files.unlink_soon``, ``sweep_soon``), so that the
events queued meanwhile (a task's ``Done``) are not held up by the freeing of a big file's
pages; and the sweeps of the attempts that end together share one pass over the directory.
The unlinking itself is done by a thread: freeing a 100 MB file's pages took 14 ms, which
the loop, and every session on it, would otherwise wait for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import threading
from collections.abc import Iterable

from sperse._core import ErrorInfo
from sperse._serialize import shm
from sperse._server.envelope import (
    PickledBytes,
    ResultValue,
    ShmBuffer,
    unpack_result,
)

__all__ = ["Files", "read_inline", "read_inlines", "unpack"]


class Files:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._to_sweep: set[str] = set()
        self._standbys = False  # sweep the dead processes' standby files (shm.Standby)
        self._to_unlink: list[str] = []
        self._unlinks: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
        self._unlinker: threading.Thread | None = None

    def sweep_soon(self, prefix: str) -> None:
        """Sweep the files whose names start with ``prefix`` (an attempt's), soon; and the
        standby files of processes that died (its worker's, if it died)."""
        if not self._to_sweep and not self._standbys:
            self._loop.call_soon(self._sweep)
        self._to_sweep.add(prefix)
        self._standbys = True

    def sweep_standbys_soon(self) -> None:
        """Sweep the standby files of processes that died (a client's, when its session
        ends), soon."""
        if not self._to_sweep and not self._standbys:
            self._loop.call_soon(self._sweep)
        self._standbys = True

    def _sweep(self) -> None:
        prefixes, self._to_sweep = self._to_sweep, set()
        shm.sweep(*prefixes)
        if self._standbys:
            self._standbys = False
            shm.sweep_dead_standbys()

    def unlink_soon(self, names: Iterable[str]) -> None:
        """Unlink these files once the events queued now are on their way: freeing the pages
        of a big file takes milliseconds, which the reply should not wait for."""
        if not self._to_unlink:
            self._loop.call_soon(self.unlink_pending)
        self._to_unlink.extend(names)

    def unlink_pending(self) -> None:
        names, self._to_unlink = self._to_unlink, []
        if names:
            if self._unlinker is None:
                self._unlinker = threading.Thread(
                    target=self._unlink_all, name="sperse-unlink", daemon=True
                )
                self._unlinker.start()
            self._unlinks.put(names)

    def _unlink_all(self) -> None:
        while (names := self._unlinks.get()) is not None:  # (None: the server stops)
            shm.unlink(names)

    def close(self, timeout: float = 30.0) -> None:
        """Unlink every file waiting, and stop the thread (the server is stopping)."""
        self.unlink_pending()
        if self._unlinker is not None:
            self._unlinks.put(None)
            self._unlinker.join(timeout)
            self._unlinker = None


def unpack(payload: bytes) -> list[ResultValue] | ErrorInfo:
    """A worker's result; one that cannot be read is the runner's failure."""
    try:
        return unpack_result(payload)
    except ValueError as exc:
        return ErrorInfo("internal", "RunnerError", str(exc))


def read_inline(value: PickledBytes) -> PickledBytes:
    """``value`` with its shared memory files read into bytes (and unlinked): for a value
    sent inline, whose files nobody would own."""
    names = list(value.shm_names())
    if not names:
        return value
    buffers = []
    try:
        for b in value.buffers:
            if isinstance(b, ShmBuffer):
                fd = shm.open_read(b.name, b.size)
                try:
                    buffers.append(os.pread(fd, b.size, 0))
                finally:
                    os.close(fd)
            else:
                buffers.append(b)
    finally:
        shm.unlink(names)
    return PickledBytes(value.data, tuple(buffers))


def read_inlines(values: list[ResultValue], limit: int) -> list[ResultValue] | ErrorInfo:
    """The values below ``limit`` (sent inline) read into bytes. A file that cannot be read
    fails the task; the files of the other values go then (nobody would own them)."""
    out: list[ResultValue] = []
    for i, v in enumerate(values):
        if v.value.size >= limit:
            out.append(v)
            continue
        try:
            read = read_inline(v.value)
            out.append(v if read is v.value else dataclasses.replace(v, value=read))
        except OSError as exc:
            shm.unlink(n for w in [*out, *values[i + 1 :]] for n in w.value.shm_names())
            return ErrorInfo("internal", "SharedMemoryError", str(exc))
    return out
