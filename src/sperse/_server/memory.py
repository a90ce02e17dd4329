"""How much memory a process holds: its resident set size, read from ``/proc`` (Linux).

Elsewhere, or for a process that has gone, the answer is 0 ("unknown" on the dashboard):
the figure is for people looking at a cluster, never for a decision, so no dependency
(psutil) is worth it. One ``/proc/PID/statm`` read per process per heartbeat.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["rss", "rss_total"]

try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, OSError, ValueError):  # not a POSIX system
    _PAGE = 4096


def rss(pid: int) -> int:
    """Bytes resident of process ``pid`` (0: unknown)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            fields = file.read().split()
        return int(fields[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def rss_total(pids: Iterable[int]) -> int:
    return sum(rss(pid) for pid in pids if pid)
