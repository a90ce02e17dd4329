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
- Notebook mode (rule 10) binds like Python, not like a spreadsheet: a new
  definition of a name does not move the cells that read it already; they keep
  reading the definition they were entered with (their follower edges become
  fixed). Only the definitions it ``replaces`` (the statements of the same
  notebook cell, executed before) hand their readers over to it. ``retire``
  removes replaced statements that nothing needs any more.
- Re-runs repeat derivations, not effects (rule 9): an *effect* cell (one whose
  statement changes an object it reads: ``x[0] = 99``, ``df.col = v``) runs when
  it is entered or asked for, but when its inputs change it is *held*: ``STALE``
  with everything downstream of it, reported with ``Held``, and run only by
  ``run_stale`` (or ``rerun``), never by switching modes.
- Nothing recurses: every traversal uses an explicit work list, so chains of
  any length and fan-outs of any width work.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Container, Iterable, Iterator, Mapping
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


class _Cell:
    __slots__ = (
        "defs",
        "effect",
        "fixed_children",
        "held",
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
        self.effect = False  # changes an object it reads (rule 9)
        self.held = False  # an effect cell not run again after its inputs changed
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
        self,
        defs: Iterable[str],
        refs: Iterable[str],
        *,
        label: str = "",
        effect: bool = False,
        replaces: Container[CellId] = (),
    ) -> tuple[CellId, list[Action]]:
        """Enter a new cell; it becomes the definer of ``defs`` and is scheduled.
        ``effect``: its statement changes an object it reads (rule 9: held, not re-run).
        ``replaces``: in notebook mode, the cells this one replaces (the earlier statements of
        its notebook cell): their readers read this one's definitions of the same names.

        Raises ``CycleError`` (leaving the graph unchanged) when the new
        definitions would make a cell depend on itself.
        """
        defs = frozenset(defs)
        refs = frozenset(refs)
        parents: dict[str, CellId | None] = {name: self._definer.get(name) for name in refs}
        movers = self._movers(defs, replaces)
        self._check_cycle(movers, parents, label)

        cell_id = CellId(self._next_cell)
        self._next_cell += 1
        cell = _Cell(cell_id, defs, refs, label)
        cell.effect = effect
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
            # A notebook cell executed again, whose name a later notebook cell binds now:
            # that binding stays the current one (it comes later in the notebook).
            keeps = self.mode is Mode.NOTEBOOK and bool(replaces) and old is not None
            keeps = keeps and old not in replaces
            for reader in movers.get(name, ()):
                self._move(reader, name, cell_id, fixed=keeps)
            if keeps:
                cell.owned.discard(name)
                continue
            if old is not None:
                self._cells[old].owned.discard(name)
                losers.append(old)
            self._definer[name] = cell_id
            followers = self._followers.setdefault(name, set())
            followers.discard(cell_id)
            if self.mode is Mode.NOTEBOOK:
                moving = movers.get(name, ())
                for follower in list(followers):  # the rest keep the binding they read
                    if follower in moving:
                        continue
                    followers.discard(follower)
                    if old is not None:
                        self._cells[old].fixed_children.add(follower)
            for follower in followers:
                self._cells[follower].parents[name] = cell_id
            if not followers:
                del self._followers[name]

        actions: list[Action] = []
        self._drop_orphans(losers, actions)
        self._invalidate([cell_id], actions)
        revived = self._revive_stale_ancestors(cell_id)
        self._schedule([*revived, cell_id], actions)
        return cell_id, actions

    def retire(self, cells: Iterable[CellId]) -> list[Action]:
        """Notebook mode: remove the replaced ``cells`` that define nothing any more and that
        nothing reads (an old ``print(x)``, an old ``x[0] = 1``); the others stay, as Python
        keeps the values of names a cell no longer assigns."""
        actions: list[Action] = []
        parents: list[CellId] = []
        for cell_id in cells:
            c = self._cells.get(cell_id)
            if c is None or c.owned or self.children(cell_id):
                continue
            parents.extend(self._remove(cell_id, actions))
        self._drop_orphans(parents, actions)
        return actions

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

    def run_stale(self, *, held: bool = True) -> list[Action]:
        """Run every stale cell (in dependency order): lazy mode's, and the effect cells
        held by rule 9 with what is downstream of them (unless ``held`` is False)."""
        kept: set[CellId] = set()
        if not held:
            for cell in self.held():
                kept.add(cell)
                kept.update(self.downstream(cell))
        stale = [
            c.id for c in self._cells.values() if c.status is CellStatus.STALE and c.id not in kept
        ]
        for cell in stale:
            self._cells[cell].status = CellStatus.PENDING
            self._cells[cell].held = False
        actions: list[Action] = []
        self._schedule(stale, actions)
        return actions

    def is_held(self, cell: CellId) -> bool:
        """Whether ``cell`` is an effect cell held by rule 9."""
        return self._cells[cell].held

    def held(self) -> list[CellId]:
        """The effect cells held by rule 9, in the order they were entered."""
        return [c.id for c in self._cells.values() if c.held]

    def set_mode(self, mode: Mode) -> list[Action]:
        """Switch modes; going back to auto runs whatever went stale in lazy mode (effect
        cells held by rule 9 stay held: only ``run_stale`` applies them)."""
        self.mode = mode
        return self.run_stale(held=False) if mode is Mode.AUTO else []

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

    def _movers(self, defs: frozenset[str], replaces: Container[CellId]) -> dict[str, set[CellId]]:
        """The cells that will read each of ``defs`` from a new cell: those that read it from
        its current definer (all of them but in notebook mode, where only if that definer is
        replaced), and, in notebook mode, those that read it from a replaced cell."""
        movers: dict[str, set[CellId]] = {}
        notebook = self.mode is Mode.NOTEBOOK
        if not notebook:  # the common case: whoever reads a name follows its newest definition
            for name in defs:
                followers = self._followers.get(name)
                if followers:
                    movers[name] = set(followers)
            return movers
        for name in defs:
            found: set[CellId] = set()
            definer = self._definer.get(name)
            if not notebook or (definer is not None and definer in replaces):
                found.update(self._followers.get(name, ()))
            if notebook and replaces:
                for cell in self._cells.values():
                    parent = cell.parents.get(name)
                    if parent is not None and parent != definer and parent in replaces:
                        found.add(cell.id)
            if found:
                movers[name] = found
        return movers

    def _move(self, reader: CellId, name: str, new: CellId, *, fixed: bool = False) -> None:
        """``reader`` reads ``name`` from ``new`` from now on: a fixed edge if it also defines
        the name or ``fixed`` (``new`` will not be the name's definer), else a follower."""
        r = self._cells[reader]
        old = r.parents.get(name)
        r.parents[name] = new
        if old is not None and old in self._cells and old not in r.parents.values():
            self._cells[old].fixed_children.discard(reader)
        followers = self._followers.get(name)
        if fixed or name in r.defs:
            self._cells[new].fixed_children.add(reader)
            if followers is not None:
                followers.discard(reader)
        else:
            self._followers.setdefault(name, set()).add(reader)

    def _check_cycle(
        self, movers: Mapping[str, set[CellId]], parents: Mapping[str, CellId | None], label: str
    ) -> None:
        # Cells that will read the new definitions: a cycle exists iff one of
        # them is also upstream of the new cell.
        readers: dict[CellId, str] = {}
        for name, cells in movers.items():
            for reader in cells:
                readers.setdefault(reader, name)
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
            todo.extend(self._remove(cell_id, actions))

    def _remove(self, cell_id: CellId, actions: list[Action]) -> list[CellId]:
        """Take ``cell_id`` out of the graph; returns the parents it held by a fixed edge
        (they may be orphans now)."""
        c = self._cells.pop(cell_id)
        if c.status is CellStatus.RUNNING:
            actions.append(Cancel(cell_id, c.run_id))
        actions.append(Drop(cell_id))
        parents: list[CellId] = []
        for name, parent in c.parents.items():
            if parent is not None and parent in self._cells:
                fixed = self._cells[parent].fixed_children
                if cell_id in fixed:
                    fixed.discard(cell_id)
                    parents.append(parent)
            followers = self._followers.get(name)
            if followers is not None:
                followers.discard(cell_id)
                if not followers:
                    del self._followers[name]
        return parents

    def _invalidate(self, roots: list[CellId], actions: list[Action]) -> None:
        """Mark roots PENDING and everything downstream PENDING (or STALE); an effect cell
        downstream is held (STALE, with what is downstream of it)."""
        downstream_status = CellStatus.STALE if self.mode is Mode.LAZY else CellStatus.PENDING
        seen = set(roots)
        todo = deque((cell, CellStatus.PENDING) for cell in roots)
        while todo:
            cell_id, status = todo.popleft()
            c = self._cells[cell_id]
            if c.status is CellStatus.RUNNING:
                actions.append(Cancel(cell_id, c.run_id))
            if cell_id in roots:
                c.held = False  # entered again, or asked for: it runs
            elif c.effect:
                status = CellStatus.STALE
                if not c.held:
                    c.held = True
                    actions.append(Held(cell_id))
            c.status = status
            c.scan = 0
            below = CellStatus.STALE if status is CellStatus.STALE else downstream_status
            for child in self.children(cell_id):
                if child not in seen:
                    seen.add(child)
                    todo.append((child, below))
                elif (
                    below is CellStatus.STALE and self._cells[child].status is not CellStatus.STALE
                ):
                    todo.append((child, below))  # reached first on a path without the hold

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
                    self._cells[parent].held = False  # a new cell asks for what it defines
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
