"""The reactive graph: a pure state machine over cells and names.

The graph knows nothing of Python syntax, values, threads or networks. The
workspace feeds it events (a cell was entered, a run finished or failed, the
user asked for stale cells) and carries out the actions it returns (run this
cell, cancel that run, forget this cell).

Invariants (DESIGN.md §2):

- A name means its newest defining cell (``definer``). A cell reads each name
  it does not itself define from the *current* definer ("follower" edges, which
  move when a newer definition is entered); a name it both reads and defines
  (``x += 1``) it reads from the definer that stood when it was entered
  ("fixed" edges, which never move).
- When a cell is about to produce new values, every cell downstream of it is
  invalidated first (``PENDING``, or ``STALE`` in lazy mode) and running ones
  are cancelled; a cell is only run once all its parents are ``DONE``. So a
  cell runs once per change of its inputs and never sees a mix of old and new
  values, whatever order results arrive in.
- Every run has a fresh ``RunId``; an outcome reported for any other run id is
  ignored, so a result computed from stale inputs is never applied.
- A cell that loses its last name to newer definitions and has no dependents
  is dropped, and so, in turn, are the cells only it kept alive.
- Nothing recurses: every traversal uses an explicit work list, so chains of
  any length and fan-outs of any width work.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NewType

from sperse.errors import CycleError

__all__ = [
    "Action",
    "Blocked",
    "Cancel",
    "CellId",
    "CellStatus",
    "Drop",
    "Graph",
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


Action = Run | Cancel | Drop | Blocked


class _Cell:
    __slots__ = (
        "defs",
        "fixed_children",
        "id",
        "label",
        "owned",
        "parents",
        "refs",
        "run_id",
        "scan",
        "status",
    )

    def __init__(self, cell_id: CellId, defs: frozenset[str], refs: frozenset[str], label: str):
        self.id = cell_id
        self.defs = defs
        self.refs = refs
        self.label = label
        self.owned: set[str] = set(defs)
        self.parents: dict[str, CellId | None] = {}
        self.fixed_children: set[CellId] = set()
        self.status = CellStatus.PENDING
        self.run_id = RunId(0)
        # How many of the leading parents (in ``parents`` order) are known DONE
        # while this cell is PENDING: makes a wide fan-in linear, not quadratic.
        self.scan = 0


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


class Graph:
    """Cells, names and their states; ``handle``-style methods return actions."""

    def __init__(self, mode: Mode = Mode.AUTO) -> None:
        self._cells: dict[CellId, _Cell] = {}
        self._definer: dict[str, CellId] = {}
        # Cells that read a name from whoever defines it now (including nobody).
        self._followers: dict[str, set[CellId]] = {}
        self._next_cell = 1
        self._next_run = 1
        self.mode = mode

    # ---- queries -------------------------------------------------------------

    def __contains__(self, cell: CellId) -> bool:
        return cell in self._cells

    def __len__(self) -> int:
        return len(self._cells)

    def cells(self) -> Iterator[CellId]:
        return iter(self._cells)

    def definer(self, name: str) -> CellId | None:
        return self._definer.get(name)

    def names(self) -> Iterator[str]:
        return iter(self._definer)

    def status(self, cell: CellId) -> CellStatus:
        return self._cells[cell].status

    def run_id(self, cell: CellId) -> RunId:
        return self._cells[cell].run_id

    def view(self, cell: CellId) -> CellView:
        c = self._cells[cell]
        return CellView(
            c.id, c.label, c.defs, c.refs, frozenset(c.owned), c.status, dict(c.parents)
        )

    def parents(self, cell: CellId) -> Mapping[str, CellId | None]:
        return self._cells[cell].parents

    def children(self, cell: CellId) -> set[CellId]:
        c = self._cells[cell]
        out = set(c.fixed_children)
        for name in c.owned:
            out.update(self._followers.get(name, ()))
        out.discard(cell)
        return out

    def failed_ancestor(self, cell: CellId) -> CellId | None:
        """The nearest FAILED cell upstream of a BLOCKED (or FAILED) ``cell``."""
        seen = {cell}
        todo = deque([cell])
        while todo:
            c = self._cells[todo.popleft()]
            if c.status is CellStatus.FAILED:
                return c.id
            for parent in c.parents.values():
                if parent is not None and parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return None

    def upstream(self, cell: CellId) -> list[CellId]:
        """Every ancestor of ``cell``, nearest first."""
        return self._walk(cell, up=True)

    def downstream(self, cell: CellId) -> list[CellId]:
        """Every descendant of ``cell``, nearest first."""
        return self._walk(cell, up=False)

    # ---- events --------------------------------------------------------------

    def add_cell(
        self, defs: Iterable[str], refs: Iterable[str], *, label: str = ""
    ) -> tuple[CellId, list[Action]]:
        """Enter a new cell; it becomes the definer of ``defs`` and is scheduled.

        Raises ``CycleError`` (leaving the graph unchanged) when the new
        definitions would make a cell depend on itself.
        """
        defs = frozenset(defs)
        refs = frozenset(refs)
        parents: dict[str, CellId | None] = {name: self._definer.get(name) for name in refs}
        self._check_cycle(defs, parents, label)

        cell_id = CellId(self._next_cell)
        self._next_cell += 1
        cell = _Cell(cell_id, defs, refs, label)
        cell.parents = parents
        self._cells[cell_id] = cell
        for name, parent in parents.items():
            if name in defs:
                if parent is not None:
                    self._cells[parent].fixed_children.add(cell_id)
            else:
                self._followers.setdefault(name, set()).add(cell_id)

        losers: list[CellId] = []
        for name in defs:
            old = self._definer.get(name)
            if old is not None:
                self._cells[old].owned.discard(name)
                losers.append(old)
            self._definer[name] = cell_id
            for follower in self._followers.get(name, ()):
                self._cells[follower].parents[name] = cell_id

        actions: list[Action] = []
        self._drop_orphans(losers, actions)
        self._invalidate([cell_id], actions)
        revived = self._revive_stale_ancestors(cell_id)
        self._schedule([*revived, cell_id], actions)
        return cell_id, actions

    def finished(self, cell: CellId, run_id: RunId) -> list[Action]:
        """The run ``run_id`` of ``cell`` produced values."""
        c = self._cells.get(cell)
        if c is None or c.run_id != run_id or c.status is not CellStatus.RUNNING:
            return []
        c.status = CellStatus.DONE
        actions: list[Action] = []
        self._schedule(self.children(cell), actions)
        return actions

    def failed(self, cell: CellId, run_id: RunId) -> list[Action]:
        """The run ``run_id`` of ``cell`` raised: its dependents are blocked."""
        c = self._cells.get(cell)
        if c is None or c.run_id != run_id or c.status is not CellStatus.RUNNING:
            return []
        c.status = CellStatus.FAILED
        actions: list[Action] = []
        for child in self.downstream(cell):
            d = self._cells[child]
            if d.status is CellStatus.PENDING:
                d.status = CellStatus.BLOCKED
                actions.append(Blocked(child, cell))
        return actions

    def rerun(self, cell: CellId) -> list[Action]:
        """Run ``cell`` again with its current inputs (and everything downstream)."""
        actions: list[Action] = []
        self._invalidate([cell], actions)
        self._schedule([cell], actions)
        return actions

    def run_stale(self) -> list[Action]:
        """Lazy mode: run every stale cell (in dependency order)."""
        stale = [c.id for c in self._cells.values() if c.status is CellStatus.STALE]
        for cell in stale:
            self._cells[cell].status = CellStatus.PENDING
        actions: list[Action] = []
        self._schedule(stale, actions)
        return actions

    def set_mode(self, mode: Mode) -> list[Action]:
        """Switch modes; going back to auto runs whatever went stale."""
        self.mode = mode
        return self.run_stale() if mode is Mode.AUTO else []

    # ---- internals -----------------------------------------------------------

    def _walk(self, start: CellId, *, up: bool) -> list[CellId]:
        seen = {start}
        order: list[CellId] = []
        todo = deque([start])
        while todo:
            cell = todo.popleft()
            nxt: Iterable[CellId | None] = (
                self._cells[cell].parents.values() if up else self.children(cell)
            )
            for other in nxt:
                if other is not None and other not in seen:
                    seen.add(other)
                    order.append(other)
                    todo.append(other)
        return order

    def _check_cycle(
        self, defs: frozenset[str], parents: Mapping[str, CellId | None], label: str
    ) -> None:
        # Cells that will read the new definitions: a cycle exists iff one of
        # them is also upstream of the new cell.
        readers: dict[CellId, str] = {}
        for name in defs:
            for follower in self._followers.get(name, ()):
                readers.setdefault(follower, name)
        if not readers:
            return
        came_from: dict[CellId, CellId | None] = {}
        todo: deque[CellId] = deque()
        for parent in parents.values():
            if parent is not None and parent not in came_from:
                came_from[parent] = None
                todo.append(parent)
        while todo:
            cell = todo.popleft()
            if cell in readers:
                path = [cell]
                prev = came_from[cell]
                while prev is not None:
                    path.append(prev)
                    prev = came_from[prev]
                chain = " -> ".join(f"[{c}] {self._cells[c].label}" for c in path)
                raise CycleError(
                    f"`{label}` would create a cycle: it reads what {chain} computes, "
                    f"and [{cell}] reads `{readers[cell]}`, which this statement defines. "
                    f"Rename one of the names, or merge the statements into one."
                )
            for parent in self._cells[cell].parents.values():
                if parent is not None and parent not in came_from:
                    came_from[parent] = cell
                    todo.append(parent)

    def _drop_orphans(self, candidates: list[CellId], actions: list[Action]) -> None:
        todo = deque(candidates)
        while todo:
            cell_id = todo.popleft()
            c = self._cells.get(cell_id)
            if c is None or c.owned or not c.defs or self.children(cell_id):
                continue
            del self._cells[cell_id]
            if c.status is CellStatus.RUNNING:
                actions.append(Cancel(cell_id, c.run_id))
            actions.append(Drop(cell_id))
            for name, parent in c.parents.items():
                if name in c.defs:
                    if parent is not None and parent in self._cells:
                        self._cells[parent].fixed_children.discard(cell_id)
                        todo.append(parent)
                else:
                    followers = self._followers.get(name)
                    if followers is not None:
                        followers.discard(cell_id)
                        if not followers:
                            del self._followers[name]

    def _invalidate(self, roots: list[CellId], actions: list[Action]) -> None:
        """Mark roots PENDING and everything downstream PENDING (or STALE)."""
        downstream_status = CellStatus.STALE if self.mode is Mode.LAZY else CellStatus.PENDING
        seen = set(roots)
        todo = deque((cell, CellStatus.PENDING) for cell in roots)
        while todo:
            cell_id, status = todo.popleft()
            c = self._cells[cell_id]
            if c.status is CellStatus.RUNNING:
                actions.append(Cancel(cell_id, c.run_id))
            c.status = status
            c.scan = 0
            for child in self.children(cell_id):
                if child not in seen:
                    seen.add(child)
                    todo.append((child, downstream_status))

    def _revive_stale_ancestors(self, cell: CellId) -> list[CellId]:
        """Lazy mode: a newly entered cell first brings its stale inputs up to date.

        Walks up through STALE cells only: a cell that is not stale has no
        stale ancestors, because staleness always spreads downstream whole.
        """
        revived: list[CellId] = []
        todo = deque([cell])
        while todo:
            for parent in self._cells[todo.popleft()].parents.values():
                if parent is not None and self._cells[parent].status is CellStatus.STALE:
                    self._cells[parent].status = CellStatus.PENDING
                    revived.append(parent)
                    todo.append(parent)
        revived.reverse()  # farthest ancestors first; _schedule only runs ready ones anyway
        return revived

    def _schedule(self, candidates: Iterable[CellId], actions: list[Action]) -> None:
        """Issue Run for each PENDING candidate whose parents are all DONE."""
        for cell_id in candidates:
            c = self._cells.get(cell_id)
            if c is None or c.status is not CellStatus.PENDING:
                continue
            blocked_by: CellId | None = None
            ready = True
            for parent in itertools.islice(c.parents.values(), c.scan, None):
                if parent is not None:
                    status = self._cells[parent].status
                    if status is not CellStatus.DONE:
                        ready = False
                        if status is CellStatus.FAILED or status is CellStatus.BLOCKED:
                            blocked_by = parent
                        break
                c.scan += 1
            if blocked_by is not None:
                upstream = self.failed_ancestor(blocked_by) or blocked_by
                for cell in [cell_id, *self.downstream(cell_id)]:
                    d = self._cells[cell]
                    if d.status is CellStatus.PENDING:
                        d.status = CellStatus.BLOCKED
                        actions.append(Blocked(cell, upstream))
                continue
            if not ready:
                continue
            c.status = CellStatus.RUNNING
            c.run_id = RunId(self._next_run)
            self._next_run += 1
            actions.append(Run(cell_id, c.run_id, dict(c.parents)))
