"""Tab completion at the prompt: workspace names, attributes of ready values, commands.

Completion runs on the prompt's thread (the user's thread), so it reads the
workspace directly. It never waits and never fetches: a pending name is
offered with the meta text "pending", and attributes are offered only for
values that are here and ready (not for one still pending or kept on a server).
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from sperse._serialize import RemoteValue
from sperse._workspace import Workspace
from sperse.repl._commands import CommandRegistry

__all__ = ["WorkspaceCompleter"]

_NAME_AT_END = re.compile(r"[A-Za-z_]\w*$")
_ATTRIBUTE_AT_END = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\.(\w*)$")
_MISSING = object()


class WorkspaceCompleter(Completer):
    def __init__(self, workspace: Callable[[], Workspace], commands: CommandRegistry) -> None:
        self._workspace = workspace
        self._commands = commands

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterator[Completion]:
        text = document.text_before_cursor
        if document.text.lstrip().startswith("%") and "\n" not in text:
            yield from self._command(text.lstrip()[1:])
            return
        if _in_string_or_comment(document.current_line_before_cursor):
            return
        match = _ATTRIBUTE_AT_END.search(text)
        if match is not None:
            yield from self._attributes(match.group(1), match.group(2))
            return
        match = _NAME_AT_END.search(text)
        if match is not None:
            yield from self._names(match.group(0))

    # ---- names ---------------------------------------------------------------

    def _names(self, prefix: str) -> Iterator[Completion]:
        ws = self._workspace()
        seen: set[str] = set()
        pending = ws.pending()
        for name in ws:
            if name.startswith(prefix) and name not in seen:
                seen.add(name)
                yield Completion(name, -len(prefix), display_meta=self._meta(ws, name, pending))
        others: Iterable[str] = (
            *sorted(k for k in ws.namespace if not k.startswith("__")),
            *keyword.kwlist,
            *keyword.softkwlist,
            "remote",
            *sorted(dir(builtins)),
        )
        for name in others:
            if name.startswith(prefix) and name not in seen and _visible(name, prefix):
                seen.add(name)
                yield Completion(name, -len(prefix))

    @staticmethod
    def _meta(ws: Workspace, name: str, pending: dict[str, str]) -> str:
        if name in pending:
            return "pending"
        status = ws.cell(name).status
        if status != "done":
            return status
        value = ws.namespace.get(name, _MISSING)
        if value is _MISSING:
            return ""
        if isinstance(value, RemoteValue):
            return f"{value.ref.type_name} on {value.ref.server}"
        return type(value).__name__

    # ---- attributes ----------------------------------------------------------

    def _attributes(self, path: str, prefix: str) -> Iterator[Completion]:
        value = self._resolve(path)
        if value is _MISSING:
            return
        try:
            names = dir(value)
        except Exception:
            return
        for name in sorted(names):
            if name.startswith(prefix) and _visible(name, prefix):
                yield Completion(name, -len(prefix))

    def _resolve(self, path: str) -> Any:
        """The object ``path`` (``a.b.c``) names, if its root is ready and here."""
        ws = self._workspace()
        root, *attributes = path.split(".")
        if root in ws:
            if ws.cell(root).status != "done":
                return _MISSING
            value = ws.namespace.get(root, _MISSING)
        elif root in ws.namespace:
            value = ws.namespace[root]
        else:
            value = getattr(builtins, root, _MISSING)
        for attribute in attributes:
            if value is _MISSING or isinstance(value, RemoteValue):
                return _MISSING
            try:
                value = getattr(value, attribute)
            except Exception:
                return _MISSING
        if isinstance(value, RemoteValue):
            return _MISSING  # kept on its server: %fetch it first
        return value

    # ---- commands ------------------------------------------------------------

    def _command(self, line: str) -> Iterator[Completion]:
        words = line.split(" ")
        if len(words) == 1:
            prefix = words[0]
            for command in self._commands:
                if command.name.startswith(prefix):
                    yield Completion(
                        command.name,
                        -len(prefix),
                        display=f"%{command.name}",
                        display_meta=command.summary,
                    )
            return
        found = self._commands.get(words[0])
        position = len([w for w in words[1:-1] if w])
        if found is None or position >= len(found.args):
            return
        arg = found.args[position]
        prefix = words[-1]
        if arg.kind == "name":
            yield from self._names_only(prefix)
        elif arg.kind == "choice":
            yield from (Completion(c, -len(prefix)) for c in arg.choices if c.startswith(prefix))
        elif arg.kind == "command":
            names = [c.name for c in self._commands]
            yield from (Completion(n, -len(prefix)) for n in names if n.startswith(prefix))

    def _names_only(self, prefix: str) -> Iterator[Completion]:
        ws = self._workspace()
        pending = ws.pending()
        for name in ws:
            if name.startswith(prefix):
                yield Completion(name, -len(prefix), display_meta=self._meta(ws, name, pending))


def _visible(name: str, prefix: str) -> bool:
    """Private names only when the prefix asks for them."""
    return not name.startswith("_") or prefix.startswith("_")


def _in_string_or_comment(line: str) -> bool:
    """A rough check on the current line: inside an open quote or after ``#``."""
    quote = ""
    index = 0
    while index < len(line):
        char = line[index]
        if quote:
            if char == "\\":
                index += 1
            elif line.startswith(quote, index):
                index += len(quote) - 1
                quote = ""
        elif char == "#":
            return True
        elif char in "'\"":
            quote = char * 3 if line.startswith(char * 3, index) else char
            index += len(quote) - 1
        index += 1
    return bool(quote)
