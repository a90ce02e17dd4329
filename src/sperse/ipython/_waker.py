"""Waking a Jupyter kernel's loop when the cluster has news, so arrivals show while idle.

The cluster's waker is called on the cluster's I/O thread: it only schedules one drain on the
kernel's asyncio loop (``call_soon_threadsafe``), which runs on the shell's thread
(DESIGN.md §2 rule 6). In terminal IPython there is no loop to wake; nothing is hooked.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable

from IPython.core.interactiveshell import InteractiveShell

from sperse._cluster.cluster import Cluster

__all__ = ["KernelWaker"]


class KernelWaker:
    """Has a workspace's cluster call ``drain`` on the kernel's loop (a Jupyter kernel only)."""

    def __init__(self, shell: InteractiveShell, drain: Callable[[], None], *, kernel: bool) -> None:
        self._shell = shell
        self._drain = drain
        self._kernel = kernel
        self._loop = _running_loop() if kernel else None
        self._waker: tuple[Cluster, int] | None = None
        self._lock = threading.Lock()
        self._scheduled = False

    def hook(self, cluster: Cluster) -> None:
        """Wake the loop on news of ``cluster`` (and no longer of a cluster hooked before)."""
        if self._kernel and self._loop is None:
            self._loop = _running_loop()
        if self._loop is None:
            return
        if self._waker is not None and self._waker[0] is cluster:
            return
        self.unhook()
        self._waker = (cluster, cluster.add_waker(self._wake))

    def unhook(self) -> None:
        if self._waker is not None:
            cluster, key = self._waker
            cluster.remove_waker(key)
            self._waker = None

    def _wake(self) -> None:
        """On the cluster's I/O thread: schedule one drain on the kernel's loop."""
        loop = self._loop
        assert loop is not None
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the kernel is stopping
            # A context of its own: output goes to the last request, not the I/O thread's.
            loop.call_soon_threadsafe(self._drain_from_loop, context=contextvars.Context())

    def _drain_from_loop(self) -> None:
        with self._lock:
            self._scheduled = False
        try:
            self._drain()
        except Exception:  # a `then` callback that failed: show it, keep the kernel going
            self._shell.showtraceback()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running this thread: in a kernel, the one its cells run in."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # loaded at kernel start-up (an `extensions` setting), before the loop
        return None
