"""Spare object workers (sperse._server.spares) through a real server: a create takes the
spare, which then serves as a worker started for the object would, and a new spare starts;
a spare started under another environment, or whose worker died, is never used; spares
count toward --max-objects and stop with the server; --spare-object-workers 0 starts none.

Waits poll the server's stats with a deadline; nothing sleeps to synchronize."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from server_helpers import DEADLINE, ServerThread, pid_alive, run
from test_server_objects import Client, connect, wait_gone

from sperse._server.object_pools import ObjectPools

_CAP = 20.0


class Probe:
    """What the object's worker is: its pid, process name, environment, concurrency."""

    def __init__(self, parties: int = 1) -> None:
        self.barrier = threading.Barrier(parties)

    def pid(self) -> int:
        return os.getpid()

    def process_name(self) -> str:
        return multiprocessing.current_process().name

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def meet(self, i: int) -> int:
        self.barrier.wait(_CAP)
        return i


def wait_until(what: str, check: Callable[[], Any]) -> Any:
    """Poll ``check()`` (from the test's thread) until it is truthy, for at most DEADLINE."""

    async def poll() -> Any:
        async with asyncio.timeout(DEADLINE):
            while not (found := await asyncio.to_thread(check)):
                await asyncio.sleep(0.02)
            return found

    try:
        return asyncio.run(poll())
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def spare(server: ServerThread, other_than: int = 0) -> int:
    """The pid of the server's spare (waiting for one other than ``other_than``)."""
    pids = wait_until(
        "a spare",
        lambda: [p for p in server.stats().spare_object_pids if p != other_than],
    )
    (pid,) = pids
    return int(pid)


def object_pools(server: ServerThread) -> ObjectPools:
    pools: ObjectPools = server.server._core._objects  # type: ignore[union-attr]
    return pools


async def create(client: Client, name: str = "", **options: Any) -> str:
    object_id, _ = await client.create(Probe, options.pop("parties", 1), name=name, **options)
    return object_id


def test_a_create_takes_the_spare_and_a_new_spare_starts(make_server: Any) -> None:
    server = make_server(name="spare-server", spare_object_workers=1)
    first = spare(server)

    async def scenario() -> tuple[int, str]:
        async with connect(server) as client:
            object_id = await create(client, name="probe")
            pid = await client.value_of(object_id, "pid")
            assert (await client.info(object_id)).pid == pid
            name = await client.value_of(object_id, "process_name")
            await client.close_object(object_id)
            return pid, name

    pid, name = run(scenario())
    assert pid == first  # the spare became the object's worker
    assert name == "spare-server/object/probe-worker"  # as if started for the object
    assert spare(server, other_than=first) != first
    assert object_pools(server).spares.taken == 1


def test_a_spare_takes_the_objects_concurrency(make_server: Any) -> None:
    server = make_server(spare_object_workers=1)
    first = spare(server)

    async def scenario() -> None:
        async with connect(server) as client:
            object_id = await create(client, parties=3, max_concurrency=3)
            # Each call waits for the other two: one call at a time, none would end.
            ids = [await client.invoke(object_id, "meet", i) for i in range(3)]
            assert [await client.result(task_id) for task_id in ids] == [0, 1, 2]
            assert await client.value_of(object_id, "pid") == first
            await client.close_object(object_id)

    run(scenario())


def test_a_spare_started_under_another_environment_is_not_used(make_server: Any) -> None:
    server = make_server(spare_object_workers=1)
    stale = spare(server)

    async def change_env() -> None:
        core = server.server._core
        assert core is not None
        core.worker_env = {**core.worker_env, "SPERSE_TEST_SPARE": "new"}

    server.call(change_env())

    async def scenario() -> tuple[int, str | None]:
        async with connect(server) as client:
            object_id = await create(client)
            pid = await client.value_of(object_id, "pid")
            seen = await client.value_of(object_id, "env", "SPERSE_TEST_SPARE")
            await client.close_object(object_id)
            return pid, seen

    pid, seen = run(scenario())
    assert pid != stale and seen == "new"
    run(wait_gone(stale))  # discarded, its worker stopped
    assert object_pools(server).spares.discarded == 1
    assert spare(server, other_than=stale) != pid  # a new one, of the new environment


def test_a_spare_whose_worker_died_is_never_handed_out(make_server: Any) -> None:
    server = make_server(spare_object_workers=1)
    dead = spare(server)
    os.kill(dead, signal.SIGKILL)
    wait_until("the dead spare dropped", lambda: dead not in server.stats().spare_object_pids)

    async def scenario() -> int:
        async with connect(server) as client:
            object_id = await create(client)
            pid = int(await client.value_of(object_id, "pid"))
            await client.close_object(object_id)
            return pid

    assert run(scenario()) != dead
    spare(server, other_than=dead)  # replaced after the create


def test_spares_count_toward_max_objects(make_server: Any) -> None:
    server = make_server(max_objects=2, max_session_objects=2, spare_object_workers=1)
    spare(server)

    async def no_spare_starting() -> bool:
        spares = object_pools(server).spares
        return not spares._ready and not spares._starting

    async def scenario() -> None:
        async with connect(server) as client:
            one = await create(client)
            await asyncio.to_thread(spare, server)  # one object, one spare: two processes
            two = await create(client)  # takes it, and leaves no room for another
            assert await asyncio.to_thread(server.call, no_spare_starting())
            assert (await asyncio.to_thread(server.stats)).spare_object_pids == ()
            await client.close_object(one)
            await asyncio.to_thread(spare, server)  # room again
            await client.close_object(two)

    run(scenario())


def test_spares_stop_with_the_server(make_server: Any) -> None:
    server = make_server(spare_object_workers=1)
    pid = spare(server)
    server.close()
    assert not pid_alive(pid)


def test_no_spares_with_zero_spare_object_workers(make_server: Any) -> None:
    server = make_server(spare_object_workers=0)

    async def scenario() -> None:
        async with connect(server) as client:
            object_id = await create(client, name="fresh")
            assert await client.value_of(object_id, "process_name") == (
                f"{server.name}/object/fresh-worker"
            )
            await client.close_object(object_id)

    run(scenario())
    stats = server.stats()
    assert stats.spare_object_pids == () and object_pools(server).spares.taken == 0
