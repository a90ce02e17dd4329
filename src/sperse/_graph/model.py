"""The values the graph deals in: ids, states, modes, actions and snapshots of cells.

Frozen and free of behaviour, so front ends and tests may hold them without reaching
into the graph.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NewType

__all__ = [
    "Action",
    "Blocked",
    "Cancel",
    "CellId",
    "CellStatus",
    "CellView",
    "Drop",
    "Held",
    "Mode",
    "Run",
    "RunId",
]

CellId = NewType("CellId", int)
RunId = NewType("RunId", int)


class CellStatus(enum.Enum):
    PENDING = "pending"  # must run; waits until every parent is DONE
    RUNNING = "running"  # a Run action was issued; waiting for its outcome
    DONE = "done"  # ran; its values are current
    FAILED = "failed"  # its last run raised
    BLOCKED = "blocked"  # an upstream cell failed
    STALE = "stale"  # lazy mode: inputs changed, runs on request


class Mode(enum.Enum):
    AUTO = "auto"
    LAZY = "lazy"
    NOTEBOOK = "notebook"  # as AUTO, with Python's binding: see the module docstring


@dataclass(frozen=True, slots=True)
class Run:
    """Run ``cell`` now; report the outcome with ``run_id``.

    ``inputs`` maps every ref of the cell to the cell it reads it from (None:
    nobody defines it, so it is a builtin or a NameError waiting to happen).
    """

    cell: CellId
    run_id: RunId
    inputs: Mapping[str, CellId | None]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the run ``run_id`` of ``cell``: its inputs changed or it was dropped."""

    cell: CellId
    run_id: RunId


@dataclass(frozen=True, slots=True)
class Drop:
    """``cell`` left the graph: forget its values."""

    cell: CellId


@dataclass(frozen=True, slots=True)
class Blocked:
    """``cell`` will not run because ``upstream`` (a failed cell) is among its ancestors."""

    cell: CellId
    upstream: CellId


@dataclass(frozen=True, slots=True)
class Held:
    """The effect cell ``cell`` was not run again although its inputs changed (rule 9):
    it is STALE until ``run_stale`` applies it."""

    cell: CellId


Action = Run | Cancel | Drop | Blocked | Held


@dataclass(frozen=True, slots=True)
class CellView:
    """A snapshot of one cell, for front ends and tests."""

    id: CellId
    label: str
    defs: frozenset[str]
    refs: frozenset[str]
    owned: frozenset[str]
    status: CellStatus
    parents: Mapping[str, CellId | None]
