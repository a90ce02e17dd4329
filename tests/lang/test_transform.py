"""The `remote` source transform: rewriting, ordinary uses of the name, errors, round trips.

Cases in syntax that only Python 3.12+ parses (PEP 701 f-strings: nested same quotes,
backslashes, comments and line breaks in replacement fields) say so and are skipped on
older Pythons; ``scripts/test_other_pythons.sh`` runs them.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sperse._lang.placement import And, Not, Or, Placement, Tag, TagExpr, parse_placement
from sperse._lang.transform import MARKER, remote_placement, to_remote_syntax, transform

M = MARKER
PY312 = (3, 12)


def needs(python: tuple[int, int]) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        sys.version_info < python, reason=f"the syntax needs Python {python[0]}.{python[1]}"
    )


@dataclass(frozen=True)
class Case:
    source: str
    expected: str
    canonical: bool = True  # written in canonical spacing: to_remote_syntax gives it back
    python: tuple[int, int] = (3, 11)  # the oldest Python that parses `source`


TRANSFORM_CASES: list[Case] = [
    # the forms of DESIGN §3
    Case('x = remote load("sales")\n', f'with {M}(): x = load("sales")\n'),
    Case("m = remote[gpu] train(x, lr=lr)\n", f'with {M}("gpu"): m = train(x, lr=lr)\n'),
    Case("r = remote[@db-1] query(sql)\n", f'with {M}("@db-1"): r = query(sql)\n'),
    Case(
        "a, b = remote[gpu & !slow, gpu_mem=16] split(x)\n",
        f'with {M}("gpu & !slow, gpu_mem=16"): a, b = split(x)\n',
    ),
    Case("remote f(x)\n", f"with {M}(): f(x)\n"),
    Case("remote[gpu] f(x)\n", f'with {M}("gpu"): f(x)\n'),
    Case(
        "remote[db]:\n    rows = fetch(sql)\n    n = len(rows)\n",
        f'with {M}("db"):\n    rows = fetch(sql)\n    n = len(rows)\n',
    ),
    Case("remote:\n    y = 1\n", f"with {M}():\n    y = 1\n"),
    Case("remote[db, @s1, cpu=2]:\n    pass\n", f'with {M}("db, @s1, cpu=2"):\n    pass\n'),
    # what may follow `remote`
    Case("x = remote 42\n", f"with {M}(): x = 42\n"),
    Case("x = remote 'text'\n", f"with {M}(): x = 'text'\n"),
    Case('x = remote f"{a}"\n', f'with {M}(): x = f"{{a}}"\n'),
    Case('x = remote b"raw"\n', f'with {M}(): x = b"raw"\n'),
    Case("x = remote {1: 2}\n", f"with {M}(): x = {{1: 2}}\n"),
    Case("x = remote lambda: 1\n", f"with {M}(): x = lambda: 1\n"),
    Case("x = remote await g()\n", f"with {M}(): x = await g()\n"),
    Case("x = remote not flag\n", f"with {M}(): x = not flag\n"),
    Case("x = remote None\n", f"with {M}(): x = None\n"),
    Case("x = remote True\n", f"with {M}(): x = True\n"),
    Case("x = remote ~mask\n", f"with {M}(): x = ~mask\n"),
    Case("x = remote remote_fn()\n", f"with {M}(): x = remote_fn()\n"),
    Case("remote x\n", f"with {M}(): x\n"),
    Case("remote f(x) if c else g(x)\n", f"with {M}(): f(x) if c else g(x)\n"),
    # targets
    Case("x = y = remote f()\n", f"with {M}(): x = y = f()\n"),
    Case("(a, b) = remote f()\n", f"with {M}(): (a, b) = f()\n"),
    Case("[a, *b] = remote f()\n", f"with {M}(): [a, *b] = f()\n"),
    Case("obj.attr = remote f()\n", f"with {M}(): obj.attr = f()\n"),
    Case('d["k"] = remote f()\n', f'with {M}(): d["k"] = f()\n'),
    Case("x: int = remote f()\n", f"with {M}(): x: int = f()\n"),
    # canonical placement text
    Case("x = remote[gpu|cpu] f()\n", f'with {M}("gpu | cpu"): x = f()\n', canonical=False),
    Case("x = remote[ gpu ,  @db-1 ] f()\n", f'with {M}("gpu, @db-1"): x = f()\n', False),
    Case("x = remote[] f()\n", f"with {M}(): x = f()\n", canonical=False),
    # a bracket set apart by a space starts the expression: not a placement, not a call
    Case("x = remote (a + b) % 7\n", f"with {M}(): x = (a + b) % 7\n"),
    Case("x = remote [i * i for i in r]\n", f"with {M}(): x = [i * i for i in r]\n"),
    Case("remote (a, b)\n", f"with {M}(): (a, b)\n"),
    Case("x = remote[gpu] (a + b)\n", f'with {M}("gpu"): x = (a + b)\n'),
    Case("x = remote[(a | b) & c] f()\n", f'with {M}("(a | b) & c"): x = f()\n'),
    Case("x = remote[a & (b) ] f()\n", f'with {M}("a & b"): x = f()\n', canonical=False),
    Case("x = remote[!!a] f()\n", f'with {M}("!!a"): x = f()\n'),
    Case("x = remote[cpu=0.5, n=2] f()\n", f'with {M}("cpu=0.5, n=2"): x = f()\n'),
    Case("x = remote[@db-1, gpu] f()\n", f'with {M}("gpu, @db-1"): x = f()\n', False),
    # placements that Python 3.12+'s tokenizer rejects ("invalid octal literal" ...)
    Case("x = remote[A-0O] f(y)\n", f'with {M}("A-0O"): x = f(y)\n'),
    Case("x = remote[gpu-0x, @node-1_] f()\n", f'with {M}("gpu-0x, @node-1_"): x = f()\n'),
    Case(
        "remote[a-0b &  # the fast ones]\n       !z-1e]:\n    pass\n",
        f'with {M}("a-0b & !z-1e") \\\n:\n    pass\n',
        canonical=False,
    ),
    # comments, strings, several statements, several lines
    Case("remote f()  # remote g()\n", f"with {M}(): f()  # remote g()\n"),
    Case("remote[db]:  # fetch\n    pass\n", f'with {M}("db"):  # fetch\n    pass\n'),
    Case('x = remote f("remote g()")\n', f'with {M}(): x = f("remote g()")\n'),
    Case("x = remote f(); y = g(x)\n", f"with {M}(): x = f(); y = g(x)\n"),
    Case("a = 1\nx = remote f(a)\nprint(x)\n", f"a = 1\nwith {M}(): x = f(a)\nprint(x)\n"),
    Case(
        "def g():\n    return 1\n\nx = remote g()\n",
        f"def g():\n    return 1\n\nwith {M}(): x = g()\n",
    ),
    Case("x = remote f(a,\n  b)\n", f"with {M}(): x = f(a,\n  b)\n"),
    Case("x = remote[gpu] f(a,\n  b)\n", f'with {M}("gpu"): x = f(a,\n  b)\n'),
    Case(
        "x = remote[gpu] \\\n    f(y)\nz = 1\n",
        f'with {M}("gpu"): x = \\\nf(y)\nz = 1\n',
        canonical=False,
    ),
    Case(
        "x = remote[gpu &\n   !slow] f(a)\ny = 2\n",
        f'with {M}("gpu & !slow"): x = \\\nf(a)\ny = 2\n',
        canonical=False,
    ),
    Case(
        "remote[db,  # the database\n       @s1]:\n    pass\n",
        f'with {M}("db, @s1") \\\n:\n    pass\n',
        canonical=False,
    ),
    Case(
        "remote:\n    remote = 1\n    y = remote + 1\n",
        f"with {M}():\n    remote = 1\n    y = remote + 1\n",
    ),
    Case("x = 1\r\nremote f(x)\r\n", f"x = 1\r\nwith {M}(): f(x)\r\n"),
    # no final newline; unfinished input stays unfinished for codeop
    Case("remote[gpu]:", f'with {M}("gpu"):'),
    Case("x = remote f(", f"with {M}(): x = f("),
    Case("x = remote f(a,\n", f"with {M}(): x = f(a,\n"),
    Case('x = remote f(f"{a', f'with {M}(): x = f(f"{{a'),
    # f-strings: an f-string is one string, whatever its replacement fields hold
    Case("x = remote f(f\"{'a'}\")\n", f"with {M}(): x = f(f\"{{'a'}}\")\n"),
    Case('x = remote f"{x!r:>{w}}"\n', f'with {M}(): x = f"{{x!r:>{{w}}}}"\n'),
    Case('x = remote f(f"{x=}", y)\n', f'with {M}(): x = f(f"{{x=}}", y)\n'),
    Case('x = remote f"{{remote}} {a}"\n', f'with {M}(): x = f"{{{{remote}}}} {{a}}"\n'),
    Case(
        'x = remote[gpu] f(f"{a}", f"{b:{c}}"); y = f"{x}"\n',
        f'with {M}("gpu"): x = f(f"{{a}}", f"{{b:{{c}}}}"); y = f"{{x}}"\n',
    ),
    Case(
        'x = remote f(f"""\n{a}\n""")\nz = 2\n',
        f'with {M}(): x = f(f"""\n{{a}}\n""")\nz = 2\n',
    ),
    # f-strings of PEP 701
    Case('x = remote f(f"{"a"}")\n', f'with {M}(): x = f(f"{{"a"}}")\n', python=PY312),
    Case(
        'x = remote[gpu] g(f"{a["k"]=}"); z = 1\n',
        f'with {M}("gpu"): x = g(f"{{a["k"]=}}"); z = 1\n',
        python=PY312,
    ),
    Case(
        'x = remote f"{f"{f"{a}"}"}"\n', f'with {M}(): x = f"{{f"{{f"{{a}}"}}"}}"\n', python=PY312
    ),
    Case(
        'x = remote f(f"{"\\n".join(xs)}")\n',
        f'with {M}(): x = f(f"{{"\\n".join(xs)}}")\n',
        python=PY312,
    ),
    Case(
        'x = remote f(f"{a  # remote g()\n}")\ny = 1\n',
        f'with {M}(): x = f(f"{{a  # remote g()\n}}")\ny = 1\n',
        python=PY312,
    ),
    Case(
        'x = remote f(f"""{\n    g(a,\n      b)\n}""")\n',
        f'with {M}(): x = f(f"""{{\n    g(a,\n      b)\n}}""")\n',
        python=PY312,
    ),
    Case(
        'x = remote[gpu] f(f"{a:{"="}}")\n',
        f'with {M}("gpu"): x = f(f"{{a:{{"="}}}}")\n',
        python=PY312,
    ),
    Case(
        'remote[db]:\n    y = f"{d["k"]!r:>{w}}"\n',
        f'with {M}("db"):\n    y = f"{{d["k"]!r:>{{w}}}}"\n',
        python=PY312,
    ),
]


def _params(cases: list[Case]) -> list[object]:
    return [pytest.param(case, id=case.source, marks=needs(case.python)) for case in cases]


@pytest.mark.parametrize("case", _params(TRANSFORM_CASES))
def test_transform(case: Case) -> None:
    assert transform(case.source) == case.expected


@pytest.mark.parametrize("case", _params([c for c in TRANSFORM_CASES if c.canonical]))
def test_round_trip(case: Case) -> None:
    assert to_remote_syntax(transform(case.source)) == case.source


COMPLETE = [c for c in TRANSFORM_CASES if c.source.endswith("\n") and not c.source.endswith(",\n")]


@pytest.mark.parametrize("case", _params(COMPLETE))
def test_transformed_source_parses(case: Case) -> None:
    source = transform(case.source)
    tree = ast.parse(source)  # `await` at top level is fine for ast.parse
    markers = [found for stmt in tree.body if (found := remote_placement(stmt))]
    assert len(markers) == 1
    # line numbers are kept: the remote statement starts on the line of the original form
    first = next(i for i, line in enumerate(case.source.split("\n")) if "remote" in line)
    stmt = next(s for s in tree.body if remote_placement(s))
    assert stmt.lineno == first + 1
    assert len(source.split("\n")) == len(case.source.split("\n"))


def test_unfinished_input_stays_unfinished() -> None:
    # What codeop / IPython use to decide to ask for another line.
    import codeop

    assert codeop.compile_command(transform("x = remote f(a,"), symbol="exec") is None
    assert codeop.compile_command(transform("remote[gpu]:"), symbol="exec") is None
    assert codeop.compile_command(transform("remote[gpu]:\n    x = 1\n"), symbol="exec")


def test_block_without_body_is_reported_by_python() -> None:
    source = transform("remote[db]:\nx = 1\n")
    assert source == f'with {M}("db"):\nx = 1\n'
    with pytest.raises(IndentationError) as info:
        compile(source, "<input>", "exec")
    assert info.value.lineno == 2


# --- `remote` as an ordinary name ----------------------------------------------------------

ORDINARY: list[str] = [
    "remote = 3\n",
    "remote = 3\nremote += 1\nassert remote == 4\n",
    "class O:\n    remote = 1\n\n\nobj = O()\nassert obj.remote == 1\n",
    "def remote(x):\n    return x\n\n\nremote(1)\n",
    "remote = [1, 2]\nremote[0]\n",
    "remote = [1, 2]\nremote[1] = 5\nremote[0] += 1\n",
    "import types\n\nremote = types.SimpleNamespace(x=1)\nremote.x\n",
    "remote = 1\nassert str(remote) == '1'\n",
    "remote = [[1]]\nremote[0][0]\n",
    "remote = [1]\nx = remote[0] + 1\n",
    "remote = 1\nx = remote\n",
    "remote, y = 1, 2\n",
    "def remote():\n    ...\n",
    "remote: int = 3\n",
    "remote = {}\ndb = 'db'\nremote[db]: int = 3\n",
    "remote = [1]\nif remote:\n    pass\n",
    "remote = [0]\nwhile remote[0]:\n    pass\n",
    "remote = 1\nx = remote if True else 2\n",
    "remote = [1]\nx = [remote for remote in remote]\n",
    "remote = 1\nx = remote is None\n",
    "remote = [1]\nx = 1 in remote and remote not in [[2]] or remote\n",
    "remote = 2\nx = remote - 1\nx = remote * 3\nx = remote ** 2\n",
    's = "x = remote f(y)"  # remote g()\n',
    "'''\nremote f(x)\nremote[db]:\n'''\n",
    "remote = 1\nf = lambda x=remote: x\ng = lambda x=remote[0:1] if 0 else 1: x\n",
    "try:\n    pass\nexcept ValueError as remote:\n    pass\n",
    "import contextlib\n\nwith contextlib.nullcontext() as remote:\n    pass\n",
    "from os import path as remote\n",
    "remote = 1; y = remote\n",
    "remote = {}\nremote['k'] = remote.get('k')\n",
    "print_remote = 1\nremote_x = print_remote\n",
    "remote = 1\nx = f'{remote}'\n",
    "def g():\n    remote = 1\n    return remote\n",
    "remote = 1\nmatch remote:\n    case 1:\n        pass\n",
    "remote = lambda: 0\nx = remote() or remote()\n",
    "remote = 1\nx = {remote: remote}\n",
    "remote = 1\nx = (remote,\n     remote)\n",
    "remote = 3\ndel remote\n",
    "import asyncio\n\n\nasync def g(remote):\n    return [x async for x in remote]\n",
    # in the replacement fields of f-strings, which are strings, never remote forms
    "def remote(x):\n    return x\n\n\nx = f'{remote (1)}'\n",
    "remote = [1]\nx = f'{remote [0]}'\n",
    "remote = 1\nx = f'{remote = }'\n",
    "remote = 1\nx = f'{remote!r:>{remote}}'\n",
]

# The same in the f-strings of PEP 701.
ORDINARY_312: list[str] = [
    'remote = {"k": 1}\nx = f"{remote ["k"]}"\n',
    'def remote(x):\n    return x\n\n\nx = f"{remote ("a")}"\n',
    'remote = 2\nx = f"""{\n    remote (1) if False else remote  # remote f()\n}"""\n',
    'remote = 1\nx = f"{f"{remote [0] if False else remote}"}"\n',
]


