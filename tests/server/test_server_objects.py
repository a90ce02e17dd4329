"""Remote objects (actors) through a real server, at the wire level.

The classes below are created in a worker process of their own (they travel by value). Those
that wait, wait for a file the test creates or for each other, with a cap: a test never
sleeps to synchronize, it polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from server_helpers import DEADLINE, RawSession, ServerThread, pid_alive, run

from sperse._core import ObjectCall, ObjectClose, ObjectCreate, PickledFunction, Work
from sperse._exec.runner import work_to_wire
from sperse._serialize import dumps
from sperse._wire import pb

_CAP = 20.0  # a method that waits for the test gives up after this (the test has failed)


# ---- the objects ---------------------------------------------------------------------------


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.count = start

    def incr(self, by: int = 1) -> int:
        self.count += by
        return self.count

    def get(self) -> int:
        return self.count

    def big(self, size: int) -> bytes:
        return b"x" * size

    def fail(self) -> None:
        raise ValueError(f"bad count {self.count}")

    def shout(self, text: str) -> int:
        print(text)
        return len(text)

    def _secret(self) -> str:
        return "hidden"


class Meeting:
    """Every call waits until ``parties`` calls have come: they must run at once."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties)

    def meet(self, i: int) -> int:
        self.barrier.wait(_CAP)
        return i


class Waiter:
    def __init__(self) -> None:
        self.state = "fresh"

    def touch(self) -> str:
        self.state = "touched"
        return self.state

    def get(self) -> str:
        return self.state

    def wait_for(self, path: str) -> str:
        print("waiting")
        deadline = time.monotonic() + _CAP
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                return "gave up"
            time.sleep(0.01)
        return "seen"


class Async:
    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def _the_event(self) -> asyncio.Event:  # on the object's loop: every coroutine runs there
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    async def tick(self, x: int) -> int:
        await asyncio.sleep(0)
        return x

    async def gather(self, n: int) -> list[int]:
        return list(await asyncio.gather(*(self.tick(i) for i in range(n))))

    async def wait_released(self) -> str:
        await asyncio.wait_for(self._the_event().wait(), _CAP)
        return "released"

    async def release(self) -> str:
        self._the_event().set()
        return "set"

    async def shout(self, text: str) -> str:
        print(text)
        await asyncio.sleep(0)
        print(text.upper())
        return text


class Broken:
    def __init__(self, reason: str) -> None:
        raise ValueError(f"cannot build: {reason}")


# ---- the client side -----------------------------------------------------------------------


