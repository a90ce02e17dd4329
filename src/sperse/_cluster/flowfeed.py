"""Where a client's dashboard finds this process's flow runs: ``sperse._flow`` (a layer
above this one) registers its ``runs()`` and its snapshot function here when it is imported;
before that there is no run to show. ``RunKeys`` numbers the runs and says which to publish
(a client's own dashboard, and its coordinator's through ``share_workspace=True``)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["RunKeys", "register", "source"]

# (runs: this process's runs, oldest first; snapshot(run, key): a run as JSON), or None.
source: tuple[Callable[[], list[Any]], Callable[[Any, str], dict[str, Any]]] | None = None


def register(runs: Callable[[], list[Any]], snapshot: Callable[[Any, str], dict[str, Any]]) -> None:
    global source
    source = (runs, snapshot)


class RunKeys:
    """This process's flow runs, keyed ``1``, ``2``, ... in the order first seen."""

    def __init__(self) -> None:
        self._keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._ended: set[str] = set()  # runs whose final snapshot was taken
        self._lock = threading.Lock()
        self._count = 0

    def snapshots(self, every: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """(key, snapshot) of each run still running, and of each that ended since the last
        call (its final counts); ``every``: of each run."""
        feed = source
        if feed is None:  # no flow was ever built in this process
            return []
        runs, snapshot = feed
        found = []
        with self._lock:
            for run in runs():
                key = self._keys.get(run)
                if key is None:
                    self._count += 1
                    key = self._keys[run] = str(self._count)
                if key in self._ended and not every:
                    continue
                ended = run.done()  # before the snapshot: its counts are final then
                found.append((key, snapshot(run, key)))
                if ended:
                    self._ended.add(key)
        return found
