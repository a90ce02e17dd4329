"""What the prompt shows for each kind of input, and for what arrives later (no terminal).

Runs on every backend of ``tests/conftest.py`` (in-process workers and a real server).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

import sperse
from sperse.repl import Session


class Shown:
    """A session whose output goes to two buffers."""

    def __init__(self, ws: sperse.Workspace) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.session = Session(ws, out=lambda: self.out, err=lambda: self.err)
        self.ws = ws

    def take(self) -> tuple[str, str]:
        out, err = self.out.getvalue(), self.err.getvalue()
        self.out.seek(0)
        self.out.truncate()
        self.err.seek(0)
        self.err.truncate()
        return out, err

    def __call__(self, text: str) -> tuple[bool, str, str]:
        ok = self.session.execute(text)
        return (ok, *self.take())

    def wait(self) -> tuple[str, str]:
        self.ws.wait(timeout=60)
        return self.take()


@pytest.fixture
def shown(cluster: sperse.Cluster) -> Iterator[Shown]:
    ws = sperse.Workspace(cluster)
    s = Shown(ws)
    s("import threading")
    s("gate = threading.Event()")  # remote code cannot see it: each test makes its own
    yield s
    s.session.close()
    ws.close()


def test_values_and_assignments(shown: Shown) -> None:
    assert shown("x = 6") == (True, "", "")
    assert shown("x * 7") == (True, "42\n", "")
    assert shown("x") == (True, "6\n", "")  # a bare name is looked at, not entered
    assert shown("len") == (True, "<built-in function len>\n", "")
    ok, out, err = shown("nothing_here")
    assert (ok, out) == (False, "") and err == "NameError: name 'nothing_here' is not defined\n"


def test_remote_statement_then_arrivals(shown: Shown) -> None:
    # x takes a moment, so that y is entered while x is pending (else y runs at once).
    shown("def slow_sum(n):\n    import time\n    time.sleep(0.5)\n    return sum(range(n))\n")
    assert shown("x = remote slow_sum(5)") == (True, "", "")
    ok, out, _ = shown("y = x * 10")
    assert ok
    out2, err = shown.wait()
    lines = (out + out2).splitlines()
    assert any(
        line.startswith("[")
        and f"x ready on {shown.ws.cell('x').where}" in line
        and "x = 10" in line
        for line in lines
    ), lines
    assert any("y ready" in line and "y = 100" in line for line in lines), lines
    assert err == ""
    # A new definition: y runs again and says so.
    shown("x = remote 1 + 1")
    out, _ = shown.wait()
    assert "y = 20" in out


def test_pending_name_is_described(shown: Shown) -> None:
    shown("def held(n):\n    import time\n    time.sleep(n)\n    return n\n")
    shown("x = remote held(0.5)")
    ok, out, _ = shown("x")
    assert ok and out.startswith("<pending x: ") and out.endswith(">\n")
    ok, out, _ = shown("x + 1")  # an expression that waits
    assert ok and out.startswith("<pending [") and out.endswith(">\n")
    out, _ = shown.wait()
    assert "`x + 1` ready (0.0 s): 1.5" in out


def test_local_error_shows_user_frames_only(shown: Shown) -> None:
    shown("def f():\n    return 1 / 0\n")
    ok, out, err = shown("y = f()")
    assert not ok and out == ""
    assert err.startswith("Traceback (most recent call last):\n")
    assert 'File "<sperse-input-' in err and "in f\n" in err
    assert "_workspace" not in err and "sperse" not in err.split("<sperse-input")[0]
    assert err.endswith("ZeroDivisionError: division by zero\n")


def test_remote_error_is_marked_remote(shown: Shown) -> None:
    _, _, err1 = shown("x = remote 1 / 0")
    _, _, err2 = shown("y = x + 1")  # x may have failed already: y is blocked at once
    _, err3 = shown.wait()
    err = err1 + err2 + err3
    on = shown.ws.cell("x").where
    assert f"x failed on {on}" in err
    assert "RemoteError: cell [" in err and "ZeroDivisionError: division by zero" in err
    assert f"This happened remotely on {on}:\nTraceback" in err
    assert "upstream error in x" in err  # "y not computed: ..." or, if x failed first, at once
    assert "_workspace" not in err and "_app.py" not in err


def test_bad_input_is_one_explanation(shown: Shown) -> None:
    ok, _, err = shown("x = remote[gpu &] f()")
    assert not ok
    *_, source, caret, message = err.rstrip("\n").split("\n")
    assert message.startswith("SyntaxError: invalid placement in `remote[...]`")
    assert caret.index("^") == source.index("&") + 1

    ok, _, err = shown("x = remote[gpu] abs(1)")
    assert not ok and err.startswith("NoMatchingServer: ") and err.count("\n") == 1

    ok, _, err = shown("%wait")
    assert not ok and err == "UsageError: %wait: missing name; usage: %wait name [timeout]\n"
    ok, _, err = shown("%wait x y z")
    assert not ok and err.startswith("UsageError: %wait: unexpected `z`")

    ok, _, err = shown("from os import *")
    assert not ok and err.startswith("StatementError: ") and err.count("\n") == 1
    assert shown("1 + 1") == (True, "2\n", "")


def test_commands_print_their_text(shown: Shown) -> None:
    assert shown("%mode") == (True, "mode: auto\n", "")
    assert shown("%pending") == (True, "nothing is pending\n", "")
    ok, out, _ = shown("%help")
    assert ok and out.startswith("Commands:\n") and "%wait name [timeout]" in out
