"""When Enter runs the input, and the small parsers of the prompt (no terminal)."""

from __future__ import annotations

import pytest

from sperse.repl._input import bare_name, indent_after, is_complete


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("", True),
        ("x = 1", True),
        ("x = remote f()", True),
        ("remote f(x)", True),
        ("m = remote[gpu] train(x, lr=lr)", True),
        ("x = remote f(1,", False),  # an open bracket in the body
        ("x = remote f(1,\n  2)", True),
        ("remote[db]:", False),  # a block needs its body
        ("remote[db]:\n    rows = fetch(sql)", False),  # ... and an empty line to end
        ("remote[db]:\n    rows = fetch(sql)\n", True),
        ("remote[db]:  # a comment\n    rows = f()", False),
        ("def f():\n    return 1", False),
        ("def f():\n    return 1\n    ", True),  # Enter on the empty last line
        ("if x: y", False),  # as at Python's prompt: a compound statement ends with a blank
        ("x = remote[gpu &] f()", True),  # a syntax error: run it, to show the error
        ("x = remote[gpu", True),
        ("x = (", False),
        ("x = 1\ny = 2", True),  # a paste of several statements
        ("%wait x", True),
        ("%graph", True),
        ("'''open string", False),
    ],
)
def test_is_complete(text: str, complete: bool) -> None:
    assert is_complete(text) is complete


@pytest.mark.parametrize(
    ("line", "indent"),
    [
        ("def f():", "    "),
        ("    if x:", "        "),
        ("remote[db]:", "    "),
        ("    x = 1", "    "),
        ("        return x", "    "),
        ("    pass", ""),
        ("x = 1", ""),
        ("# a comment:", ""),
    ],
)
def test_indent_after(line: str, indent: str) -> None:
    assert indent_after(line) == indent


@pytest.mark.parametrize(
    ("text", "name"),
    [("model", "model"), ("  model ", "model"), ("model.x", None), ("if", None), ("f()", None)],
)
def test_bare_name(text: str, name: str | None) -> None:
    assert bare_name(text) == name
