"""The ``remote`` syntax of the prompt, as a source transform.

Front ends run :func:`transform` on each input before Python parses it. Every remote form
becomes a ``with`` statement on a marker call, which is ordinary Python, and the workspace
finds those statements again with :func:`remote_placement`::

    x = remote[gpu] f(y)      ->   with __sperse_remote__("gpu"): x = f(y)
    remote f(x)               ->   with __sperse_remote__(): f(x)
    remote[db, @s1, cpu=2]:   ->   with __sperse_remote__("db, @s1, cpu=2"):

Grammar. ``remote`` is a soft keyword; PLACEMENT is the grammar of :mod:`.placement`, and the
marker's argument is its canonical text (validated here)::

    one_line := [targets '='] 'remote' ['[' PLACEMENT ']'] rest_of_statement
    block    := 'remote' ['[' PLACEMENT ']'] ':' NEWLINE INDENT statements DEDENT
    targets  := the targets of a simple, chained, tuple or annotated assignment

Recognition. After ``remote`` and an optional ``[...]``, the text is a remote form only when the
next token can start an expression but cannot continue one (a name that is not one of ``and
or if else in is for async as import from``, a number, a string, ``{``, ``~``, ``...``,
``lambda``, ``await``, ``not`` unless followed by ``in``, ``None``/``True``/``False``), or is a
``(`` or ``[`` set apart by a space (``remote (a + b)``, ``remote [f(x) for x in xs]``), or is a
``:`` that ends the logical line. The placement bracket follows ``remote`` with no space:
``remote[gpu] f()``. Everything else, such as ``remote = 3``, ``remote[i] = 5``,
``remote(x)``, ``remote[0]``, ``remote: int = 3`` or ``if remote:``, is ordinary Python and left alone. A
``:`` followed by more text on the same line is an annotation, not a block, because
``remote[db]: x = 1`` is valid Python.

Invariants:

- Work is done on tokens, never on raw text, so strings and comments are never touched.
  That holds for f-strings too: from Python 3.12 (PEP 701) the tokenizer splits them into
  ``FSTRING_START``, the tokens of their replacement fields and ``FSTRING_END``; those are
  joined back into one string token, as Python 3.11 reports it, so the code inside an
  f-string is never read as a `remote` form and every Python transforms the same way.
- Line numbers are kept: one-line forms stay on their line, block bodies are untouched. Where
  a removed ``[...]`` spanned lines, its newlines come back as backslash continuations.
- Source without remote forms comes back unchanged: the very same string.
- Remote forms are allowed only as the first statement of a top-level logical line. Like any
  compound statement written on one line (``with m(): a; b``), a one-line form takes the rest
  of its line: ``x = remote f(); y = g(x)`` runs both statements remotely.
- Malformed forms raise ``SyntaxError`` whose 1-based offset points into the original line.
  Input that ends inside a bracket of the remote statement's body is still transformed, so
  ``codeop`` / IPython see ordinary incomplete input and ask for more lines.
"""

from __future__ import annotations

import ast
import bisect
import io
import keyword
import tokenize
from dataclasses import dataclass
from typing import Final, Literal

from sperse._lang.placement import Placement, TagSyntaxError, parse_placement

__all__ = ["MARKER", "remote_placement", "to_remote_syntax", "transform"]

MARKER: Final = "__sperse_remote__"

_KEYWORD: Final = "remote"
# Names that can follow an expression (so `remote <name>` may be ordinary Python).
_CONTINUES: Final = frozenset(
    {"and", "or", "if", "else", "in", "is", "for", "async", "as", "import", "from"}
)
# Keywords that can start an expression.
_EXPRESSION_KEYWORDS: Final = frozenset(
    {"lambda", "await", "not", "None", "True", "False", "yield"}
)
_COMPOUND: Final = frozenset(
    [
        "if",
        "elif",
        "else",
        "while",
        "for",
        "with",
        "def",
        "class",
        "try",
        "except",
        "finally",
        "async",
    ]
)
_OPENERS: Final = frozenset("([{")
_CLOSERS: Final = frozenset(")]}")
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