@pytest.mark.parametrize(
    "source", [*ORDINARY, *(pytest.param(source, marks=needs(PY312)) for source in ORDINARY_312)]
)
def test_ordinary_name_is_untouched(source: str) -> None:
    assert transform(source) is source
    exec(compile(transform(source), "<test>", "exec"), {})


@pytest.mark.parametrize(
    "source", ["import remote\n", "from remote import x\n", "import remote.sub as r\n"]
)
def test_ordinary_imports_are_untouched(source: str) -> None:
    assert transform(source) is source
    compile(source, "<test>", "exec")


def test_source_without_remote_is_returned_as_is() -> None:
    source = "x = 1\n" * 1000
    assert transform(source) is source
    assert to_remote_syntax(source) is source


# --- errors --------------------------------------------------------------------------------

BAD: list[tuple[str, int, int, str]] = [
    ("remote[gpu &] f()\n", 1, 13, "expected a tag name after '&'"),
    ("remote[gpu & ] f()\n", 1, 14, "expected a tag name after '&'"),
    ("remote[@] f()\n", 1, 9, "expected a server name after '@'"),
    ("remote[x=abc] f()\n", 1, 10, "expected a positive number after 'x=', got 'abc'"),
    ("remote[cpu=0] f()\n", 1, 12, "must be a positive number"),
    ("remote[a, b] f()\n", 1, 11, "only one tag expression"),
    ("remote[@a, @b] f()\n", 1, 12, "only one '@server' pin"),
    ("remote[gpu,] f()\n", 1, 12, "empty item"),
    ("remote[gpu and cpu] f()\n", 1, 12, "write '&' for 'and'"),
    ("x = 1\ny = remote[@s,\n    !] f()\n", 3, 6, "expected a tag name after '!'"),
    ("remote[gpu f()\n", 1, 7, "'[' after `remote` was never closed"),
    ("x = remote[gpu\n", 1, 11, "'[' after `remote` was never closed"),
    ("f(remote g())\n", 1, 3, "`remote` must start a statement: `x = remote"),
    ("x = remote[gpu] f(remote g())\n", 1, 19, "`remote` must start a statement"),
    ("x = lambda: remote f()\n", 1, 13, "`remote` must start a statement"),
    ("x += remote f()\n", 1, 6, "`remote` must start a statement"),
    ("x = y, remote f()\n", 1, 8, "`remote` must start a statement"),
    ("x = remote:\n    pass\n", 1, 11, "a `remote:` block cannot be assigned"),
    ("def f():\n    remote g()\n", 2, 5, "only allowed at top level"),
    ("def f():\n    return remote g()\n", 2, 12, "`remote` must start a statement"),
    ("for i in x:\n    remote:\n        pass\n", 2, 5, "only allowed at top level"),
    ("remote[gpu]:\n    x = remote f()\n", 2, 9, "only allowed at top level"),
    ("if c: remote f()\n", 1, 7, "only allowed at top level"),
    ("a = 1; remote g()\n", 1, 8, "must begin its line; it cannot follow `;`"),
    ("x = remote f(); y = remote g()\n", 1, 21, "must begin its line"),
    ("remote x = remote f()\n", 1, 12, "only one `remote`"),
    ("remote def f(): pass\n", 1, 8, "expected an expression after `remote`, got `def`"),
    ("x = remote[gpu] return\n", 1, 17, "expected an expression after `remote`"),
    ('x = f"""\n{a}\n"""; remote g()\n', 3, 6, "must begin its line"),
    ("x = remote f(f'{a}') + remote g()\n", 1, 24, "`remote` must start a statement"),
    ("def f():\n    remote[a-0x] g()\n", 2, 5, "only allowed at top level"),
]


