"""Issue 17, item 5: a value held on a server that was killed is lost like any other loss.

Fetching it raised ``RuntimeError: Event loop is closed`` (and warned that a coroutine was
never awaited) once the client had closed its connection to the lost server.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
import warnings

import pytest

import sperse
from sperse._backends.multi import ClusterBackend

BIG = 4 << 20  # over the inline limit: the value stays on its server
WAIT = 60.0  # a deadline, never a delay


def big() -> bytes:
    return b"x" * BIG


def parent_pid() -> int:
    """In a worker: its server's pid (its parent is the server's forkserver)."""
    parent = multiprocessing.parent_process()
    assert parent is not None and parent.pid is not None
    return parent.pid


def wait_closed(cluster: sperse.Cluster, server: str) -> None:
    """Until the client's connection to ``server`` is closed (in a thread of its own)."""
    backend = cluster.backend
    assert isinstance(backend, ClusterBackend)
    (lost,) = [c.backend for c in backend._connections.values() if c.name == server]
    deadline = time.monotonic() + WAIT
    while not lost._loop.is_closed():
        assert time.monotonic() < deadline, f"the connection to {server} was never closed"
        threading.Event().wait(0.02)


@pytest.mark.parametrize("cluster", ["many"], indirect=True)
def test_a_value_held_on_a_killed_server_is_server_lost(cluster: sperse.Cluster) -> None:
    on_two = sperse.remote(on="@two")
    first, second = on_two(big)(), on_two(big)()
    sperse.wait([first, second], timeout=WAIT)
    assert first.remote_value is not None and second.remote_value is not None
    server_pid = on_two(parent_pid)().result(WAIT)  # a worker's server
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.kill(server_pid, signal.SIGKILL)
        # Right away: the client finds out as it fetches.
        with pytest.raises(sperse.ServerLost, match="two"):
            first.result(WAIT)
        # Once the client has given the server up (a task pinned there failed, and its
        # connection was closed): still the same error.
        with pytest.raises(sperse.ServerLost):
            on_two(big)().result(WAIT)
        wait_closed(cluster, "two")
        with pytest.raises(sperse.ServerLost, match="two"):
            second.result(WAIT)
        gc.collect()  # a coroutine never awaited would warn as it is collected
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert not unawaited, unawaited
    # The other server still serves.
    assert sperse.remote(on="@local")(len)("abc").result(WAIT) == 3
