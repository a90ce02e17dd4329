"""The statements that create or use remote objects, found in a remote cell's source.

``c = remote[db] Counter(...)`` creates a remote object when ``Counter`` turns out to be a
class (defined at the prompt, or a ``sperse.remote`` class), and ``n = remote c.incr()``
calls one when ``c`` turns out to be a remote object. Whether they do depends on values
only the workspace has; this module says only whether the *statement* has the shape, so
the parsing stays pure and is tested without a cluster.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["ObjectCall", "ObjectCreation", "object_call", "object_creation"]


@dataclass(frozen=True, slots=True)
class ObjectCreation:
    """``target = callee(args...)``: may create a remote object, if ``callee`` is a class."""

    target: str
    callee: str
    call: ast.Call


@dataclass(frozen=True, slots=True)
class ObjectCall:
    """``target = receiver.attr(...)``, ``target = receiver.attr`` or the same as an
    expression (``target`` is ""): a call of a remote object, if ``receiver`` is one."""

    target: str
    receiver: str
    expression: ast.expr


def _only_statement(source: str) -> ast.stmt | None:
    try:
        (statement,) = ast.parse(source).body
    except (SyntaxError, ValueError):
        return None
    return statement


def object_creation(source: str) -> ObjectCreation | None:
    """The creation shape of a remote cell's ``source`` (one statement), else None."""
    statement = _only_statement(source)
    if not (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Name)
    ):
        return None
    return ObjectCreation(statement.targets[0].id, statement.value.func.id, statement.value)


def object_call(source: str, *, is_expression: bool) -> ObjectCall | None:
    """The object-call shape of a remote cell's ``source`` (one statement), else None.

    ``is_expression``: the cell is an expression cell, whose value is shown.
    """
    statement = _only_statement(source)
    target = ""
    if (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        target, expression = statement.targets[0].id, statement.value
    elif isinstance(statement, ast.Expr) and is_expression:
        expression = statement.value
    else:
        return None
    reached = expression.func if isinstance(expression, ast.Call) else expression
    if not (isinstance(reached, ast.Attribute) and isinstance(reached.value, ast.Name)):
        return None
    return ObjectCall(target, reached.value.id, expression)
