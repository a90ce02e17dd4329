"""A workspace's graph as the dashboard draws it: a JSON-ready snapshot, published whole.

The snapshot holds what a picture needs and nothing of the values: each cell's id, label,
status (pending, running, done, failed, blocked, stale), where it last ran, the task it
runs as (the dashboard's task feed tells which server runs it, as soon as it starts), the
names it defines, how many runs, its error as one line, and ``on``: the server a running
cell runs on, once it started there; each edge from the cell that defines a name to a cell
that reads it, with the name. ``version`` grows with each snapshot, so a page refetches
only what changed.

A cell starts on a server on the backend's thread, where the graph must not be read: then
``SharedGraph`` publishes the last snapshot again with that cell's ``on`` set (a copy: a
published snapshot is never changed), under the lock its snapshots are published under, so
it never takes the place of a newer snapshot. This is how a coordinator's page, which
cannot match the client's task ids with its servers' (``SERVER/SESSION/TASK``), shows
where a cell runs.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from typing import Any

from sperse._graph.graph import CellId, CellStatus
from sperse._graph.view import GraphView
from sperse._workspace.cells import Record

__all__ = ["SharedGraph", "graph_snapshot", "on_server"]

_versions = itertools.count(1)


def _error_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def graph_snapshot(graph: GraphView, records: Mapping[CellId, Record], name: str) -> dict[str, Any]:
    cells = []
    edges = []
    for cell_id in graph.cells():
        record = records.get(cell_id)
        if record is None:
            continue
        status = graph.status(cell_id)
        started = status is CellStatus.RUNNING and record.started_at is not None
        cells.append(
            {
                "id": int(cell_id),
                "label": record.label,
                "status": status.value,
                "remote": record.remote is not None,
                "where": record.where,
                "on": record.where if started else "",
                "task": record.task_id or "",
                "defs": sorted(record.defs),
                "runs": record.runs,
                "error": _error_line(record.error),
            }
        )
        for ref, parent in sorted(graph.parents(cell_id).items()):
            if parent is not None:
                edges.append({"source": int(parent), "target": int(cell_id), "name": ref})
    return {
        "name": name,
        "version": next(_versions),
        "mode": graph.mode.value,
        "cells": cells,
        "edges": edges,
    }


def on_server(snapshot: Mapping[str, Any], task_id: str, server: str) -> dict[str, Any] | None:
    """A copy of ``snapshot`` (with a new version) where the cell running as ``task_id`` is
    ``on`` ``server``; None if no cell runs as it, or one shows that already."""
    cells: list[dict[str, Any]] = snapshot["cells"]
    for i, cell in enumerate(cells):
        if cell["task"] == task_id and cell["status"] == "running":
            if cell["on"] == server:
                return None
            changed = list(cells)
            changed[i] = {**cell, "on": server, "where": server}
            return {**snapshot, "cells": changed, "version": next(_versions)}
    return None


Share = Callable[[str, dict[str, Any]], None]


class SharedGraph:
    """A workspace's last published snapshot, and the lock it is published under."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None

    def publish(self, share: Share, graph: GraphView, records: Mapping[CellId, Record]) -> None:
        """A new snapshot (the user's thread: the graph is read here)."""
        with self._lock:
            self._last = graph_snapshot(graph, records, self.name)
            share(self.name, self._last)

    def started(self, share: Share, task_id: str, server: str) -> None:
        """The task ``task_id`` started on ``server`` (any thread: only the last snapshot is
        read). A cell that is not in it yet is in the next one, with its ``on``."""
        with self._lock:
            if self._last is None:
                return
            changed = on_server(self._last, task_id, server)
            if changed is not None:
                self._last = changed
                share(self.name, changed)
