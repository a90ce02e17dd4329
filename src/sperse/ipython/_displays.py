"""The displays of workspace cells in an IPython shell: placeholders, and news of arrivals.

A cell that is not settled when its IPython cell ends (pending, running, stale, blocked) gets
a display with an id: a placeholder (``<pending y: waiting for x>``), updated in place every
time the cell's state or value changes afterwards, for as long as the cell lives. A cell that
settled at once shows nothing more (its value was ``Out[n]``); when a cell with names changes
later, or any cell fails, the news gets a display below the IPython cell being run then,
updated in place afterwards. Updates published while a cell executes carry that cell's parent
header (as IPython's ``DisplayHandle.update`` does); updates published while the kernel is
idle carry the parent header of the cell the display belongs to, and are sent again when the
next cell starts (``replay``), for front ends that only listen to the cell they run
(nbclient, ``nbconvert --execute``).

Everything here runs on the shell's thread.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from IPython.core.interactiveshell import InteractiveShell
from IPython.display import display

from sperse._workspace import Cell, CellEvent, Workspace
from sperse.errors import SperseError
from sperse.repl._display import describe_name, format_arrival, short_repr

__all__ = ["Displays"]

_UNSETTLED: Final = frozenset({"pending", "running", "stale"})
_SETTLED: Final = frozenset({"done", "failed", "blocked"})
_VALUE_WIDTH: Final = 200
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


class Displays:
    """Every display of the workspace's cells, kept up to date by ``reconcile``.

    The extension sets ``executing`` (an IPython cell runs now) and ``entering`` (cells with
    a larger id are being entered by ``run``, which shows them itself).
    """

    def __init__(self, shell: InteractiveShell, ws: Workspace, *, kernel: bool) -> None:
        self._shell = shell
        self._ws = ws
        self._kernel = kernel
        self._displays: dict[int, list[_Display]] = {}
        self._dirty: set[int] = set()
        self._replay: dict[str, _Display] = {}  # updated while idle: sent again in the next cell
        self.entering: int | None = None
        self.executing = False

    def on_event(self, event: CellEvent) -> None:
        """The workspace's subscriber: note the cell to bring up to date."""
        if event.kind == "swapped":  # said once, where it happened (the running cell)
            print(format_arrival(self._ws, event))
            return
        if self.entering is not None and event.cell.id > self.entering:
            return  # a cell being entered: run() shows it
        self._dirty.add(event.cell.id)

    def replay(self) -> None:
        """Send again the updates published while idle (a new IPython cell starts)."""
        replay, self._replay = self._replay, {}
        for d in replay.values():
            self._publish(d, d.data)

    def close(self) -> None:
        """Say, in every display still waiting, that its cell was cancelled."""
        for displays in self._displays.values():
            for d in displays:
                if d.status in _UNSETTLED:
                    what = ", ".join(d.names) or "this cell"
                    self._publish(
                        d, _text(f"<{what}: cancelled, the sperse extension was unloaded>")
                    )
        self._displays.clear()

    def reconcile(self, new_after: int | None = None) -> None:
        """Bring every display up to date with its cell; show cells that need a display.

        ``new_after``: cells with a larger id were entered by the IPython cell running now.
        """
        dirty, self._dirty = self._dirty, set()
        live: set[int] = set()
        for cell in self._ws.cells():
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
                self.show(cell, own=new)
            elif (
                not new
                and cell.id in dirty
                and status in _SETTLED
                and (status != "done" or _owned(self._ws, cell))  # a new value of `x * 2`: no news
            ):
                self.show(cell, own=False)
        for cell_id in [c for c in self._displays if c not in live]:
            for d in self._displays.pop(cell_id):
                if d.status in _UNSETTLED:
                    what = ", ".join(d.names) or "this cell"
                    self._publish(d, _text(f"<{what}: redefined before it was computed>"))

    def show(self, cell: Cell, *, own: bool) -> None:
        """A new display of ``cell`` below the IPython cell running now."""
        status = cell.status
        data, metadata = self._render(cell, status, own)
        if not own and data == _text(""):
            return  # `print(x)` ran again: its output is the news
        d = _Display(
            f"sperse-{uuid.uuid4().hex}", self._current_parent(), own, _owned(self._ws, cell)
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
        ws = self._ws
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
            formatter = self._shell.display_formatter
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
        parent = None if create or self.executing else d.parent
        if parent is not None:
            self._replay[d.id] = d
        with self._parent(parent):
            display(  # type: ignore[no-untyped-call]
                data, metadata=metadata or {}, raw=True, display_id=d.id, update=not create
            )

    def _current_parent(self) -> Any:
        get_parent = getattr(self._shell, "get_parent", None)
        return get_parent() if get_parent is not None else None

    @contextlib.contextmanager
    def _parent(self, parent: Any) -> Iterator[None]:
        """Publish as output of the request ``parent`` (ipykernel's thread parent)."""
        set_parent = getattr(self._shell, "set_thread_parent", None)
        reset_parent = getattr(self._shell, "reset_thread_parent", None)
        if parent is None or set_parent is None or reset_parent is None:
            yield
            return
        tokens = set_parent(parent)
        try:
            yield
        finally:
            reset_parent(tokens)


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
