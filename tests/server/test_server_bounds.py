"""Every size a client sends has a bound, checked where it arrives (sperse._server.bounds).

A task over one fails alone, with a ValueError naming the field, its value and the limit, and
its session carries on; a message that cannot be answered task by task ends its stream with
Error("protocol"), and the server serves every other client on. (The end-to-end case, a
huge max_concurrency from the real client, is in tests/reliability/test_bounds.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from server_helpers import RawSession, ServerThread, call_work, expect_error, run

from sperse._core.limits import (
    MAX_CONCURRENCY,
    MAX_ID,
    MAX_INLINE_LIMIT,
    MAX_METHODS,
    MAX_PIP,
    MAX_REFS,
    MAX_RETRIES,
    MAX_TASKS,
    MAX_TEXT,
)
from sperse._wire import pb

UINT32 = 2**32 - 1
UINT64 = 2**64 - 1


def create(**fields: object) -> Callable[[pb.Task], None]:
    def make(task: pb.Task) -> None:
        op = {"object_id": "a" * 32, "kind": "create", "type_name": "Counter", **fields}
        task.object.CopyFrom(pb.ObjectOp(**op))  # type: ignore[arg-type]

    return make


def peers(count: int, address: str = "127.0.0.1:1") -> Callable[[pb.Task], None]:
    def make(task: pb.Task) -> None:
        task.peer_refs.extend(
            pb.PeerRef(object_id=f"p{i}", server="other", address=address) for i in range(count)
        )
        task.refs.extend(f"p{i}" for i in range(count))

    return make


@dataclass(frozen=True)
class Case:
    name: str
    change: Callable[[pb.Task], None]
    said: str  # in the failure's message


CASES = [
    Case(
        "retries",
        lambda t: setattr(t, "retries", UINT32),
        f"{UINT32}, over the limit of {MAX_RETRIES}",
    ),
    Case(
        "inline_limit",
        lambda t: setattr(t, "inline_limit", UINT64),
        f"inline_limit is {UINT64}, over the limit of {MAX_INLINE_LIMIT} bytes",
    ),
    Case(
        "refs",
        lambda t: t.refs.extend(f"r{i}" for i in range(MAX_REFS + 1)),
        f"held values it uses is {MAX_REFS + 1}, over the limit of {MAX_REFS}",
    ),
    Case("a long ref", lambda t: t.refs.append("r" * (MAX_ID + 1)), f"over the limit of {MAX_ID}"),
    Case("peer_refs", peers(MAX_REFS + 1), f"is {MAX_REFS + 1}, over the limit of {MAX_REFS}"),
    Case("a long address", peers(1, "h" * (MAX_TEXT + 1)), "an address in peer_refs"),
    Case("pip", lambda t: t.pip.extend(f"p{i}" for i in range(MAX_PIP + 1)), f"at most {MAX_PIP}"),
    Case("label", lambda t: setattr(t, "label", "l" * (MAX_TEXT + 1)), "its label has 1025"),
    Case(
        "max_concurrency",
        create(max_concurrency=UINT32),
        f"max_concurrency is {UINT32}, over the limit of {MAX_CONCURRENCY}",
    ),
    Case(
        "methods",
        create(methods=[f"m{i}" for i in range(MAX_METHODS + 1)]),
        f"methods is {MAX_METHODS + 1}, over the limit of {MAX_METHODS}",
    ),
    Case("a long method", create(methods=["m" * (MAX_TEXT + 1)]), "a method name has"),
    Case("object name", create(name="n" * (MAX_TEXT + 1)), "the remote object's name has"),
    Case("type name", create(type_name="t" * (MAX_TEXT + 1)), "type name has"),
    Case("object id", create(object_id="o" * (MAX_ID + 1)), "the remote object's id has"),
    Case("put repr", lambda t: t.put.CopyFrom(pb.Put(repr="r" * (MAX_TEXT + 1))), "the put's repr"),
    Case("put and refs", lambda t: (t.put.SetInParent(), t.refs.append("r")), "runs nothing"),
    Case("put and an object", lambda t: (t.put.SetInParent(), create()(t)), "runs nothing"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_task_over_a_bound_fails_alone(server: ServerThread, case: Case) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            task, blobs = s.task("over", call_work(len, "abc"))
            case.change(task)
            await s.submit((task, blobs), s.task("fine", call_work(len, "abcd")))
            failure = await s.failed("over")
            assert (failure.kind, failure.type_name) == ("raised", "ValueError"), failure
            assert case.said in failure.message and "docs/server.md" in failure.message
            assert len(failure.message) < 2 * MAX_TEXT  # what it refused is not echoed
            (value,) = (await s.done("fine")).values
            assert s.value(value) == 4

    run(scenario())
    assert server.stats().remote_objects == 0  # no object was made


def test_a_task_at_every_bound_runs(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            task, blobs = s.task("t" * MAX_ID, call_work(len, "abc"), label="l" * MAX_TEXT)
            task.retries, task.inline_limit = MAX_RETRIES, MAX_INLINE_LIMIT
            await s.submit((task, blobs))
            (value,) = (await s.done("t" * MAX_ID)).values
            assert s.value(value) == 3

    run(scenario())


@pytest.mark.parametrize(
    ("message", "said"),
    [
        (
            pb.Submit(tasks=[pb.Task(task_id=f"t{i}") for i in range(MAX_TASKS + 1)]),
            f"a Submit of {MAX_TASKS + 1} tasks, over the limit of {MAX_TASKS} per message",
        ),
        (
            pb.Submit(tasks=[pb.Task(task_id="t" * (MAX_ID + 1))]),
            f"a task_id of {MAX_ID + 1} characters, over the limit of {MAX_ID}",
        ),
    ],
    ids=["tasks", "task_id"],
)
def test_a_message_over_a_bound_ends_its_stream_and_others_are_served(
    server: ServerThread, message: pb.Submit, said: str
) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s, RawSession(server.address) as other:
            await s.hello()
            await other.hello()
            await s.send(pb.ClientMessage(submit=message))
            error = await expect_error(s, "protocol")
            assert said in error.message
            await other.submit(other.task("t1", call_work(len, "ab")))
            (value,) = (await other.done("t1")).values
            assert other.value(value) == 2

    run(scenario())


def test_a_hello_with_strings_too_long_is_refused(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            reply = await s.hello(session_id="s" * (MAX_ID + 1), expect="error")
            assert reply.error.code == "protocol"
            assert f"over the limit of {MAX_ID}" in reply.error.message
        async with RawSession(server.address) as s:
            # Refused for its size before its version is compared (and repeated).
            reply = await s.hello(python_version="3." * MAX_TEXT, expect="error")
            assert reply.error.code == "protocol" and len(reply.error.message) < MAX_TEXT
            assert f"over the limit of {MAX_TEXT}" in reply.error.message

    run(scenario())
