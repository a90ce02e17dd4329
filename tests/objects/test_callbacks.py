"""Callbacks (``sperse.callback``): remote code calls a function of its client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

import sperse
from sperse._backends.memory import MemoryBackend
from sperse._backends.multi import ClusterBackend
from sperse._backends.ray import RayBackend
from sperse._backends.sperse import SperseBackend

WAIT = 60.0  # a deadline, never a delay


def count_to(n: int, progress: Callable[[int, int], None]) -> str:
    for i in range(1, n + 1):
        progress(i, n)
    return "counted"


def call_later(progress: Callable[[str], None]) -> None:
    progress("still here?")


@pytest.fixture(scope="module")
def servers(cluster: sperse.Cluster) -> Iterator[sperse.Cluster]:
    if not isinstance(cluster.backend, SperseBackend | ClusterBackend | RayBackend | MemoryBackend):
        pytest.skip(f"callbacks need sperse servers or Ray, not {type(cluster.backend).__name__}")
    yield cluster


def test_remote_code_reports_progress_to_the_client(servers: sperse.Cluster) -> None:
    seen: list[tuple[int, int, str]] = []
    progress = sperse.callback(lambda i, n: seen.append((i, n, threading.current_thread().name)))
    done = sperse.remote(count_to)(5, progress)
    assert done.result(WAIT) == "counted"
    deadline = time.monotonic() + WAIT
    while len(seen) < 5 and time.monotonic() < deadline:
        servers.run_until(lambda: len(seen) >= 5, 0.5)
    assert [(i, n) for i, n, _ in seen] == [(i, 5) for i in range(1, 6)]
    assert {thread for _, _, thread in seen} == {threading.current_thread().name}


def test_a_callback_of_a_client_that_left_is_client_gone(servers: sperse.Cluster) -> None:
    backend = servers.backend
    if isinstance(backend, RayBackend):
        other = sperse.Cluster(RayBackend())
    elif isinstance(backend, SperseBackend):
        other = sperse.Cluster(SperseBackend(backend.address, token=backend._token))
    elif isinstance(backend, MemoryBackend):
        other = sperse.Cluster(MemoryBackend())
    else:
        assert isinstance(backend, ClusterBackend)
        urls = [s.address for s in backend.servers()]
        other = sperse.Cluster(ClusterBackend(urls, token=backend._token))
    with other:
        ghost = sperse.callback(print)
        keep = sperse.remote(lambda cb: cb)(ghost)  # a stand-in, kept as a value here
        stand_in = keep.result(WAIT)
    with pytest.raises(sperse.RemoteError, match="ClientGone"):
        sperse.remote(call_later)(stand_in).result(WAIT)


def test_a_callback_outside_remote_code_on_servers_is_refused() -> None:
    local = sperse.Cluster(sperse.LocalBackend(1))
    with local, pytest.raises(sperse.SerializationError, match="sperse servers"):
        sperse.remote(count_to)(1, sperse.callback(print)).result(WAIT)
