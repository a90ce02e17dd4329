"""Source as logical lines of tokens, and edits by offset: what ``transform`` and its
inverse ``to_remote_syntax`` share.

Work is done on tokens, never on raw text, so strings and comments are never touched;
f-strings come back as one STRING token on every Python (see ``transform``'s docstring).
"""

from __future__ import annotations

import bisect
import io
import tokenize
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CLOSERS",
    "KEYWORD",
    "OPENERS",
    "Edit",
    "Line",
    "Source",
    "apply_edits",
    "is_op",
    "is_remote",
    "logical_lines",
    "matching",
]

KEYWORD: Final = "remote"
OPENERS: Final = frozenset("([{")
CLOSERS: Final = frozenset(")]}")
# Tokens that open and close an f-string (3.12+) or a t-string (3.14+); absent before.
_STRING_STARTS: Final = frozenset(
    getattr(tokenize, name)
    for name in ("FSTRING_START", "TSTRING_START")
    if hasattr(tokenize, name)
)
_STRING_ENDS: Final = frozenset(
    getattr(tokenize, name) for name in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, name)
)
_SKIPPED: Final = frozenset(
    {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
)


@dataclass(frozen=True, slots=True)
class Line:
    """One logical line: its significant tokens (no NL, COMMENT or NEWLINE) and indent level."""

    level: int
    tokens: tuple[tokenize.TokenInfo, ...]


@dataclass(frozen=True, slots=True)
class Edit:
    start: int  # offsets into the source
    end: int
    text: str


class Source:
    """Source text with (row, col) <-> offset conversion, rows split on "\\n" like tokenize."""

    __slots__ = ("filename", "starts", "text")

    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        starts = [0]
        index = text.find("\n")
        while index >= 0:
            starts.append(index + 1)
            index = text.find("\n", index + 1)
        self.starts = starts

    def offset(self, position: tuple[int, int]) -> int:
        row, col = position
        return self.starts[row - 1] + col

    def position(self, offset: int) -> tuple[int, int]:
        row = bisect.bisect_right(self.starts, offset)
        return row, offset - self.starts[row - 1]

    def error(self, message: str, position: tuple[int, int]) -> SyntaxError:
        row, col = position
        start = self.starts[row - 1]
        end = self.starts[row] if row < len(self.starts) else len(self.text)
        return SyntaxError(message, (self.filename, row, col + 1, self.text[start:end]))


def _joined_string(
    source: Source, start: tokenize.TokenInfo, end: tuple[int, int]
) -> tokenize.TokenInfo:
    """One STRING token for the f-string from ``start``, its FSTRING_START, to ``end``."""
    text = source.text[source.offset(start.start) : source.offset(end)]
    return tokenize.TokenInfo(tokenize.STRING, text, start.start, end, start.line)


def logical_lines(source: Source) -> list[Line]:
    """The logical lines of ``source``, read by Python's tokenizer.

    From Python 3.12 that is the compiler's own tokenizer, which rejects some text that a
    placement may hold (``remote[a-0x]``: "invalid hexadecimal literal"). When it fails
    inside the bracket of a ``remote[...]``, the text in the bracket is blanked out (same
    length, same newlines) and the source read again; the placement itself is always read
    from the original text, at the same offsets.
    """
    text = source.text
    while True:
        lines, blanked = _read_lines(source, text)
        if blanked is None:
            return lines
        text = blanked


def _read_lines(source: Source, text: str) -> tuple[list[Line], str | None]:
    """The logical lines of ``text`` (``source.text``, maybe with placements blanked out);
    or, if the tokenizer failed inside the placement of a ``remote[``, the text to read
    instead."""
    lines: list[Line] = []
    level = 0
    line_level = 0
    current: list[tokenize.TokenInfo] = []
    # The FSTRING_START of the outermost f-string being read, and how deeply they nest.
    string_start: tokenize.TokenInfo | None = None
    string_depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if string_start is not None:
                if token.type in _STRING_STARTS:
                    string_depth += 1
                elif token.type in _STRING_ENDS:
                    string_depth -= 1
                if string_depth:
                    continue
                token = _joined_string(source, string_start, token.end)
                string_start = None
            elif token.type in _STRING_STARTS:
                string_start, string_depth = token, 1
                continue
            if token.type == tokenize.INDENT:
                level += 1
            elif token.type == tokenize.DEDENT:
                level -= 1
            elif token.type == tokenize.NEWLINE:
                if current:
                    lines.append(Line(line_level, tuple(current)))
                    current = []
            elif token.type in _SKIPPED:
                pass
            elif token.type == tokenize.ERRORTOKEN and token.string.isspace():
                pass  # 3.11 reports the space before a stray `!` or `$` as an error token
            else:
                if not current:
                    line_level = level
                current.append(token)
    except (tokenize.TokenError, SyntaxError):
        # Unfinished input (EOF inside brackets or a string) or bad indentation: keep what was
        # read; Python reports the problem, or asks for more input, when it compiles the result.
        if string_start is not None:  # an f-string that is not closed runs to the end
            if not current:
                line_level = level
            current.append(_joined_string(source, string_start, source.position(len(text))))
        else:
            blanked = _blank_open_placement(source, text, current)
            if blanked is not None:
                return [], blanked
    if current:
        lines.append(Line(line_level, tuple(current)))
    return lines, None


def _blank_open_placement(
    source: Source, text: str, tokens: list[tokenize.TokenInfo]
) -> str | None:
    """``text`` with the inside of the ``remote[...]`` that ``tokens`` end in blanked out.

    None if the tokens do not end inside such a bracket, if it is never closed, or if it is
    blank already (so each bracket is blanked at most once).
    """
    for index in range(len(tokens) - 2, -1, -1):
        bracket = tokens[index + 1]
        if (
            is_remote(tokens[index])
            and is_op(bracket, "[")
            and bracket.start == tokens[index].end
            and not (index > 0 and is_op(tokens[index - 1], "."))
        ):
            break
    else:
        return None
    if matching(tuple(tokens), index + 1) is not None:
        return None
    start = end = source.offset(bracket.end)
    while end < len(text) and text[end] != "]":  # placements hold no `]`, comments may
        if text[end] == "#":
            newline = text.find("\n", end)
            end = len(text) if newline < 0 else newline
        else:
            end += 1
    inside = text[start:end]
    if end == len(text) or not inside.strip():
        return None
    blank = "".join(char if char == "\n" else " " for char in inside)
    return text[:start] + blank + text[end:]


def is_op(token: tokenize.TokenInfo, text: str) -> bool:
    return token.type == tokenize.OP and token.string == text


def is_remote(token: tokenize.TokenInfo) -> bool:
    return token.type == tokenize.NAME and token.string == KEYWORD


def matching(tokens: tuple[tokenize.TokenInfo, ...], open_index: int) -> int | None:
    depth = 0
    for index in range(open_index, len(tokens)):
        token = tokens[index]
        if token.type != tokenize.OP:
            continue
        if token.string in OPENERS:
            depth += 1
        elif token.string in CLOSERS:
            depth -= 1
            if depth == 0:
                return index
    return None


def apply_edits(text: str, edits: list[Edit]) -> str:
    pieces: list[str] = []
    done = 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        pieces.append(text[done : edit.start])
        pieces.append(edit.text)
        done = edit.end
    pieces.append(text[done:])
    return "".join(pieces)
