"""The extension in an in-process IPython shell on a local backend: routing, displays, magics.

IPython's plain ``InteractiveShell`` has no kernel, so the extension drains the cluster's
queue around each cell, as in terminal IPython. Displays are captured with their ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.displaypub import CapturingDisplayPublisher
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import sperse
import sperse.ipython

SLOW = "import time\ndef slow(n):\n    time.sleep(0.2)\n    return n\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[sperse.Cluster]:
    with sperse.Cluster(sperse.LocalBackend(2)) as c:
        yield c


class Shell:
    def __init__(self, shell: InteractiveShell) -> None:
        self.shell = shell
        self.pub = CapturingDisplayPublisher()
        shell.display_pub = self.pub

    def run(self, code: str) -> Any:
        result = self.shell.run_cell(code)
        if result.error_before_exec is not None:
            raise result.error_before_exec
        if result.error_in_exec is not None:
            raise result.error_in_exec
        return result.result

    def fails(self, code: str) -> BaseException:
        result = self.shell.run_cell(code)
        error = result.error_before_exec or result.error_in_exec
        assert error is not None, f"{code!r} did not fail"
        return error

    @property
    def ws(self) -> sperse.Workspace:
        return sperse.ipython.workspace(self.shell)

    def now(self, display_id: str) -> str:
        """What the display ``display_id`` shows now (its last update)."""
        return [text for did, text, _ in self.shown() if did == display_id][-1]

    def shown(self) -> list[tuple[str, str, bool]]:
        """Every display so far: (display id, text, is an update)."""
        return [
            (o["transient"]["display_id"], o["data"]["text/plain"], o["update"])
            for o in self.pub.outputs
        ]


@pytest.fixture
def ip(cluster: sperse.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    try:
        with cluster:  # sperse.current() while the extension loads
            shell.run_line_magic("load_ext", "sperse")
        wrapped = Shell(shell)
        wrapped.run(SLOW)
        yield wrapped
    finally:
        shell.run_line_magic("unload_ext", "sperse")
        InteractiveShell.clear_instance()


def test_every_statement_is_a_cell_and_ipython_syntax_stays_ipythons(
    ip: Shell, capfd: pytest.CaptureFixture[str]
) -> None:
    assert ip.run("a = 2\n!echo shell-$a\nb = a * 3\nb + 1") == 7
    assert "shell-2" in capfd.readouterr().out
    labels = [cell.label for cell in ip.ws.cells()]
    assert labels[-3:] == ["a = 2", "b = a * 3", "b + 1"]  # `!echo` is not a cell
    assert ip.run("a = 5\nb") == 15  # b followed the new a
    assert ip.shell.user_ns["b"] == 15


def test_a_pending_value_fills_its_placeholder(ip: Shell) -> None:
    assert ip.run("x = remote slow(2)\ny = x * 10") is None
    (x_id, x_text, _), (y_id, y_text, _) = ip.shown()
    assert x_text.startswith("<pending x: ") and y_text == "<pending y: waiting for x>"
    ip.run("%wait y")
    assert (x_id, "x = 2", True) in ip.shown() and (y_id, "y = 20", True) in ip.shown()
    ip.run("x = remote slow(3)")
    assert (y_id, "<pending y: waiting for x>", True) in ip.shown()
    ip.run("%wait y")
    assert ip.now(y_id) == "y = 30" and ip.now(x_id) == "x = 2"


def test_a_bare_name_is_looked_at_not_entered(ip: Shell) -> None:
    ip.run("p = remote slow(4)")
    cells = len(ip.ws.cells())
    assert ip.run("p") is None  # pending: a placeholder, filled when it arrives
    look_id, text, _ = ip.shown()[-1]
    assert text.startswith("<pending p: ")
    ip.run("%wait p")
    assert (look_id, "p = 4", True) in ip.shown()
    assert ip.run("p") == 4
    assert len(ip.ws.cells()) == cells
    assert isinstance(ip.fails("no_such_name"), NameError)


def test_news_of_a_named_cell_lands_in_the_cell_that_caused_it(ip: Shell) -> None:
    ip.run("n = 1\nm = n * 10\nn * 3")
    before = len(ip.shown())
    assert ip.run("n = 2") is None
    news = ip.shown()[before:]
    m = ip.ws.cell("m").id
    assert len(news) == 1  # not `n * 3`: the new value of an expression is no news
    assert re.fullmatch(rf"\[{m}\] m ready \(\d+\.\d s\): m = 20", news[0][1])


def test_a_placeholder_says_when_its_cell_was_redefined_first(ip: Shell) -> None:
    ip.run("w = remote slow(5)")
    w_id, _, _ = ip.shown()[-1]
    ip.run("w = 1")
    assert ip.now(w_id) == "<w: redefined before it was computed>"


def test_errors_are_short_and_nothing_runs_after_a_syntax_error(ip: Shell) -> None:
    error = ip.fails("ok = 1\nbad = remote[gpu &] slow(1)")
    assert isinstance(error, SyntaxError)
    assert "ok" not in ip.ws  # the whole cell was refused before it ran
    assert isinstance(ip.fails("%%remote [gpu &]\nz = 1\n"), SyntaxError)
    assert isinstance(ip.fails("%%remote\nreturn 5\n"), SyntaxError)
    unmatched = ip.fails("w = remote[nosuchtag] slow(1)")
    assert isinstance(unmatched, sperse.NoMatchingServer)
    assert ip.run("1 + 1") == 2


def test_remote_cell_magic_runs_the_cell_as_one_remote_block(ip: Shell) -> None:
    assert ip.run("%%remote [@local]\nimport os\npid = os.getpid()\npid * 0 + 7\n") is None
    ip.run("%wait pid")
    assert ip.run("pid") != ip.run("__import__('os').getpid()")
    assert ip.ws.cell("pid").is_remote and ip.ws.cell("pid").where == "local"
    # The same through IPython's own call, as `%%remote` reaches a magic elsewhere.
    ip.run("get_ipython().run_cell_magic('remote', '', 'q = 1 + 1\\n')")
    assert ip.ws.cell("q").is_remote


def test_commands_are_line_magics_and_a_taken_name_gets_a_prefix(
    cluster: sperse.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    shell = InteractiveShell.instance()
    try:
        shell.register_magic_function(lambda line: "theirs", "line", "graph")
        with cluster:
            shell.run_line_magic("load_ext", "sperse")
        line_magics = shell.magics_manager.magics["line"]
        for name in ("pending", "servers", "wait", "cancel", "fetch", "mode", "run_stale"):
            assert name in line_magics, name
        assert {"where", "help", "sperse_graph", "sperse_connect"} <= set(line_magics)
        assert shell.run_line_magic("graph", "") == "theirs"
        shell.run_line_magic("unload_ext", "sperse")
        assert "sperse_graph" not in line_magics and "pending" not in line_magics
        assert shell.run_line_magic("graph", "") == "theirs"
        assert not any("sperse" in repr(t) for t in shell.input_transformers_post)
        assert not any("sperse" in repr(t) for t in shell.ast_transformers)
    finally:
        shell.run_line_magic("unload_ext", "sperse")
        InteractiveShell.clear_instance()


def test_unload_cancels_running_work(ip: Shell, cluster: sperse.Cluster) -> None:
    ip.run("late = remote slow(30)")
    late_id, _, _ = ip.shown()[-1]
    ip.shell.run_line_magic("unload_ext", "sperse")
    assert ip.shown()[-1] == (
        late_id,
        "<late: cancelled, the sperse extension was unloaded>",
        True,
    )
    assert isinstance(ip.fails("z = remote slow(1)"), SyntaxError)
    with cluster:
        ip.shell.run_line_magic("load_ext", "sperse")  # for the fixture's unload


def test_code_that_magics_run_stays_plain_ipython(ip: Shell) -> None:
    ip.run("q = 4")
    cells = len(ip.ws.cells())
    ip.run("%timeit -n 5 -r 1 q * 2")
    ip.run("%time r = q + 1")
    assert len(ip.ws.cells()) == cells  # not one cell per timing loop
    assert ip.shell.user_ns["r"] == 5 and "r" not in ip.ws


def test_a_remote_traceback_quotes_a_function_from_an_earlier_part_of_the_cell(
    ip: Shell,
) -> None:
    # The magic cuts the cell in two parts; `fails` is pickled while the second one runs.
    ip.run("def fails(n):\n    raise ValueError(n)\n%xmode Context\nr = remote fails(1)")
    with pytest.raises(sperse.RemoteError) as failed:
        ip.ws.wait("r", 30)
    assert "    raise ValueError(n)\n" in str(failed.value)