_EXAMPLE: Final = "`x = remote[gpu] f(...)`"
_MUST_START: Final = f"`remote` must start a statement: {_EXAMPLE}"
_TOP_LEVEL: Final = (
    "`remote` forms are only allowed at top level, not inside `def`, `if`, `for` or other "
    f"blocks: {_EXAMPLE}"
)
_BEGIN_LINE: Final = (
    "a `remote` statement must begin its line; it cannot follow `;` (put it on a line of its own)"
)


@dataclass(frozen=True, slots=True)
class _Line:
    """One logical line: its significant tokens (no NL, COMMENT or NEWLINE) and indent level."""

    level: int
    tokens: tuple[tokenize.TokenInfo, ...]


_Kind = Literal["expression", "block", "keyword", "unclosed"]


@dataclass(frozen=True, slots=True)
class _Form:
    """A `remote` token that looks like a remote form, found by lookahead alone."""

    kind: _Kind
    remote: int  # token indexes within the line
    open: int | None
    close: int | None
    after: int  # the token after the header; len(tokens) if none


@dataclass(frozen=True, slots=True)
class _Edit:
    start: int  # offsets into the source
    end: int
    text: str


class _Source:
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
    source: _Source, start: tokenize.TokenInfo, end: tuple[int, int]
) -> tokenize.TokenInfo:
    """One STRING token for the f-string from ``start``, its FSTRING_START, to ``end``."""
    text = source.text[source.offset(start.start) : source.offset(end)]
    return tokenize.TokenInfo(tokenize.STRING, text, start.start, end, start.line)


def _logical_lines(source: _Source) -> list[_Line]:
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


def _read_lines(source: _Source, text: str) -> tuple[list[_Line], str | None]:
    """The logical lines of ``text`` (``source.text``, maybe with placements blanked out);
    or, if the tokenizer failed inside the placement of a ``remote[``, the text to read
    instead."""
    lines: list[_Line] = []
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
                    lines.append(_Line(line_level, tuple(current)))
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
        lines.append(_Line(line_level, tuple(current)))
    return lines, None


def _blank_open_placement(
    source: _Source, text: str, tokens: list[tokenize.TokenInfo]
) -> str | None:
    """``text`` with the inside of the ``remote[...]`` that ``tokens`` end in blanked out.

    None if the tokens do not end inside such a bracket, if it is never closed, or if it is
    blank already (so each bracket is blanked at most once).
    """
    for index in range(len(tokens) - 2, -1, -1):
        bracket = tokens[index + 1]
        if (
            _is_remote(tokens[index])
            and _is_op(bracket, "[")
            and bracket.start == tokens[index].end
            and not (index > 0 and _is_op(tokens[index - 1], "."))
        ):
            break
    else:
        return None
    if _matching(tuple(tokens), index + 1) is not None:
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


def _is_op(token: tokenize.TokenInfo, text: str) -> bool:
    return token.type == tokenize.OP and token.string == text


def _is_remote(token: tokenize.TokenInfo) -> bool:
    return token.type == tokenize.NAME and token.string == _KEYWORD


def _matching(tokens: tuple[tokenize.TokenInfo, ...], open_index: int) -> int | None:
    depth = 0
    for index in range(open_index, len(tokens)):
        token = tokens[index]
        if token.type != tokenize.OP:
            continue
        if token.string in _OPENERS:
            depth += 1
        elif token.string in _CLOSERS:
            depth -= 1
            if depth == 0:
                return index
    return None


def _starts_only(tokens: tuple[tokenize.TokenInfo, ...], index: int) -> bool:
    """Whether the token can start an expression but cannot continue one."""
    token = tokens[index]
    if token.type in (tokenize.NUMBER, tokenize.STRING):
        return True
    if token.type == tokenize.OP:
        return token.string in ("{", "~", "...")
    if token.type != tokenize.NAME:
        return False
    if token.string == "not":
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        return not (following is not None and following.string == "in")
    if token.string in _CONTINUES:
        return False
    return not keyword.iskeyword(token.string) or token.string in _EXPRESSION_KEYWORDS