# The same after the f-strings of PEP 701.
BAD_312: list[tuple[str, int, int, str]] = [
    ('x = f"{"a"}"; remote g()\n', 1, 15, "must begin its line"),
    ('x = f"{a  # remote g()\n}"; remote g()\n', 2, 5, "must begin its line"),
]


@pytest.mark.parametrize(
    ("source", "lineno", "offset", "message"),
    [*BAD, *(pytest.param(*bad, marks=needs(PY312)) for bad in BAD_312)],
)
def test_malformed(source: str, lineno: int, offset: int, message: str) -> None:
    with pytest.raises(SyntaxError) as info:
        transform(source, "cell.py")
    error = info.value
    assert (error.lineno, error.offset) == (lineno, offset)
    assert message in error.msg
    assert error.filename == "cell.py"
    assert error.text == source.split("\n")[lineno - 1] + "\n"


def test_placement_error_names_the_expected_form() -> None:
    with pytest.raises(SyntaxError, match=r"remote\[gpu & !slow, @db-1, gpu_mem=16\]"):
        transform("remote[gpu &] f()\n")


# --- remote_placement -----------------------------------------------------------------------


def _statements(source: str) -> list[ast.stmt]:
    return ast.parse(transform(source)).body


def test_remote_placement_of_one_line_form() -> None:
    [stmt] = _statements("a, b = remote[gpu & !slow, @db-1, gpu_mem=16] split(x)\n")
    found = remote_placement(stmt)
    assert found is not None
    placement, body = found
    assert placement == Placement(And(Tag("gpu"), Not(Tag("slow"))), "db-1", {"gpu_mem": 16})
    assert [ast.unparse(s) for s in body] == ["a, b = split(x)"]


