"""The ``sperse`` REPL in a real pseudo-terminal, on the embedded server, read off its screen.

Remote code may sleep (it stands for slow work); the tests never do: they wait
for what appears on the screen, with a deadline.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import PROMPT, CtrlC, CtrlD, CtrlU, Tab, Terminal, Up, running, wait_gone

pytestmark = pytest.mark.slow


@pytest.fixture
def history(tmp_path: Path) -> Path:
    return tmp_path / "history"


@pytest.fixture
def term(history: Path) -> Iterator[Terminal]:
    with running(["--workers", "2"], history) as terminal:
        yield terminal


def define_slow(term: Terminal) -> None:
    term.enter("import time")
    term.enter("def slow(n):\rtime.sleep(n)\rreturn n\r")
    assert term.row_of("...     time.sleep(n)") >= 0, term.text()


def test_arrivals_print_above_the_line_being_typed(term: Terminal) -> None:
    define_slow(term)
    term.enter("x = remote slow(2)")
    term.enter("y = x * 10")
    # The prompt came back while x is still running: y is not there yet.
    assert term.row_of("y = 20") < 0
    assert term.row_of("x ready") < 0, term.text()

    term.send("abc")  # half a line, no Enter
    term.wait_for(lambda: term.row_of("y ready") >= 0, what="y to arrive")
    term.wait_for(lambda: term.at_prompt("abc"), what="the prompt with abc kept")
    arrival = term.row_of("y ready")
    assert "y = 20" in term.lines()[arrival]
    assert term.row_of("x ready on local") < arrival < term.screen.cursor.y
    assert term.cursor_line() == PROMPT + "abc"
    assert term.screen.cursor.x == len(PROMPT + "abc")

    term.send(CtrlU)  # clear the half line
    term.wait_for(term.at_prompt, what="the line cleared")
    term.enter("x = remote slow(3)")
    term.wait_for(lambda: term.row_of("y = 30") >= 0, what="y to update")
    assert "ready" in term.lines()[term.row_of("y = 30")]

    shown = "\n".join(term.enter("%graph y"))
    assert "[4] y = x * 10" in shown
    assert "upstream:" in shown and "x = remote slow(3)  (done)" in shown
    assert "downstream:" in shown

    header, row = term.enter("%servers")
    assert header.split() == ["name", "tags", "resources", "load", "address"]
    assert row.startswith("local") and "0/2 busy" in row and "127.0.0.1:" in row


def test_pending_name_is_described_not_waited_for(term: Terminal) -> None:
    define_slow(term)
    term.enter("model = remote slow(2)")
    (line,) = term.enter("model")
    assert line.startswith("<pending model: ") and line.endswith(">"), line
    assert "running on local" in line or "submitted" in line
    term.wait_for(lambda: term.row_of("model ready on local") >= 0, what="model")


def test_tab_completes_workspace_names(term: Terminal) -> None:
    define_slow(term)
    term.enter("my_value = 42")
    term.send("my_v" + Tab)
    term.wait_for(lambda: term.at_prompt("my_value"), what="the completion")
    assert term.enter("", typed="my_value") == ["42"]

    term.enter("pend_a = remote slow(3)")
    term.enter("pend_b = 1")
    term.send("pend_" + Tab)  # two candidates: a menu with their meta text
    term.wait_for(lambda: term.row_of("pend_b") > term.row_of(">>> pend_"), what="the menu")
    menu = term.lines()[term.row_of("pend_a") : term.row_of("pend_b") + 1]
    assert "pending" in menu[-2] and "int" in menu[-1], menu

    term.send(CtrlC)
    term.wait_for(term.at_prompt, what="the prompt")
    term.send("%wa" + Tab)
    term.wait_for(lambda: term.at_prompt("%wait"), what="the command")


def test_history_survives_a_restart(history: Path) -> None:
    first = Terminal(["--workers", "1"], history)
    try:
        first.start()
        first.enter("remembered = 12345")
        first.send(CtrlD)
        assert first.wait_exit() == 0
    finally:
        first.close()
    second = Terminal(["--workers", "1"], history)
    try:
        second.start()
        second.send(Up)
        second.wait_for(lambda: second.at_prompt("remembered = 12345"), what="the history")
    finally:
        second.close()


def test_ctrl_c_stops_waiting_not_the_work(term: Terminal) -> None:
    define_slow(term)
    term.enter("w = remote slow(3)")
    term.send("%wait w\r")
    term.wait_text("waiting for w (Ctrl-C stops waiting")
    term.send(CtrlC)
    term.wait_text("stopped waiting for w")
    term.wait_for(term.at_prompt, what="the prompt")
    assert term.row_of("w ready") < 0
    term.wait_for(lambda: term.row_of("w ready on local") >= 0, what="w to arrive later")
    assert "w = 3" in term.lines()[term.row_of("w ready")]


def test_ctrl_c_interrupts_a_local_statement(term: Terminal) -> None:
    term.enter("import time")
    # The statement says when it runs: a Ctrl-C sent before that (right after Enter) is a
    # key typed ahead, kept for the next prompt (see test_repl_keys.py).
    term.send("print('sleeping'); time.sleep(30)\r")
    term.wait_for(lambda: "sleeping" in term.lines(), what="the statement to run")
    term.send(CtrlC)
    term.wait_text("KeyboardInterrupt")
    term.wait_for(term.at_prompt, what="the prompt")
    assert term.enter("1 + 1") == ["2"]


def test_ctrl_c_interrupts_a_statement_waiting_for_a_result(term: Terminal) -> None:
    # result() with no timeout sleeps until the cluster is woken: Ctrl-C still ends it.
    define_slow(term)
    term.enter("import sperse")
    term.send("print('waiting'); sperse.remote(slow)(30).result()\r")
    term.wait_for(lambda: "waiting" in term.lines(), what="the statement to wait")
    term.send(CtrlC)
    term.wait_text("KeyboardInterrupt")
    term.wait_for(term.at_prompt, what="the prompt")
    assert term.enter("1 + 1") == ["2"]


def test_ctrl_d_with_work_running_asks_then_stops_the_server(term: Terminal) -> None:
    server = term.server_pid()
    server_fd = term.pidfd(server)
    define_slow(term)
    term.enter("long = remote slow(30)")
    term.send(CtrlD)
    term.wait_text("1 pending (long): cancel and exit? [y/N]")
    term.send("n\r")
    term.wait_for(term.at_prompt, what="the prompt again")
    assert not wait_gone(server_fd, 0)

    term.send(CtrlD)
    term.wait_for(lambda: term.text().count("cancel and exit?") == 2, what="the question")
    term.send("y\r")
    assert term.wait_exit() == 0
    assert wait_gone(server_fd, 15), "the embedded server outlived the REPL"


def test_bad_input_is_explained_and_the_session_goes_on(term: Terminal) -> None:
    source, caret, *message = term.enter("z = remote[gpu &] abs(1)")[1:]
    assert "".join(message).startswith("SyntaxError: invalid placement in `remote[...]`: ")
    assert source.strip() == "z = remote[gpu &] abs(1)"
    assert caret.strip() == "^" and caret.index("^") == source.index("&") + 1

    out = "".join(term.enter("z = remote[gpu] abs(1)"))
    assert out.startswith("NoMatchingServer: ") and "[gpu]" in out

    usage = "UsageError: %wait: missing name; usage: %wait name [timeout]"
    assert term.enter("%wait") == [usage]
    (line,) = term.enter("%mode fast")
    assert line.startswith("UsageError: %mode: mode must be one of auto, lazy")
    unknown = "UsageError: unknown command %nope; %help lists the commands"
    assert term.enter("%nope") == [unknown]

    assert term.enter("z = 2 + 2") == []
    assert term.enter("z") == ["4"]


def test_run_then_the_prompt_on_the_same_workspace(tmp_path: Path, history: Path) -> None:
    script = tmp_path / "start.py"
    script.write_text("base = 20\ndoubled = remote base * 2\n")
    term = Terminal(["run", "-i", "--workers", "1", str(script)], history)
    try:
        term.start()
        term.wait_for(lambda: term.row_of("doubled ready on local") >= 0, what="doubled")
        assert term.enter("doubled + base // 10") == ["42"]
        term.send(CtrlD)
        assert term.wait_exit() == 0
    finally:
        term.close()


def test_dashboard_starts_and_prints_its_address_without_opening_a_browser(
    history: Path,
) -> None:
    env = {"DISPLAY": "", "WAYLAND_DISPLAY": "", "CI": ""}  # no browser at hand
    with running(["--workers", "1"], history, env) as term:
        term.enter("x = 41")
        shown = "".join(term.enter("%dashboard"))  # one line, maybe wrapped
        found = re.search(r"dashboard started at (http://127\.0\.0\.1:\d+/\?token=\S+)", shown)
        assert found is not None, shown
        assert "openitinabrowser" in shown.replace(" ", "")
        url = found.group(1)
        base, token = url.split("/?token=")
        request = urllib.request.Request(
            f"{base}/api/workspaces", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert len(json.load(response)["workspaces"]) == 1  # the prompt's, shared at once
        again = "".join(term.enter("%dashboard"))
        assert f"dashboard serving at {url}" in again
