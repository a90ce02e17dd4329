"""Errors as IPython should show them: short, with the user's frames only.

A local exception keeps its traceback from the user's statement on (the workspace running the
cell is hidden); Sperse's errors show in one line, or with the remote traceback. The text is
given to IPython through the ``_render_traceback_`` hook (ipyparallel's way), set on the
exception until the IPython cell ends (``untag``).
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Final

from IPython.core.interactiveshell import InteractiveShell

from sperse.errors import CellError, SperseError
from sperse.repl._display import format_error

__all__ = ["ErrorPresenter"]

_SPERSE_DIR: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ErrorPresenter:
    """Turns exceptions into the ones to raise for IPython, and forgets them after the cell."""

    def __init__(self, shell: InteractiveShell) -> None:
        self._shell = shell
        self._tagged: list[BaseException] = []

    def presentable(self, exc: BaseException) -> BaseException:
        """The exception to raise for IPython to show: short, without Sperse's frames."""
        if isinstance(exc, SyntaxError):
            return exc  # IPython shows the line and the caret
        if isinstance(exc, CellError) and exc.__cause__ is not None:
            exc = exc.__cause__
        elif isinstance(exc, SperseError):
            return self.tag(exc, format_error(exc).splitlines())
        # From the user's statement on, as IPython shows a cell's traceback from the cell's
        # frame on: no frame to skip (IPython's own tb_offset skips its run_code frame).
        tb = _user_traceback(exc.__traceback__)
        stb = self._shell.InteractiveTB.structured_traceback(type(exc), exc, tb, tb_offset=0)
        return self.tag(exc, stb)

    def tag(self, exc: BaseException, stb: list[str] | None) -> BaseException:
        """Give ``exc`` IPython's ``_render_traceback_`` hook (ipyparallel's way), until the
        cell ends: IPython then shows ``stb`` instead of a traceback of the machinery."""
        lines = stb if stb is not None else [f"{type(exc).__name__}: {exc}"]
        exc.__dict__["_render_traceback_"] = lambda: list(lines)
        self._tagged.append(exc)
        return exc

    def untag(self) -> None:
        tagged, self._tagged = self._tagged, []
        for exc in tagged:
            exc.__dict__.pop("_render_traceback_", None)


def _user_traceback(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` from its first frame outside Sperse on: the workspace running the cell is hidden."""
    first = tb
    while first is not None and os.path.abspath(first.tb_frame.f_code.co_filename).startswith(
        _SPERSE_DIR + os.sep
    ):
        first = first.tb_next
    return first if first is not None else tb
