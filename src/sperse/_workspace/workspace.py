"""``Workspace``: statements in, reactive cells out (the public face of this package).

The parts: ``statements`` prepares each statement, ``core`` holds the state and carries
out the graph's actions, ``local``, ``remote`` and ``objects`` run the three kinds of
cells, ``display`` describes the graph. See ``core`` for the threading rule and the
namespace.
"""

from __future__ import annotations

import ast
import gc
import linecache
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from sperse._graph.graph import Action, CellId, CellStatus, Mode, Run
from sperse._lang.transform import transform
from sperse._serialize import RemoteValue
from sperse._workspace.cells import Cell, CellEvent, Record
from sperse._workspace.display import describe_graph
from sperse._workspace.local import LocalCells
from sperse._workspace.remote import RemoteCells
from sperse._workspace.statements import Either, Prepared, prepare
from sperse.errors import TaskCancelled

__all__ = ["Cell", "CellEvent", "Workspace"]

_NO_CELLS: frozenset[CellId] = frozenset()


class Workspace(LocalCells, RemoteCells):
    """A reactive namespace: statements become cells that re-run when their inputs change.

    ``cluster`` runs the remote cells (default: ``sperse.current()``, resolved
    the first time a remote cell runs). ``mode`` is "auto" (the newest definition of a name
    wins; what reads it runs again), "lazy" (what reads it goes stale, and runs on request)
    or "notebook" (as Python binds: a new definition in another notebook cell shadows the
    name for what comes after; running a notebook cell again replaces its statements, and
    what read them runs again; DESIGN.md §2 rule 10).
    """

    # ---- entering statements -------------------------------------------------

    def run(
        self, source: str, filename: str | None = None, *, unit: Hashable | None = None
    ) -> list[Cell]:
        """Enter every top-level statement of ``source`` as a cell, in order.

        ``filename`` names the source in tracebacks (default ``<sperse-input-N>``).
        ``unit`` names the notebook cell the source is (Jupyter's cell id): in notebook mode,
        running a unit again replaces the statements it entered before (DESIGN.md §2
        rule 10).

        Local cells run now, on this thread; remote cells are sent and their
        names stay pending. Raises ``SyntaxError`` before anything runs when
        the source does not parse; ``StatementError``/``CycleError`` for a
        statement that cannot be entered; ``CellError`` (or
        ``SerializationError``) when a newly entered cell fails at once. In
        each case the statements before it stay entered and the rest are not.
        """
        self.process_events()
        self._inputs += 1
        filename = filename or f"<sperse-input-{self._inputs}>"
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
        transformed = transform(source, filename)
        tree = _parse(transformed, filename)
        tlines = lines if transformed is source else transformed.splitlines(keepends=True)
        # First prepare every statement (analysis, compilation), so a bad one
        # anywhere in the source enters nothing; then enter them in order. Each statement's
        # tree is let go once it is compiled: a long input's trees would otherwise be
        # traversed by every collection of the garbage collector until the end.
        defined_here: set[str] = set()
        shadowed = Either(self._names, defined_here)
        prepared = []
        body = tree.body
        del tree
        body.reverse()
        while body:
            cell = prepare(body.pop(), lines, tlines, filename, shadowed)
            defined_here.update(cell.defs)
            prepared.append(cell)
        cells = []
        replaced: frozenset[CellId] = _NO_CELLS
        if unit is not None:
            replaced = frozenset(c for c in self._units.get(unit, ()) if c in self._graph)
            self._units[unit] = []
        try:
            prepared.reverse()
            while prepared:  # each let go once entered, as the trees above
                cell_id = self._enter(prepared.pop(), replaced)
                if unit is not None:
                    self._units[unit].append(cell_id)
                cells.append(Cell(self, cell_id))
                record = self._records.get(cell_id)
                if record is not None:
                    record.entered = True
                    failed = self._graph.status(cell_id) is CellStatus.FAILED
                    if record.error is not None and failed:
                        raise record.error
        finally:
            if replaced:
                self._apply(self._graph.retire(replaced))
            if len(self._units) > 2 * len(self._records) + 64:  # units whose cells are all gone
                graph = self._graph
                self._units = {
                    u: ids for u, ids in self._units.items() if any(c in graph for c in ids)
                }
        return cells

    def _enter(self, cell: Prepared, replaces: frozenset[CellId] = frozenset()) -> CellId:
        cell_id, actions = self._graph.add_cell(
            cell.defs, cell.refs, label=cell.label, effect=cell.effect, replaces=replaces
        )
        self._records[cell_id] = Record(
            cell_id,
            cell.label,
            cell.filename,
            cell.defs,
            cell.is_expression,
            cell.code,
            cell.remote,
        )
        self._apply(actions)
        return cell_id

    # ---- reading names -------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        """The value of ``name`` now: raises its error, or ``NotReadyError`` if pending."""
        cell_id = self._graph.definer(name)
        if cell_id is None:
            raise KeyError(f"{name!r} is not defined in this workspace")
        self._check_ready(cell_id, name)
        outputs = self._records[cell_id].outputs
        if name not in outputs:
            raise NameError(f"name {name!r} is not bound: its cell did not assign it")
        value = outputs[name]
        if isinstance(value, RemoteValue):
            return value.fetch()
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def remote_value(self, name: str) -> RemoteValue | None:
        """The handle of ``name``'s value if it is held on a server (fetched or not), else None."""
        cell_id = self._graph.definer(name)
        if cell_id is None:
            raise KeyError(f"{name!r} is not defined in this workspace")
        value = self._records[cell_id].outputs.get(name)
        return value if isinstance(value, RemoteValue) else None

    def pending(self) -> dict[str, str]:
        """Every pending name, with what it is waiting for."""
        out = {}
        for name in sorted(self._graph.names()):
            cell_id = self._graph.definer(name)
            assert cell_id is not None
            if self._graph.status(cell_id) in (CellStatus.PENDING, CellStatus.RUNNING):
                out[name] = self._describe_wait(cell_id)
        return out

    def wait(self, name: str | None = None, timeout: float | None = None) -> Any:
        """Wait until ``name`` (or, with no name, everything) is no longer pending.

        Returns the value of ``name`` (raising its error); ``TimeoutError`` if
        ``timeout`` seconds pass first.
        """
        if name is not None and self._graph.definer(name) is None:
            raise KeyError(f"{name!r} is not defined in this workspace")

        def settled() -> bool:
            if name is None:
                return not any(
                    self._graph.status(c) in (CellStatus.PENDING, CellStatus.RUNNING)
                    for c in self._graph.cells()
                )
            cell_id = self._graph.definer(name)
            return cell_id is None or self._graph.status(cell_id) not in (
                CellStatus.PENDING,
                CellStatus.RUNNING,
            )

        if not settled():
            cluster = self._cluster_for_waiting()
            if cluster is None or not cluster.run_until(settled, timeout):
                what = name or ", ".join(self.pending()) or "expression cells"
                raise TimeoutError(f"still pending after {timeout} s: {what}")
        return None if name is None else self[name]

    def process_events(self, timeout: float = 0) -> int:
        """Apply results that have arrived (on this thread); wait up to ``timeout`` for one."""
        cluster = self._cluster_for_waiting()
        if cluster is None:
            return 0
        ran = cluster.drain()
        if ran or timeout <= 0:
            return ran
        cluster.wait_for_work(timeout)
        return cluster.drain()

    # ---- modes and control ---------------------------------------------------

    @property
    def mode(self) -> str:
        return self._graph.mode.value

    @mode.setter
    def mode(self, mode: str) -> None:
        self._apply(self._graph.set_mode(Mode(mode)))

    def run_stale(self) -> None:
        """Run every stale cell: in lazy mode, every cell whose inputs changed; in any mode,
        the statements that change objects they read which were not applied again when
        their inputs changed (``held()``, DESIGN.md §2 rule 9)."""
        self._apply(self._graph.run_stale())

    def held(self) -> list[Cell]:
        """The statements that change an object they read (``x[0] = 99``) which were not
        run again when their inputs changed (rule 9): ``run_stale()`` applies them."""
        return [Cell(self, cell_id) for cell_id in self._graph.held()]

    def cancel(self, name: str) -> bool:
        """Cancel the running cell that defines ``name``; its names end in TaskCancelled."""
        cell_id = self._graph.definer(name)
        if cell_id is None or self._graph.status(cell_id) is not CellStatus.RUNNING:
            return False
        run_id = self._graph.run_id(cell_id)
        self._stop(cell_id)
        self._fail(
            cell_id, run_id, TaskCancelled(f"`{self._records[cell_id].label}` was cancelled")
        )
        return True

    def subscribe(self, fn: Callable[[CellEvent], None]) -> Callable[[], None]:
        """Call ``fn`` (on this thread) when a cell finishes, fails or is blocked."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    def cell(self, name: str) -> Cell:
        """The cell that currently defines ``name``."""
        cell_id = self._graph.definer(name)
        if cell_id is None:
            raise KeyError(f"{name!r} is not defined in this workspace")
        return Cell(self, cell_id)

    def cells(self) -> list[Cell]:
        return [Cell(self, cell_id) for cell_id in self._graph.cells()]

    def graph(self, name: str | None = None) -> str:
        """A printable description of the cells, their names, states and edges.

        With a ``name``: the cells upstream of its definer (what it is computed
        from) and downstream (what is computed from it), as two trees.
        """
        return describe_graph(self._graph, self._records, name)

    def close(self) -> None:
        """Cancel running remote work of this workspace."""
        for cell_id in list(self._graph.cells()):
            self._stop(cell_id)

    def _start(self, run: Run) -> list[Action]:
        record = self._records[run.cell]
        record.error = None
        if record.remote is not None:
            return self._submit(record, run)
        return self._run_local(record, run)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._graph.names()))


def _parse(source: str, filename: str) -> ast.Module:
    """``ast.parse`` with the garbage collector paused: a tree has no cycles, yet a long
    input's nodes made the collector run and traverse them all, again and again, while
    they were made (with 100,000 statements, eight full collections: 0.75 s of 1.7 s)."""
    if not gc.isenabled():
        return ast.parse(source, filename)
    gc.disable()
    try:
        return ast.parse(source, filename)
    finally:
        gc.enable()
