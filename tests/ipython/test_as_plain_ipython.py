"""IPython's own behaviour is the same with the extension loaded (DESIGN.md §2 rule 10).

Each test runs the same inputs in two fresh in-process shells, one plain and one with
``%load_ext sperse``, and compares what IPython shows and keeps: ``Out[n]`` and a trailing
``;``, ``_``, ``In[n]``, and tracebacks in each ``%xmode``. Cells store their history, as
cells typed at a prompt or run in a notebook do.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import sperse


@pytest.fixture(scope="module")
def cluster() -> Iterator[sperse.Cluster]:
    with sperse.Cluster(sperse.LocalBackend(1)) as c:
        yield c


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


@dataclass
class Session:
    shown: list[str]  # what each input printed (outputs, tracebacks), colours and addresses out
    user_ns: dict[str, Any]


def session(inputs: list[str], *, extension: bool, cluster: sperse.Cluster) -> Session:
    """Run ``inputs`` in a fresh shell (after one first cell that loads the extension, or
    does nothing), each as a cell stored in the history."""
    config = Config()
    config.HistoryManager.enabled = False  # no database; the history in memory is kept
    config.InteractiveShell.colors = "nocolor"
    shell = InteractiveShell.instance(config=config)
    try:
        with cluster:
            shell.run_cell("%load_ext sperse" if extension else "pass", store_history=True)
        shown = []
        for code in inputs:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                shell.run_cell(code, store_history=True)
            shown.append(_ADDRESS.sub("0x?", _ANSI.sub("", out.getvalue())))
        return Session(shown, dict(shell.user_ns))
    finally:
        if extension:
            shell.run_line_magic("unload_ext", "sperse")
        InteractiveShell.clear_instance()


Both = Callable[[list[str]], tuple[Session, Session]]


@pytest.fixture
def both(cluster: sperse.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Both:
    """``both(inputs)``: the sessions of ``inputs`` without and with the extension."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))

    def run(inputs: list[str]) -> tuple[Session, Session]:
        return (
            session(inputs, extension=False, cluster=cluster),
            session(inputs, extension=True, cluster=cluster),
        )

    return run


def test_a_trailing_semicolon_hides_the_value(both: Both) -> None:
    inputs = ["7", "10+20;", "_", "a = 5\na * 2;", "a * 2 ;  # a comment", "__"]
    plain, ext = both(inputs)
    assert plain.shown == ["Out[2]: 7\n", "", "Out[4]: 7\n", "", "", "Out[7]: 7\n"]
    assert ext.shown == plain.shown
    for name in ("_", "__", "___", "_2", "_4", "_7"):
        assert ext.user_ns[name] == plain.user_ns[name], name
    assert "_3" not in ext.user_ns and "_5" not in ext.user_ns
    assert ext.user_ns["Out"] == plain.user_ns["Out"] == {2: 7, 4: 7, 7: 7}


def test_in_holds_the_cell_as_ipython_keeps_it(both: Both) -> None:
    inputs = ["_", "b = 1\n%xmode Context\nb + 1", "def f():\n    return b\n", "f()"]
    plain, ext = both(inputs)
    assert ext.user_ns["In"][2:] == plain.user_ns["In"][2:]
    assert ext.user_ns["In"][2] == "_"
    assert ext.user_ns["In"][3] == "b = 1\nget_ipython().run_line_magic('xmode', 'Context')\nb + 1"
    for name in ("_i", "_ii", "_iii", "_i3"):
        assert ext.user_ns[name] == plain.user_ns[name], name
    assert ext.shown == plain.shown


# A function called from the cell raises; IPython's syntax (a magic) sits between its
# statements, and lines follow the failing one.
FAILING = """\
def g(x):
    y = x - 1
    return 1 / y
%xmode {mode}
w = 1
g(w)
w + 1
"""


@pytest.mark.parametrize("mode", ["Plain", "Context", "Verbose"])
def test_a_traceback_shows_the_cells_frames_and_lines(both: Both, mode: str) -> None:
    plain, ext = both([FAILING.format(mode=mode)])
    (shown,) = ext.shown
    assert "Cell In[2], line 6" in shown and "g(w)" in shown  # the cell's own frame
    assert "return 1 / y" in shown
    assert ext.shown == plain.shown
