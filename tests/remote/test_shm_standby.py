"""Standby files: the pages of a process's next big shared memory write, allocated ahead.

A write of at least ``min_size`` bytes has a thread make a file of its size; the next write
of at most that size for the same server fills it and gives it its own name. The unit tests
use a ``Standby`` of their own on real files in /dev/shm, with a server prefix of a process
that does not exist; the last tests run a real client and server on this host.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from shm_helpers import all_files, files_once_settled

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend
from sperse._serialize import shm

pytestmark = pytest.mark.skipif(not shm.available(), reason="no /dev/shm on this host")

WAIT = 60.0
MIN = 1 << 20


def dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(child.stdout)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A task attempt's prefix of a server that is gone; its files are removed after."""
    server = shm.server_prefix(dead_pid())
    yield f"{server}a7-"
    shm.sweep(server)


def mine(prefix: str) -> set[str]:
    server = prefix.split("-a")[0] + "-"
    return {name for name in os.listdir(shm.SHM_DIR) if name.startswith(server)}


def standbys(prefix: str) -> set[str]:
    return {name for name in mine(prefix) if shm.is_standby(name)}


def read(name: str) -> bytes:
    with open(os.path.join(shm.SHM_DIR, name), "rb") as f:
        return f.read()


def ready(standby: shm.Standby, prefix: str, size: int) -> str:
    """Ask for a file of ``size`` bytes and wait until it is made; its name."""
    made = standby.made
    standby.want(prefix, size)
    assert standby.wait(lambda s: s.made > made, WAIT), "no standby file was made"
    (name,) = standbys(prefix)
    return name


def test_the_next_big_write_fills_the_file_made_ahead_and_names_it(prefix: str) -> None:
    standby = shm.Standby(min_size=MIN)
    try:
        data = os.urandom(2 * MIN)
        assert standby.use(prefix, memoryview(data)) is None, "nothing is ready at first"
        name = ready(standby, prefix, len(data))
        assert name.startswith(shm.server_prefix(int(prefix.split("-")[1])) + "standby-")
        info = os.stat(os.path.join(shm.SHM_DIR, name))
        assert info.st_size == len(data) and stat.S_IMODE(info.st_mode) == 0o600

        written = standby.use(prefix, memoryview(data))
        assert written is not None and written.startswith(prefix) and shm.valid_name(written)
        assert read(written) == data
        assert name not in mine(prefix), "the standby file took its new name"
        assert mine(prefix) - standbys(prefix) == {written}
        assert standby.wait(lambda s: s.made == 2, WAIT), "and the next one is made"
    finally:
        standby.drop()


def test_a_smaller_write_is_cut_to_its_size_and_a_bigger_a_much_smaller_or_another_servers_is_not(
    prefix: str,
) -> None:
    standby = shm.Standby(min_size=MIN)
    try:
        name = ready(standby, prefix, 4 * MIN)
        bigger = os.urandom(4 * MIN + 1)
        assert standby.use(prefix, memoryview(bigger)) is None
        other = shm.server_prefix(dead_pid() + 1)  # (any other server)
        assert standby.use(other, memoryview(bigger[: 2 * MIN])) is None
        assert standbys(prefix) == {name}, "still ready"

        assert standby.use(prefix, memoryview(bigger[: 2 * MIN - 1])) is None, "under half"
        smaller = bigger[: 2 * MIN + 3]
        written = standby.use(prefix, memoryview(smaller))
        assert written is not None and read(written) == smaller
        assert os.stat(os.path.join(shm.SHM_DIR, written)).st_size == len(smaller)
    finally:
        standby.drop()


def test_small_writes_and_huge_ones_make_no_file(prefix: str) -> None:
    standby = shm.Standby(min_size=MIN, max_size=8 * MIN)
    standby.want(prefix, MIN - 1)
    standby.want(prefix, 8 * MIN + 1)
    standby.want("sperse-probe-1-", 2 * MIN)  # not a server's: no standby either
    assert standby.tried == 0 and standbys(prefix) == set()


def test_an_unused_file_is_removed_after_its_idle_time(prefix: str) -> None:
    standby = shm.Standby(min_size=MIN, idle=0.05)
    ready(standby, prefix, MIN)
    assert standby.wait(lambda s: s.expired == 1, WAIT)
    assert standbys(prefix) == set()


def test_drop_removes_the_ready_file_and_forgets_what_was_wanted(prefix: str) -> None:
    standby = shm.Standby(min_size=MIN)
    ready(standby, prefix, MIN)
    standby.drop(prefix)
    assert standbys(prefix) == set()
    # One being made when dropped is removed before drop returns.
    standby.want(prefix, 64 * MIN)
    standby.drop(prefix)
    assert standbys(prefix) == set()
    assert standby.use(prefix, memoryview(bytes(MIN))) is None


def test_no_file_is_made_without_room_for_it(prefix: str) -> None:
    standby = shm.Standby(min_size=MIN, room=1 << 40)  # /dev/shm would need 2^40 times it
    standby.want(prefix, MIN)
    assert standby.wait(lambda s: s.tried == 1, WAIT)
    assert standby.made == 0 and standbys(prefix) == set()


