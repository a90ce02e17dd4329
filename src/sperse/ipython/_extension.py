"""The extension object: one workspace per IPython shell, and the routing of its cells.

Routing. IPython keeps the cell as it was typed: its history (``In[n]``, ``_i``), the lines
its tracebacks quote, and the input a trailing ``;`` is read from (``DisplayHook.quiet``) are
what they are without the extension. Only remote forms, which are not Python, are written as
``with`` statements for IPython's parser (``input_transformers_post``, which also plans the
cell with :func:`~sperse.ipython._cells.plan_cell`). The routing happens on the parsed tree
(an ``ast_transformers`` entry, :func:`~sperse.ipython._cells.route_tree`): IPython's own
statements stay, the rest become calls of the hidden ``%%sperse_cell`` magic, which enters them
into the workspace and returns the value of a last expression that is ready, so IPython shows
it as ``Out[n]`` (or not, after a ``;``). The workspace compiles them under file names that
IPython calls the cell's, holding the cell's lines, so tracebacks say "Cell In[5], line 2" and
quote the cell, in every ``%xmode``. The workspace's namespace *is* the shell's ``user_ns``:
IPython's tools (completion, ``%who``, ``x?``) see the cells' names, and cells see IPython's
(``In``, ``Out``, ``_``).

Only the cell the person runs is routed: code that a magic transforms while a cell executes
(``%timeit``, ``%%time``, ``%prun``, ``%%capture``) stays plain IPython code, so that ``%timeit
f(x)`` does not enter a cell a million times. Invariant: the plan the text transform makes of
a cell is used by the next tree transform, and by no other. That one is the same cell's:
IPython parses the text it was given just after ``pre_execute``, and magics transform code
only later, while the cell runs (the text transform ignores them, ``executing``).

The parts, each in a module of its own: the displays of cells (``_displays``), the magics
(``_magics``), errors as IPython shows them (``_errors``), and waking a kernel's loop
(``_waker``).

Threads (DESIGN.md §2 rule 6). Everything here runs on the shell's thread. In a Jupyter kernel
the cluster's waker (called on the cluster's I/O thread) schedules a drain on the kernel's
asyncio loop with ``call_soon_threadsafe``, so arrivals are applied and shown while the kernel
is idle. In terminal IPython there is no loop to wake while the prompt waits: the queue is
drained before and after each cell (``pre_execute``/``post_execute``) and inside ``%wait``.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import linecache
from collections.abc import Hashable
from typing import Any

from IPython.core.error import InputRejected
from IPython.core.interactiveshell import InteractiveShell

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current
from sperse._workspace import Cell, Workspace
from sperse.errors import SperseError
from sperse.ipython._cells import Plan, plan_cell, route_tree
from sperse.ipython._displays import Displays
from sperse.ipython._errors import ErrorPresenter
from sperse.ipython._magics import CELL_MAGIC, Magics
from sperse.ipython._waker import KernelWaker
from sperse.repl._commands import COMMANDS, CommandRegistry
from sperse.repl._display import describe_name
from sperse.repl._input import bare_name

__all__ = ["Extension"]


class Extension:
    """The workspace of one IPython shell and everything that connects it to the shell."""

    def __init__(
        self,
        shell: InteractiveShell,
        *,
        cluster: Cluster | None = None,
        commands: CommandRegistry = COMMANDS,
    ) -> None:
        self.shell = shell
        # Notebook mode (DESIGN.md §2 rule 10): an ordinary notebook computes the same with
        # the extension; `%mode auto` gives the REPL's "newest definition wins".
        self.ws = Workspace(cluster if cluster is not None else current(), mode="notebook")
        self.ws.namespace = shell.user_ns
        self._parts = 0  # workspace parts of the IPython cell running now
        self._closed = False
        kernel = getattr(shell, "kernel", None) is not None
        self._displays = Displays(shell, self.ws, kernel=kernel)
        self._errors = ErrorPresenter(shell)
        self._waker = KernelWaker(shell, self.drain, kernel=kernel)
        self._planned: Plan | None = None  # planned by transform(), for the next route()
        self._cell: Plan | None = None  # the plan of the IPython cell running now
        self._router = _Router(self)
        self._unsubscribe = self.ws.subscribe(self._displays.on_event)
        self._magics = Magics(
            shell,
            self.ws,
            run=self.run,
            presentable=self._errors.presentable,
            after_command=self._reconcile,
            connected=self._hook,
        )
        self.remote_magic = self._magics.remote_magic
        shell.input_transformers_post.append(self.transform)
        # First: the tree must be the one parsed from the text transform() planned.
        shell.ast_transformers.insert(0, self._router)
        shell.events.register("pre_execute", self._pre_execute)
        shell.events.register("post_execute", self._post_execute)
        self._magics.register(commands)
        self._hook()

    # ---- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Undo everything ``__init__`` did, and cancel the workspace's running work."""
        if self._closed:
            return
        self._closed = True
        shell = self.shell
        with contextlib.suppress(ValueError):
            shell.input_transformers_post.remove(self.transform)
        with contextlib.suppress(ValueError):
            shell.ast_transformers.remove(self._router)
        for event, fn in (("pre_execute", self._pre_execute), ("post_execute", self._post_execute)):
            with contextlib.suppress(ValueError):
                shell.events.unregister(event, fn)
        self._waker.unhook()
        self._unsubscribe()
        self._displays.close()
        self.ws.close()
        self._magics.unregister()
        self._errors.untag()

    # ---- routing: the input transformer, the tree transformer and the cell magic ----

    def transform(self, lines: list[str]) -> list[str]:
        """``input_transformers_post``: plan the cell; remote forms become ``with`` statements.

        A cell without remote forms comes back unchanged, so IPython's history holds what it
        holds without the extension. Only a cell the person runs: while a cell executes, code
        that a magic transforms stays plain IPython code.
        """
        if self._displays.executing:
            return lines
        remote = self.remote_magic if self.remote_magic == "remote" else None
        plan = plan_cell("".join(lines), remote_magic=remote)  # SyntaxError: IPython shows it
        self._planned = self._cell = plan
        if plan is None or plan.text == plan.source:
            return lines
        return plan.text.splitlines(keepends=True)

    def route(self, tree: ast.AST) -> ast.AST:
        """``ast_transformers``: the workspace segments of the planned cell become calls of
        ``%%sperse_cell``. Any other tree (one a magic parses) is left alone."""
        plan, self._planned = self._planned, None
        if plan is None or not isinstance(tree, ast.Module):
            return tree
        try:
            return route_tree(tree, plan, CELL_MAGIC)
        except ValueError as exc:  # IPython unregisters a transformer that fails otherwise
            raise InputRejected(f"sperse could not route this cell: {exc}") from None

    def run(self, source: str) -> Any:
        """Enter ``source`` into the workspace; the value to show as ``Out[n]``, or None.

        Errors are raised for IPython to show, shortly: a local exception with the user's
        frames only, Sperse's errors in one line (or with the remote traceback).
        """
        name = bare_name(source)
        if name is not None:
            return self._look(name)
        ws = self.ws
        before = max((cell.id for cell in ws.cells()), default=0)
        self._displays.entering = before
        failure: BaseException | None = None
        cells: list[Cell] = []
        filename, lines = self._cell_file(source)
        unit = (self._notebook_cell(), self._parts)  # a cell's parts: split by its magic lines
        self._parts += 1
        try:
            cells = ws.run(source, filename, unit=unit)
        except (SyntaxError, SperseError, KeyboardInterrupt) as exc:
            failure = exc
        finally:
            if lines is not None:  # the workspace cached the lines of `source`, blank around it
                linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
            self._displays.entering = None
            self._reconcile(new_after=before)
        if failure is not None:
            raise self._errors.presentable(failure)
        if cells and cells[-1].status == "done":
            return cells[-1].value
        return None

    def _cell_file(self, source: str) -> tuple[str, list[str] | None]:
        """The file name to compile ``source`` with, and the lines that file has in the end.

        A name of its own for ``source`` (two parts of a cell are two files), which IPython's
        tracebacks call the cell's ("Cell In[5], line 2"). When ``source`` is written on the
        lines of the IPython cell running now, the file's lines are the whole cell's, so that
        a traceback quotes the lines around a statement as IPython does; else None.
        """
        filename = self.shell.compile.cache(source, self._execution_count())
        plan = self._cell
        if plan is None or not plan.on_cell_lines(source):
            return filename, None
        return filename, [line + "\n" for line in plan.source.splitlines()]

    def _notebook_cell(self) -> Hashable:
        """The notebook cell running now: Jupyter's cell id (a front end sends it with each
        execution), else the execution number, so every execution is a cell of its own."""
        parent = getattr(self.shell, "parent_header", None)
        metadata = parent.get("metadata") if isinstance(parent, dict) else None
        cell_id = metadata.get("cellId") if isinstance(metadata, dict) else None
        if isinstance(cell_id, str) and cell_id:
            return cell_id
        return self._execution_count()

    def _execution_count(self) -> int:
        """The number of the IPython cell running now (``In[n]``)."""
        result = getattr(self.shell.displayhook, "exec_result", None)
        count = getattr(result, "execution_count", None)
        return count if isinstance(count, int) else self.shell.execution_count

    def _look(self, name: str) -> Any:
        """A bare name: its value, without entering a cell (as the REPL does).

        A pending name shows a placeholder that is filled when the value arrives.
        """
        ws = self.ws
        if name not in ws:
            ns = ws.namespace
            if name in ns:
                return ns[name]
            if hasattr(builtins, name):
                return getattr(builtins, name)
            raise self._errors.tag(NameError(f"name {name!r} is not defined"), None)
        if describe_name(ws, name) is not None:  # pending or stale
            cell = ws.cell(name)
            self._displays.show(cell, own=True)
            return None
        failure: SperseError
        try:
            return ws[name]
        except SperseError as exc:
            failure = exc
        raise self._errors.presentable(failure)

    def _reconcile(self, new_after: int | None = None) -> None:
        """Bring the displays up to date (see ``Displays.reconcile``)."""
        if self._closed:
            return
        self._displays.reconcile(new_after)

    # ---- draining the cluster's queue -----------------------------------------

    def drain(self) -> None:
        """Apply what has arrived, on this thread, and show it."""
        if self._closed or self._displays.entering is not None:
            return  # inside run(): the workspace drains itself
        try:
            self.ws.process_events()
        finally:
            self._reconcile()

    def _pre_execute(self) -> None:
        self._displays.executing = True
        self._parts = 0
        self._displays.replay()
        self.drain()

    def _post_execute(self) -> None:
        try:
            self.drain()
            self._hook()
        finally:
            self._displays.executing = False
            self._errors.untag()

    def _hook(self) -> None:
        """Have the workspace's cluster wake the kernel's loop (a Jupyter kernel only)."""
        if not self._closed:
            self._waker.hook(self.ws.cluster)


class _Router(ast.NodeTransformer):
    """The extension's entry in ``shell.ast_transformers`` (IPython calls ``visit``)."""

    def __init__(self, extension: Extension) -> None:
        self._extension = extension

    def visit(self, node: ast.AST) -> ast.AST:
        return self._extension.route(node)

    def __repr__(self) -> str:
        return "<sperse cell router>"
