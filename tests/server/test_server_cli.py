"""The ``python -m sperse.server`` process: the ready line, stdin EOF, signals, no orphans.

Each test starts one server process and stops it by its own pid (in ``finally``, whatever
happened); worker pids are learnt from the tasks' ``Started`` events and checked gone.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from server_helpers import DEADLINE, TOKEN, RawSession, call_work, pid_alive, run

READY = re.compile(r"^sperse server (\S+) ready at sperse://127\.0\.0\.1:(\d+)\n$")


def worker_pid() -> int:
    return os.getpid()


class ServerProcess:
    def __init__(self, args: list[str], stderr: Path, *, stdin_token: str | None = None) -> None:
        self.started = time.monotonic()
        self._stderr = stderr.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sperse.server", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.stderr_path = stderr
        if stdin_token is not None:
            assert self.process.stdin is not None
            self.process.stdin.write(stdin_token.encode() + b"\n")
            self.process.stdin.flush()

    def ready_line(self, timeout: float = DEADLINE) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0, f"no ready line; stderr: {self.stderr()}"
            readable, _, _ = select.select([stdout], [], [], left)
            if readable:
                chunk = os.read(stdout.fileno(), 4096)
                assert chunk, f"stdout closed; stderr: {self.stderr()}"
                line += chunk
        return line.decode()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float = DEADLINE) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Whatever state it is in: gone afterwards (by its own pid)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start ``python -m sperse.server ARGS``; every process is stopped when the test ends."""
    started: list[ServerProcess] = []

    def start(args: list[str], *, stdin_token: str | None = None) -> ServerProcess:
        stderr = tmp_path / f"stderr-{len(started)}.txt"
        process = ServerProcess(args, stderr, stdin_token=stdin_token)
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def _run_task(port: str, token: str = TOKEN) -> int:
    """Run one task on the server at ``port``; the pid of the worker that ran it."""

    async def scenario() -> int:
        async with RawSession(f"127.0.0.1:{port}") as s:
            await s.hello(token)
            await s.submit(s.task("pid", call_work(worker_pid)))
            (value,) = (await s.done("pid")).values
            pid = int(s.value(value))
            assert pid == s.of("pid", "started")[0].started.worker
            return pid

    return run(scenario())


def _gone(pid: int, timeout: float = DEADLINE) -> bool:
    """Wait (on a pidfd: the worker is not our child) until process ``pid`` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable) or not pid_alive(pid)
    finally:
        os.close(fd)


def test_token_stdin_ready_line_and_exit_on_stdin_eof(start_server: StartServer) -> None:
    server = start_server(
        ["--token-stdin", "--port", "0", "--workers", "1", "--name", "cli-test",
         "--log-level", "warning"],
        stdin_token=TOKEN,
    )  # fmt: skip
    line = server.ready_line()
    ready_after = time.monotonic() - server.started
    match = READY.match(line)
    assert match, line
    assert match.group(1) == "cli-test"
    assert ready_after < 5.0, f"ready after {ready_after:.2f}s"
    worker = _run_task(match.group(2))
    assert server.process.stdin is not None
    server.process.stdin.close()  # what happens when the parent dies
    assert server.wait() == 0, server.stderr()
    assert _gone(worker), f"worker {worker} outlived its server"
    assert TOKEN not in server.stderr()


def test_sigterm_stops_gracefully(start_server: StartServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    server = start_server(["--token-file", str(token_file), "--port", "0", "--workers", "2"])
    match = READY.match(server.ready_line())
    assert match
    worker = _run_task(match.group(2), "file-token")
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 0, server.stderr()
    assert _gone(worker)
    assert "event=server_stopped" in server.stderr()


def test_a_generated_token_is_printed_on_stderr(start_server: StartServer) -> None:
    server = start_server(["--port", "0", "--workers", "1"])
    match = READY.match(server.ready_line())
    assert match, "stdout holds the ready line only"
    found = re.search(r"token='([^']+)'", server.stderr())
    assert found, server.stderr()
    worker = _run_task(match.group(2), found.group(1))
    server.process.send_signal(signal.SIGINT)
    assert server.wait() == 0, server.stderr()
    assert _gone(worker)


def test_a_public_host_without_tls_is_refused(start_server: StartServer) -> None:
    server = start_server(["--host", "0.0.0.0", "--token", "x"])
    assert server.wait() == 2
    stderr = server.stderr()
    assert "--tls-cert" in stderr and "--insecure" in stderr
