"""Issue 17, item 1: one authenticated message must not hang a server for every client.

``max_concurrency=2**32-1`` on a remote object (the most its uint32 field holds) made the
server's loop spin in the worker pool's assignment, so that other clients timed out and
SIGTERM no longer stopped it. Every size a client sends has a bound now
(:mod:`sperse._core.limits`; each is checked in tests/server/test_server_bounds.py): the
client gets a clear error, the server serves on and stops when told.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess

import pytest

import sperse
from sperse._backends.sperse import SperseBackend
from sperse._core.limits import MAX_CONCURRENCY, MAX_RETRIES

WAIT = 60.0  # a deadline, never a delay


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count


def server_pid() -> int:
    """In a worker: its server's pid (its parent is the server's forkserver)."""
    parent = multiprocessing.parent_process()
    assert parent is not None and parent.pid is not None
    return parent.pid


def test_the_client_refuses_a_huge_max_concurrency_or_retries_at_once() -> None:
    with pytest.raises(ValueError, match=f"max_concurrency must be from 1 to {MAX_CONCURRENCY}"):
        sperse.remote(max_concurrency=10**9)(Counter)
    with pytest.raises(ValueError, match="max_concurrency"):
        sperse.remote(Counter).options(max_concurrency=MAX_CONCURRENCY + 1)
    with pytest.raises(ValueError, match=f"retries must be from 0 to {MAX_RETRIES}"):
        sperse.remote(retries=2**32 - 1)(len)
    sperse.remote(max_concurrency=MAX_CONCURRENCY)(Counter)  # the limit itself is fine


@pytest.mark.parametrize("cluster", ["server"], indirect=True)
def test_a_huge_max_concurrency_is_refused_and_the_server_serves_on_and_stops(
    cluster: sperse.Cluster, second_client: sperse.Cluster
) -> None:
    huge = sperse.remote(Counter)
    huge.max_concurrency = 2**32 - 1  # past the client's own check, as any client may send
    counter = huge.create_on(cluster, (), {})
    with pytest.raises(sperse.ObjectLost, match="its creation failed") as refused:
        counter.ready(WAIT)
    message = str(refused.value)
    assert "4294967295" in message and f"limit of {MAX_CONCURRENCY}" in message
    assert "docs/server.md" in message
    # A flood of calls to it fails too (the object was never made), quickly.
    calls = [counter.incr() for _ in range(100)]
    assert all(isinstance(c.exception(WAIT), sperse.ObjectLost) for c in calls)
    # Another client is served, and so is the first.
    with second_client:
        assert sperse.remote(len)("abc").result(WAIT) == 3
    fine = sperse.remote(Counter).options(max_concurrency=MAX_CONCURRENCY)()
    assert fine.incr().result(WAIT) == 1
    # The server still stops on SIGTERM.
    backend = cluster.backend
    assert isinstance(backend, SperseBackend) and backend._process is not None
    process = backend._process.process
    assert sperse.remote(server_pid)().result(WAIT) == process.pid  # a worker's server
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server (pid {process.pid}) did not stop on SIGTERM")