def _spaced_bracket(tokens: tuple[tokenize.TokenInfo, ...], index: int) -> bool:
    """``remote (a + b)`` or ``remote [x for x in y]``: a bracket set apart by a space.

    Written without the space (``remote(x)``, ``remote[0]``) it is a call or a
    subscript of a name ``remote``, as in plain Python.
    """
    token = tokens[index]
    return (
        token.type == tokenize.OP
        and token.string in ("(", "[")
        and token.start != tokens[index - 1].end
    )


def _classify(tokens: tuple[tokenize.TokenInfo, ...], index: int) -> _Form | None:
    after = index + 1
    open_index = close_index = None
    if (
        after < len(tokens)
        and _is_op(tokens[after], "[")
        and tokens[after].start == tokens[index].end  # `remote[...]`, not `remote [...]`
    ):
        open_index = after
        close_index = _matching(tokens, after)
        if close_index is None:
            return _Form("unclosed", index, open_index, None, len(tokens))
        after = close_index + 1
    if after >= len(tokens):
        return None
    token = tokens[after]
    if _is_op(token, ":"):
        if after == len(tokens) - 1:
            return _Form("block", index, open_index, close_index, after)
        return None
    if _starts_only(tokens, after) or _spaced_bracket(tokens, after):
        return _Form("expression", index, open_index, close_index, after)
    if (
        token.type == tokenize.NAME
        and keyword.iskeyword(token.string)
        and token.string not in _CONTINUES | _EXPRESSION_KEYWORDS
    ):
        return _Form("keyword", index, open_index, close_index, after)  # `remote def ...`
    return None


def _continuations(source: str, start: int, end: int) -> str:
    """What replaces the removed ``source[start:end]``: a backslash continuation for each of
    its newlines (so line numbers stay the same), or nothing."""
    newlines = source.count("\n", start, end)
    if not newlines:
        return ""
    space = "" if start > 0 and source[start - 1] in " \t" else " "
    return space + "\\\n" * newlines


def _bracket_text(text: str) -> str:
    """The text between the brackets with comments and continuations blanked, same length."""
    lines = text.split("\n")
    for number, line in enumerate(lines):
        hash_at = line.find("#")
        if hash_at >= 0:
            line = line[:hash_at] + " " * (len(line) - hash_at)
        if line.endswith("\\"):
            line = line[:-1] + " "
        lines[number] = line
    return "\n".join(lines)


