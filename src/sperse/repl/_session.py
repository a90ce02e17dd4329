"""``Session``: inputs in, text out; the part of a front end that is not a terminal.

The REPL and ``sperse run`` both run what the person wrote through a
``Session``: ``%`` lines go to the command table, a bare name is looked at
(never waited for), everything else is entered into the workspace. What a
statement produces at once is shown below it (an expression's value, an
error); what happens later to any cell is an *arrival*, shown when the
workspace hears of it, which is whenever the cluster's queue is drained on
this thread (DESIGN.md §2 rule 6): by the REPL while it waits for input,
between statements, and inside ``%wait``.

Every method runs on the user's thread.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Callable
from typing import TextIO

from sperse._workspace import Cell, CellEvent, Workspace
from sperse.errors import SperseError
from sperse.repl._commands import COMMANDS, CommandRegistry, UsageError
from sperse.repl._display import describe_name, format_arrival, format_error
from sperse.repl._input import bare_name, is_command

__all__ = ["Session"]

_MISSING = object()


def _stdout() -> TextIO:
    return sys.stdout


def _stderr() -> TextIO:
    return sys.stderr


class Session:
    """Runs inputs in ``ws`` and shows what happens, as a Python prompt would.

    ``show_values``: print the value of an expression statement (the REPL), or
    not (a script).
    """

    def __init__(
        self,
        ws: Workspace,
        *,
        commands: CommandRegistry = COMMANDS,
        show_values: bool = True,
        show_arrivals: bool = True,
        out: Callable[[], TextIO] = _stdout,
        err: Callable[[], TextIO] = _stderr,
    ) -> None:
        self.ws = ws
        self.commands = commands
        self.show_values = show_values
        self.show_arrivals = show_arrivals
        self._out = out
        self._err = err
        self._entering: int | None = None  # cells above this id belong to the input being run
        self._unsubscribe = ws.subscribe(self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    # ---- output --------------------------------------------------------------

    def write(self, text: str) -> None:
        stream = self._out()
        stream.write(text + "\n")
        stream.flush()

    def error(self, text: str) -> None:
        self._out().flush()
        stream = self._err()
        stream.write(text + "\n")
        stream.flush()

    # ---- inputs --------------------------------------------------------------

    def execute(self, text: str) -> bool:
        """Run one input from the prompt. False if it failed (the error is shown)."""
        if not text.strip():
            return True
        if is_command(text):
            return self.command(text)
        name = bare_name(text)
        if name is not None:
            return self.look_at(name)
        return self.run(text)

    def command(self, line: str) -> bool:
        try:
            text = self.commands.execute(self.ws, line.strip(), self.write)
        except UsageError as exc:
            self.error(f"UsageError: {exc}")
            return False
        except SperseError as exc:
            self.error(format_error(exc))
            return False
        except Exception as exc:  # a bug: say so, and keep the session
            self.error(f"internal error in {line.split()[0]}: {format_error(exc)}")
            return False
        if text:
            self.write(text)
        return True

    def look_at(self, name: str) -> bool:
        """Show a name without entering a cell: a pending one is described, never waited for."""
        ws = self.ws
        if name not in ws:  # a builtin, or a name the workspace does not track (`__name__`)
            value = ws.namespace.get(name, getattr(builtins, name, _MISSING))
            if value is _MISSING:
                self.error(f"NameError: name {name!r} is not defined")
                return False
            if value is not None and self.show_values:
                self.write(_repr(value))
            return True
        state = describe_name(ws, name)
        if state is not None:
            self.write(state)
            return True
        try:
            value = ws[name]
        except Exception as exc:  # its error, or a failed fetch
            self.error(format_error(exc))
            return False
        if value is not None and self.show_values:
            self.write(_repr(value))
        return True

    def run(self, source: str, filename: str | None = None) -> bool:
        """Enter ``source`` into the workspace and show what it produced at once.

        ``filename``: the file the source came from, shown in its tracebacks.
        """
        ws = self.ws
        self._entering = max((cell.id for cell in ws.cells()), default=0)
        try:
            cells = ws.run(source, filename)
        except Exception as exc:  # SyntaxError, SperseError; ValueError for a null byte...
            self.error(format_error(exc))
            return False
        finally:
            self._entering = None
        for cell in cells:
            self._show(cell)
        return True

    def _show(self, cell: Cell) -> None:
        status = cell.status
        if status == "done":
            value = cell.value
            if value is not None and self.show_values:
                self.write(_repr(value))
        elif status in ("pending", "running") and not cell.defs and self.show_values:
            self.write(f"<pending [{cell.id}]: {_waiting(cell)}>")
        elif status == "blocked":
            try:
                cell.value  # noqa: B018 - raises the UpstreamError that explains it
            except SperseError as exc:
                self.error(format_error(exc))

    # ---- arrivals ------------------------------------------------------------

    def _on_event(self, event: CellEvent) -> None:
        if event.kind == "swapped":  # said as it happens, below the statement entered
            self.write(format_arrival(self.ws, event))
            return
        if self._entering is not None and event.cell.id > self._entering:
            return  # shown by run(), below the statement
        if not self.show_arrivals and event.kind == "done":
            return
        text = format_arrival(self.ws, event)
        if not text:
            return
        if event.kind == "done":
            self.write(text)
        else:
            self.error(text)

    def drain(self) -> int:
        """Apply what has arrived (arrivals are shown as they are applied)."""
        return self.ws.process_events()


def _waiting(cell: Cell) -> str:
    if cell.status == "running":
        if cell.where:
            return f"running on {cell.where} for {cell.elapsed or 0.0:.1f} s"
        return "submitted"
    return "waiting for its inputs"


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:
        return f"<{type(value).__name__} (repr failed: {type(exc).__name__}: {exc})>"
