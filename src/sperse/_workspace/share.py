"""A workspace's graph as the dashboard draws it: a JSON-ready snapshot, published whole.

The snapshot holds what a picture needs and nothing of the values: each cell's id, label,
status (pending, running, done, failed, blocked, stale), where it last ran, the task it
runs as (the dashboard's task feed tells which server runs it, as soon as it starts), the
names it defines, how many runs, its error as one line; each edge from the cell that
defines a name to a cell that reads it, with the name. ``version`` grows with each
snapshot, so a page refetches only what changed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from sperse._graph.graph import CellId
from sperse._graph.view import GraphView
from sperse._workspace.cells import Record

__all__ = ["graph_snapshot"]

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
        cells.append(
            {
                "id": int(cell_id),
                "label": record.label,
                "status": graph.status(cell_id).value,
                "remote": record.remote is not None,
                "where": record.where,
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
