"""``Workspace``: statements in, reactive cells out.

Layers: ``_lang`` turns text into statements with defs and refs, ``_graph``
decides what runs when, and this module carries the decisions out: it runs
local cells on the caller's thread, sends remote cells to the cluster, and
applies what comes back (always on the caller's thread, through the cluster's
queue: DESIGN.md §2 rule 6).

The namespace (``ws.namespace``) is the globals dict every local cell runs in,
so functions defined at the prompt see later globals as Python users expect.
Each cell also keeps the values it produced (``outputs``), which is what a cell
that updates a name (``x += 1``) reads, and what the namespace is restored
from whenever a cell that lost a name to a newer definition runs again.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import linecache
import re
import textwrap
import time
from collections import deque
from collections.abc import Callable, Container, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import CodeType
from typing import Any, Literal

from sperse._cluster.cluster import Cluster, unuse, use
from sperse._cluster.connect import current
from sperse._cluster.pending import OutputPrinter, Pending
from sperse._core import (
    BackendEvent,
    Done,
    ErrorInfo,
    Failed,
    Output,
    Started,
    StatementTask,
    TaskSpec,
)
from sperse._graph.graph import (
    Action,
    Blocked,
    Cancel,
    CellId,
    CellStatus,
    Drop,
    Graph,
    Held,
    Mode,
    Run,
    RunId,
)
from sperse._lang.analysis import analyze
from sperse._lang.objects import object_call, object_creation
from sperse._lang.placement import Placement
from sperse._lang.transform import MARKER, remote_placement, transform
from sperse._serialize import RemoteValue, describe, dumps_oob
from sperse.errors import (
    CellError,
    NotReadyError,
    SerializationError,
    SperseError,
    StatementError,
    UpstreamError,
    did_you_mean,
)

__all__ = ["Cell", "CellEvent", "Workspace"]

_LABEL_WIDTH = 60
_NAME_ERROR = re.compile(r"name '([A-Za-z_][A-Za-z0-9_]*)' is not defined")


@dataclass(slots=True)
class _Remote:
    placement: Placement
    source: str
    first_line: int


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A statement analysed and compiled, not yet entered."""

    label: str
    filename: str
    defs: frozenset[str]
    refs: frozenset[str]
    is_expression: bool
    code: CodeType | None
    remote: _Remote | None
    effect: bool = False  # changes an object it reads (rule 9)


@dataclass(slots=True)
class _Record:
    """What the workspace knows of one cell beyond its place in the graph."""

    id: CellId
    label: str
    filename: str
    defs: frozenset[str]
    is_expression: bool
    code: CodeType | None  # local cells
    remote: _Remote | None  # remote cells
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


@dataclass(frozen=True, slots=True)
class CellEvent:
    """Something happened to a cell; front ends subscribe to show it.

    ``kind``: "done" (``value`` is set for expression cells), "failed"
    (``error``), "blocked" (``error`` is the UpstreamError), "held" (a statement that
    changes an object it reads was not run again when its inputs changed: DESIGN.md §2
    rule 9; ``run_stale`` applies it).
    """

    cell: Cell
    kind: Literal["done", "failed", "blocked", "held"]
    value: Any = None
    error: BaseException | None = None


class Cell:
    """A read-only handle on one cell of a workspace."""

    __slots__ = ("_ws", "id")

    def __init__(self, ws: Workspace, cell_id: CellId) -> None:
        self._ws = ws
        self.id = cell_id

    @property
    def _record(self) -> _Record:
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


class _Names:
    """``in`` answers whether the workspace defines a name (to shadow builtins)."""

    __slots__ = ("_graph",)

    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._graph.definer(name) is not None


class _Either:
    """``in`` either container."""

    __slots__ = ("_a", "_b")

    def __init__(self, a: Container[str], b: Container[str]) -> None:
        self._a = a
        self._b = b

    def __contains__(self, name: object) -> bool:
        return name in self._a or name in self._b


