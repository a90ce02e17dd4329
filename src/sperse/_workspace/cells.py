"""The cells of a workspace as its front ends see them: ``Cell`` handles and ``CellEvent``s,
and ``Record``, what the workspace keeps of each cell beyond its place in the graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import CodeType
from typing import TYPE_CHECKING, Any, Literal

from sperse._cluster.pending import Pending
from sperse._core.values import value
from sperse._graph.graph import CellId
from sperse._workspace.statements import RemoteBody
from sperse.errors import SperseError

if TYPE_CHECKING:
    from sperse._workspace.core import WorkspaceCore

__all__ = ["Cell", "CellEvent", "Record"]


@dataclass(slots=True)
class Record:
    """What the workspace knows of one cell beyond its place in the graph."""

    id: CellId
    label: str
    filename: str
    defs: frozenset[str]
    is_expression: bool
    code: CodeType | None  # local cells
    remote: RemoteBody | None  # remote cells
    outputs: dict[str, Any] = field(default_factory=dict)
    value: Any = None  # an expression cell's value
    error: BaseException | None = None
    runs: int = 0  # times its code started (locally or remotely)
    task_id: str | None = None
    pendings: dict[str, Pending[Any]] = field(default_factory=dict)
    digest: bytes | None = None  # inputs of the last successful remote run
    where: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    entered: bool = False  # the run() that entered it has finished with it


@value
class CellEvent:
    """Something happened to a cell; front ends subscribe to show it.

    ``kind``: "done" (``value`` is set for expression cells), "failed"
    (``error``), "blocked" (``error`` is the UpstreamError), "held" (a statement that
    changes an object it reads was not run again when its inputs changed: DESIGN.md §2
    rule 9; ``run_stale`` applies it), "swapped" (the cell rebound a name that something
    running took in place: a service's operator; ``value`` says what was done).
    """

    cell: Cell
    kind: Literal["done", "failed", "blocked", "held", "swapped"]
    value: Any = None
    error: BaseException | None = None


class Cell:
    """A read-only handle on one cell of a workspace."""

    __slots__ = ("_ws", "id")

    def __init__(self, ws: WorkspaceCore, cell_id: CellId) -> None:
        self._ws = ws
        self.id = cell_id

    @property
    def _record(self) -> Record:
        record = self._ws._records.get(self.id)
        if record is None:
            raise SperseError(f"cell [{self.id}] is gone: all its names were redefined")
        return record

    @property
    def label(self) -> str:
        return self._record.label

    @property
    def defs(self) -> frozenset[str]:
        return self._record.defs

    @property
    def refs(self) -> frozenset[str]:
        return self._ws._graph.view(self.id).refs

    @property
    def is_remote(self) -> bool:
        return self._record.remote is not None

    @property
    def status(self) -> str:
        """pending, running, done, failed, blocked, stale (or dropped)."""
        if self.id not in self._ws._graph:
            return "dropped"
        return self._ws._graph.status(self.id).value

    @property
    def runs(self) -> int:
        """How many times the cell's code has started running."""
        return self._record.runs

    @property
    def where(self) -> str:
        """The server a remote cell last ran on ("" for a local cell)."""
        return self._record.where

    @property
    def error(self) -> BaseException | None:
        return self._record.error

    @property
    def elapsed(self) -> float | None:
        """Seconds its last run took (so far, while it runs); None before it starts."""
        record = self._record
        if record.started_at is None:
            return None
        end = record.finished_at if record.finished_at is not None else time.monotonic()
        return end - record.started_at

    @property
    def value(self) -> Any:
        """An expression cell's value; raises its error, or NotReadyError."""
        self._ws._check_ready(self.id, self._record.label)
        return self._record.value

    def __repr__(self) -> str:
        return f"<Cell [{self.id}] {self.status}: {self._record.label}>"
