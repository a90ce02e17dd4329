"""A same-host client killed with -9 is cleaned up like a gRPC client that went away
(issue 17, item 2): its session starts its grace period at once, then ends with its remote
objects' processes and its held values in ``/dev/shm``; a task it left running is cancelled
then, not when it ends.

The client is a real Python process on the same host (so its session runs on the server's
Unix socket, the default); a second client watches the server's counters.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend
from sperse._serialize import shm
from sperse._server import local

pytestmark = pytest.mark.skipif(
    not (local.available() and shm.available()), reason="no abstract Unix sockets or /dev/shm"
)

WAIT = 30.0  # a deadline, never a delay
GRACE = "0.5"  # the server's --session-grace, in seconds

# The client: reads the address and the token on stdin, makes a remote object and a big
# value held on the server (a file in /dev/shm), maybe starts a long task, says the object's
# pid and then waits on stdin until it is killed.
CLIENT = """
import os, sys, time
import sperse

address, token, mode = sys.stdin.readline().split()
cluster = sperse.connect("sperse://" + address, token=token)
assert type(cluster.backend._session.stream).__name__ == "LocalStream", "not on the socket"


class Holder:
    def pid(self):
        return os.getpid()


holder = sperse.remote(Holder)()
pid = holder.pid().result(60)
big = sperse.remote(lambda: __import__("numpy").ones(1 << 20))()  # 8 MiB
assert sperse.remote(len)(big).result(60) == 1 << 20
if mode == "task":
    sleeper = sperse.remote(time.sleep)(600)
    assert cluster.run_until(lambda: sleeper.where, 60), "the long task did not start"
print(pid, flush=True)
sys.stdin.read()
"""


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    process = EmbeddedServer(workers=2, name="victim", extra_args=["--session-grace", GRACE])
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def watcher(server: EmbeddedServer) -> Iterator[sperse.Cluster]:
    """A second client, over gRPC, that reads the server's counters."""
    with sperse.Cluster(SperseBackend(server.address, token=server.token, shm=False)) as c:
        yield c


def server_files(server: EmbeddedServer) -> set[str]:
    prefix = shm.server_prefix(server.process.pid)
    return {name for name in os.listdir(shm.SHM_DIR) if name.startswith(prefix)}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``WAIT`` seconds, saying ``what``."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {WAIT} s"
        time.sleep(0.05)


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


def start_client(server: EmbeddedServer, mode: str) -> tuple[subprocess.Popen[str], int]:
    """The client process and its remote object's pid, once it holds everything."""
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(f"{server.address} {server.token} {mode}\n")
    client.stdin.flush()
    ready, _, _ = select.select([client.stdout], [], [], WAIT)
    line = client.stdout.readline() if ready else ""
    if not line:
        client.kill()
        client.wait(WAIT)
        pytest.fail(f"the client did not get ready (exit code {client.returncode})")
    return client, int(line)


def kill(client: subprocess.Popen[str]) -> None:
    client.send_signal(signal.SIGKILL)
    client.wait(WAIT)
    for pipe in (client.stdin, client.stdout):
        if pipe is not None:
            pipe.close()


@pytest.mark.parametrize("mode", ["idle", "task"])
def test_a_killed_same_host_client_is_cleaned_up_after_the_grace(
    server: EmbeddedServer, watcher: sperse.Cluster, mode: str
) -> None:
    client, object_pid = start_client(server, mode)
    try:
        stats = watcher.stats()
        assert stats["sessions"] == 2 and stats["remote_objects"] == 1
        assert server_files(server), "the big value is held in /dev/shm"
        if mode == "task":
            wait_until(lambda: watcher.stats()["busy"] == 1, "running the long task")
    finally:
        kill(client)
    wait_until(lambda: watcher.stats()["sessions"] == 1, "rid of the killed client's session")
    wait_gone(object_pid)
    stats = watcher.stats()
    assert stats["remote_objects"] == 0 and stats["objects_total"] == 0
    wait_until(lambda: watcher.stats()["busy"] == 0, "done with the long task (cancelled)")
    wait_until(lambda: not server_files(server), "rid of the held value's file")
