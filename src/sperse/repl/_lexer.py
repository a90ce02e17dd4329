"""Syntax highlighting for the prompt: Python, plus ``remote[...]`` and ``%`` commands.

:class:`SperseLexer` is pygments' Python lexer with a pass over its tokens: a
``remote`` that starts a remote form (at the start of a line or after
``targets =``, followed by ``[placement]``, by the start of an expression, or
by ``:`` at the end of the line; the same lookahead as the transform's) is a
keyword, and its placement is shown as one. A ``%name`` at the start of the
input is a command. Everything else is highlighted as pygments does it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from pygments.lexers.python import PythonLexer
from pygments.token import (
    Keyword,
    Name,
    Operator,
    Punctuation,
    Text,
    Token,
    _TokenType,
    is_token_subtype,
)

__all__ = ["COMMAND", "PLACEMENT", "REMOTE", "STYLE", "SperseLexer"]

REMOTE = Keyword.Remote
PLACEMENT = Name.Placement
COMMAND = Name.Command

# prompt_toolkit style rules for the tokens pygments does not know.
STYLE = {
    "pygments.keyword.remote": "bold #ansimagenta",
    "pygments.name.placement": "#ansicyan",
    "pygments.name.command": "bold #ansiblue",
}

_Tok = tuple[int, _TokenType, str]

# Names that can follow an expression, so `remote <name>` may be ordinary Python.
_CONTINUES = frozenset({"and", "or", "if", "else", "in", "is", "for", "async", "as", "import"})


def _is(kind: _TokenType, parent: _TokenType) -> bool:
    return is_token_subtype(kind, parent)


def _blank(token: _Tok) -> bool:
    return _is(token[1], Text) and not token[2].strip()


class SperseLexer(PythonLexer):
    """Python with the ``remote`` syntax and ``%`` commands."""

    name = "Sperse"
    aliases: ClassVar[list[str]] = ["sperse"]
    filenames: ClassVar[list[str]] = []

    def get_tokens_unprocessed(self, text: str, stack: Any = ("root",)) -> Iterator[_Tok]:
        tokens: list[_Tok] = list(super().get_tokens_unprocessed(text, stack))
        if text.lstrip().startswith("%"):
            yield from _command(tokens)
            return
        index = 0
        while index < len(tokens):
            token = tokens[index]
            if _is(token[1], Name) and token[2] == "remote" and _at_statement_start(tokens, index):
                end = _remote_form(tokens, index)
                if end is not None:
                    yield token[0], REMOTE, token[2]
                    for pos, _, value in tokens[index + 1 : end]:
                        yield pos, PLACEMENT, value
                    index = end
                    continue
            yield token
            index += 1


def _command(tokens: list[_Tok]) -> Iterator[_Tok]:
    """``%name`` as a command; the rest of the line as pygments lexed it."""
    seen_name = False
    for pos, kind, value in tokens:
        if not seen_name and (_is(kind, Operator) or _is(kind, Name)):
            yield pos, COMMAND, value
            seen_name = _is(kind, Name)
        else:
            yield pos, kind, value


def _at_statement_start(tokens: list[_Tok], index: int) -> bool:
    """At the start of a line, or right after ``targets =`` on it."""
    before = index - 1
    while before >= 0 and _blank(tokens[before]) and "\n" not in tokens[before][2]:
        before -= 1
    if before < 0 or "\n" in tokens[before][2]:
        return True
    previous = tokens[before]
    return _is(previous[1], Operator) and previous[2] == "="


def _remote_form(tokens: list[_Tok], index: int) -> int | None:
    """If ``tokens[index]`` starts a remote form: the index after its ``[...]`` (or itself)."""
    remote = tokens[index]
    header_end = index + 1
    if (
        header_end < len(tokens)
        and tokens[header_end][2] == "["
        and tokens[header_end][0] == remote[0] + len(remote[2])
    ):
        close = _matching(tokens, header_end)
        if close is None:
            return len(tokens)  # the placement is still being typed
        header_end = close + 1
    return header_end if _starts_body(tokens, header_end) else None


def _matching(tokens: list[_Tok], open_index: int) -> int | None:
    depth = 0
    for index in range(open_index, len(tokens)):
        kind, value = tokens[index][1], tokens[index][2]
        if _is(kind, Punctuation) and value in ("(", "[", "{"):
            depth += 1
        elif _is(kind, Punctuation) and value in (")", "]", "}"):
            depth -= 1
            if depth == 0:
                return index
    return None


def _starts_body(tokens: list[_Tok], after: int) -> bool:
    """Whether what follows the header starts an expression (or a block), not an operator."""
    spaced = after < len(tokens) and _blank(tokens[after])
    while after < len(tokens) and _blank(tokens[after]) and "\n" not in tokens[after][2]:
        after += 1
    if after >= len(tokens) or "\n" in tokens[after][2]:
        return tokens[after - 1][2] == "]"  # `remote[gpu]` being typed; a lone `remote` is a name
    kind, value = tokens[after][1], tokens[after][2]
    if value == ":":
        rest = [t for t in tokens[after + 1 :] if not (_blank(t) and "\n" not in t[2])]
        return not rest or "\n" in rest[0][2] or _is(rest[0][1], Token.Comment)
    if _is(kind, Keyword):
        return value not in _CONTINUES
    if _is(kind, Operator) or _is(kind, Punctuation):
        return value in ("{", "~", "...") or (spaced and value in ("(", "["))
    return not (_is(kind, Token.Error) or _is(kind, Text))
