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

import keyword
import tokenize
from dataclasses import dataclass
from typing import Final, Literal

from sperse._lang.marker import MARKER, remote_placement, to_remote_syntax
from sperse._lang.placement import Placement, TagSyntaxError, parse_placement
from sperse._lang.tokens import (
    CLOSERS,
    KEYWORD,
    OPENERS,
    Edit,
    Line,
    Source,
    apply_edits,
    is_op,
    is_remote,
    logical_lines,
    matching,
)

__all__ = ["MARKER", "remote_placement", "to_remote_syntax", "transform"]

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

_EXAMPLE: Final = "`x = remote[gpu] f(...)`"
_MUST_START: Final = f"`remote` must start a statement: {_EXAMPLE}"
_TOP_LEVEL: Final = (
    "`remote` forms are only allowed at top level, not inside `def`, `if`, `for` or other "
    f"blocks: {_EXAMPLE}"
)
_BEGIN_LINE: Final = (
    "a `remote` statement must begin its line; it cannot follow `;` (put it on a line of its own)"
)


_Kind = Literal["expression", "block", "keyword", "unclosed"]


@dataclass(frozen=True, slots=True)
class _Form:
    """A `remote` token that looks like a remote form, found by lookahead alone."""

    kind: _Kind
    remote: int  # token indexes within the line
    open: int | None
    close: int | None
    after: int  # the token after the header; len(tokens) if none


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
        and is_op(tokens[after], "[")
        and tokens[after].start == tokens[index].end  # `remote[...]`, not `remote [...]`
    ):
        open_index = after
        close_index = matching(tokens, after)
        if close_index is None:
            return _Form("unclosed", index, open_index, None, len(tokens))
        after = close_index + 1
    if after >= len(tokens):
        return None
    token = tokens[after]
    if is_op(token, ":"):
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

    def __init__(self, source: Source, line: Line) -> None:
        self.source = source
        self.line = line
        self.tokens = line.tokens

    def edits(self) -> list[Edit]:
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
                if token.string in OPENERS:
                    depth += 1
                elif token.string in CLOSERS:
                    depth = max(depth - 1, 0)
                elif token.string == ";" and depth == 0:
                    statement += 1
                    lambda_seen = False
                continue
            if token.type != tokenize.NAME:
                continue
            if token.string == "lambda" and depth == 0:
                lambda_seen = True
            if token.string != KEYWORD or (index > 0 and is_op(tokens[index - 1], ".")):
                continue
            form = _classify(tokens, index)
            if form is None:
                continue
            previous = tokens[index - 1] if index > 0 else None
            at_start = index == 0
            after_assign = (
                previous is not None and is_op(previous, "=") and depth == 0 and not lambda_seen
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
        statement_like = previous is None or any(is_op(previous, text) for text in ("=", ":", ";"))
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

    def _rewrite(self, form: _Form) -> list[Edit]:
        source = self.source
        tokens = self.tokens
        text = str(self._placement(form))
        header = f'with {MARKER}("{text}")' if text else f"with {MARKER}()"
        remote_start = source.offset(tokens[form.remote].start)
        if form.kind == "block":
            last = form.close if form.close is not None else form.remote
            end = source.offset(tokens[last].end)
            continuations = _continuations(source.text, remote_start, end)
            return [Edit(remote_start, end, header + continuations)]
        statement_start = source.offset(tokens[0].start)
        end = source.offset(tokens[form.after].start)
        return [
            Edit(statement_start, statement_start, header + ": "),
            Edit(remote_start, end, _continuations(source.text, remote_start, end)),
        ]


def transform(source: str, filename: str = "<input>") -> str:
    """Rewrite every remote form of ``source`` into a marker ``with`` statement.

    Raises ``SyntaxError`` for a malformed or misplaced remote form. Source without remote
    forms is returned as is (the same object).
    """
    if KEYWORD not in source:
        return source
    text = Source(source, filename)
    edits: list[Edit] = []
    for line in logical_lines(text):
        if any(is_remote(token) for token in line.tokens):
            edits.extend(_LineTransformer(text, line).edits())
    return apply_edits(source, edits) if edits else source