class Client(RawSession):
    """A raw session that also keeps ``ObjectsReply`` messages."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.listings: dict[int, pb.ObjectsReply] = {}
        self._ids = iter(range(1, 1 << 30))
        self._tasks = iter(range(1, 1 << 30))

    async def read(self, timeout: float = DEADLINE) -> pb.ServerMessage | None:
        message = await super().read(timeout)
        if message is not None and message.WhichOneof("kind") == "objects":
            self.listings[message.objects.request_id] = message.objects
        return message

    def op_task(
        self, work: Work, op: pb.ObjectOp, *, inline_limit: int = 1 << 20
    ) -> tuple[str, tuple[pb.Task, list[pb.Blob]]]:
        task_id = f"t{next(self._tasks)}"
        task, blobs = self.task(task_id, work_to_wire(work), inline_limit=inline_limit)
        task.object.CopyFrom(op)
        return task_id, (task, blobs)

    async def create(
        self,
        cls: type,
        *args: Any,
        name: str = "",
        max_concurrency: int = 1,
        restart: bool = False,
        expect_done: bool = True,
        pickled: bool = False,
    ) -> tuple[str, str]:
        """Create an object; its id and the create task's id. ``pickled``: send the class
        pickled once, as the client sends a class defined at its prompt."""
        object_id = uuid.uuid4().hex
        type_name = f"{cls.__module__}.{cls.__qualname__}"
        sent = PickledFunction(f"class-{type_name}", dumps(cls)) if pickled else cls
        work = ObjectCreate(object_id, sent, args, {}, name, max_concurrency, restart, type_name)
        op = pb.ObjectOp(
            object_id=object_id,
            kind="create",
            name=name,
            max_concurrency=max_concurrency,
            restart=restart,
            type_name=type_name,
            methods=sorted(m for m in vars(cls) if not m.startswith("_")),
        )
        task_id, task = self.op_task(work, op)
        await self.submit(task)
        if expect_done:
            done = await self.done(task_id)
            assert [self.value(v) for v in done.values] == [None]
        return object_id, task_id

    def call_task(
        self,
        object_id: str,
        name: str,
        *args: Any,
        attribute: bool = False,
        inline_limit: int = 1 << 20,
    ) -> tuple[str, tuple[pb.Task, list[pb.Blob]]]:
        work = ObjectCall(object_id, name, args, {}, attribute)
        op = pb.ObjectOp(object_id=object_id, kind="call")
        return self.op_task(work, op, inline_limit=inline_limit)

    async def invoke(self, object_id: str, name: str, *args: Any, attribute: bool = False) -> str:
        task_id, task = self.call_task(object_id, name, *args, attribute=attribute)
        await self.submit(task)
        return task_id

    async def result(self, task_id: str) -> Any:
        done = await self.done(task_id)
        (value,) = done.values
        return self.value(value)

    async def value_of(self, object_id: str, name: str, *args: Any, attribute: bool = False) -> Any:
        return await self.result(await self.invoke(object_id, name, *args, attribute=attribute))

    async def close_object(self, object_id: str) -> None:
        op = pb.ObjectOp(object_id=object_id, kind="close")
        task_id, task = self.op_task(ObjectClose(object_id), op)
        await self.submit(task)
        assert await self.result(task_id) is None

    async def objects(self, name: str = "") -> list[pb.ObjectInfo]:
        request_id = next(self._ids)
        request = pb.ObjectsRequest(request_id=request_id, name=name)
        await self.send(pb.ClientMessage(objects=request))
        await self.wait_for(lambda: request_id in self.listings)
        return list(self.listings.pop(request_id).objects)

    async def info(self, object_id: str) -> pb.ObjectInfo:
        (info,) = [o for o in await self.objects() if o.object_id == object_id]
        return info


@contextlib.asynccontextmanager
async def connect(server: ServerThread) -> AsyncIterator[Client]:
    async with Client(server.address) as client:
        await client.hello()
        yield client


async def wait_gone(pid: int) -> None:
    async with asyncio.timeout(DEADLINE):
        while pid_alive(pid):
            await asyncio.sleep(0.02)


async def remote_objects(client: Client, count: int) -> None:
    """Wait until the server holds ``count`` remote objects."""
    async with asyncio.timeout(DEADLINE):
        while (await client.stats()).remote_objects != count:
            await asyncio.sleep(0.02)


# ---- calls -----------------------------------------------------------------------------------


def test_a_thousand_calls_run_in_order(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Counter, name="thousand")
            calls = [client.call_task(object_id, "incr") for _ in range(1000)]
            for start in range(0, 1000, 250):
                await client.submit(*(task for _, task in calls[start : start + 250]))
            results = [await client.result(task_id) for task_id, _ in calls]
            assert results == list(range(1, 1001))
            assert await client.value_of(object_id, "get") == 1000
            info = await client.info(object_id)
            assert (info.name, info.type_name, info.calls) == ("thousand", _type(Counter), 1001)
            assert info.max_concurrency == 1 and not info.restart and info.restarts == 0
            assert sorted(info.methods) == ["big", "fail", "get", "incr", "shout"]
            await client.close_object(object_id)

    run(scenario())


def test_a_class_pickled_once_is_built_like_any_class(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            first, _ = await client.create(Counter, 41, pickled=True)
            second, _ = await client.create(Counter, 1, pickled=True)
            assert await client.value_of(first, "incr") == 42
            assert await client.value_of(second, "incr") == 2
            for object_id in (first, second):
                await client.close_object(object_id)

    run(scenario())


def test_two_sessions_call_one_object(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as owner, connect(server) as other:
            object_id, _ = await owner.create(Counter, 100)
            mine = [owner.call_task(object_id, "incr") for _ in range(50)]
            theirs = [other.call_task(object_id, "incr") for _ in range(50)]
            await asyncio.gather(
                owner.submit(*(t for _, t in mine)), other.submit(*(t for _, t in theirs))
            )
            a = [await owner.result(task_id) for task_id, _ in mine]
            b = [await other.result(task_id) for task_id, _ in theirs]
            assert a == sorted(a) and b == sorted(b)  # each session's calls in its order
            assert sorted(a + b) == list(range(101, 201))
            assert await other.value_of(object_id, "get") == 200
            await owner.close_object(object_id)

    run(scenario())


def test_max_concurrency_runs_calls_at_once(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Meeting, 4, max_concurrency=4)
            # Each call waits for the other three: with one call at a time, none would end.
            ids = [await client.invoke(object_id, "meet", i) for i in range(4)]
            assert [await client.result(task_id) for task_id in ids] == [0, 1, 2, 3]
            assert (await client.info(object_id)).max_concurrency == 4
            await client.close_object(object_id)

    run(scenario())


def test_async_methods_share_the_objects_event_loop(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Async, max_concurrency=2)
            assert await client.value_of(object_id, "tick", 7) == 7
            assert await client.value_of(object_id, "gather", 5) == [0, 1, 2, 3, 4]
            # The first awaits an event that only the second sets: their awaits overlap.
            waiting = await client.invoke(object_id, "wait_released")
            releasing = await client.invoke(object_id, "release")
            assert await client.result(releasing) == "set"
            assert await client.result(waiting) == "released"
            shout = await client.invoke(object_id, "shout", "hey")
            assert await client.result(shout) == "hey"
            text = "".join(e.output.text for e in client.of(shout, "output"))
            assert text == "hey\nHEY\n"
            await client.close_object(object_id)

    run(scenario())


def test_output_errors_and_big_results_come_back_as_for_tasks(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Counter, 3)
            shout = await client.invoke(object_id, "shout", "hello")
            assert await client.result(shout) == 5
            assert [e.output.text for e in client.of(shout, "output")] == ["hello\n"]
            assert client.of(shout)[0].WhichOneof("kind") == "started"

            failure = await client.failed(await client.invoke(object_id, "fail"))
            assert (failure.kind, failure.type_name) == ("raised", "ValueError")
            assert failure.message == "bad count 3"
            assert "in fail" in failure.traceback and "bad count" in failure.traceback
            assert "actor_runner" not in failure.traceback  # the user's frames only

            task_id, task = client.call_task(object_id, "big", 5000, inline_limit=1000)
            await client.submit(task)
            (value,) = (await client.done(task_id)).values
            assert value.WhichOneof("kind") == "ref" and value.ref.type_name == "bytes"
            reply, fetched = await client.fetch(value.ref.object_id)
            assert not reply.error and fetched == b"x" * 5000
            await client.close_object(object_id)

    run(scenario())


def test_only_public_names_are_exposed(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Counter, 5)
            assert await client.value_of(object_id, "count", attribute=True) == 5

            private = await client.failed(await client.invoke(object_id, "_secret"))
            assert (private.kind, private.type_name) == ("raised", "AttributeError")
            assert "only public names" in private.message and "'_secret'" in private.message
            dunder = await client.failed(await client.invoke(object_id, "__dict__", attribute=True))
            assert "only public names" in dunder.message

            missing = await client.failed(await client.invoke(object_id, "nope"))
            assert (missing.kind, missing.type_name) == ("raised", "AttributeError")
            assert "has no attribute 'nope'" in missing.message
            assert "big, fail, get, incr, shout" in missing.message

            not_a_method = await client.failed(await client.invoke(object_id, "count"))
            assert (not_a_method.kind, not_a_method.type_name) == ("raised", "TypeError")
            assert "not a method" in not_a_method.message

            a_method = await client.failed(await client.invoke(object_id, "incr", attribute=True))
            assert (a_method.kind, a_method.type_name) == ("raised", "TypeError")
            assert "is a method" in a_method.message

            assert await client.value_of(object_id, "get") == 5  # none of it hurt the object
            await client.close_object(object_id)

    run(scenario())


# ---- life and death --------------------------------------------------------------------------


def test_close_then_call(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Counter, name="closing")
            pid = (await client.info(object_id)).pid
            await client.close_object(object_id)
            lost = await client.failed(await client.invoke(object_id, "get"))
            assert (lost.kind, lost.type_name) == ("object_lost", "ObjectLost")
            assert "'closing'" in lost.message and object_id in lost.message
            assert "was closed" in lost.message
            assert await client.objects("closing") == []
            await wait_gone(pid)
            await client.close_object(object_id)  # again: nothing to do, and no error

            unknown = await client.failed(await client.invoke("f" * 32, "get"))
            assert unknown.kind == "object_lost" and "never existed here" in unknown.message

    run(scenario())


def test_release_by_the_owner_destroys_the_object(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as owner, connect(server) as other:
            before = (await owner.stats()).remote_objects
            object_id, _ = await owner.create(Counter)
            assert (await owner.stats()).remote_objects == before + 1
            pid = (await owner.info(object_id)).pid
            await other.release(object_id)  # not its object: nothing happens
            assert await other.value_of(object_id, "incr") == 1
            await owner.release(object_id)
            await remote_objects(owner, before)
            await wait_gone(pid)
            lost = await other.failed(await other.invoke(object_id, "get"))
            assert lost.kind == "object_lost" and "last proxy was released" in lost.message

    run(scenario())


def test_goodbye_destroys_the_sessions_objects(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as other:
            before = (await other.stats()).remote_objects
            async with connect(server) as owner:
                object_id, _ = await owner.create(Counter, name="goodbye")
                pid = (await owner.info(object_id)).pid
                assert await other.value_of(object_id, "incr") == 1
                await owner.goodbye()
                await owner.read_to_end()
            await remote_objects(other, before)
            await wait_gone(pid)
            lost = await other.failed(await other.invoke(object_id, "get"))
            assert lost.kind == "object_lost" and "session that created it ended" in lost.message
            object_id, _ = await other.create(Counter, name="goodbye")  # the name is free

            await other.close_object(object_id)

    run(scenario())


def test_a_constructor_that_raises(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            before = (await client.stats()).remote_objects
            object_id, create = await client.create(Broken, "on purpose", expect_done=False)
            queued = await client.invoke(object_id, "anything")  # sent before the create ended
            failure = await client.failed(create)
            assert (failure.kind, failure.type_name) == ("raised", "ValueError")
            assert failure.message == "cannot build: on purpose"
            assert "__init__" in failure.traceback
            for task_id in (queued, await client.invoke(object_id, "anything")):
                lost = await client.failed(task_id)
                assert lost.kind == "object_lost"
                assert "constructor raised ValueError: cannot build: on purpose" in lost.message
            await remote_objects(client, before)

    run(scenario())


def test_names_are_unique_and_listed(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client, connect(server) as other:
            first, _ = await client.create(Counter, name="unique")
            second, _ = await client.create(Counter)
            object_id, create = await other.create(Counter, name="unique", expect_done=False)
            failure = await other.failed(create)
            assert (failure.kind, failure.type_name) == ("raised", "ValueError")
            assert "named 'unique' exists on server 'test-server'" in failure.message
            assert "get_object('unique')" in failure.message
            lost = await other.failed(await other.invoke(object_id, "get"))
            assert lost.kind == "object_lost"

            (named,) = await other.objects("unique")  # from any session
            assert (named.object_id, named.type_name) == (first, _type(Counter))
            assert named.pid > 0 and pid_alive(named.pid)
            # Another session is shown the named objects, not this one's unnamed ones.
            listed = {o.object_id for o in await other.objects()}
            assert first in listed and second not in listed and object_id not in listed
            assert {first, second} <= {o.object_id for o in await client.objects()}
            assert await other.objects("no such name") == []
            for made in (first, second):
                await client.close_object(made)

    run(scenario())


def test_a_worker_killed_loses_its_object(server: ServerThread, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Waiter, name="victim")
            running = await client.invoke(object_id, "wait_for", str(tmp_path / "never"))
            await client.wait_for(lambda: bool(client.of(running, "output")))
            pid = (await client.info(object_id)).pid
            os.kill(pid, signal.SIGKILL)
            for task_id in (running, await client.invoke(object_id, "get")):
                lost = await client.failed(task_id)
                assert lost.kind == "object_lost"
                assert "'victim'" in lost.message
                assert f"its worker (pid {pid}) died (killed by SIGKILL)" in lost.message
                assert "restart=True" in lost.message
            assert await client.objects("victim") == []
            await wait_gone(pid)

    run(scenario())


def test_an_idle_worker_killed_loses_its_object(server: ServerThread) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Counter, name="idle")
            pid = (await client.info(object_id)).pid
            os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(DEADLINE):
                while await client.objects("idle"):
                    await asyncio.sleep(0.02)
            lost = await client.failed(await client.invoke(object_id, "get"))
            assert lost.kind == "object_lost" and "died (killed by SIGKILL)" in lost.message

    run(scenario())


def test_restart_rebuilds_the_object(server: ServerThread, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Waiter, restart=True)
            assert await client.value_of(object_id, "touch") == "touched"
            running = await client.invoke(object_id, "wait_for", str(tmp_path / "never"))
            queued = await client.invoke(object_id, "get")  # waits behind it
            await client.wait_for(lambda: bool(client.of(running, "output")))
            first = await client.info(object_id)
            os.kill(first.pid, signal.SIGKILL)
            lost = await client.failed(running)
            assert lost.kind == "object_lost"
            assert f"rebuilt after its worker (pid {first.pid}) died" in lost.message
            assert "state was reset" in lost.message and "did not complete" in lost.message
            assert await client.result(queued) == "fresh"  # on the rebuilt object
            assert await client.value_of(object_id, "touch") == "touched"
            second = await client.info(object_id)
            assert second.restarts == 1 and second.restart
            assert second.pid not in (0, first.pid)
            await wait_gone(first.pid)
            await client.close_object(object_id)
            await wait_gone(second.pid)

    run(scenario())


def test_cancel_a_running_call_keeps_the_object(server: ServerThread, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with connect(server) as client:
            object_id, _ = await client.create(Waiter)
            assert await client.value_of(object_id, "touch") == "touched"
            running = await client.invoke(object_id, "wait_for", str(tmp_path / "never"))
            await client.wait_for(lambda: bool(client.of(running, "output")))
            pid = (await client.info(object_id)).pid
            await client.cancel(running)
            assert (await client.failed(running)).kind == "cancelled"
            assert await client.value_of(object_id, "get") == "touched"  # same instance
            assert (await client.info(object_id)).pid == pid
            await client.close_object(object_id)

    run(scenario())


def test_stopping_the_server_stops_the_objects_workers(
    make_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    stopping = make_server(name="stopping")

    async def scenario() -> list[int]:
        async with connect(stopping) as client:
            waiter, _ = await client.create(Waiter)
            running = await client.invoke(waiter, "wait_for", str(tmp_path / "never"))
            waiting, _ = await client.create(Async, max_concurrency=2)
            await client.invoke(waiting, "wait_released")
            await client.wait_for(lambda: bool(client.of(running, "output")))
            return [o.pid for o in await client.objects()]

    pids = run(scenario())
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    stopping.close()
    assert not [pid for pid in pids if pid_alive(pid)]


def _type(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