class _LineTransformer:
    """Finds the remote form of one logical line, checks it, and returns the edits."""

    def __init__(self, source: _Source, line: _Line) -> None:
        self.source = source
        self.line = line
        self.tokens = line.tokens

    def edits(self) -> list[_Edit]:
        tokens = self.tokens
        nested = self.line.level > 0 or (
            tokens[0].type == tokenize.NAME and tokens[0].string in _COMPOUND
        )
        depth = 0
        statement = 0
        lambda_seen = False
        found: _Form | None = None
        for index, token in enumerate(tokens):
            if token.type == tokenize.OP:
                if token.string in _OPENERS:
                    depth += 1
                elif token.string in _CLOSERS:
                    depth = max(depth - 1, 0)
                elif token.string == ";" and depth == 0:
                    statement += 1
                    lambda_seen = False
                continue
            if token.type != tokenize.NAME:
                continue
            if token.string == "lambda" and depth == 0:
                lambda_seen = True
            if token.string != _KEYWORD or (index > 0 and _is_op(tokens[index - 1], ".")):
                continue
            form = _classify(tokens, index)
            if form is None:
                continue
            previous = tokens[index - 1] if index > 0 else None
            at_start = index == 0
            after_assign = (
                previous is not None and _is_op(previous, "=") and depth == 0 and not lambda_seen
            )
            allowed = not nested and statement == 0 and found is None
            if form.kind == "block":
                if at_start and allowed:
                    found = form
                elif at_start:
                    raise self._error(_TOP_LEVEL, index)
                elif after_assign and allowed:
                    raise self._error(
                        "a `remote:` block cannot be assigned; write `remote[...]:` on a line of "
                        "its own and assign inside the indented block",
                        form.after,
                    )
                continue  # `if remote:`, `while remote[0]:` ...: ordinary Python
            if form.kind == "unclosed":
                if allowed and (at_start or after_assign):
                    raise self._error(
                        "'[' after `remote` was never closed; expected `remote[placement] f(...)`",
                        index + 1,
                    )
                continue
            if not (allowed and (at_start or after_assign)):
                raise self._error(self._misplaced(nested, statement, found, index), index)
            if form.kind == "keyword":
                raise self._error(
                    f"expected an expression after `remote`, got `{tokens[form.after].string}`; "
                    "to run statements remotely, write `remote:` on a line of its own and "
                    "indent them below it",
                    form.after,
                )
            found = form
        return [] if found is None else self._rewrite(found)

    def _misplaced(self, nested: bool, statement: int, found: _Form | None, index: int) -> str:
        tokens = self.tokens
        previous = tokens[index - 1] if index > 0 else None
        statement_like = previous is None or any(_is_op(previous, text) for text in ("=", ":", ";"))
        if nested and statement_like:
            return _TOP_LEVEL
        if statement > 0 and statement_like:
            return _BEGIN_LINE
        if found is not None and statement_like:
            return "a statement can hold only one `remote`"
        return _MUST_START

    def _error(self, message: str, index: int) -> SyntaxError:
        return self.source.error(message, self.tokens[index].start)

    def _placement(self, form: _Form) -> Placement:
        if form.open is None or form.close is None:
            return Placement()
        source = self.source
        start = source.offset(self.tokens[form.open].end)
        end = source.offset(self.tokens[form.close].start)
        try:
            return parse_placement(_bracket_text(source.text[start:end]))
        except TagSyntaxError as exc:
            raise source.error(
                f"invalid placement in `remote[...]`: {exc}. The bracket holds a tag expression, "
                "an `@server` pin and `name=number` resource needs, such as "
                "`remote[gpu & !slow, @db-1, gpu_mem=16] f(...)`",
                source.position(start + exc.offset),
            ) from None

    def _rewrite(self, form: _Form) -> list[_Edit]:
        source = self.source
        tokens = self.tokens
        text = str(self._placement(form))
        header = f'with {MARKER}("{text}")' if text else f"with {MARKER}()"
        remote_start = source.offset(tokens[form.remote].start)
        if form.kind == "block":
            last = form.close if form.close is not None else form.remote
            end = source.offset(tokens[last].end)
            continuations = _continuations(source.text, remote_start, end)
            return [_Edit(remote_start, end, header + continuations)]
        statement_start = source.offset(tokens[0].start)
        end = source.offset(tokens[form.after].start)
        return [
            _Edit(statement_start, statement_start, header + ": "),
            _Edit(remote_start, end, _continuations(source.text, remote_start, end)),
        ]


def _apply(text: str, edits: list[_Edit]) -> str:
    pieces: list[str] = []
    done = 0
    for edit in sorted(edits, key=lambda e: (e.start, e.end)):
        pieces.append(text[done : edit.start])
        pieces.append(edit.text)
        done = edit.end
    pieces.append(text[done:])
    return "".join(pieces)


def transform(source: str, filename: str = "<input>") -> str:
    """Rewrite every remote form of ``source`` into a marker ``with`` statement.

    Raises ``SyntaxError`` for a malformed or misplaced remote form. Source without remote
    forms is returned as is (the same object).
    """
    if _KEYWORD not in source:
        return source
    text = _Source(source, filename)
    edits: list[_Edit] = []
    for line in _logical_lines(text):
        if any(_is_remote(token) for token in line.tokens):
            edits.extend(_LineTransformer(text, line).edits())
    return _apply(source, edits) if edits else source


