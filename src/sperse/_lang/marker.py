"""The marker ``with`` statements of transformed source: finding them, and turning them
back into ``remote`` syntax for display.

``transform`` rewrites ``x = remote[gpu] f(y)`` into ``with __sperse_remote__("gpu"): x = f(y)``;
``remote_placement`` finds such a statement in the parsed source, and ``to_remote_syntax``
undoes the rewrite.
"""

from __future__ import annotations

import ast
import tokenize
from typing import Final

from sperse._lang.placement import Placement, parse_placement
from sperse._lang.tokens import CLOSERS, OPENERS, Edit, Source, apply_edits, is_op, logical_lines

__all__ = ["MARKER", "remote_placement", "to_remote_syntax"]

MARKER: Final = "__sperse_remote__"


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
        and is_op(tokens[2], "(")
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
    if not (close + 1 < len(tokens) and is_op(tokens[close], ")")):
        return None
    if not is_op(tokens[close + 1], ":"):
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
        if token.string in OPENERS:
            depth += 1
        elif token.string in CLOSERS:
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
    text = Source(source, "<display>")
    edits: list[Edit] = []
    for line in logical_lines(text):
        tokens = line.tokens
        header = _marker_header(tokens) if line.level == 0 else None
        if header is None:
            continue
        remote, colon = header
        start = text.offset(tokens[0].start)
        if colon == len(tokens) - 1:
            edits.append(Edit(start, text.offset(tokens[colon - 1].end), remote))
            continue
        body = colon + 1
        body_start = text.offset(tokens[body].start)
        value = _assignment_value(tokens, body)
        insert_at = body_start if value is None else text.offset(tokens[value].start)
        edits.append(Edit(start, body_start, ""))
        edits.append(Edit(insert_at, insert_at, remote + " "))
    return apply_edits(source, edits) if edits else source
