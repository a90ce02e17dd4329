"""Drive the real ``sperse`` REPL in a pseudo-terminal and read its screen.

The REPL runs in a pty whose master side pexpect reads (``fdspawn``); every
byte is fed to a ``pyte`` screen, so a test reads what a person would see
(lines, the cursor's row) after prompt_toolkit's redraws. Waiting is always on
output with a deadline: ``wait_for(predicate)`` reads until the predicate
holds on the screen, never sleeping a fixed time.

Why not ``pexpect.spawn``: it forks the test process and runs Python in the
child before ``exec``. When the test process has a gRPC client (other tests
use one in-process), gRPC's fork handlers restart its poller in the child,
which then dies on the descriptors pexpect closes. ``subprocess`` starts the
child with vfork + exec instead, and a two-line launcher makes the pty its
controlling terminal (``os.login_tty``), so Ctrl-C still means SIGINT.

Processes: the REPL and everything it started (the embedded server and its
workers) are found under its pid and stopped by pid (through pidfds, so a
reused pid is never signalled) when the terminal is closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pyte
from pexpect.fdpexpect import fdspawn

COLUMNS = 110
ROWS = 150  # tall enough that nothing scrolls: rows keep their numbers
ROOT = Path(__file__).resolve().parents[2]
PROMPT = ">>> "
_RPROMPT = re.compile(r"\s+\d+ pending$")
_LAUNCHER = (
    "import os, sys; os.login_tty(0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'sperse.cli', *sys.argv[1:]])"
)

Up = "\x1b[A"
CtrlC = "\x03"
CtrlD = "\x04"
CtrlU = "\x15"
Tab = "\t"
Enter = "\r"


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    out: list[int] = []
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        out.extend(int(p) for p in text.split())
    return out


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_gone(pidfd: int, timeout: float) -> bool:
    """Wait until the process behind ``pidfd`` has exited."""
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


class Terminal:
    """One REPL process in a pty, with its screen."""

    def __init__(self, args: list[str], history: Path, env: dict[str, str] | None = None) -> None:
        environment = dict(os.environ)
        environment.update(
            TERM="xterm",
            PROMPT_TOOLKIT_NO_CPR="1",
            SPERSE_HISTORY=str(history),
            COLUMNS=str(COLUMNS),
            LINES=str(ROWS),
        )
        environment.update(env or {})
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self._stream = pyte.Stream(self.screen)
        self.transcript: list[str] = []
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=environment,
                cwd=str(ROOT),
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.child = fdspawn(master, encoding="utf-8", codec_errors="replace")
        self._master = master
        self._pidfds: dict[int, int] = {}
        self._track(self.process.pid)

    # ---- processes -----------------------------------------------------------

    def _track(self, pid: int) -> None:
        if pid not in self._pidfds:
            with contextlib.suppress(ProcessLookupError):
                self._pidfds[pid] = os.pidfd_open(pid)

    def track_descendants(self) -> list[int]:
        """Open pidfds on every process the REPL started so far (server, workers)."""
        pids = descendants(self.process.pid)
        for pid in pids:
            self._track(pid)
        return pids

    def server_pid(self) -> int:
        for pid in self.track_descendants():
            if "sperse.server" in cmdline(pid):
                return pid
        raise AssertionError(f"no embedded server under the REPL:\n{self.text()}")

    def pidfd(self, pid: int) -> int:
        self._track(pid)
        return self._pidfds[pid]

    def close(self) -> None:
        self.track_descendants()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        os.close(self._master)
        for pid, fd in self._pidfds.items():
            if pid != self.process.pid and not wait_gone(fd, 0):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                wait_gone(fd, 10)
            os.close(fd)
        self._pidfds.clear()

    # ---- reading -------------------------------------------------------------

    def _feed(self, timeout: float) -> bool:
        try:
            data = self.child.read_nonblocking(65536, timeout=timeout)
        except pexpect.TIMEOUT:
            return False
        self.transcript.append(data)
        self._stream.feed(data)
        return True

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out waiting for {what or predicate}; the screen:\n{self.text()}"
                )
            try:
                self._feed(min(remaining, 0.5))
            except pexpect.EOF:
                if predicate():
                    return
                status = self.process.poll()
                raise AssertionError(
                    f"the REPL ended (status {status}) while waiting for {what}; "
                    f"the screen:\n{self.text()}"
                ) from None

    def wait_text(self, text: str, timeout: float = 20) -> None:
        self.wait_for(lambda: text in self.text(), timeout, repr(text))

    def wait_exit(self, timeout: float = 20) -> int:
        """Read until the REPL closes the terminal; its exit status."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._feed(max(0.05, deadline - time.monotonic()))
            except pexpect.EOF:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the REPL did not exit; the screen:\n{self.text()}")
        return self.process.wait(timeout)

    # ---- the screen ----------------------------------------------------------

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines()).rstrip()

    def cursor_line(self) -> str:
        """The row of the cursor, without the right prompt ("2 pending")."""
        return _RPROMPT.sub("", self.lines()[self.screen.cursor.y])

    def row_of(self, needle: str) -> int:
        """The last row holding ``needle`` (-1 if none)."""
        rows = [i for i, line in enumerate(self.lines()) if needle in line]
        return rows[-1] if rows else -1

    def at_prompt(self, typed: str = "") -> bool:
        return self.cursor_line() == (PROMPT + typed).rstrip()

    # ---- typing --------------------------------------------------------------

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def start(self) -> None:
        self.wait_for(self.at_prompt, 30, "the first prompt")

    def enter(self, line: str, timeout: float = 20, typed: str = "") -> list[str]:
        """Type ``line`` and Enter at the prompt (which holds ``typed`` already), wait for
        the next empty prompt below it, and return the rows in between (what the line
        printed at once)."""
        self.wait_for(lambda: self.at_prompt(typed), 20, f"the prompt {typed!r}")
        start = self.screen.cursor.y
        self.send(line + Enter)

        def back() -> bool:
            return self.screen.cursor.y > start and self.at_prompt()

        self.wait_for(back, timeout, f"the prompt after {line!r}")
        assert self.screen.cursor.y < ROWS - 1, "the screen is full: make ROWS larger"
        echo_rows = 1 + line.count("\r") + line.count("\n")
        return self.lines()[start + echo_rows : self.screen.cursor.y]


@contextlib.contextmanager
def running(
    args: list[str], history: Path, env: dict[str, str] | None = None
) -> Iterator[Terminal]:
    """A started REPL in a terminal, closed (with everything it started) at the end."""
    terminal = Terminal(args, history, env)
    try:
        terminal.start()
        terminal.track_descendants()
        yield terminal
    finally:
        terminal.close()
