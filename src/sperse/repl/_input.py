"""Reading statements: when is an input complete, and what does it ask for.

An input is complete when Python (through :mod:`codeop`, after the ``remote``
transform) would run it rather than ask for more lines, like the standard
prompt: ``remote[db]:`` needs its indented body, an open bracket needs its
close, a compound statement ends with an empty line. Input that cannot
parse is complete too, so pressing Enter shows the error at once.
"""

from __future__ import annotations

import ast
import codeop
import re
import warnings

from sperse._lang.transform import MARKER, transform

__all__ = ["bare_name", "indent_after", "is_command", "is_complete"]

_INDENT = "    "
_BLOCK_HEADER = re.compile(rf"with {MARKER}\(.*\):[ \t]*(#.*)?(\n|$)")


def is_command(text: str) -> bool:
    """A ``%name args`` line."""
    return text.lstrip().startswith("%")


def is_complete(text: str) -> bool:
    """Whether pressing Enter at the end of ``text`` should run it."""
    if not text.strip() or is_command(text):
        return True
    lines = text.split("\n")
    if len(lines) > 1 and not lines[-1].strip():
        return True  # an empty line ends a block, as at Python's prompt
    try:
        source = transform(text, "<input>")
    except SyntaxError:
        return True  # run it: the person sees the error and the caret
    if source is not text and not _BLOCK_HEADER.match(source.lstrip()):
        # A one-line form became `with marker(): body`, a compound statement on one line,
        # which codeop would hold open for an empty line: it is complete when its body is.
        source += "\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes and the like: shown when it runs
        try:
            code = codeop.compile_command(source, "<input>", "single")
        except (SyntaxError, ValueError, OverflowError):
            return True  # includes "multiple statements" (a paste): the workspace runs them
    return code is not None


def indent_after(line: str) -> str:
    """The indentation of the line after ``line``: one level more after a colon."""
    stripped = line.rstrip()
    indent = line[: len(line) - len(line.lstrip())]
    if stripped.endswith(":") and not stripped.lstrip().startswith("#"):
        return indent + _INDENT
    if stripped.lstrip().split(" ", 1)[0] in ("return", "pass", "break", "continue", "raise"):
        return indent[: max(0, len(indent) - len(_INDENT))]
    return indent


def bare_name(text: str) -> str | None:
    """The name if ``text`` is just a name (``model``), else None."""
    stripped = text.strip()
    if not stripped.isidentifier():
        return None
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError:
        return None  # a keyword
    return stripped if isinstance(tree.body, ast.Name) else None