class Workspace:
    """A reactive namespace: statements become cells that re-run when their inputs change.

    ``cluster`` runs the remote cells (default: ``sperse.current()``, resolved
    the first time a remote cell runs). ``mode`` is "auto" (the newest definition of a name
    wins; what reads it runs again), "lazy" (what reads it goes stale, and runs on request)
    or "notebook" (as Python binds: a new definition in another notebook cell shadows the
    name for what comes after; running a notebook cell again replaces its statements, and
    what read them runs again; DESIGN.md §2 rule 10).
    """

    def __init__(
        self,
        cluster: Cluster | None = None,
        *,
        mode: Literal["auto", "lazy", "notebook"] = "auto",
    ) -> None:
        self._cluster = cluster
        self._graph = Graph(Mode(mode))
        self._records: dict[CellId, _Record] = {}
        self._names = _Names(self._graph)
        self._inputs = 0
        self._subscribers: list[Callable[[CellEvent], None]] = []
        self._units: dict[Hashable, list[CellId]] = {}  # notebook cell -> its statements
        self.namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}

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
        tree = ast.parse(transformed, filename)
        tlines = lines if transformed is source else transformed.splitlines(keepends=True)
        # First prepare every statement (analysis, compilation), so a bad one
        # anywhere in the source enters nothing; then enter them in order.
        defined_here: set[str] = set()
        shadowed = _Either(self._names, defined_here)
        prepared = []
        for stmt in tree.body:
            cell = self._prepare(stmt, lines, tlines, filename, shadowed)
            defined_here.update(cell.defs)
            prepared.append(cell)
        cells = []
        replaced: frozenset[CellId] = frozenset()
        if unit is not None:
            replaced = frozenset(c for c in self._units.get(unit, ()) if c in self._graph)
            self._units[unit] = []
        try:
            for cell in prepared:
                cell_id = self._enter(cell, replaced)
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

    def _prepare(
        self,
        stmt: ast.stmt,
        lines: list[str],
        tlines: list[str],
        filename: str,
        shadowed: _Either,
    ) -> _Prepared:
        label = _label(lines, stmt)
        try:
            info = analyze(stmt, shadowed=shadowed)
        except StatementError as exc:
            raise StatementError(f"line {stmt.lineno}: `{label}`: {exc}") from None
        refs = info.refs
        remote: _Remote | None = None
        code: CodeType | None = None
        is_expression = info.is_expression
        found = remote_placement(stmt)
        if found is not None:
            placement, body = found
            refs = refs - {MARKER}
            is_expression = len(body) == 1 and isinstance(body[0], ast.Expr)
            remote = _Remote(placement, _body_source(tlines, body), body[0].lineno)
            compile(ast.Module(body, []), filename, "exec")  # syntax check only: source travels
        elif is_expression:
            assert isinstance(stmt, ast.Expr)
            code = compile(ast.Expression(stmt.value), filename, "eval")
        else:
            code = compile(ast.Module([stmt], []), filename, "exec")
        # A remote statement changes copies on its server: only a local one has effects here.
        effect = info.effect and remote is None
        return _Prepared(label, filename, info.defs, refs, is_expression, code, remote, effect)

    def _enter(self, cell: _Prepared, replaces: frozenset[CellId] = frozenset()) -> CellId:
        cell_id, actions = self._graph.add_cell(
            cell.defs, cell.refs, label=cell.label, effect=cell.effect, replaces=replaces
        )
        self._records[cell_id] = _Record(
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

    def _check_ready(self, cell_id: CellId, what: str) -> None:
        status = self._graph.status(cell_id)
        record = self._records[cell_id]
        if status is CellStatus.DONE:
            return
        if status is CellStatus.FAILED:
            assert record.error is not None
            raise record.error
        if status is CellStatus.BLOCKED:
            raise self._upstream_error(cell_id, what)
        if status is CellStatus.STALE:
            raise NotReadyError(
                f"{what} is stale: {self.stale_reason(cell_id)}; ws.run_stale() runs it"
            )
        raise NotReadyError(f"{what} is pending ({self._describe_wait(cell_id)}); ws.wait() waits")

    def _upstream_error(self, cell_id: CellId, what: str) -> UpstreamError:
        failed = self._graph.failed_ancestor(cell_id)
        if failed is None:
            return UpstreamError(f"{what}: an upstream cell failed")
        names = ", ".join(sorted(self._graph.view(failed).owned)) or self._records[failed].label
        error = UpstreamError(
            f"{what}: upstream error in {names} (cell [{failed}] `{self._records[failed].label}`)",
            upstream=names,
        )
        error.__cause__ = self._records[failed].error
        return error

    def _describe_wait(self, cell_id: CellId) -> str:
        record = self._records[cell_id]
        if self._graph.status(cell_id) is CellStatus.RUNNING:
            if record.pendings:  # a local cell that made Pendings: say where they run
                running = [p for p in record.pendings.values() if not p.done()]
                where = sorted({p.where for p in running if p.where})
                on = f" on {', '.join(where)}" if where else ""
                return f"waiting for {len(running)} Pending{'s' * (len(running) != 1)}{on}"
            if record.started_at is not None:
                return f"running on {record.where} for {time.monotonic() - record.started_at:.1f} s"
            return "submitted"
        waiting = [
            name
            for name, parent in self._graph.parents(cell_id).items()
            if parent is not None and self._graph.status(parent) is not CellStatus.DONE
        ]
        return f"waiting for {', '.join(sorted(waiting))}" if waiting else "queued"

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

    def stale_reason(self, cell_id: CellId) -> str:
        """Why a stale cell waits for ``run_stale``: lazy mode, or rule 9."""
        graph = self._graph
        if graph.is_held(cell_id):
            return "not re-applied to its new inputs (it changes an object it reads)"
        for upstream in graph.upstream(cell_id):
            if graph.is_held(upstream):
                label = self._records[upstream].label
                return f"it reads what `{label}` defines, which was not re-applied"
        return "its inputs changed in lazy mode"

    def held(self) -> list[Cell]:
        """The statements that change an object they read (``x[0] = 99``) which were not
        run again when their inputs changed (rule 9): ``run_stale()`` applies them."""
        return [Cell(self, cell_id) for cell_id in self._graph.held()]

    def cancel(self, name: str) -> bool:
        """Cancel the running cell that defines ``name``; its names end in TaskCancelled."""
        from sperse.errors import TaskCancelled

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
        if name is None:
            return "\n".join(self._describe_cell(c) for c in self._graph.cells())
        cell_id = self._graph.definer(name)
        if cell_id is None:
            raise KeyError(f"{name!r} is not defined in this workspace")
        lines = [self._describe_cell(cell_id)]
        lines += ["upstream:", *(self._tree(cell_id, up=True) or ["  (nothing)"])]
        lines += ["downstream:", *(self._tree(cell_id, up=False) or ["  (nothing)"])]
        return "\n".join(lines)

    def _describe_cell(self, cell_id: CellId) -> str:
        view = self._graph.view(cell_id)
        record = self._records[cell_id]
        kind = "remote" if record.remote is not None else "local"
        owned = ", ".join(sorted(view.owned)) or "-"
        reads = ", ".join(
            f"{name}<-[{parent}]" if parent is not None else name
            for name, parent in sorted(view.parents.items())
        )
        return (
            f"[{cell_id}] {record.label}\n"
            f"      {kind}, {view.status.value}; defines: {owned}; reads: {reads or '-'}"
        )

    def _tree(self, root: CellId, *, up: bool) -> list[str]:
        """An indented tree of the cells above or below ``root`` (each shown once)."""
        out: list[str] = []
        seen = {root}
        stack: list[tuple[CellId, int]] = [(c, 1) for c in reversed(self._neighbours(root, up))]
        while stack:
            cell_id, depth = stack.pop()
            record = self._records[cell_id]
            status = self._graph.status(cell_id).value
            again = " (shown above)" if cell_id in seen else ""
            out.append(f"{'  ' * depth}[{cell_id}] {record.label}  ({status}){again}")
            if not again:
                seen.add(cell_id)
                stack.extend((c, depth + 1) for c in reversed(self._neighbours(cell_id, up)))
        return out

    def _neighbours(self, cell_id: CellId, up: bool) -> list[CellId]:
        if up:
            parents = {p for p in self._graph.parents(cell_id).values() if p is not None}
            return sorted(parents)
        return sorted(self._graph.children(cell_id))

    def close(self) -> None:
        """Cancel running remote work of this workspace."""
        for cell_id in list(self._graph.cells()):
            self._stop(cell_id)

    # ---- carrying out graph actions -----------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        todo: deque[Action] = deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, Run):
                todo.extend(self._start(action))
            elif isinstance(action, Cancel):
                if self._graph.__contains__(action.cell):
                    self._stop(action.cell)
                else:
                    self._stop_record(self._records.get(action.cell))
            elif isinstance(action, Drop):
                record = self._records.pop(action.cell, None)
                self._stop_record(record)
            elif isinstance(action, Blocked):
                record = self._records[action.cell]
                record.error = self._upstream_error(action.cell, record.label)
                self._notify(CellEvent(Cell(self, action.cell), "blocked", error=record.error))
            elif isinstance(action, Held):
                self._notify(CellEvent(Cell(self, action.cell), "held"))

    def _start(self, run: Run) -> list[Action]:
        record = self._records[run.cell]
        record.error = None
        if record.remote is not None:
            return self._submit(record, run)
        return self._run_local(record, run)

    def _run_local(self, record: _Record, run: Run) -> list[Action]:
        ns = self.namespace
        definer = self._graph.definer
        earlier: list[str] = []  # names read from an earlier definition than the current one
        for name, parent in run.inputs.items():
            if parent is not None and definer(name) != parent:  # reads an earlier definition
                earlier.append(name)
                outputs = self._records[parent].outputs
                if name in outputs:
                    ns[name] = outputs[name]
                else:
                    ns.pop(name, None)
            value = ns.get(name)
            if isinstance(value, RemoteValue):  # held on a server: a local cell needs it here
                try:
                    ns[name] = value.fetch()
                except SperseError as exc:
                    return self._fail(record.id, run.run_id, exc)
        record.runs += 1
        record.where = ""
        record.started_at = time.monotonic()
        record.finished_at = None
        token = use(self._cluster) if self._cluster is not None else None
        try:
            assert record.code is not None
            if record.is_expression:
                record.value = eval(record.code, ns)
            else:
                exec(record.code, ns)
        except BaseException as exc:
            self._sync_namespace(record)
            error = CellError(
                f"cell [{record.id}] `{record.label}` raised {type(exc).__name__}: {exc}",
                cell_id=record.id,
                source=record.label,
            )
            error.__cause__ = exc
            actions = self._fail(record.id, run.run_id, error)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: recorded, and passed on
            return actions
        finally:
            if token is not None:
                unuse(token)
            if earlier:  # its own defs are shown by _sync_namespace below
                self._show_current(n for n in earlier if n not in record.defs)
        outputs = {name: ns[name] for name in record.defs if name in ns}
        record.outputs = outputs
        self._sync_namespace(record)
        waiting = {n: v for n, v in outputs.items() if isinstance(v, Pending)}
        if record.is_expression and isinstance(record.value, Pending):
            waiting["<value>"] = record.value
        if waiting:
            self._await_pendings(record, run.run_id, waiting)
            return []
        return self._finish(record.id, run.run_id)

    def _sync_namespace(self, record: _Record) -> None:
        """After ``record`` ran: each name it defines shows its current definer's value."""
        self._show_current(record.defs)

    def _show_current(self, names: Iterable[str]) -> None:
        """Each of ``names`` in the namespace holds its current definer's value (or is
        absent): after a cell ran, or read earlier definitions (notebook mode)."""
        ns = self.namespace
        for name in names:
            owner = self._graph.definer(name)
            outputs = self._records[owner].outputs if owner is not None else {}
            if name in outputs:
                ns[name] = outputs[name]
            else:
                ns.pop(name, None)

    def _await_pendings(
        self, record: _Record, run_id: RunId, waiting: dict[str, Pending[Any]]
    ) -> None:
        """A local cell produced Pendings: its names stay pending until they settle (then
        hold the settled Pendings), an expression's value until it arrives."""
        record.pendings = waiting
        cluster = self.cluster
        for pending in waiting.values():
            pending._on_settle(
                lambda _: cluster.post(lambda: self._pendings_settled(record.id, run_id))
            )

    def _pendings_settled(self, cell_id: CellId, run_id: RunId) -> None:
        record = self._records.get(cell_id)
        if record is None or not self._is_current(cell_id, run_id):
            return
        if not all(p.done() for p in record.pendings.values()):
            return
        waiting, record.pendings = record.pendings, {}
        shown = waiting.get("<value>")
        if shown is not None:  # what the prompt shows of an expression: its value
            if shown._error is not None:
                self._apply(self._fail(cell_id, run_id, shown._error))
                return
            record.value = shown._value
        # A name keeps its Pending (now settled), as under plain Python: see
        # docs/decisions.md, "One calling convention".
        self._apply(self._finish(cell_id, run_id))

    def _submit(self, record: _Record, run: Run) -> list[Action]:
        assert record.remote is not None
        inputs = {
            name: self._records[parent].outputs[name]
            for name, parent in run.inputs.items()
            if parent is not None and name in self._records[parent].outputs
        }
        try:
            digest = self._digest(record, inputs)
        except SerializationError as exc:
            return self._fail(record.id, run.run_id, exc)
        if digest == record.digest and record.error is None:
            return self._finish(record.id, run.run_id)  # same inputs: same result
        record.digest = None
        cluster = self.cluster
        creation = self._object_creation(record, inputs)
        if creation is not None:
            return self._create_object(record, run, creation, digest)
        object_call = self._object_call(record, inputs)
        if object_call is not None:
            return self._call_object(record, run, object_call)
        task_id = cluster.new_task_id()
        record.task_id = task_id
        record.runs += 1
        record.started_at = None
        record.finished_at = None
        spec = TaskSpec(
            task_id,
            StatementTask(
                record.remote.source,
                f"<cell {record.id}>",
                record.remote.first_line,
                inputs,
                tuple(sorted(record.defs)),
                record.is_expression,
            ),
            record.remote.placement,
            label=f"cell [{record.id}] `{record.label}`",
        )
        printer = OutputPrinter(cluster)
        cell_id, run_id = record.id, run.run_id

        def listen(event: BackendEvent) -> None:  # backend thread: data only, then post
            match event:
                case Started(where=where):
                    record.where = where
                    record.started_at = time.monotonic()
                case Output(where=where, stream=stream, text=text):
                    printer.write(where, stream, text)
                case Done(value=value):
                    printer.flush()
                    cluster.post(lambda: self._remote_done(cell_id, run_id, value, digest))
                case Failed(where=where, error=error):
                    printer.flush()
                    exc = self._hinted(error).to_exception(spec.label, where)
                    cluster.post(lambda: self._apply(self._fail(cell_id, run_id, exc)))

        try:
            cluster.submit(spec, listen)
        except SperseError as exc:
            record.task_id = None
            return self._fail(record.id, run.run_id, exc)
        return []

    def _object_creation(
        self, record: _Record, inputs: Mapping[str, Any]
    ) -> tuple[str, Any, ast.Call] | None:
        """``c = remote[db] Counter(...)`` where ``Counter`` is a class defined at the prompt
        (or a ``sperse.remote`` class): the target, the class and the call, to create a remote
        object instead of sending the instance back. Other classes (``pd.DataFrame``) are
        plain calls whose value comes back, as any remote statement's."""
        assert record.remote is not None
        shape = object_creation(record.remote.source)
        if shape is None:
            return None
        cls = inputs.get(shape.callee, self.namespace.get(shape.callee))
        from sperse._cluster.objects import RemoteClass

        made_here = isinstance(cls, type) and cls.__module__ == self.namespace["__name__"]
        if not (made_here or isinstance(cls, RemoteClass)):
            return None
        return shape.target, cls, shape.call

    def _hinted(self, error: ErrorInfo) -> ErrorInfo:
        """A remote ``NameError`` for a name misspelt at the prompt, with Python's hint:
        the remote side cannot give it (it sees only the cell's inputs)."""
        found = _NAME_ERROR.fullmatch(error.message) if error.type_name == "NameError" else None
        if found is None:
            return error
        hint = did_you_mean(found[1], [*self.namespace, *dir(builtins)])
        return replace(error, message=f"{error.message}.{hint}") if hint else error

    def _object_call(
        self, record: _Record, inputs: Mapping[str, Any]
    ) -> tuple[str, ast.expr] | None:
        """``n = remote c.incr(...)`` or ``remote c.count`` where ``c`` is a remote object: the
        target ("" for an expression) and the expression, to call the object from here (it
        lives on its server already) with the value, not the Pending, as the cell's result."""
        assert record.remote is not None
        shape = object_call(record.remote.source, is_expression=record.is_expression)
        if shape is None:
            return None
        from sperse._cluster.objects import ObjectProxy

        name = shape.receiver
        if not isinstance(inputs.get(name, self.namespace.get(name)), ObjectProxy):
            return None
        return shape.target, shape.expression

    def _call_object(
        self, record: _Record, run: Run, object_call: tuple[str, ast.expr]
    ) -> list[Action]:
        """Make the call of ``_object_call`` here; the cell is done with its value. Calls have
        effects, so unlike other remote cells they are made again on every run."""
        target, expression = object_call
        cell_id, run_id = record.id, run.run_id
        record.runs += 1
        record.started_at = time.monotonic()
        record.finished_at = None
        try:
            code = compile(ast.Expression(expression), record.filename, "eval")
            outcome = eval(code, dict(self.namespace))
        except Exception as exc:
            return self._fail(cell_id, run_id, exc)
        cluster = self.cluster

        def arrived(call: Pending[Any]) -> None:  # any thread: post the outcome
            error = call._error
            if error is not None:
                cluster.post(lambda: self._apply(self._fail(cell_id, run_id, error)))
                return
            record.where = call.where
            value = call._value if record.is_expression else {target: call._value}
            cluster.post(lambda: self._remote_done(cell_id, run_id, value, b""))

        if not isinstance(outcome, Pending):  # a local attribute of the proxy (`c.where`)
            outcome_pending: Pending[Any] = Pending(cluster)
            outcome_pending._settle(outcome)
            outcome = outcome_pending
        outcome._on_settle(arrived)
        return []

    def _create_object(
        self, record: _Record, run: Run, creation: tuple[str, Any, ast.Call], digest: bytes
    ) -> list[Action]:
        """Create the remote object of ``_object_creation``; the cell is done once it exists,
        with the proxy as its value (arguments are evaluated here, as in a script)."""
        from sperse._cluster.objects import RemoteClass

        assert record.remote is not None
        target, cls, call = creation
        cell_id, run_id = record.id, run.run_id
        namespace = dict(self.namespace)
        try:
            args = [
                eval(compile(ast.Expression(a), record.filename, "eval"), namespace)
                for a in call.args
            ]
            kwargs = {
                k.arg: eval(compile(ast.Expression(k.value), record.filename, "eval"), namespace)
                for k in call.keywords
                if k.arg is not None
            }
        except Exception as exc:
            return self._fail(cell_id, run_id, exc)
        remote_class = cls if isinstance(cls, RemoteClass) else RemoteClass(cls)
        if str(record.remote.placement):
            remote_class = remote_class.with_placement(record.remote.placement)
        record.runs += 1
        record.started_at = time.monotonic()
        record.finished_at = None
        proxy = remote_class.create_on(self.cluster, tuple(args), kwargs)
        cluster = self.cluster

        def placed(ready: Pending[Any]) -> None:  # any thread: post the outcome
            if ready._error is not None:
                error = ready._error
                cluster.post(lambda: self._apply(self._fail(cell_id, run_id, error)))
                return
            record.where = proxy.where
            cluster.post(lambda: self._remote_done(cell_id, run_id, {target: proxy}, digest))

        proxy._when_ready(placed)
        return []

    def _digest(self, record: _Record, inputs: Mapping[str, Any]) -> bytes:
        """A digest of what a remote cell would compute from; names the unpicklable input."""
        assert record.remote is not None
        try:
            data, buffers, _ = dumps_oob(dict(inputs))
        except SerializationError as exc:
            for name, value in inputs.items():
                try:
                    dumps_oob(value)
                except SerializationError as inner:
                    raise SerializationError(
                        f"cell [{record.id}] `{record.label}`: cannot send `{name}` "
                        f"({describe(value)}) to a remote server: {inner.__cause__}. "
                        "Create it inside the remote cell, or make it picklable."
                    ) from inner
            raise SerializationError(f"cell [{record.id}] `{record.label}`: {exc}") from exc
        h = hashlib.sha256()
        h.update(record.remote.source.encode())
        h.update(str(record.remote.placement).encode())
        h.update(data)
        for buffer in buffers:
            h.update(buffer.raw())
        return h.digest()

    def _remote_done(self, cell_id: CellId, run_id: RunId, value: Any, digest: bytes) -> None:
        record = self._records.get(cell_id)
        if record is None or not self._is_current(cell_id, run_id):
            return  # a stale result: never shown
        record.task_id = None
        if record.is_expression:
            record.value = value
            record.outputs = {}
        else:
            record.outputs = dict(value)
            self._sync_namespace(record)
        record.digest = digest
        self._apply(self._finish(cell_id, run_id))

    def _is_current(self, cell_id: CellId, run_id: RunId) -> bool:
        return (
            cell_id in self._graph
            and self._graph.run_id(cell_id) == run_id
            and self._graph.status(cell_id) is CellStatus.RUNNING
        )

    def _finish(self, cell_id: CellId, run_id: RunId) -> list[Action]:
        actions = self._graph.finished(cell_id, run_id)
        record = self._records[cell_id]
        record.finished_at = time.monotonic()
        self._notify(CellEvent(Cell(self, cell_id), "done", value=record.value))
        return actions

    def _fail(self, cell_id: CellId, run_id: RunId, error: BaseException) -> list[Action]:
        record = self._records[cell_id]
        if not self._is_current(cell_id, run_id):
            return []
        record.error = error
        record.task_id = None
        record.digest = None
        record.finished_at = time.monotonic()
        actions = self._graph.failed(cell_id, run_id)
        self._notify(CellEvent(Cell(self, cell_id), "failed", error=error))
        return actions

    def _stop(self, cell_id: CellId) -> None:
        self._stop_record(self._records.get(cell_id))

    def _stop_record(self, record: _Record | None) -> None:
        if record is None:
            return
        if record.task_id is not None and self._cluster is not None:
            self._cluster.cancel(record.task_id)
        record.task_id = None
        pendings, record.pendings = record.pendings, {}
        for pending in pendings.values():
            pending.cancel()

    def _notify(self, event: CellEvent) -> None:
        for fn in list(self._subscribers):
            fn(event)

    # ---- the cluster ---------------------------------------------------------

    @property
    def cluster(self) -> Cluster:
        """The cluster remote cells run on (resolved on first use)."""
        if self._cluster is None or self._cluster.closed:
            self._cluster = current()
        return self._cluster

    def _cluster_for_waiting(self) -> Cluster | None:
        if self._cluster is not None:
            return self._cluster
        if any(r.pendings for r in self._records.values()):
            return self.cluster
        return None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._graph.names()))


