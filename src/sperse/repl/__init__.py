"""The terminal front end: the ``sperse`` REPL, its ``%`` commands, and ``sperse run``.

- :class:`Repl`: the prompt (prompt_toolkit) on a workspace; arrivals print
  above the line being typed.
- :class:`Session`: what a front end does with an input, without a terminal
  (commands, looking at names, entering statements, showing arrivals).
- :data:`COMMANDS`: the ``%`` commands, as :class:`Command` objects in a
  :class:`CommandRegistry`, for other front ends (IPython) to reuse.
- :func:`run_script`: ``sperse run script.py``.

Names are imported on first use, so importing the command table does not
load prompt_toolkit.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sperse.repl._app import Repl, history_path
    from sperse.repl._commands import COMMANDS, Arg, Args, Command, CommandRegistry, UsageError
    from sperse.repl._script import run_script
    from sperse.repl._session import Session

__all__ = [
    "COMMANDS",
    "Arg",
    "Args",
    "Command",
    "CommandRegistry",
    "Repl",
    "Session",
    "UsageError",
    "history_path",
    "run_script",
]

_LAZY = {
    "Repl": "sperse.repl._app",
    "history_path": "sperse.repl._app",
    "COMMANDS": "sperse.repl._commands",
    "Arg": "sperse.repl._commands",
    "Args": "sperse.repl._commands",
    "Command": "sperse.repl._commands",
    "CommandRegistry": "sperse.repl._commands",
    "UsageError": "sperse.repl._commands",
    "run_script": "sperse.repl._script",
    "Session": "sperse.repl._session",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sperse.repl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