def test_remote_placement_of_block() -> None:
    [stmt] = _statements("remote[db]:\n    rows = fetch(sql)\n    n = len(rows)\n")
    found = remote_placement(stmt)
    assert found is not None
    assert found[0] == Placement(Tag("db"))
    assert [ast.unparse(s) for s in found[1]] == ["rows = fetch(sql)", "n = len(rows)"]


def test_remote_placement_of_expression_statement() -> None:
    [stmt] = _statements("remote f(x)\n")
    assert remote_placement(stmt) == (Placement(), [stmt.body[0]])  # type: ignore[attr-defined]
    assert isinstance(stmt.body[0], ast.Expr)  # type: ignore[attr-defined]


def test_remote_placement_keeps_the_rest_of_the_line() -> None:
    [stmt] = _statements("x = remote f(); y = g(x)\n")
    found = remote_placement(stmt)
    assert found is not None
    assert len(found[1]) == 2


@pytest.mark.parametrize(
    "source",
    [
        "x = 1\n",
        "with open(f):\n    pass\n",
        f"with {M}() as p:\n    pass\n",
        f"with {M}(), other():\n    pass\n",
        f"with {M}(1):\n    pass\n",
        f"with {M}('a', 'b'):\n    pass\n",
        f"with {M}(on='a'):\n    pass\n",
        f"with x.{M}():\n    pass\n",
        f"with {M}:\n    pass\n",
        f"async def f():\n    async with {M}():\n        pass\n",
    ],
)
def test_remote_placement_of_other_statements(source: str) -> None:
    for stmt in ast.parse(source).body:
        assert remote_placement(stmt) is None


