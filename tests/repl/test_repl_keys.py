"""Keys typed before the next prompt is drawn act as if typed at that prompt.

First the terminal modes on a bare pty, then the REPL in one. Each key is written as soon as the output it follows is on the screen (no
delay). To be sure the key lands while the REPL is still busy, the tests keep
it busy a moment after that output: the statement sleeps after printing, or a
local cell that reads the arrived name runs after the arrival line is printed.
The REPL's own gap between two prompts is too short to aim at from outside;
these gaps are the same terminal state, and long enough to hit every time.
"""

from __future__ import annotations

import os
import select
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import PROMPT, CtrlC, CtrlD, CtrlU, Terminal, running

from sperse.repl._tty import TtyModes


def read(fd: int, size: int, timeout: float = 5) -> bytes:
    """``size`` bytes from ``fd``, waiting for them with a deadline."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < size:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"only {data!r} to read"
        data += os.read(fd, size - len(data))
    return data


def test_held_keys_stay_keys_and_the_settings_come_back() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with TtyModes(slave) as tty:
            os.write(master, (CtrlD + CtrlC + "ab").encode())
            assert read(slave, 4) == b"\x04\x03ab"  # no end of file, no SIGINT
            with tty.statement():
                lflag, cc = termios.tcgetattr(slave)[3], termios.tcgetattr(slave)[6]
                assert lflag & termios.ISIG and lflag & termios.ICANON and lflag & termios.ECHO
                assert cc[termios.VEOF] == bytes([os.fpathconf(slave, "PC_VDISABLE")])
                os.write(master, CtrlD.encode())
            assert read(slave, 1) == b"\x04"  # held again: the key for the prompt
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Terminal]:
    with running(["--workers", "2"], tmp_path / "history") as terminal:
        yield terminal


def define_helpers(term: Terminal) -> None:
    term.enter("import time")
    term.enter("def slow(n):\rtime.sleep(n)\rreturn n\r")
    term.enter("def after_a_moment(v):\rtime.sleep(0.5)\rreturn v\r")


def output_then(term: Terminal, statement: str, output: str, keys: str) -> None:
    """Enter ``statement`` and write ``keys`` the moment ``output`` is on a row of its own."""
    term.wait_for(term.at_prompt, what="the prompt")
    term.send(statement + "\r")
    term.wait_for(lambda: output in term.lines(), what=repr(output))
    term.send(keys)


def ctrl_c_at_the_idle_prompt(term: Terminal) -> list[str]:
    """What Ctrl-C and then ``abc`` leave on the screen at a prompt that waits for input."""
    term.wait_for(term.at_prompt, what="the prompt")
    row = term.screen.cursor.y
    term.send(CtrlC + "abc")
    term.wait_for(lambda: term.at_prompt("abc"), what="abc on a fresh line")
    rows = term.lines()[row : term.screen.cursor.y + 1]
    term.send(CtrlU)
    term.wait_for(term.at_prompt, what="the line cleared")
    return rows


@pytest.mark.parametrize(
    "statement", ["print('x' * 3)", "print('x' * 3); time.sleep(0.5)"], ids=["done", "running"]
)
@pytest.mark.slow
def test_ctrl_d_right_after_output_exits(term: Terminal, statement: str) -> None:
    term.enter("import time")
    output_then(term, statement, "xxx", CtrlD)
    assert term.wait_exit(15) == 0


@pytest.mark.slow
def test_ctrl_d_right_after_output_asks_when_work_is_pending(term: Terminal) -> None:
    define_helpers(term)
    term.enter("long = remote slow(30)")
    output_then(term, "print('x' * 3); time.sleep(0.5)", "xxx", CtrlD)
    term.wait_text("1 pending (long): cancel and exit? [y/N]")
    term.send("y\r")
    assert term.wait_exit(15) == 0


@pytest.mark.slow
def test_ctrl_d_right_after_an_arrival_exits(term: Terminal) -> None:
    define_helpers(term)
    term.enter("x = remote slow(1)")
    term.enter("y = after_a_moment(x)")  # runs here when x arrives, after x's line is shown
    term.wait_for(lambda: term.row_of("x ready on local") >= 0, what="x to arrive")
    term.send(CtrlD)
    assert term.wait_exit(15) == 0
    assert "y ready" in term.text()  # y finished first: nothing was pending, no question


@pytest.mark.slow
def test_ctrl_c_right_after_an_arrival_clears_the_line(term: Terminal) -> None:
    define_helpers(term)
    idle = ctrl_c_at_the_idle_prompt(term)
    assert idle == [PROMPT.rstrip(), PROMPT + "abc"], idle

    term.enter("x = remote slow(1)")
    start = term.screen.cursor.y
    term.enter("y = after_a_moment(x)")
    term.wait_for(lambda: term.row_of("x ready on local") >= 0, what="x to arrive")
    term.send(CtrlC + "abc")
    term.wait_for(lambda: term.row_of("y ready") >= 0 and term.at_prompt("abc"), what="abc")
    x_ready, y_ready, *after = term.lines()[start + 1 : term.screen.cursor.y + 1]
    assert x_ready.startswith("[") and "x ready on local" in x_ready, term.text()
    assert y_ready.startswith("[") and "y ready" in y_ready and "y = 1" in y_ready, term.text()
    assert after == idle, term.text()
    assert "KeyboardInterrupt" not in term.text()
