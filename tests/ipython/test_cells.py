"""Which statements of a cell (after IPython's own transforms) go to the workspace, and how."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import pytest

from sperse.ipython._cells import Segment, plan_cell, remote_block, route_tree, split_cell

IP = "get_ipython()"


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    kinds: list[tuple[str, int, int]]  # (kind, first line, last line)


CASES = [
    Case("python only", "a = 1\nb = a + 1\n", [("sperse", 1, 2)]),
    Case("empty", "  \n\n", []),
    Case("comments only", "# nothing\n", []),
    Case("line magic", f"{IP}.run_line_magic('pending', '')\n", [("ipython", 1, 1)]),
    Case(
        "magic between statements",
        f"a = 1\n{IP}.run_line_magic('pending', '')\nb = 2\nc = 3\n",
        [("sperse", 1, 1), ("ipython", 2, 2), ("sperse", 3, 4)],
    ),
    Case("shell", f"{IP}.system('ls')\n", [("ipython", 1, 1)]),
    Case("assign from shell", f"files = {IP}.getoutput('ls')\n", [("ipython", 1, 1)]),
    Case("help", f"{IP}.run_line_magic('pinfo', 'len')\n", [("ipython", 1, 1)]),
    Case("remote one-liner", "x = remote f(1)\n", [("sperse", 1, 1)]),
    Case("remote block", "remote[db]:\n    r = q()\n    n = len(r)\n", [("sperse", 1, 3)]),
    Case(
        "top-level await",
        "import asyncio\nawait asyncio.sleep(0)\n",
        [("sperse", 1, 1), ("ipython", 2, 2)],
    ),
    Case("await in a function", "async def f():\n    await g()\n", [("sperse", 1, 2)]),
    Case("bare name last", "y = x * 10\ny\n", [("sperse", 1, 1), ("look", 2, 2)]),
    Case("bare name sharing a line", "y = 1; y\n", [("sperse", 1, 1)]),
    Case(
        "decorated definition",
        f"{IP}.run_line_magic('pending', '')\n@dec\ndef f():\n    pass\n",
        [("ipython", 1, 1), ("sperse", 2, 4)],
    ),
    Case("invalid python is IPython's to report", "x = (\n", [("ipython", 1, 1)]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_split(case: Case) -> None:
    segments = split_cell(case.source)
    assert [(s.kind, s.first, s.last) for s in segments] == case.kinds


def test_workspace_source_keeps_line_numbers() -> None:
    source = f"{IP}.run_line_magic('pending', '')\n\nb = 2\nc = 3\n"
    *_, segment = split_cell(source)
    assert segment == Segment("sperse", 3, 4, "\n\nb = 2\nc = 3\n")


@pytest.mark.parametrize(
    "source",
    [
        "x = remote[gpu &] f()\n",  # malformed placement
        "ok = 1\nif ok:\n    x = remote f()\n",  # a remote form inside a block
        "return 5\n",  # compiles only inside a function
        "remote:\n    return 1\n",
    ],
)
def test_bad_workspace_statements_are_syntax_errors_before_anything_runs(source: str) -> None:
    with pytest.raises(SyntaxError):
        split_cell(source)


def test_remote_cell_magic_becomes_a_remote_block() -> None:
    source = f"{IP}.run_cell_magic('remote', '[gpu]', 'import os\\npid = os.getpid()\\n')\n"
    (segment,) = split_cell(source)
    assert segment.kind == "sperse"
    assert segment.source == "remote[gpu]:\n    import os\n    pid = os.getpid()\n"
    (other,) = split_cell(source.replace("'remote'", "'time'"))
    assert other.kind == "ipython"
    (theirs,) = split_cell(source, remote_magic=None)  # another extension owns %%remote
    assert theirs.kind == "ipython"


@pytest.mark.parametrize(
    ("placement", "header"),
    [("", "remote:"), ("gpu", "remote[gpu]:"), (" [db, @s1] ", "remote[db, @s1]:")],
)
def test_remote_block_header(placement: str, header: str) -> None:
    assert remote_block(placement, "x = 1\n") == f"{header}\n    x = 1\n"


def test_a_cell_without_workspace_statements_has_no_plan() -> None:
    assert plan_cell(f"{IP}.system('ls')\n") is None
    assert plan_cell("x = (\n") is None  # IPython reports it


def test_the_text_is_kept_but_for_remote_forms() -> None:
    source = f"a = 1\n{IP}.run_line_magic('pending', '')\nb = a + 1;\n"
    plan = plan_cell(source)
    assert plan is not None and plan.text == source
    remote = plan_cell("x = remote f(1)\ny = x;\n")
    assert remote is not None
    assert remote.text == "with __sperse_remote__(): x = f(1)\ny = x;\n"


def runner_source(stmt: ast.stmt) -> str:
    """The source ``get_ipython().run_cell_magic('sperse_cell', '', source)`` passes."""
    assert isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
    runner, line, source = (ast.literal_eval(a) for a in stmt.value.args)
    assert ast.unparse(stmt.value.func) == "get_ipython().run_cell_magic"
    assert (runner, line) == ("sperse_cell", "")
    return str(source)


def test_route_tree_keeps_ipython_statements_and_line_numbers() -> None:
    source = (
        f"{IP}.run_line_magic('load_ext', 'sperse')\n# a comment\na = 1\nb = 2\n"
        f"{IP}.system('ls')\nx = remote f(a)\n@dec\ndef g():\n    pass\n"
    )
    plan = plan_cell(source)
    assert plan is not None
    tree = route_tree(ast.parse(plan.text), plan, "sperse_cell")
    magic, first, shell, second = tree.body
    assert ast.unparse(magic) == f"{IP}.run_line_magic('load_ext', 'sperse')"
    assert ast.unparse(shell) == f"{IP}.system('ls')"
    assert (first.lineno, shell.lineno, second.lineno) == (3, 5, 6)
    assert runner_source(first) == "\n\na = 1\nb = 2\n"
    assert runner_source(second) == "\n" * 5 + "x = remote f(a)\n@dec\ndef g():\n    pass\n"
    assert plan.on_cell_lines(runner_source(first)) and plan.on_cell_lines(runner_source(second))
    assert not plan.on_cell_lines("a = 1\n")
    compile(tree, "<cell>", "exec")  # every node has its positions


def test_route_tree_of_a_remote_cell_magic() -> None:
    plan = plan_cell(f"{IP}.run_cell_magic('remote', 'gpu', 'z = 1\\n')\n")
    assert plan is not None
    (call,) = route_tree(ast.parse(plan.text), plan, "sperse_cell").body
    block = runner_source(call)
    assert block == "remote[gpu]:\n    z = 1\n"
    assert not plan.on_cell_lines(block)  # its lines are not the cell's


def test_route_tree_refuses_a_tree_of_another_text() -> None:
    plan = plan_cell("a = 1\n")
    assert plan is not None
    with pytest.raises(ValueError, match="lines 1-2"):
        route_tree(ast.parse("a = (1,\n 2)\n"), plan, "sperse_cell")
