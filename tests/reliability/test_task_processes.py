"""What a task can reach of its server's process (issue 17, item 11): the cluster token is
in no environment it can read or hand down, and the processes it starts end with its
worker, when the server stops.

Real ``sperse server`` processes; each test stops its own, by its pid.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend

WAIT = 30.0  # a deadline, never a delay


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    process = EmbeddedServer(workers=2, name="host")  # nested work needs a second
    try:
        yield process
    finally:
        process.stop()


def environments() -> tuple[dict[str, str], str]:
    """In a task: its environment, and what a process it starts is given."""
    child = subprocess.run(["env", "-0"], capture_output=True, text=True, check=True)
    return dict(os.environ), child.stdout


def start_sleeper() -> int:
    """In a task: start a process that would run for ten minutes, and say its pid."""
    return subprocess.Popen(["sleep", "600"]).pid


def start_sleeper_and_wait(path: str) -> None:
    """In a task: start a long process, write its pid to ``path``, then wait to be cancelled."""
    pid = subprocess.Popen(["sleep", "600"]).pid
    with open(path + ".tmp", "w") as file:
        file.write(str(pid))
    os.rename(path + ".tmp", path)
    time.sleep(600)


def wait_gone(pid: int) -> None:
    """Wait (on the process itself, with a deadline) until ``pid`` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], WAIT)
        assert ready, f"process {pid} still alive after {WAIT} s"
    finally:
        os.close(fd)


def test_a_task_finds_no_token_in_its_environment(server: EmbeddedServer) -> None:
    with sperse.Cluster(SperseBackend(server.address, token=server.token)):
        env, child_env = sperse.remote(environments)().result(WAIT)
    holding = sorted(name for name, value in env.items() if server.token in value)
    assert not holding, f"the task's environment holds the token in {holding}"
    assert server.token not in child_env, "a process the task starts inherits the token"


def test_nested_work_still_reaches_the_server(server: EmbeddedServer) -> None:
    def outer(n: int) -> int:
        return sperse.remote(abs)(n).result(60) + 1

    with sperse.Cluster(SperseBackend(server.address, token=server.token)):
        assert sperse.remote(outer)(-2).result(WAIT) == 3


def test_a_process_a_task_started_ends_with_the_server(server: EmbeddedServer) -> None:
    with sperse.Cluster(SperseBackend(server.address, token=server.token)):
        pid = sperse.remote(start_sleeper)().result(WAIT)
    os.kill(pid, 0)  # it runs
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(WAIT)
    wait_gone(pid)


def test_a_process_a_cancelled_task_started_ends_with_it(
    server: EmbeddedServer, tmp_path: Path
) -> None:
    path = tmp_path / "pid"
    with sperse.Cluster(SperseBackend(server.address, token=server.token)):
        task = sperse.remote(start_sleeper_and_wait)(str(path))
        deadline = time.monotonic() + WAIT
        while not path.exists():  # polled: nothing tells the client when the file appears
            assert time.monotonic() < deadline, "the task did not start its process"
            time.sleep(0.05)
        pid = int(path.read_text())
        assert task.cancel()
        wait_gone(pid)
        assert sperse.remote(abs)(-1).result(WAIT) == 1  # the server serves on
