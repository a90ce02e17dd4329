"""Bad input gets a clear error naming the cell, and the workspace keeps working (DESIGN.md §2, §8).

Each test feeds one kind of bad input to a workspace whose remote cells run on a real backend,
checks the error a user sees, and then checks that the workspace still takes statements.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sperse
from sperse import Workspace

WAIT = 30.0


@pytest.fixture
def ws(cluster: sperse.Cluster) -> Iterator[Workspace]:
    workspace = Workspace(cluster)
    yield workspace
    workspace.close()


def _still_works(ws: Workspace) -> None:
    ws.run("z = 1")
    assert ws["z"] == 1
    ws.run("z_remote = remote z + 1")
    assert ws.wait("z_remote", timeout=WAIT) == 2


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("a = 1\nb = (", id="unclosed-bracket"),
        pytest.param("a = 1\nb = )", id="stray-bracket"),
        # These parse, and Python only rejects them when it compiles them: still nothing runs.
        pytest.param("a = 1\nreturn 5", id="return-outside-function"),
        pytest.param("a = 1\ndef f():\n    b = 1\n    global b\n", id="global-after-use"),
        pytest.param("a = 1\nremote:\n    return 5\n", id="return-in-remote-block"),
    ],
)
def test_syntax_error_enters_nothing(ws: Workspace, source: str) -> None:
    ws.run("a = 0")
    with pytest.raises(SyntaxError) as info:
        ws.run(source)
    assert info.value.filename.startswith("<sperse-input-")
    assert info.value.lineno is not None and info.value.lineno > 1  # the bad line, not `a = 1`
    assert ws["a"] == 0  # the valid statement before the error was not entered either
    assert "b" not in ws
    assert "f" not in ws
    assert len(ws.cells()) == 1
    _still_works(ws)


def test_star_import_is_refused_with_advice(ws: Workspace) -> None:
    with pytest.raises(sperse.StatementError) as info:
        ws.run("from os import *")
    message = str(info.value)
    assert "`from os import *`" in message
    assert "from os import a, b" in message  # says what to write instead
    assert "import os" in message
    assert not ws.cells()
    ws.run("from os import sep\nseparator = sep")  # the advice works
    assert ws["separator"] == ws["sep"]
    _still_works(ws)


def test_cycle_from_a_redefinition_names_the_cells(ws: Workspace) -> None:
    with pytest.raises(sperse.CellError, match="NameError") as failed:
        ws.run("b = a + 1")  # `a` is not defined yet
    assert isinstance(failed.value.__cause__, NameError)
    with pytest.raises(sperse.CycleError) as info:
        ws.run("a = b")  # `b` reads `a`, so `a` cannot read `b`
    message = str(info.value)
    assert "`a = b`" in message
    assert "b = a + 1" in message
    assert "a" not in ws  # refused: the graph is unchanged
    ws.run("a = 1")  # the fix
    assert ws["a"] == 1
    assert ws["b"] == 2
    _still_works(ws)


def test_local_exception_names_the_cell(ws: Workspace) -> None:
    ws.run("def parse(text):\n    return int(text)\n")
    with pytest.raises(sperse.CellError) as info:
        ws.run("n = parse('x1')")
    error = info.value
    assert "`n = parse('x1')`" in str(error)
    assert "ValueError" in str(error)
    assert error.source == "n = parse('x1')"
    assert error.cell_id == ws.cell("n").id
    assert isinstance(error.__cause__, ValueError)
    assert ws.cell("n").status == "failed"
    with pytest.raises(sperse.CellError):
        ws["n"]
    _still_works(ws)


def test_remote_exception_is_a_remote_error(ws: Workspace) -> None:
    ws.run("def check(v):\n    raise LookupError(f'no row {v}')\n")
    ws.run("r = remote check(5)")  # returns at once; the error comes later
    with pytest.raises(sperse.RemoteError) as info:
        ws.wait("r", timeout=WAIT)
    error = info.value
    assert error.type_name == "LookupError"
    assert "r = remote check(5)" in str(error)
    assert "no row 5" in str(error)
    assert "check" in error.remote_traceback
    assert ws.cell("r").error is error
    _still_works(ws)


@pytest.mark.parametrize(
    ("setup", "name"),
    [
        pytest.param("import threading\nvalue = threading.Lock()", "value", id="lock"),
        pytest.param("value = (i for i in range(3))", "value", id="generator"),
    ],
)
def test_unpicklable_input_names_the_cell_and_the_name(
    ws: Workspace, setup: str, name: str
) -> None:
    ws.run(setup)
    with pytest.raises(sperse.SerializationError) as info:
        ws.run(f"r = remote str({name})")
    message = str(info.value)
    assert f"`r = remote str({name})`" in message
    assert f"`{name}`" in message
    assert "picklable" in message  # and what to do about it
    assert ws.cell("r").status == "failed"
    ws.run(f"{name} = 'plain'")  # a picklable value: the cell runs again, and works
    assert ws.wait("r", timeout=WAIT) == "plain"
    _still_works(ws)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("lk = remote threading.Lock()", id="one-line"),
        pytest.param("remote:\n    lk = threading.Lock()\n    n = 3\n", id="block"),
    ],
)
def test_unpicklable_result_fails_the_cell(ws: Workspace, source: str) -> None:
    ws.run("import threading")
    ws.run(source)
    with pytest.raises(sperse.SerializationError) as info:
        ws.wait("lk", timeout=WAIT)
    message = str(info.value)
    cell = ws.cell("lk")
    assert f"cell [{cell.id}]" in message
    assert cell.status == "failed"
    assert cell.error is info.value  # the cell shows it
    # Which value could not come back: the user's name, not an internal wrapper.
    assert "`lk`" in message
    assert "_thread.lock" in message
    _still_works(ws)


def test_remote_exception_that_cannot_be_recreated_locally(ws: Workspace) -> None:
    # Unpickling this exception would call Odd("1-2") and fail: errors travel as data instead.
    ws.run(
        "class Odd(Exception):\n"
        "    def __init__(self, a, b):\n"
        "        super().__init__(f'{a}-{b}')\n"
        "def odd():\n"
        "    raise Odd(1, 2)\n"
    )
    ws.run("o = remote odd()")
    with pytest.raises(sperse.RemoteError) as info:
        ws.wait("o", timeout=WAIT)
    assert info.value.type_name.endswith("Odd")
    assert "1-2" in str(info.value)
    assert "odd" in info.value.remote_traceback
    _still_works(ws)


def test_remote_exception_whose_str_fails(ws: Workspace) -> None:
    ws.run(
        "class Mute(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no text')\n"
        "def mute():\n"
        "    raise Mute()\n"
    )
    ws.run("m = remote mute()")
    with pytest.raises(sperse.RemoteError) as info:
        ws.wait("m", timeout=WAIT)
    assert info.value.type_name.endswith("Mute")
    assert "str() failed" in str(info.value)
    _still_works(ws)


@pytest.mark.parametrize(
    ("source", "lineno", "offset"),
    [
        # 1-based offsets of the `]` where a tag was expected after `&`.
        pytest.param("x = remote[gpu &] f()", 1, 17, id="one-line"),
        pytest.param("x = 1\nremote[gpu &] f()", 2, 13, id="second-line"),
    ],
)
def test_malformed_placement_points_at_the_bad_column(
    ws: Workspace, source: str, lineno: int, offset: int
) -> None:
    with pytest.raises(SyntaxError, match=r"invalid placement.*after '&'") as info:
        ws.run(source)
    assert info.value.lineno == lineno
    assert info.value.offset == offset
    assert info.value.text is not None
    assert info.value.text.rstrip("\n") == source.splitlines()[lineno - 1]
    assert "x" not in ws
    _still_works(ws)


def test_remote_as_an_ordinary_name(ws: Workspace) -> None:
    ws.run("remote = 3\ny = remote + 1")
    assert ws["y"] == 4
    ws.run("remote = 10")
    assert ws["y"] == 11  # an ordinary name: readers follow its new definition
    ws.run("remotes = [5, 6]\nremote = remotes\nw = remote[1]")
    assert ws["w"] == 6
    ws.run("remote: int = 7")  # an annotation, not a block
    assert ws["remote"] == 7
    _still_works(ws)


def test_a_misspelt_name_gets_pythons_hint_locally_and_remotely(ws: Workspace) -> None:
    from sperse.repl._display import format_error

    ws.run("undefined_name = 3\ndef slow(n):\n    return n")
    with pytest.raises(sperse.CellError) as local:
        ws.run("print(undefined_nme)")
    assert format_error(local.value).endswith(
        "NameError: name 'undefined_nme' is not defined. Did you mean: 'undefined_name'?"
    )
    ws.run("y = remote slwo(3)")
    with pytest.raises(sperse.RemoteError, match=r"Did you mean: 'slow'\?") as remote:
        ws.wait("y", timeout=WAIT)
    assert isinstance(remote.value, NameError)
