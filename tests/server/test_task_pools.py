"""TaskPools (and ObjectPools) hand the tasks (calls) that a batch of a pool's events lets
start to the pool in one call, at the batch's end, and never let a cancel or a client's
tasks overtake them."""

from __future__ import annotations

import asyncio
from typing import Any

from sperse._core import Done
from sperse._server.actions import Cancel, CancelObjectCall, Submit, SubmitToObject
from sperse._server.config import ServerConfig
from sperse._server.object_pools import ObjectPools, _ObjectPool
from sperse._server.task_pools import TaskPools


class RecordingPool:
    """Stands in for the WorkerPool: records each call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def submit(self, pool_id: str, payload: bytes, *, front: bool = False) -> None:
        self.calls.append(("submit", [pool_id]))

    def submit_many(self, tasks: list[tuple[str, bytes]], *, front: bool = False) -> None:
        self.calls.append(("submit", [pool_id for pool_id, _ in tasks]))

    def cancel(self, pool_id: str) -> bool:
        self.calls.append(("cancel", pool_id))
        return True


def make(on_event: Any = None) -> tuple[TaskPools, RecordingPool, list[str]]:
    delivered: list[str] = []
    loop = asyncio.new_event_loop()
    loop.close()  # never run: TaskPools.start is not called
    pools = TaskPools(
        ServerConfig(),
        "s",
        loop,
        on_event=on_event or (lambda event: None),
        on_delivered=lambda: delivered.append("delivered"),
        fail=lambda pool_id, error: delivered.append(f"failed {pool_id}"),
        env=lambda: {},
        token=lambda: "t",
    )
    pool = RecordingPool()
    pools.pool = pool  # type: ignore[assignment]
    return pools, pool, delivered


def done(task_id: str) -> Done:
    return Done(task_id, "s", b"")


def test_outside_a_batch_a_submit_goes_at_once() -> None:
    pools, pool, _ = make()
    pools.submit(Submit("a/1", b"x"))
    pools.submit(Submit("a/2", b"x"))
    assert pool.calls == [("submit", ["a/1"]), ("submit", ["a/2"])]


def test_the_submits_of_a_batch_go_in_one_call_at_its_end() -> None:
    pools: TaskPools
    n = iter(range(10))

    def on_event(event: object) -> None:  # each finished task lets the next one start
        pools.submit(Submit(f"a/{next(n)}", b"x"))

    pools, pool, delivered = make(on_event)
    pools._batch_event(done("a"))
    pools._batch_event(done("b"))
    pools._batch_event(done("c"))
    assert pool.calls == []
    pools._batch_delivered()
    assert pool.calls == [("submit", ["a/0", "a/1", "a/2"])]
    assert delivered == ["delivered"]  # after the pool has them
    pools.submit(Submit("a/9", b"x"))  # the batch is over: at once again
    assert pool.calls[-1] == ("submit", ["a/9"])


def test_a_cancel_or_a_clients_tasks_in_a_batch_go_after_what_was_kept() -> None:
    pools, pool, _ = make()
    pools._batch_event(done("a"))
    pools.submit(Submit("a/1", b"x"))
    pools.cancel(Cancel("a/1"))
    pools.submit(Submit("a/2", b"x"))
    pools.submit_many([Submit("b/1", b"x"), Submit("b/2", b"x")])
    pools._batch_delivered()
    assert pool.calls == [
        ("submit", ["a/1"]),
        ("cancel", "a/1"),
        ("submit", ["a/2"]),
        ("submit", ["b/1", "b/2"]),
    ]


def test_a_pip_task_is_never_kept() -> None:
    pools, pool, delivered = make()
    asked: list[str] = []
    pools.envs.submit = lambda pip, pool_id, payload, failed: asked.append(pool_id)  # type: ignore[method-assign]
    pools._batch_event(done("a"))
    pools.submit(Submit("a/1", b"x", ("numpy",)))
    assert asked == ["a/1"] and pool.calls == []
    pools._batch_delivered()
    assert pool.calls == [] and delivered == ["delivered"]


def test_kept_tasks_a_closed_pool_refuses_fail() -> None:
    pools, pool, delivered = make()

    def closed(tasks: object) -> None:
        raise RuntimeError("closed")

    pool.submit_many = closed  # type: ignore[method-assign]
    pools._batch_event(done("a"))
    pools.submit(Submit("a/1", b"x"))
    pools._batch_delivered()
    assert delivered == ["failed a/1", "delivered"]


def make_objects() -> tuple[ObjectPools, dict[str, RecordingPool], list[str]]:
    said: list[str] = []
    loop = asyncio.new_event_loop()
    loop.close()  # never run: no pool is started here
    objects = ObjectPools(
        ServerConfig(),
        "s",
        loop,
        on_event=lambda object_id, event: None,
        on_exit=lambda object_id, pid, how: None,
        on_report=lambda object_id, report: None,
        on_delivered=lambda: said.append("delivered"),
        failed=lambda object_id, error: said.append(f"failed {object_id}"),
        fail=lambda pool_id, error: said.append(f"failed {pool_id}"),
        env=lambda: {},
        token=lambda: "t",
        idle=lambda: True,
    )
    pools = {name: RecordingPool() for name in ("o1", "o2")}
    for name, pool in pools.items():
        objects._pools[name] = _ObjectPool(pool=pool)  # type: ignore[arg-type]
    return objects, pools, said


def call(object_id: str, pool_id: str) -> SubmitToObject:
    return SubmitToObject(object_id, pool_id, b"x")


def gone() -> str:
    return "gone"


def test_an_objects_calls_of_a_batch_go_in_one_call_per_object_at_its_end() -> None:
    objects, pools, said = make_objects()
    objects._batch_event("o1", done("a"))
    objects.submit(call("o1", "a/1"), gone)
    objects.submit(call("o1", "a/2"), gone)
    objects.submit(call("o2", "b/1"), gone)
    objects.submit(call("o1", "a/3"), gone)
    assert pools["o1"].calls == [] and pools["o2"].calls == []
    objects._batch_delivered()
    assert pools["o1"].calls == [("submit", ["a/1", "a/2"]), ("submit", ["a/3"])]
    assert pools["o2"].calls == [("submit", ["b/1"])]
    assert said == ["delivered"]
    objects.submit(call("o1", "a/4"), gone)  # the batch is over: at once again
    assert pools["o1"].calls[-1] == ("submit", ["a/4"])


def test_a_cancel_of_a_call_kept_in_a_batch_comes_after_it() -> None:
    objects, pools, _ = make_objects()
    objects._batch_event("o1", done("a"))
    objects.submit(call("o1", "a/1"), gone)
    objects.cancel(CancelObjectCall("o1", "a/1"))
    objects._batch_delivered()
    assert pools["o1"].calls == [("submit", ["a/1"]), ("cancel", "a/1")]
