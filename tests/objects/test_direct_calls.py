"""A same-host client's calls of the objects it made, sent to the object's worker directly
(``sperse._backends.sperse.direct``, ``sperse._pool.direct``), on a real embedded server.

What a user relies on: the same answers, order and errors as through the server (calls in
the order made, whichever way each goes; a cancel interrupts a running call; a dead worker
fails its calls with ``ObjectLost``; output reaches the client), and that only the client
given the secret gets in.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import sperse
from sperse._backends.sperse import SperseBackend
from sperse._backends.sperse.direct import DirectCalls

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the same-host socket is Linux's"
)

WAIT = 60.0  # a deadline, never a delay


class Log:
    """Records every call's argument, in the order the calls ran."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def add(self, item: object) -> int:
        self.seen.append(item if not isinstance(item, np.ndarray) else ("array", item.size))
        return len(self.seen)

    def items(self) -> list[object]:
        return self.seen

    def pid(self) -> int:
        return os.getpid()

    def shout(self, text: str) -> str:
        print(text)
        print(f"to stderr: {text}", file=sys.stderr)
        return text.upper()

    def chorus(self, threads: int, lines: int) -> int:
        """Lines printed by several threads of the call at once."""

        def sing(i: int) -> None:
            for j in range(lines):
                print(f"voice {i} line {j}")

        voices = [threading.Thread(target=sing, args=(i,)) for i in range(threads)]
        for v in voices:
            v.start()
        for v in voices:
            v.join()
        return threads * lines

    def big(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.float64)

    def wait_for(self, path: str, started: str) -> str:
        """Runs until ``path`` exists (at most a minute); ``started`` is made first."""
        Path(started).touch()
        deadline = time.monotonic() + 60
        try:
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.005)
            return "released"
        finally:
            self.seen.append("ended")

    def die(self) -> None:
        os._exit(3)


def ones(n: int) -> np.ndarray:
    return np.ones(n)


@pytest.fixture(scope="module")
def cluster() -> Iterator[sperse.Cluster]:
    with sperse.connect(workers=1) as c:
        yield c


def direct_of(cluster: sperse.Cluster) -> DirectCalls:
    backend = cluster.backend
    assert isinstance(backend, SperseBackend)
    return backend._direct


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def is_direct(cluster: sperse.Cluster, proxy: sperse.ObjectProxy) -> bool:
    route = direct_of(cluster)._routes.get(proxy.object_id)
    return route is not None and route.channel is not None and route.channel.usable


def test_calls_go_to_the_worker_directly_in_order(cluster: sperse.Cluster) -> None:
    log = sperse.remote(Log)()
    assert log.add(0).result(WAIT) == 1
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    calls = [log.add(i) for i in range(1, 2001)]
    small = log.add(np.arange(1000))  # 8 KB of buffers: direct too, in the frame
    assert [c.result(WAIT) for c in calls] == list(range(2, 2002))
    assert small.result(WAIT) == 2002
    assert log.items().result(WAIT) == [*range(2001), ("array", 1000)]
    assert all(c.where == log.where for c in calls)


def test_order_is_kept_across_the_two_ways(cluster: sperse.Cluster) -> None:
    """Calls whose arguments are values held by the server, or big arrays, go through the
    server; the ones around them directly; all run in the order they were made."""
    log = sperse.remote(Log)()
    log.add("first").result(WAIT)
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    held = sperse.remote(ones)(1 << 18)  # 2 MB, kept on the server: its reference goes
    held.result(WAIT)
    big = np.ones(1 << 20)  # 8 MB: through the server (shared memory), not the socket
    expected: list[object] = ["first"]
    calls = []
    for i in range(30):
        calls.append(log.add(i))
        expected.append(i)
        if i % 7 == 3:
            calls.append(log.add(held))
            expected.append(("array", 1 << 18))
        if i % 11 == 5:
            calls.append(log.add(big))
            expected.append(("array", big.size))
    sperse.wait(calls, timeout=WAIT)
    assert [c.result(WAIT) for c in calls] == list(range(2, len(expected) + 1))
    assert log.items().result(WAIT) == expected


def test_a_cancel_interrupts_the_running_call_and_drops_a_queued_one(
    cluster: sperse.Cluster, tmp_path: Path
) -> None:
    log = sperse.remote(Log)()
    log.add("before").result(WAIT)
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    started = tmp_path / "started"
    running = log.wait_for(str(tmp_path / "never"), str(started))
    queued = log.add("queued")
    wait_until(started.exists, "the call to start")
    assert queued.cancel()
    assert running.cancel()
    with pytest.raises(sperse.TaskCancelled):
        running.result(WAIT)
    with pytest.raises(sperse.TaskCancelled):
        queued.result(WAIT)
    assert log.add("after").result(WAIT) == 3  # the object lives on, its state kept
    assert log.items().result(WAIT) == ["before", "ended", "after"]


