"""The extension object: one workspace per IPython shell, its displays and its magics.

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
only later, while the cell runs (the text transform ignores them, ``_executing``).

Displays. A cell that is not settled when its IPython cell ends (pending, running, stale,
blocked) gets a display with an id: a placeholder (``<pending y: waiting for x>``), updated in
place every time the cell's state or value changes afterwards, for as long as the cell lives.
A cell that settled at once shows nothing more (its value was ``Out[n]``); when a cell with
names changes later, or any cell fails, the news gets a display below the IPython cell being
run then, updated in place afterwards. Updates published while a cell executes carry that cell's parent header (as
IPython's ``DisplayHandle.update`` does); updates published while the kernel is idle carry the
parent header of the cell the display belongs to, and are sent again when the next cell
starts, for front ends that only listen to the cell they run (nbclient, ``nbconvert
--execute``).

Threads (DESIGN.md §2 rule 6). Everything here runs on the shell's thread. In a Jupyter kernel
the cluster's waker (called on the cluster's I/O thread) schedules a drain on the kernel's
asyncio loop with ``call_soon_threadsafe``, so arrivals are applied and shown while the kernel
is idle. In terminal IPython there is no loop to wake while the prompt waits: the queue is
drained before and after each cell (``pre_execute``/``post_execute``) and inside ``%wait``.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import contextvars
import linecache
import os
import shlex
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from IPython.core.error import InputRejected
from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.display import display

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import connect, current
from sperse._workspace import Cell, CellEvent, Workspace
from sperse.errors import CellError, SperseError, UsageError
from sperse.ipython._cells import Plan, plan_cell, remote_block, route_tree
from sperse.repl._commands import COMMANDS, Command, CommandRegistry
from sperse.repl._display import describe_name, format_arrival, format_error, short_repr
from sperse.repl._input import bare_name

__all__ = ["Extension"]

CELL_MAGIC: Final = "sperse_cell"
_UNSETTLED: Final = frozenset({"pending", "running", "stale"})
_SETTLED: Final = frozenset({"done", "failed", "blocked"})
_VALUE_WIDTH: Final = 200
_SPERSE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Data = dict[str, Any]


@dataclass(slots=True)
class _Display:
    """One output with a display id that shows a workspace cell."""

    id: str
    parent: Any  # the kernel message of the IPython cell it is in (None outside a kernel)
    own: bool  # in the IPython cell that entered the cell (else: news in a later one)
    names: tuple[str, ...]
    status: str = ""
    data: Data = field(default_factory=dict)


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
        self._displays: dict[int, list[_Display]] = {}
        self._dirty: set[int] = set()
        self._entering: int | None = None  # cells above this id are the ones being entered
        self._executing = False
        self._closed = False
        self._kernel = getattr(shell, "kernel", None) is not None
        self._loop = _running_loop() if self._kernel else None
        self._waker: tuple[Cluster, int] | None = None
        self._wake_lock = threading.Lock()
        self._wake_scheduled = False
        self._tagged: list[BaseException] = []
        self._replay: dict[str, _Display] = {}  # updated while idle: sent again in the next cell
        self._magics: list[tuple[str, str]] = []
        self._planned: Plan | None = None  # planned by transform(), for the next route()
        self._cell: Plan | None = None  # the plan of the IPython cell running now
        self._router = _Router(self)
        self._unsubscribe = self.ws.subscribe(self._on_event)
        self.remote_magic = self._free_name("remote", "cell")
        shell.input_transformers_post.append(self.transform)
        # First: the tree must be the one parsed from the text transform() planned.
        shell.ast_transformers.insert(0, self._router)
        shell.events.register("pre_execute", self._pre_execute)
        shell.events.register("post_execute", self._post_execute)
        self._register_magics(commands)
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
        self._unhook()
        self._unsubscribe()
        for displays in self._displays.values():
            for d in displays:
                if d.status in _UNSETTLED:
                    what = ", ".join(d.names) or "this cell"
                    self._publish(
                        d, _text(f"<{what}: cancelled, the sperse extension was unloaded>")
                    )
        self._displays.clear()
        self.ws.close()
        magics = shell.magics_manager.magics
        for kind, name in self._magics:
            magics[kind].pop(name, None)
        self._untag()

    # ---- routing: the input transformer, the tree transformer and the cell magic ----

    def transform(self, lines: list[str]) -> list[str]:
        """``input_transformers_post``: plan the cell; remote forms become ``with`` statements.

        A cell without remote forms comes back unchanged, so IPython's history holds what it
        holds without the extension. Only a cell the person runs: while a cell executes, code
        that a magic transforms stays plain IPython code.
        """
        if self._executing:
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
        self._entering = before
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
            self._entering = None
            self._reconcile(new_after=before)
        if failure is not None:
            raise self._presentable(failure)
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
            raise self._tag(NameError(f"name {name!r} is not defined"), None)
        if describe_name(ws, name) is not None:  # pending or stale
            cell = ws.cell(name)
            self._show(cell, own=True)
            return None
        failure: SperseError
        try:
            return ws[name]
        except SperseError as exc:
            failure = exc
        raise self._presentable(failure)

    # ---- errors --------------------------------------------------------------

    def _presentable(self, exc: BaseException) -> BaseException:
        """The exception to raise for IPython to show: short, without Sperse's frames."""
        if isinstance(exc, SyntaxError):
            return exc  # IPython shows the line and the caret
        if isinstance(exc, CellError) and exc.__cause__ is not None:
            exc = exc.__cause__
        elif isinstance(exc, SperseError):
            return self._tag(exc, format_error(exc).splitlines())
        # From the user's statement on, as IPython shows a cell's traceback from the cell's
        # frame on: no frame to skip (IPython's own tb_offset skips its run_code frame).
        tb = _user_traceback(exc.__traceback__)
        stb = self.shell.InteractiveTB.structured_traceback(type(exc), exc, tb, tb_offset=0)
        return self._tag(exc, stb)

    def _tag(self, exc: BaseException, stb: list[str] | None) -> BaseException:
        """Give ``exc`` IPython's ``_render_traceback_`` hook (ipyparallel's way), until the
        cell ends: IPython then shows ``stb`` instead of a traceback of the machinery."""
        lines = stb if stb is not None else [f"{type(exc).__name__}: {exc}"]
        exc.__dict__["_render_traceback_"] = lambda: list(lines)
        self._tagged.append(exc)
        return exc

    def _untag(self) -> None:
        tagged, self._tagged = self._tagged, []
        for exc in tagged:
            exc.__dict__.pop("_render_traceback_", None)

    # ---- displays --------------------------------------------------------------

    def _on_event(self, event: CellEvent) -> None:
        if self._entering is not None and event.cell.id > self._entering:
            return  # a cell being entered: run() shows it
        self._dirty.add(event.cell.id)

    def _reconcile(self, new_after: int | None = None) -> None:
        """Bring every display up to date with its cell; show cells that need a display.

        ``new_after``: cells with a larger id were entered by the IPython cell running now.
        """
        if self._closed:
            return
        dirty, self._dirty = self._dirty, set()
        live: set[int] = set()
        for cell in self.ws.cells():
            live.add(cell.id)
            status = cell.status
            displays = self._displays.get(cell.id)
            if displays:
                for d in displays:
                    if cell.id in dirty or d.status != status:
                        self._refresh(d, cell, status)
                continue
            new = new_after is not None and cell.id > new_after
            if status in _UNSETTLED or (new and status == "blocked"):
                self._show(cell, own=new)
            elif (
                not new
                and cell.id in dirty
                and status in _SETTLED
                and (status != "done" or _owned(self.ws, cell))  # a new value of `x * 2`: no news
            ):
                self._show(cell, own=False)
        for cell_id in [c for c in self._displays if c not in live]:
            for d in self._displays.pop(cell_id):
                if d.status in _UNSETTLED:
                    what = ", ".join(d.names) or "this cell"
                    self._publish(d, _text(f"<{what}: redefined before it was computed>"))

    def _show(self, cell: Cell, *, own: bool) -> None:
        status = cell.status
        data, metadata = self._render(cell, status, own)
        if not own and data == _text(""):
            return  # `print(x)` ran again: its output is the news
        d = _Display(
            f"sperse-{uuid.uuid4().hex}", self._current_parent(), own, _owned(self.ws, cell)
        )
        self._displays.setdefault(cell.id, []).append(d)
        self._publish(d, data, metadata, create=True)
        d.status = status

    def _refresh(self, d: _Display, cell: Cell, status: str) -> None:
        data, metadata = self._render(cell, status, d.own)
        if data != d.data:
            self._publish(d, data, metadata)
        d.status = status

    def _render(self, cell: Cell, status: str, own: bool) -> tuple[Data, Data]:
        ws = self.ws
        if status in _UNSETTLED:
            text = _placeholder(ws, cell, status)
            return _text(text if own else f"[{cell.id}] {text}"), {}
        if status == "done" and own:
            names = _owned(ws, cell)
            if names:
                ns = ws.namespace
                return _text(
                    "\n".join(f"{n} = {short_repr(ns.get(n), _VALUE_WIDTH)}" for n in names)
                ), {}
            value = cell.value
            if value is None:
                return _text(""), {}
            formatter = self.shell.display_formatter
            assert formatter is not None
            try:
                data, metadata = formatter.format(value)  # type: ignore[no-untyped-call]
            except Exception:  # a broken _repr_*_: show the short repr instead
                return _text(short_repr(value, _VALUE_WIDTH)), {}
            return dict(data), dict(metadata)
        if status == "failed":
            event = CellEvent(cell, "failed", error=cell.error)
        elif status == "blocked":
            event = CellEvent(cell, "blocked", error=cell.error)
        else:
            event = CellEvent(cell, "done", value=cell.value)
        return _text(format_arrival(ws, event)), {}

    def _publish(
        self, d: _Display, data: Data, metadata: Data | None = None, *, create: bool = False
    ) -> None:
        d.data = data
        if not self._kernel and data == _text(""):
            return  # a terminal would print an empty line
        parent = None if create or self._executing else d.parent
        if parent is not None:
            self._replay[d.id] = d
        with self._parent(parent):
            display(  # type: ignore[no-untyped-call]
                data, metadata=metadata or {}, raw=True, display_id=d.id, update=not create
            )

    def _current_parent(self) -> Any:
        get_parent = getattr(self.shell, "get_parent", None)
        return get_parent() if get_parent is not None else None

    @contextlib.contextmanager
    def _parent(self, parent: Any) -> Iterator[None]:
        """Publish as output of the request ``parent`` (ipykernel's thread parent)."""
        set_parent = getattr(self.shell, "set_thread_parent", None)
        reset_parent = getattr(self.shell, "reset_thread_parent", None)
        if parent is None or set_parent is None or reset_parent is None:
            yield
            return
        tokens = set_parent(parent)
        try:
            yield
        finally:
            reset_parent(tokens)

    # ---- draining the cluster's queue -----------------------------------------

    def drain(self) -> None:
        """Apply what has arrived, on this thread, and show it."""
        if self._closed or self._entering is not None:
            return  # inside run(): the workspace drains itself
        try:
            self.ws.process_events()
        finally:
            self._reconcile()

    def _pre_execute(self) -> None:
        self._executing = True
        self._parts = 0
        replay, self._replay = self._replay, {}
        for d in replay.values():
            self._publish(d, d.data)
        self.drain()

    def _post_execute(self) -> None:
        try:
            self.drain()
            self._hook()
        finally:
            self._executing = False
            self._untag()

    def _hook(self) -> None:
        """Have the workspace's cluster wake the kernel's loop (a Jupyter kernel only)."""
        if self._kernel and self._loop is None:
            self._loop = _running_loop()
        if self._loop is None or self._closed:
            return
        cluster = self.ws.cluster
        if self._waker is not None and self._waker[0] is cluster:
            return
        self._unhook()
        self._waker = (cluster, cluster.add_waker(self._wake))

    def _unhook(self) -> None:
        if self._waker is not None:
            cluster, key = self._waker
            cluster.remove_waker(key)
            self._waker = None

    def _wake(self) -> None:
        """On the cluster's I/O thread: schedule one drain on the kernel's loop."""
        loop = self._loop
        assert loop is not None
        with self._wake_lock:
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the kernel is stopping
            # A context of its own: output goes to the last request, not the I/O thread's.
            loop.call_soon_threadsafe(self._drain_from_loop, context=contextvars.Context())

    def _drain_from_loop(self) -> None:
        with self._wake_lock:
            self._wake_scheduled = False
        try:
            self.drain()
        except Exception:  # a `then` callback that failed: show it, keep the kernel going
            self.shell.showtraceback()

    # ---- magics ----------------------------------------------------------------

    def _free_name(self, name: str, kind: str) -> str:
        """``name``, or ``sperse_name`` when the shell has a magic of that name already."""
        taken = self.shell.magics_manager.magics[kind]
        return f"sperse_{name}" if name in taken else name

    def _register(self, fn: Callable[..., Any], kind: str, name: str) -> None:
        self.shell.magics_manager.register_function(fn, magic_kind=kind, magic_name=name)
        self._magics.append((kind, name))

    def _register_magics(self, commands: CommandRegistry) -> None:
        for command in commands:
            self._register(
                self._command_magic(command), "line", self._free_name(command.name, "line")
            )
        self._register(self._remote_magic, "cell", self.remote_magic)
        self._register(self._cell_magic, "cell", CELL_MAGIC)
        self._register(self._connect_magic, "line", self._free_name("sperse_connect", "line"))

    def _command_magic(self, command: Command) -> Callable[[str], None]:
        def magic(line: str) -> None:
            failure: BaseException | None = None
            text = ""
            try:
                text = command(self.ws, line, _say)
            except UsageError as exc:
                failure = IPythonUsageError(str(exc))
            except SperseError as exc:
                failure = self._presentable(exc)
            finally:
                self._reconcile()
            if failure is not None:
                raise failure
            if text:
                print(text, flush=True)

        magic.__name__ = command.name
        magic.__doc__ = f"{command.usage}\n\n{command.help.strip()}"
        return magic

    def _remote_magic(self, line: str, cell: str) -> Any:
        """%%remote [placement]: run the whole cell remotely, as one ``remote[placement]:`` block."""
        return self.run(remote_block(line, cell))

    def _cell_magic(self, line: str, cell: str) -> Any:
        """Run the cell through the sperse workspace (what the extension does with every cell)."""
        return self.run(cell)

    def _connect_magic(self, line: str) -> None:
        """%sperse_connect [URL] [--token TOKEN]: run remote cells on another cluster.

        Without a URL, a new embedded server. Work still running on the old cluster ends
        in errors.
        """
        usage = "usage: %sperse_connect [sperse://host:port] [--token TOKEN]"
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise IPythonUsageError(f"{exc}; {usage}") from None
        url: str | None = None
        token: str | None = None
        while words:
            word = words.pop(0)
            if word == "--token" and words:
                token = words.pop(0)
            elif word.startswith("--token="):
                token = word.removeprefix("--token=")
            elif url is None and not word.startswith("-"):
                url = word
            else:
                raise IPythonUsageError(f"unexpected `{word}`; {usage}")
        failure: BaseException | None = None
        try:
            cluster = connect(url, token=token)
        except SperseError as exc:
            failure = self._presentable(exc)
        if failure is not None:
            raise failure
        self._hook()
        names = ", ".join(info.name for info in cluster.servers()) or "none yet"
        where = url or "a new embedded server"
        print(f"connected to {where}; servers: {names}", flush=True)
        if self.ws.cluster is not cluster:
            print("this workspace keeps its cluster (it is not the default one)", flush=True)


