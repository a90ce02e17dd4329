"""The shapes of statements that create or call remote objects (pure parsing)."""

from __future__ import annotations

import ast

import pytest

from sperse._lang.objects import object_call, object_creation


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("c = Counter()", ("c", "Counter", "Counter()")),
        ("c = Counter(1, start=2)", ("c", "Counter", "Counter(1, start=2)")),
        ("c = mod.Counter()", None),  # only a plain name can be a class made at the prompt
        ("a = b = Counter()", None),
        ("a, b = Counter()", None),
        ("c = Counter", None),
        ("Counter()", None),
        ("c = Counter(); d = 1", None),
        ("", None),
    ],
)
def test_object_creation(source: str, expected: tuple[str, str, str] | None) -> None:
    found = object_creation(source)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.target, found.callee, ast.unparse(found.call)) == expected


@pytest.mark.parametrize(
    ("source", "is_expression", "expected"),
    [
        ("n = c.incr(1)", False, ("n", "c", "c.incr(1)")),
        ("n = c.count", False, ("n", "c", "c.count")),
        ("c.incr()", True, ("", "c", "c.incr()")),
        ("c.count", True, ("", "c", "c.count")),
        ("c.incr()", False, None),  # an expression statement that is not an expression cell
        ("n = c.a.b()", False, None),
        ("n = f(c)", False, None),
        ("n = c", False, None),
        ("x = 1; y = 2", False, None),
    ],
)
def test_object_call(
    source: str, is_expression: bool, expected: tuple[str, str, str] | None
) -> None:
    found = object_call(source, is_expression=is_expression)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.target, found.receiver, ast.unparse(found.expression)) == expected
