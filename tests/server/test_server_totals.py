"""The server's total bounds on memory (docs/server.md, "Bounds"): each one as the state
machine keeps it, and as a client of a real server meets it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_helpers import RawSession, ServerThread, call_work, expect_error, run, shm_files
from state_harness import PREFIX, Machine, call, create, files, machine, pool_error, value
from test_server_objects import Client, Counter

from sperse._core import Done, ErrorInfo, Failed
from sperse._server.actions import (
    Cancel,
    CancelObjectCall,
    StartObject,
    Submit,
    SubmitToObject,
    Unlink,
)
from sperse._server.cli import build_parser
from sperse._server.config import ServerConfig, ServerConfigError, check_config
from sperse._server.envelope import PickledBytes
from sperse._server.model import InlineValue, ObjectOp
from sperse._server.outgoing import Session, UnreadTotal
from sperse._server.sessions import SessionState
from sperse._server.tasks import WINDOW_PER_WORKER
from sperse._wire import pb

MiB = 1 << 20


def ones(n: int) -> Any:
    return np.ones(n, dtype=np.uint8)


# ---- held values: --max-held-bytes ---------------------------------------------------------


def test_a_result_past_the_held_cap_fails_its_task_and_its_files_go() -> None:
    m = machine(max_held_bytes=3000)
    for task_id in ("t1", "t2", "t3"):
        m.submit(task_id, inline_limit=100)
    m.done("t1", value("x", files(f"{PREFIX}a1-0")))  # 1025 bytes each
    m.done("t2", value("x", files(f"{PREFIX}a2-0")))
    m.done("t3", value("x", files(f"{PREFIX}a3-0")), value("small"))
    assert m.sent() == ["done t1", "done t2", "failed t3 LimitExceeded"]
    (failed,) = [e.event for e in m.emits() if isinstance(e.event, Failed)]
    message = failed.error.message
    assert "--max-held-bytes" in message and "release" in message.lower(), message
    assert Unlink((f"{PREFIX}a3-0",)) in m.of(Unlink)
    assert m.state.held.bytes == 2050 == m.state.sessions["s"].object_bytes

    m.feed(m.state.release("s", "obj1"))  # room again
    m.submit("t4", inline_limit=100)
    m.done("t4", value("x", files(f"{PREFIX}a4-0")))
    assert m.sent()[-1] == "done t4"
    m.feed(m.state.close_session("s", "session_closed", "goodbye"))
    assert m.state.held.bytes == 0


def test_small_results_are_not_held_so_not_capped() -> None:
    m = machine(max_held_bytes=10)
    m.submit("t1", inline_limit=1 << 20)
    m.done("t1", value("x", files(f"{PREFIX}a1-0")))
    assert m.sent() == ["done t1"]


def test_the_held_cap_is_a_server_option() -> None:
    args = build_parser().parse_args(["--max-held-bytes", "4G"])
    assert args.max_held_bytes == 4 << 30
    assert ServerConfig().max_held_bytes > 0  # a fraction of the memory
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--max-held-bytes", "lots"])
    with pytest.raises(ServerConfigError, match="--max-held-bytes"):
        check_config(ServerConfig(max_held_bytes=0))


def test_a_client_past_the_held_cap_gets_a_clear_error(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(max_held_bytes=5 * MiB)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            held = []
            for task_id in ("a", "b"):
                await s.submit(s.task(task_id, call_work(ones, 2 * MiB), inline_limit=MiB))
                (v,) = (await s.done(task_id)).values
                assert v.WhichOneof("kind") == "ref"
                held.append(v.ref.object_id)
            await s.submit(s.task("c", call_work(ones, 2 * MiB), inline_limit=MiB))
            failure = await s.failed("c")
            assert failure.type_name == "LimitExceeded"
            assert "--max-held-bytes" in failure.message and "5.0 MiB" in failure.message
            stats = await server.wait_stats(lambda st: len(shm_files()) == 2)
            assert stats.object_bytes_total <= 5 * MiB
            await s.release(held[0])
            await s.submit(s.task("d", call_work(ones, 2 * MiB), inline_limit=MiB))
            (v,) = (await s.done("d")).values
            assert v.WhichOneof("kind") == "ref"

    run(scenario())


# ---- results a client does not read: --max-unread-bytes -----------------------------------


def submitted(m: Machine) -> list[str]:
    """The tasks handed to a pool, in order."""
    task_of = {pool_id: task for task, ids in m.pool_ids.items() for pool_id in ids}
    return [task_of[a.pool_id] for a in m.of(Submit)]


def test_a_session_has_a_window_of_tasks_in_the_pool() -> None:
    m = machine(workers=1)
    window = WINDOW_PER_WORKER
    ids = [f"t{i}" for i in range(window + 3)]
    for task_id in ids:
        m.submit(task_id)
    assert submitted(m) == ids[:window]
    m.done("t0")
    assert submitted(m) == ids[: window + 1]
    m.cancel(ids[-1])  # waiting for room: it ends at once, without reaching a pool
    assert m.sent()[-1] == f"failed {ids[-1]} TaskCancelled" and not m.of(Cancel)
    m.feed(m.state.close_session("s", "session_closed", "goodbye"))
    assert len(m.of(Cancel)) == window  # those in the pool; none for the one waiting


def test_a_paused_session_starts_nothing_until_let_go() -> None:
    m = machine("s", "other", workers=1)
    window = WINDOW_PER_WORKER
    for i in range(window + 2):
        m.submit(f"t{i}")
    m.feed(m.state.tasks.hold(m.state.sessions["s"], 10))
    m.done("t0")
    m.fail("t1", "worker_died")  # ended: no retry left
    assert len(m.of(Submit)) == window  # nothing new while paused
    m.submit("o1", session="other")  # another session runs on
    assert submitted(m)[-1] == "o1"
    m.feed(m.state.tasks.let_go(m.state.sessions["s"], 0))
    assert submitted(m)[-2:] == [f"t{window}", f"t{window + 1}"]
    assert m.sent("s").count("done t0") == 1


def slab(n: int) -> bytes:
    return b"x" * n


def test_a_client_that_does_not_read_stops_its_own_work_not_others(
    make_server: Callable[..., ServerThread],
) -> None:
    limit = 4 * MiB
    size = 900_000
    count = 60  # 54 MB of results, if nothing held them back
    server = make_server(max_unread_bytes=limit)

    async def scenario() -> None:
        async with RawSession(server.address) as idle, RawSession(server.address) as other:
            await idle.hello()
            ids = [f"t{i}" for i in range(count)]
            await idle.submit(
                *(idle.task(t, call_work(slab, size), inline_limit=64 * MiB) for t in ids)
            )
            # It reads nothing: its results pile up until the server stops starting its tasks.
            stats = await server.wait_stats(lambda st: st.unread_peak > limit and st.queued > 0)
            await other.hello()
            await other.submit(other.task("mine", call_work(slab, 10)))
            assert other.value((await other.done("mine")).values[0]) == b"x" * 10

            ends = await idle.wait_terminal(*ids, timeout=60)  # reading now: all of them come
            assert all(len(idle.value(e.done.values[0])) == size for e in ends)
            stats = await asyncio.to_thread(server.stats)
            # At most a window of tasks more ran after the bound was passed.
            window = server.server.config.worker_count * WINDOW_PER_WORKER
            assert stats.unread_peak <= limit + (window + 1) * (size + 1024), stats
            assert stats.unread_bytes == 0

    run(scenario())


def test_the_unread_bound_is_a_server_option() -> None:
    assert build_parser().parse_args(["--max-unread-bytes", "64M"]).max_unread_bytes == 64 * MiB
    assert ServerConfig().max_unread_bytes == 256 * MiB
    with pytest.raises(ServerConfigError, match="--max-unread-bytes"):
        check_config(ServerConfig(max_unread_bytes=0))


# ---- blobs never finished: --max-blob-bytes ------------------------------------------------


def total(array: Any) -> int:
    return int(array.sum())


def test_blobs_no_message_uses_end_the_stream_past_the_bound(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(max_blob_bytes=4 * MiB)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            array = np.ones(3 * MiB, dtype=np.uint8)  # its blobs are used by the next message
            await s.submit(s.task("fits", call_work(total, array)))
            assert s.value((await s.done("fits")).values[0]) == 3 * MiB
            piece = b"x" * MiB
            for blob_id in range(1000, 1005):  # never finished, never named: 5 MiB
                await s.send(pb.ClientMessage(blob=pb.Blob(blob_id=blob_id, data=piece)))
            error = await expect_error(s, "protocol")
            assert "--max-blob-bytes" in error.message and "4.0 MiB" in error.message
        async with RawSession(server.address) as s:  # the server serves on
            await s.hello()
            await s.submit(s.task("next", call_work(total, array)))
            assert s.value((await s.done("next")).values[0]) == 3 * MiB

    run(scenario())


def test_the_blob_bound_is_a_server_option() -> None:
    assert build_parser().parse_args(["--max-blob-bytes", "2G"]).max_blob_bytes == 2 << 30
    assert ServerConfig().max_blob_bytes == 1 << 30
    with pytest.raises(ServerConfigError, match="--max-blob-bytes"):
        check_config(ServerConfig(max_blob_bytes=0))


# ---- remote objects: --max-objects, --max-session-objects ----------------------------------


def objects_failed(m: Machine, session: str) -> dict[str, str]:
    return {
        e.event.task_id: e.event.error.message
        for e in m.emits(session)
        if isinstance(e.event, Failed)
    }


def test_creates_past_the_object_limits_fail_and_name_the_limit() -> None:
    m = machine("s", "o", max_objects=3, max_session_objects=2)
    m.submit("c1", object=create("a"))
    m.submit("c2", object=create("b"))
    m.submit("c3", object=create("c"))  # a third of this session's
    assert list(objects_failed(m, "s")) == ["c3"]
    assert "--max-session-objects 2" in objects_failed(m, "s")["c3"]
    m.submit("call", object=call("c"))  # a call of the object not created says why
    assert "was not created" in objects_failed(m, "s")["call"]

    m.submit("o1", session="o", object=create("d"))  # the server's third
    m.submit("o2", session="o", object=create("e"))
    assert list(objects_failed(m, "o")) == ["o2"]
    assert "--max-objects 3" in objects_failed(m, "o")["o2"]
    assert len(m.of(StartObject)) == 3

    m.submit("close", object=ObjectOp("a", "close"))  # room again
    m.submit("o3", session="o", object=create("f"))
    assert "o3" not in objects_failed(m, "o") and len(m.of(StartObject)) == 4


def test_the_object_limits_are_server_options() -> None:
    args = build_parser().parse_args(["--max-objects", "10", "--max-session-objects", "3"])
    assert (args.max_objects, args.max_session_objects) == (10, 3)
    assert ServerConfig().max_objects == 64 and ServerConfig().session_objects_limit == 32
    assert ServerConfig(max_objects=10).session_objects_limit == 5
    with pytest.raises(ServerConfigError, match="--max-objects"):
        check_config(ServerConfig(max_objects=0))


def test_a_client_past_the_object_limit_gets_a_clear_error(
    make_server: Callable[..., ServerThread],
) -> None:
    server = make_server(max_objects=2)  # one per session

    async def scenario() -> None:
        async with Client(server.address) as s:
            await s.hello()
            first, _ = await s.create(Counter)
            _, refused = await s.create(Counter, expect_done=False)
            failure = await s.failed(refused)
            assert failure.type_name == "LimitExceeded"
            assert "--max-session-objects 1" in failure.message, failure.message
            stats = await asyncio.to_thread(server.stats)
            assert stats.remote_objects == 1 and len(stats.object_worker_pids) <= 1
            await s.close_object(first)
            await s.create(Counter)  # room again

    run(scenario())


# ---- the window and the pause, over random sequences ---------------------------------------

WINDOW_TASKS = tuple(f"t{i}" for i in range(WINDOW_PER_WORKER + 4))
WINDOW_CALLS = tuple(f"k{i}" for i in range(WINDOW_PER_WORKER + 4))

window_ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(WINDOW_TASKS), st.integers(0, 1)),
        st.tuples(st.just("call"), st.sampled_from(WINDOW_CALLS), st.just(0)),
        st.tuples(
            st.sampled_from(["done", "died", "drop", "cancel"]),
            st.sampled_from(WINDOW_TASKS + WINDOW_CALLS),
            st.just(0),
        ),
        st.tuples(st.sampled_from(["hold", "let_go"]), st.just(""), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(window_ops)
def test_a_session_never_passes_its_window_and_a_pause_starts_nothing(
    sequence: list[tuple[str, str, int]],
) -> None:
    m = machine(workers=1, max_held_bytes=3000)
    session = m.state.sessions["s"]
    tasks = m.state.tasks
    m.submit("create", object=create("a"))
    m.done("create", value("", PickledBytes(b"N")))
    obj = m.state.objects.alive["a"]
    for verb, task_id, arg in sequence:
        before = len(m.of(Submit | SubmitToObject))
        if verb == "submit":
            m.submit(task_id, retries=arg, inline_limit=100)
        elif verb == "call":
            m.submit(task_id, object=call("a"), inline_limit=100)
        elif verb == "hold":
            m.feed(tasks.hold(session, 1))
        elif verb == "let_go":
            m.feed(tasks.let_go(session, 0))
        elif verb == "cancel":
            m.cancel(task_id)
        elif m.pool_ids.get(task_id):
            pool_id = m.pool_ids[task_id][-1]
            if verb == "done":  # a held value: some pass the held cap
                m.feed(tasks.done(pool_id, [value("x", files(f"{PREFIX}{pool_id}"))]))
            elif verb == "died":
                m.feed(tasks.failed(pool_id, pool_error("worker_died", "died")))
            else:
                m.feed(tasks.attempt_failed(pool_id, ErrorInfo("internal", "PoolError", "x")))
        calls = sum(1 for t in tasks.attempts.values() if t.obj is not None)
        assert len(tasks.attempts) - calls == session.in_pools <= tasks.window
        assert calls == obj.calls_in_pool["s"] <= 1 + WINDOW_PER_WORKER
        if session.paused:  # a retry too waits
            assert len(m.of(Submit | SubmitToObject)) == before, verb
        assert m.state.held.bytes == session.object_bytes <= 3000
    m.feed(tasks.let_go(session, 0))
    while tasks.attempts:
        m.feed(tasks.done(next(iter(tasks.attempts)), [value()]))
    assert not session.tasks and not session.ready and session.in_pools == 0
    assert not obj.waiting_calls and obj.calls_in_pool["s"] == 0
    submitted = {t for verb, t, _ in sequence if verb in ("submit", "call")} | {"create"}
    ended = {e.task_id for e in (a.event for a in m.emits()) if isinstance(e, Done | Failed)}
    assert ended == submitted


def calls_sent(m: Machine) -> list[str]:
    task_of = {pool_id: task for task, ids in m.pool_ids.items() for pool_id in ids}
    return [task_of[a.pool_id] for a in m.of(SubmitToObject)]


def test_a_session_has_a_window_of_calls_in_an_objects_pool() -> None:
    m = machine("s", "other", workers=1)
    m.submit("c", object=create("a"))
    m.done("c", value("", PickledBytes(b"N")))
    window = 1 + WINDOW_PER_WORKER  # max_concurrency 1, and as many again as a worker's
    ids = [f"k{i}" for i in range(window + 3)]
    for task_id in ids:
        m.submit(task_id, object=call("a"))
    assert calls_sent(m) == ids[:window]
    m.submit("theirs", session="other", object=call("a"))  # another session's: not held
    assert calls_sent(m)[-1] == "theirs"
    m.done("k0")
    assert calls_sent(m)[-1] == ids[window]
    m.feed(m.state.tasks.hold(m.state.sessions["s"], 1))
    m.done("k1")
    assert calls_sent(m)[-1] == ids[window]  # paused: nothing more
    m.feed(m.state.tasks.let_go(m.state.sessions["s"], 0))
    assert calls_sent(m)[-1] == ids[window + 1]
    m.cancel(ids[-1])  # waiting: it ends at once, never sent
    assert m.sent()[-1] == f"failed {ids[-1]} TaskCancelled" and not m.of(CancelObjectCall)
    m.submit("late", object=call("a"))
    m.submit("close", object=ObjectOp("a", "close"))  # the waiting call is told it is gone
    assert m.sent().count("failed late ObjectLost") == 1
    assert "late" not in calls_sent(m)


def test_a_client_that_does_not_read_stops_its_calls_too(
    make_server: Callable[..., ServerThread],
) -> None:
    limit = 4 * MiB
    size = 900_000
    server = make_server(max_unread_bytes=limit)

    async def scenario() -> None:
        async with Client(server.address) as idle:
            await idle.hello()
            object_id, _ = await idle.create(Counter)
            calls = [
                idle.call_task(object_id, "big", size, inline_limit=64 * MiB) for _ in range(60)
            ]
            await idle.submit(*(task for _, task in calls))
            # Its results pile up until the server stops sending its calls to the object.
            await server.wait_stats(lambda st: st.unread_peak > limit and st.queued > 0)
            ends = await idle.wait_terminal(*(t for t, _ in calls), timeout=60)
            assert all(len(idle.value(e.done.values[0])) == size for e in ends)
            stats = await asyncio.to_thread(server.stats)
            window = 1 + WINDOW_PER_WORKER
            assert stats.unread_peak <= limit + (window + 1) * (size + 1024), stats

    run(scenario())


def test_a_session_is_over_past_its_limit_until_read_down_to_half() -> None:
    outgoing = Session(SessionState("s"), "client", "peer", "prefix-", UnreadTotal(1 << 40, 1000))
    done = Done("t", "srv", (InlineValue("", PickledBytes(b"x" * 236)),))  # 300 bytes
    crossings = [outgoing.emit(done) for _ in range(4)]
    assert crossings == [False, False, False, True] and outgoing.unread == 1200
    assert outgoing.emit(done) is False  # said once
    outgoing.take()
    outgoing.take()
    assert not outgoing.under_again()  # 900: under the limit, not under half of it
    outgoing.take()
    outgoing.take()
    assert outgoing.under_again() and not outgoing.under_again()  # 300: said once
    assert outgoing.unread_peak == 1500


def test_past_the_servers_total_the_sessions_holding_more_than_their_share_wait() -> None:
    """``--max-unread-total``: many sessions, each under its own limit, together past the
    server's total: those holding more than their share (the total over the sessions) are
    over, until read down to half of it; one holding little is not held back."""
    total = UnreadTotal(limit=2000, per_session=10_000)
    big, small = (
        Session(SessionState(name), "client", "peer", "prefix-", total) for name in ("big", "small")
    )
    done = Done("t", "srv", (InlineValue("", PickledBytes(b"x" * 236)),))  # 300 bytes
    assert not small.emit(done) and total.share() == 1000
    crossings = [big.emit(done) for _ in range(6)]  # big: 1800, all: 2100 > 2000
    assert crossings == [False, False, False, False, False, True]
    assert not small.over and not small.emit(done)  # 600: under its share of 1000
    for _ in range(4):
        big.take()
    assert not big.under_again()  # 600: under its share, not under half of it
    big.take()
    assert big.under_again()  # 300
    small.clear()
    assert total.sessions == 1 and total.bytes == big.unread
