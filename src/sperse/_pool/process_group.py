"""The process group of a worker of :mod:`sperse._pool.worker` (see its docstring): what
ends with the worker, and what a cancelled task leaves behind. Standard library only, as
the worker: every spawn imports it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time

__all__ = ["boot_ticks", "exit_when_parent_dies", "kill_since"]


def exit_when_parent_dies() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()
    if os.getpgrp() == os.getpid():  # the processes our tasks started go with us
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


_TICKS = os.sysconf("SC_CLK_TCK")  # (asked once: this runs for every task)


def boot_ticks() -> int:
    """Now, in the unit of a process's start time in ``/proc/PID/stat``."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * _TICKS)


def kill_since(started: int) -> None:
    """A task was cancelled: kill the processes of this worker's group that started since
    ``started`` (``boot_ticks``), what the task started and left running, found in
    ``/proc``. Those of earlier tasks (a helper kept in ``worker_cache``) are left alone."""
    me = os.getpid()
    if os.getpgrp() != me:
        return
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as file:
                    stat = file.read()
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()  # state, ppid, pgrp, ...
            if len(fields) > 19 and int(fields[2]) == me and int(fields[19]) >= started:
                with contextlib.suppress(OSError):
                    os.kill(int(name), signal.SIGKILL)