def test_a_forked_child_does_not_take_its_parents_file(prefix: str) -> None:
    script = f"""
import os
from sperse._serialize import shm
data = os.urandom(shm.standby.min_size)
first = shm.write({prefix!r}, data)
assert shm.standby.wait(lambda s: s.made == 1, 60)
pid = os.fork()
if pid == 0:
    os._exit(0 if shm.standby.use({prefix!r}, memoryview(data)) is None else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child took the parent's file"
second = shm.write({prefix!r}, data)  # the parent's is still there, and still its own
assert shm.standby.made == 1 or shm.standby.wait(lambda s: s.made == 2, 60)
with open(os.path.join(shm.SHM_DIR, second), "rb") as f:
    assert f.read() == data
print("ok")
"""
    run = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    assert standbys(prefix) == set(), "the parent removed its file at exit"


def test_the_files_of_dead_makers_are_swept_and_the_living_ones_kept(prefix: str) -> None:
    server = shm.server_prefix(int(prefix.split("-")[1]))
    dead = f"{server}standby-{dead_pid()}-00ff"
    alive = f"{server}standby-{os.getpid()}-00ff"
    for name in (dead, alive):
        with open(os.path.join(shm.SHM_DIR, name), "xb"):
            pass
    shm.sweep_dead_standbys()
    assert standbys(prefix) == {alive}


# ---- a client and a server on this host -------------------------------------------------


def total(a: Any) -> float:
    return float(a.sum())


def arange(n: int) -> Any:
    import numpy

    return numpy.arange(n, dtype="f8")


def ready_ones(names: set[str]) -> set[str]:
    """The standby files among ``names`` that are ready (one being made ends in ``-new``)."""
    return {name for name in names if shm.is_standby(name) and not name.endswith("-new")}


def workers(server: EmbeddedServer) -> set[str]:
    import psutil

    return {str(p.pid) for p in psutil.Process(server.process.pid).children(recursive=True)}


def test_big_values_up_and_down_fill_standby_files_and_none_is_left(
    shm_server: EmbeddedServer,
) -> None:
    """An upload of 20 MiB fills the client's standby file made after the one before; a
    worker makes one after its first big result. Values and writability are as ever; the
    client's file goes when it disconnects, the workers' when the server stops."""
    n = (20 << 20) // 8
    me = f"standby-{os.getpid()}-"

    def mine_now() -> set[str]:
        return {name for name in all_files(shm_server) if me in name}

    backend = SperseBackend(shm_server.address, token=shm_server.token)
    with sperse.Cluster(backend):
        assert backend.shm
        for i in range(3):
            a = np.arange(n, dtype="f8") + i
            before, made = ready_ones(mine_now()), shm.standby.made
            assert sperse.remote(total)(a).result(WAIT) == float(a.sum()), i
            assert not before & all_files(shm_server), "the upload took the ready file"
            assert shm.standby.wait(lambda s: s.made > made, WAIT), "and one is made again"  # noqa: B023
            assert len(ready_ones(mine_now())) == 1

        expected = np.arange(n, dtype="f8")
        for _ in range(3):
            back = sperse.remote(arange)(n).result(WAIT)
            assert back.flags.writeable and np.array_equal(back, expected)
            back[0] = -1.0  # copy-on-write: the file stays as it was
            del back
        assert files_once_settled(shm_server, 0) == set()
        deadline = time.monotonic() + WAIT
        while not (theirs := ready_ones(all_files(shm_server)) - mine_now()):
            assert time.monotonic() < deadline, "no worker made a standby file"
            threading.Event().wait(0.01)  # a poll of /dev/shm with a deadline
        assert {name.split("-")[3] for name in theirs} <= workers(shm_server)
    assert not {name for name in all_files(shm_server) if me in name}, "dropped at close"


def test_uploads_over_grpc_fill_the_servers_standby_file(shm_server: EmbeddedServer) -> None:
    """Over gRPC, the server writes an argument of 20 MiB into a file as its pieces come; the
    first piece says the size, so from the second upload on that file is the one the server
    made ahead."""
    n = (20 << 20) // 8
    server = f"standby-{shm_server.process.pid}-"

    def servers() -> set[str]:
        return ready_ones({name for name in all_files(shm_server) if server in name})

    cluster = sperse.connect(f"sperse://{shm_server.address}", shm_server.token, transport="grpc")
    try:
        for i in range(3):
            a = np.arange(n, dtype="f8") + i
            before = servers()
            assert sperse.remote(total)(a).result(WAIT) == float(a.sum()), i
            assert not before & all_files(shm_server), "the upload took the ready file"
            deadline = time.monotonic() + WAIT
            while not servers():
                assert time.monotonic() < deadline, "the server made no standby file"
                threading.Event().wait(0.01)  # a poll of /dev/shm with a deadline
        assert files_once_settled(shm_server, 0) == set()
    finally:
        cluster.close()