def _label(lines: list[str], stmt: ast.stmt) -> str:
    """The first line of a statement as the user typed it, shortened."""
    text = lines[stmt.lineno - 1].strip() if stmt.lineno - 1 < len(lines) else ""
    if stmt.end_lineno is not None and stmt.end_lineno > stmt.lineno:
        text += " ..."
    if len(text) > _LABEL_WIDTH:
        text = text[: _LABEL_WIDTH - 3] + "..."
    return text


def _body_source(lines: list[str], body: list[ast.stmt]) -> str:
    """The source of a remote cell's body (``lines`` of the transformed input), dedented.

    A one-line form (``with __sperse_remote__(...): x = f(y)``) starts after
    the colon; continuation lines of it are inside brackets, where indentation
    does not matter.
    """
    first, last = body[0], body[-1]
    end = last.end_lineno or last.lineno
    chunk = lines[first.lineno - 1 : end]
    if first.col_offset > 0 and first.lineno == end:
        line = chunk[0].encode()
        return line[first.col_offset : last.end_col_offset].decode()
    if first.col_offset > 0 and _is_one_line_with(lines, first):
        head = chunk[0].encode()[first.col_offset :].decode()
        return head + "".join(chunk[1:])
    return textwrap.dedent("".join(chunk))


def _is_one_line_with(lines: list[str], first: ast.stmt) -> bool:
    return lines[first.lineno - 1].encode()[: first.col_offset].strip() != b""
