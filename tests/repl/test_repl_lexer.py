"""Highlighting: `remote` is a keyword only where the transform would read a remote form."""

from __future__ import annotations

import pytest
from pygments.token import Keyword, Name, is_token_subtype

from sperse.repl._lexer import COMMAND, PLACEMENT, REMOTE, SperseLexer


def marked(source: str) -> list[tuple[str, str]]:
    kinds = {REMOTE: "remote", PLACEMENT: "placement", COMMAND: "command"}
    return [
        (kinds[kind], value.strip())
        for _, kind, value in SperseLexer().get_tokens_unprocessed(source)
        if kind in kinds and value.strip()
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = remote f(y)", [("remote", "remote")]),
        ("remote f(y)", [("remote", "remote")]),
        ("remote (a + b)", [("remote", "remote")]),
        ("remote [f(x) for x in xs]", [("remote", "remote")]),
        (
            "m = remote[gpu, @db-1] f()",
            [
                ("remote", "remote"),
                *(("placement", t) for t in ["[", "gpu", ",", "@db", "-", "1", "]"]),
            ],
        ),
        ("remote[db]:", [("remote", "remote"), *(("placement", t) for t in ["[", "db", "]"])]),
        ("remote[gp", [("remote", "remote"), ("placement", "["), ("placement", "gp")]),  # typing
        ("a = 1\nremote f()", [("remote", "remote")]),
        # Ordinary Python that uses a name `remote`:
        ("remote = 3", []),
        ("remote(x)", []),
        ("remote[0] = 5", []),
        ("y = remote", []),
        ("obj.remote f", []),
        ("if remote: pass", []),
        ("remote and x", []),
        ("remote[db]: int = 3", []),
        ("%wait x 3", [("command", "%"), ("command", "wait")]),
    ],
)
def test_remote_forms_are_marked(source: str, expected: list[tuple[str, str]]) -> None:
    assert marked(source) == expected


def test_the_rest_is_python() -> None:
    tokens = list(SperseLexer().get_tokens_unprocessed("def f(x): return x"))
    assert (0, Keyword, "def") in tokens
    assert any(is_token_subtype(kind, Name.Function) and v == "f" for _, kind, v in tokens)
