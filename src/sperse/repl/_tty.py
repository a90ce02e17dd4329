"""The terminal's modes while the REPL runs, so that no key typed ahead is lost.

A terminal in its usual (canonical) mode reads the keys itself, in the kernel's
line discipline: Ctrl-D at the start of a line becomes an end of file for
whoever reads next (a NUL byte, Ctrl-@, once the prompt reads in raw mode: no
exit), Ctrl-C becomes SIGINT for whatever the process is doing at that moment,
and text is echoed wherever the cursor is. prompt_toolkit reads in raw mode only
while a prompt runs, puts the terminal back between prompts, and switches to
cooked mode while arrivals print above the prompt (``run_in_terminal``): a key
pressed in those gaps was taken by the line discipline.

Invariants, from the start of :meth:`Repl.run` to its end:

- *Held* (the raw mode the prompt reads in): the prompt, the gap between two
  prompts, and while arrivals are applied (above the prompt or between
  statements, local cells they start included). Every key, Ctrl-D and Ctrl-C
  too, waits unechoed for the next prompt, which reads it as if typed there.
- *Statement* (the person's own settings with the end-of-file character
  switched off): while a statement runs. Ctrl-C interrupts it
  (``KeyboardInterrupt``), ``input()`` has its echo and line editing, and Ctrl-D
  is an ordinary key kept for the next prompt, not an end of file nobody reads.
- The person's own settings come back when the REPL ends, however it ends.

Off a terminal (stdin a pipe or a file) every switch does nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import termios
from collections.abc import Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from prompt_toolkit.input import Input, create_input
from prompt_toolkit.input.vt100 import Vt100Input

__all__ = ["HeldInput", "TtyModes", "prompt_input"]

_IFLAG, _LFLAG, _CC = 0, 3, 6  # indexes in termios.tcgetattr's list


class HeldInput(Vt100Input):
    """prompt_toolkit's terminal input, kept raw while output is printed above the prompt."""

    def cooked_mode(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def prompt_input() -> Input:
    """A :class:`HeldInput` on stdin, or prompt_toolkit's default where stdin has no fd."""
    return create_input() if _stdin_fd() is None else HeldInput(sys.stdin)


class TtyModes:
    """The held and statement modes of the terminal on ``fd`` (stdin's by default); a
    context manager that holds the keys inside and gives the person's settings back after."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = _stdin_fd() if fd is None else fd
        self._own: list[Any] | None = None
        if self._fd is not None:
            with contextlib.suppress(termios.error):  # not a terminal
                self._own = termios.tcgetattr(self._fd)

    def __enter__(self) -> TtyModes:
        self.hold()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._set(self._own)

    def hold(self) -> None:
        """Held mode: as prompt_toolkit's ``raw_mode`` sets it, so the prompt finds it as is."""
        if self._own is None:
            return
        attrs = _copy(self._own)
        attrs[_LFLAG] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        attrs[_IFLAG] &= ~(
            termios.IXON | termios.IXOFF | termios.ICRNL | termios.INLCR | termios.IGNCR
        )
        attrs[_CC][termios.VMIN] = 1
        attrs[_CC][termios.VTIME] = 0
        self._set(attrs)

    @contextlib.contextmanager
    def statement(self) -> Iterator[None]:
        """Statement mode inside, held again after (also when the statement is interrupted)."""
        if self._own is not None and self._fd is not None:
            attrs = _copy(self._own)
            attrs[_CC][termios.VEOF] = bytes([_disabled_char(self._fd)])
            self._set(attrs)
        try:
            yield
        finally:
            self.hold()

    def _set(self, attrs: list[Any] | None) -> None:
        if attrs is None or self._fd is None:
            return
        with contextlib.suppress(termios.error):  # the terminal went away: nothing to keep
            termios.tcsetattr(self._fd, termios.TCSANOW, attrs)


def _copy(attrs: list[Any]) -> list[Any]:
    return [*attrs[:_CC], list(attrs[_CC])]


def _disabled_char(fd: int) -> int:
    """The value that switches a special character off (``_POSIX_VDISABLE``)."""
    try:
        value = os.fpathconf(fd, "PC_VDISABLE")
    except (OSError, ValueError):
        return 0  # Linux's
    return value if 0 <= value <= 255 else 0