class _Router(ast.NodeTransformer):
    """The extension's entry in ``shell.ast_transformers`` (IPython calls ``visit``)."""

    def __init__(self, extension: Extension) -> None:
        self._extension = extension

    def visit(self, node: ast.AST) -> ast.AST:
        return self._extension.route(node)

    def __repr__(self) -> str:
        return "<sperse cell router>"


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop running this thread: in a kernel, the one its cells run in."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # loaded at kernel start-up (an `extensions` setting), before the loop
        return None


def _say(text: str) -> None:
    print(text, flush=True)


def _text(text: str) -> Data:
    return {"text/plain": text}


def _owned(ws: Workspace, cell: Cell) -> tuple[str, ...]:
    """The names ``cell`` still defines (a newer cell may have taken some)."""
    try:
        defs = cell.defs
    except SperseError:
        return ()
    return tuple(n for n in sorted(defs) if n in ws and ws.cell(n).id == cell.id)


def _placeholder(ws: Workspace, cell: Cell, status: str) -> str:
    names = _owned(ws, cell)
    if names:
        return "\n".join(describe_name(ws, n) or f"<pending {n}>" for n in names)
    if status == "stale":
        return f"<stale [{cell.id}]: {ws.stale_reason(cell.id)}; %run_stale runs it>"
    if status == "running":
        if cell.where:
            return f"<pending [{cell.id}]: running on {cell.where} for {cell.elapsed or 0.0:.1f} s>"
        return f"<pending [{cell.id}]: submitted>"
    return f"<pending [{cell.id}]: waiting for its inputs>"


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from its first frame outside Sperse on: the workspace running the cell is hidden."""
    first = tb
    while first is not None and os.path.abspath(first.tb_frame.f_code.co_filename).startswith(
        _SPERSE_DIR + os.sep
    ):
        first = first.tb_next
    return first if first is not None else tb