def _marker_placement(node: ast.expr) -> Placement | None:
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == MARKER
        and not node.keywords
    ):
        return None
    if not node.args:
        return Placement()
    argument = node.args[0]
    if (
        len(node.args) == 1
        and isinstance(argument, ast.Constant)
        and isinstance(argument.value, str)
    ):
        return parse_placement(argument.value)
    return None


def remote_placement(stmt: ast.stmt) -> tuple[Placement, list[ast.stmt]] | None:
    """The placement and body of a marker ``with`` statement of transformed source, else None.

    Raises :class:`TagSyntaxError` if the marker's text is not a valid placement (it always
    is in the output of :func:`transform`).
    """
    if not isinstance(stmt, ast.With) or len(stmt.items) != 1:
        return None
    item = stmt.items[0]
    if item.optional_vars is not None:
        return None
    placement = _marker_placement(item.context_expr)
    if placement is None:
        return None
    return placement, list(stmt.body)


def _marker_header(tokens: tuple[tokenize.TokenInfo, ...]) -> tuple[str, int] | None:
    """For a line `with MARKER("..."):`, the `remote[...]` text and the colon's index."""
    if len(tokens) < 5 or not (
        tokens[0].type == tokenize.NAME
        and tokens[0].string == "with"
        and tokens[1].type == tokenize.NAME
        and tokens[1].string == MARKER
        and _is_op(tokens[2], "(")
    ):
        return None
    text = ""
    close = 3
    if tokens[3].type == tokenize.STRING:
        try:
            value = ast.literal_eval(tokens[3].string)
            if not isinstance(value, str):
                return None
            text = str(parse_placement(value))
        except (ValueError, SyntaxError):
            return None
        close = 4
    if not (close + 1 < len(tokens) and _is_op(tokens[close], ")")):
        return None
    if not _is_op(tokens[close + 1], ":"):
        return None
    return (f"remote[{text}]" if text else "remote"), close + 1


def _assignment_value(tokens: tuple[tokenize.TokenInfo, ...], start: int) -> int | None:
    """Index of the value after the last assignment `=` of the statement at ``start``."""
    depth = 0
    value = None
    for index in range(start, len(tokens)):
        token = tokens[index]
        if token.type == tokenize.NAME and token.string == "lambda" and depth == 0:
            break
        if token.type != tokenize.OP:
            continue
        if token.string in _OPENERS:
            depth += 1
        elif token.string in _CLOSERS:
            depth -= 1
        elif depth == 0 and token.string == ";":
            break
        elif depth == 0 and token.string == "=" and index + 1 < len(tokens):
            value = index + 1
    return value


def to_remote_syntax(source: str) -> str:
    """Turn marker ``with`` statements back into ``remote`` syntax, for display.

    The inverse of :func:`transform` for forms written in canonical spacing:
    ``to_remote_syntax(transform(s)) == s``.
    """
    if MARKER not in source:
        return source
    text = _Source(source, "<display>")
    edits: list[_Edit] = []
    for line in _logical_lines(text):
        tokens = line.tokens
        header = _marker_header(tokens) if line.level == 0 else None
        if header is None:
            continue
        remote, colon = header
        start = text.offset(tokens[0].start)
        if colon == len(tokens) - 1:
            edits.append(_Edit(start, text.offset(tokens[colon - 1].end), remote))
            continue
        body = colon + 1
        body_start = text.offset(tokens[body].start)
        value = _assignment_value(tokens, body)
        insert_at = body_start if value is None else text.offset(tokens[value].start)
        edits.append(_Edit(start, body_start, ""))
        edits.append(_Edit(insert_at, insert_at, remote + " "))
    return _apply(source, edits) if edits else source