def test_output_reaches_the_client(
    cluster: sperse.Cluster, capfd: pytest.CaptureFixture[str]
) -> None:
    log = sperse.remote(Log)()
    log.add(0).result(WAIT)
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    assert log.shout("hello there").result(WAIT) == "HELLO THERE"
    out, err = capfd.readouterr()
    assert "hello there" in out
    assert "to stderr: hello there" in err
    assert log.chorus(4, 200).result(WAIT) == 800  # threads of the call print at once
    out, _ = capfd.readouterr()
    # Every line, each whole (print's text and its newline may interleave across threads,
    # as they do in any Python process; the frames carrying them never do).
    sung = re.findall(r"voice \d+ line \d+(?!\d)", out)
    assert sorted(sung) == sorted(f"voice {i} line {j}" for i in range(4) for j in range(200))
    assert log.add(1).result(WAIT) == 2  # the connection is whole


def test_the_server_counts_direct_calls_and_keeps_their_logs(cluster: sperse.Cluster) -> None:
    log = sperse.remote(Log)()
    log.add(0).result(WAIT)
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    calls = [log.add(i) for i in range(1, 50)]
    shouted = log.shout("kept")
    assert shouted.result(WAIT) == "KEPT" and [c.result(WAIT) for c in calls][-1] == 50

    def counted() -> bool:
        (info,) = [o for o in sperse.objects() if o.object_id == log.object_id]
        return info.calls == 51

    wait_until(counted, "the server to count the 51 calls")  # reported once the worker idles
    wait_until(lambda: "kept" in shouted.logs("stdout"), "the log of the call on the server")
    assert shouted.logs("stderr") == "to stderr: kept\n"


def test_a_big_result_comes_back_whole_and_leaves_no_file(cluster: sperse.Cluster) -> None:
    log = sperse.remote(Log)()
    log.add(0).result(WAIT)
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    prefix = cluster.backend._session.shm_prefix  # type: ignore[attr-defined]
    assert prefix
    value = log.big(3 << 20).result(WAIT)  # 24 MB: a shared memory file for this client
    assert value.shape == (3 << 20,) and value[-1] == (3 << 20) - 1
    value[0] = 7.0  # the user's own, writable copy
    files = [f for f in os.listdir("/dev/shm") if f.startswith(prefix) and "-standby-" not in f]
    assert files == []


def test_a_dead_worker_fails_its_call_and_the_next_with_object_lost(
    cluster: sperse.Cluster,
) -> None:
    log = sperse.remote(Log)()
    log.add(0).result(WAIT)
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    with pytest.raises(sperse.ObjectLost):
        log.die().result(WAIT)
    with pytest.raises(sperse.ObjectLost):
        log.add(1).result(WAIT)


def _frame(tag: int, seq: int, body: bytes) -> bytes:
    return struct.pack("!BQQ", tag, seq, len(body)) + body


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(WAIT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_only_the_secret_gets_in(cluster: sperse.Cluster) -> None:
    """A wrong secret, or a first frame other than HELLO, or one too big, is cut off before
    anything is unpickled; the object serves its client on."""
    log = sperse.remote(Log)()
    log.add(0).result(WAIT)
    wait_until(lambda: is_direct(cluster, log), "the direct way to open")
    name = next(
        line.split()[-1]
        for line in Path("/proc/net/unix").read_text().splitlines()
        if f"@sperse-direct-{log.pid().result(WAIT)}-" in line
    )
    for first in (
        _frame(5, 0, b"x" * 32),  # HELLO, the wrong secret
        _frame(1, 1, b"\x80\x05N."),  # RUN before HELLO: a pickle, never read
        struct.pack("!BQQ", 5, 0, 1 << 40),  # a frame too big to be a HELLO
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect("\0" + name.lstrip("@"))
            sock.sendall(first)
            assert _closed(sock)
    assert log.add(1).result(WAIT) == 2


def test_through_grpc_every_call_goes_through_the_server() -> None:
    """Last: a cluster of its own (the module's is not the current one after it)."""
    with sperse.connect(workers=1, transport="grpc") as cluster:
        log = sperse.remote(Log)()
        assert [log.add(i).result(WAIT) for i in range(3)] == [1, 2, 3]
        assert log.object_id not in direct_of(cluster)._routes