def test_remote_placement_of_written_marker() -> None:
    [stmt] = ast.parse(f"with {M}('gpu | tpu'): pass\n").body
    found = remote_placement(stmt)
    assert found is not None
    assert found[0] == parse_placement("gpu | tpu")


# --- to_remote_syntax ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (f"with {M}(): x = 1\n", "x = remote 1\n"),
        (f"with {M}('gpu|tpu'): f()\n", "remote[gpu | tpu] f()\n"),
        (f"with {M}():\n    pass\n", "remote:\n    pass\n"),
        (f"with {M}(): f = lambda x=1: x\n", "f = remote lambda x=1: x\n"),
        (f"with {M}(): d[k] = f(a=1)\n", "d[k] = remote f(a=1)\n"),
        (f"def g():\n    with {M}(): x = 1\n", f"def g():\n    with {M}(): x = 1\n"),
        (f"with {M}('bad &'): x = 1\n", f"with {M}('bad &'): x = 1\n"),
        (f"with {M}() as m: x = 1\n", f"with {M}() as m: x = 1\n"),
        (f"x = '{M}'\n", f"x = '{M}'\n"),
    ],
)
def test_to_remote_syntax(source: str, expected: str) -> None:
    assert to_remote_syntax(source) == expected


NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,6}", fullmatch=True)
EXPRESSIONS: st.SearchStrategy[TagExpr] = st.recursive(
    st.builds(Tag, NAMES),
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(And, children, children),
        st.builds(Or, children, children),
    ),
    max_leaves=8,
)
PLACEMENTS = st.builds(
    Placement,
    st.none() | EXPRESSIONS,
    st.none() | st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True),
    st.dictionaries(
        NAMES,
        st.integers(1, 10**6) | st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False),
        max_size=3,
    ),
)


@given(PLACEMENTS)
def test_round_trip_of_any_placement(placement: Placement) -> None:
    text = str(placement)
    bracket = f"[{text}]" if text else ""
    for source in (f"x = remote{bracket} f(y)\n", f"remote{bracket}:\n    y = 1\n"):
        transformed = transform(source)
        found = remote_placement(ast.parse(transformed).body[0])
        assert found is not None
        assert found[0] == placement
        assert to_remote_syntax(transformed) == source
