"""Big buffers through shared memory files, with a client on the server's host.

Each test runs a server of its own (``make_server``), in this process: the server's files are
``sperse-<this pid>-...`` (``shm_files()``), and every test checks that none is left once
the values are released and the server has stopped.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from server_helpers import (
    RawSession,
    ServerThread,
    call_work,
    run,
    shm_files,
    statement,
    unlinked,
)

from sperse._serialize import RemoteRef, RemoteValue, shm

pytestmark = pytest.mark.skipif(not shm.available(), reason="no /dev/shm on this host")

MakeServer = Callable[..., ServerThread]
BIG = 1 << 20  # float64 items: 8 MiB


def total(array: Any) -> float:
    return float(array.sum())


def add_one_in_place(array: Any) -> float:
    array += 1  # writable, as it would be locally (copy-on-write: the file is untouched)
    return float(array.sum())


def make(n: int) -> Any:
    return np.arange(n, dtype=np.float64)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def no_reference(ref: RemoteRef, timeout: float | None) -> None:
    raise AssertionError("the test never fetches through the RemoteValue")


def remote(object_id: str) -> RemoteValue:
    return RemoteValue(RemoteRef(object_id, "test", "numpy.ndarray", 0, ""), fetch=no_reference)


def test_the_probe_turns_shared_memory_on(make_server: MakeServer) -> None:
    server = make_server()

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            welcome = (await s.hello(shm_probe=True)).welcome
            assert welcome.shm
            assert welcome.shm_prefix.startswith(shm.server_prefix())
        async with RawSession(server.address) as s:
            assert not (await s.hello()).welcome.shm  # no probe
        async with RawSession(server.address) as s:
            assert not (await s.hello(shm_probe=True, nonce=b"x" * 32)).welcome.shm
        off = make_server(shm=False)
        async with RawSession(off.address) as s:
            assert not (await s.hello(shm_probe=True)).welcome.shm

    run(scenario())


def test_an_array_up_down_and_by_reference(make_server: MakeServer) -> None:
    server = make_server(workers=2)
    array = np.arange(BIG, dtype=np.float64)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello(shm_probe=True)
            # Up: the client writes the file once; the worker maps it (writable).
            uploads: list[str] = []
            await s.submit(s.task("up", call_work(add_one_in_place, array), uploads=uploads))
            (value,) = (await s.done("up")).values
            assert s.value(value) == float((array + 1).sum())
            assert len(uploads) == 1
            await unlinked(set(uploads))  # the server unlinks an upload at the end

            # Down: a big result stays in the object store as a file; a fetch names it.
            await s.submit(s.task("down", call_work(make, BIG)))
            (held,) = (await s.done("down")).values
            object_id = held.ref.object_id
            files = shm_files()
            assert len(files) == 1
            reply, fetched = await s.fetch(object_id)
            assert [b.shm for b in reply.value.buffers] == sorted(files)
            np.testing.assert_array_equal(fetched, array)
            fetched[0] = -1.0  # writable: a copy-on-write mapping
            _, again = await s.fetch(object_id)
            assert again[0] == 0.0

            # By reference: the worker maps the object's file; no bytes in the envelope.
            task, blobs = s.task("sum", call_work(total, remote(object_id)))
            assert not blobs and not task.work.buffers
            await s.submit((task, blobs))
            (result,) = (await s.done("sum")).values
            assert s.value(result) == float(array.sum())

            await s.release(object_id)
            await unlinked()
            await s.goodbye()

    run(scenario())
    server.close()
    assert shm_files() == set()


def test_a_released_object_stays_until_the_task_using_it_ends(
    make_server: MakeServer, tmp_path: Any
) -> None:
    server = make_server(workers=1)
    gate = tmp_path / "go"

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello(shm_probe=True)
            await s.submit(s.task("down", call_work(make, BIG)))
            object_id = (await s.done("down")).values[0].ref.object_id
            waiting = statement(
                "import os, time\n"
                f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
                "n = float(x.sum())\n",
                {"x": remote(object_id)},
                ("n",),
            )
            await s.submit(s.task("uses", waiting))
            await s.release(object_id)
            await s.stats()
            assert len(shm_files()) == 1, "a queued or running task still needs it"
            gate.touch()
            (n,) = (await s.done("uses")).values
            assert s.value(n) == float(np.arange(BIG).sum())
            await unlinked()

    run(scenario())


def test_a_client_elsewhere_gets_bytes(make_server: MakeServer) -> None:
    server = make_server()
    array = np.arange(BIG, dtype=np.float64)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            welcome = (await s.hello()).welcome
            assert not welcome.shm
            await s.submit(s.task("up", call_work(total, array)))
            (value,) = (await s.done("up")).values
            assert s.value(value) == float(array.sum())
            await s.submit(s.task("down", call_work(make, BIG)))
            object_id = (await s.done("down")).values[0].ref.object_id
            assert len(shm_files()) == 1  # kept as a file on the server all the same
            reply, fetched = await s.fetch(object_id)
            assert all(b.WhichOneof("kind") != "shm" for b in reply.value.buffers)
            np.testing.assert_array_equal(fetched, array)
            # It may not name files: that is a protocol error.
            task, blobs = s.task("sneaky", call_work(total, 1))
            task.work.buffers.add().shm = shm.server_prefix() + "s0-0"
            await s.submit((task, blobs))
            await s.wait_for(lambda: s.error is not None)
            assert s.error is not None and s.error.code == "protocol"

    run(scenario())
    server.close()
    assert shm_files() == set()


def test_names_outside_the_session_prefix_are_refused(make_server: MakeServer) -> None:
    server = make_server()

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello(shm_probe=True)
            task, blobs = s.task("sneaky", call_work(total, 1))
            task.work.buffers.add().shm = "sperse-probe-elsewhere"
            await s.submit((task, blobs))
            await s.wait_for(lambda: s.error is not None)
            assert s.error is not None and "prefix" in s.error.message

    run(scenario())


def test_a_killed_worker_leaves_no_files(make_server: MakeServer) -> None:
    server = make_server(workers=1)
    array = np.arange(BIG, dtype=np.float64)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello(shm_probe=True)
            # Its upload, and the file of `a`, written before `b` kills the worker.
            source = (
                "import os, signal\n"
                "a = x + 1\n"
                "class Killer:\n"
                "    def __reduce__(self):\n"
                "        os.kill(os.getpid(), signal.SIGKILL)\n"
                "b = Killer()\n"
            )
            uploads: list[str] = []
            work = statement(source, {"x": array}, ("a", "b"))
            await s.submit(s.task("dies", work, uploads=uploads))
            failure = await s.failed("dies")
            assert failure.kind == "worker_died"
            await s.submit(s.task("after", call_work(make, 1)))
            await s.done("after")
            await unlinked()

    run(scenario())
    server.close()
    assert shm_files() == set()


def test_a_worker_killed_mid_task_leaves_nothing_after_the_server_stops(
    make_server: MakeServer,
) -> None:
    server = make_server(workers=1)
    array = np.arange(BIG, dtype=np.float64)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello(shm_probe=True)
            uploads: list[str] = []
            await s.submit(s.task("dies", call_work(kill_self), uploads=uploads))
            await s.submit(s.task("holds", call_work(total, array), uploads=uploads))
            assert (await s.failed("dies")).kind == "worker_died"
            await s.done("holds")
            await s.submit(s.task("down", call_work(make, BIG)))
            await s.done("down")  # held: its file stays until the server stops
            assert shm_files()

    run(scenario())
    server.close()
    assert shm_files() == set()


# ---- the shared memory helpers ------------------------------------------------------------


def test_a_mapping_is_copy_on_write_and_outlives_the_file() -> None:
    data = np.arange(1 << 16, dtype=np.float64)
    name = shm.write(shm.server_prefix() + "t-", data)
    try:
        view = shm.map_copy(name)
        array = np.frombuffer(view, dtype=np.float64)
        assert array.flags.writeable
        array[0] = -1.0  # the mapping's own copy of that page
        again = np.frombuffer(shm.map_copy(name, data.nbytes), dtype=np.float64)
        assert again[0] == 0.0, "the file is unchanged"
    finally:
        assert shm.unlink([name]) == 1
    assert array[1] == 1.0, "a mapping outlives the unlinking of its file"
    assert shm.unlink([name]) == 0  # gone: skipped


def test_files_shorter_than_said_and_foreign_names_are_refused() -> None:
    name = shm.write(shm.server_prefix() + "t-", b"x" * 10)
    try:
        with pytest.raises(shm.ShmError, match="holds 10 bytes"):
            shm.map_copy(name, 11)
    finally:
        shm.unlink([name])
    for bad in ("../etc/passwd", "sperse-1/x", "other-1-x", "sperse-"):
        assert not shm.valid_name(bad)
        with pytest.raises(shm.ShmError, match="not the name"):
            shm.map_copy(bad)
    assert shm.unlink(["../etc/passwd"]) == 0


def test_a_sweep_takes_its_prefix_and_the_files_of_dead_servers_only() -> None:
    mine = shm.write(shm.server_prefix() + "t-", b"x")
    other = shm.write("sperse-probe-", b"x")  # not a server's
    dead_pid = 2**22 + 7  # above the default pid_max: no such process
    dead = shm.write(shm.server_prefix(dead_pid), b"x")
    try:
        assert shm.sweep_dead_servers() >= 1
        assert not os.path.exists(os.path.join(shm.SHM_DIR, dead))
        assert os.path.exists(os.path.join(shm.SHM_DIR, mine))
        assert shm.sweep(shm.server_prefix() + "t-") == 1
        assert os.path.exists(os.path.join(shm.SHM_DIR, other))
    finally:
        shm.unlink([mine, other, dead])


def test_the_probe_needs_the_nonce() -> None:
    name, nonce = shm.make_probe()
    try:
        assert shm.check_probe(name, nonce)
        assert not shm.check_probe(name, b"y" * len(nonce))
        assert not shm.check_probe(shm.server_prefix() + "x", nonce)  # not a probe's name
    finally:
        shm.unlink([name])
    assert not shm.check_probe(name, nonce)  # gone
