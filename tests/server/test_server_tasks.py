"""Tasks through a real server: values, the object store, output, failures, retries, cancel.

The work functions below run in the server's worker processes (they travel by value). Those
that wait, wait for a file the test creates, with a cap: a test never sleeps to synchronize.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_helpers import RawSession, ServerThread, call_work, run, statement

from sperse._pool import forking
from sperse._serialize import RemoteRef, RemoteValue

_CAP = 20.0  # a task that waits for the test gives up after this (the test has failed)


def add(a: int, b: int) -> int:
    return a + b


def boom() -> None:
    raise ValueError("bad value 42")


def double(array: Any) -> Any:
    return array * 2


def add_one_in_place(array: Any) -> Any:
    array += 1  # the input arrives writable, as it would locally
    return array


def total(array: Any) -> float:
    return float(array.sum())


def make_lock() -> Any:
    return threading.Lock()


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def print_then_wait(marker: str) -> str:
    print("first line")
    deadline = time.monotonic() + _CAP
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            return "gave up"
        time.sleep(0.01)
    return "seen"


def run_long() -> str:
    print("running")
    deadline = time.monotonic() + _CAP
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_once(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def no_reference(ref: RemoteRef, timeout: float | None) -> None:
    raise AssertionError("the test never fetches through the RemoteValue")


def test_hello_gets_welcome(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            welcome = s.welcome
            assert welcome is not None
            assert welcome.server_name == "test-server"
            assert welcome.workers == 2
            assert welcome.python_version.split(".")[:2] == [str(x) for x in sys.version_info[:2]]
            assert welcome.server_version
            assert len(welcome.session_id) >= 16
            assert not welcome.resumed

    run(scenario())


def test_call_task_and_statement_task(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(
                s.task("call", call_work(add, 2, 3)),
                s.task("stmt", statement("a = x + 1\nb = a * 2", {"x": 1}, ("a", "b"))),
                s.task("expr", statement("x * 10", {"x": 4}, expression=True)),
            )
            call = await s.done("call")
            assert [(v.name, s.value(v)) for v in call.values] == [("", 5)]
            stmt = await s.done("stmt")
            assert {v.name: s.value(v) for v in stmt.values} == {"a": 2, "b": 4}
            expr = await s.done("expr")
            assert [(v.name, s.value(v)) for v in expr.values] == [("", 40)]
            for task_id in ("call", "stmt", "expr"):
                kinds = [e.WhichOneof("kind") for e in s.of(task_id)]
                assert kinds == ["started", "done"]
                assert s.of(task_id, "started")[0].started.worker > 0

    run(scenario())


def test_a_batch_of_100_tasks(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            ids = [f"t{i}" for i in range(100)]
            await s.submit(*(s.task(t, call_work(add, i, i)) for i, t in enumerate(ids)))
            ends = await s.wait_terminal(*ids)
            assert [s.value(e.done.values[0]) for e in ends] == [2 * i for i in range(100)]
            assert max(s.batch_sizes) > 1, "events that are ready together share a message"

    run(scenario())


def test_a_large_result_stays_on_the_server(server: ServerThread) -> None:
    array = np.arange(1 << 20, dtype=np.float64)  # 8 MiB: blobs both ways

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("big", call_work(double, array), inline_limit=1 << 20))
            done = await s.done("big")
            (value,) = done.values
            assert value.WhichOneof("kind") == "ref"
            ref = value.ref
            assert ref.type_name == "numpy.ndarray"
            assert ref.size >= array.nbytes
            assert ref.repr.startswith("array([") and len(ref.repr) <= 80

            reply, fetched = await s.fetch(ref.object_id)
            assert not reply.error
            np.testing.assert_array_equal(fetched, array * 2)

            # A later task takes it by reference: the client does not send the bytes again.
            remote = RemoteValue(
                RemoteRef(ref.object_id, "test-server", ref.type_name, ref.size, ref.repr),
                fetch=no_reference,
            )
            task, blobs = s.task("sum", call_work(total, remote))
            assert list(task.refs) == [ref.object_id] and not blobs
            await s.submit((task, blobs))
            (result,) = (await s.done("sum")).values
            assert s.value(result) == float((array * 2).sum())

            stats = await s.stats()
            assert stats.objects == 1 and stats.object_bytes == ref.size
            await s.release(ref.object_id, "not-an-object")
            stats = await s.stats()
            assert stats.objects == 0 and stats.object_bytes == 0

            reply, fetched = await s.fetch(ref.object_id)
            assert ref.object_id in reply.error and fetched is None

    run(scenario())


def test_a_large_inline_result_travels_as_blobs(server: ServerThread) -> None:
    array = np.ones(3 << 18, dtype=np.float32)  # 3 MiB, under the inline limit

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            work = call_work(add_one_in_place, array)
            await s.submit(s.task("inline", work, inline_limit=64 << 20))
            (value,) = (await s.done("inline")).values
            assert value.WhichOneof("kind") == "inline"
            np.testing.assert_array_equal(s.value(value), array + 1)

    run(scenario())


def test_unknown_object_ids(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            reply, value = await s.fetch("no-such-object")
            assert "no-such-object" in reply.error and value is None
            task, blobs = s.task("uses-unknown", call_work(add, 1, 2))
            task.refs.append("no-such-object")
            await s.submit((task, blobs))
            failure = await s.failed("uses-unknown")
            assert failure.kind == "internal"
            assert "no-such-object" in failure.message

    run(scenario())


def test_output_is_live(server: ServerThread, tmp_path: Path) -> None:
    marker = tmp_path / "go"

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("out", call_work(print_then_wait, str(marker))))
            await s.wait_for(lambda: bool(s.of("out", "output")))
            assert s.terminal("out") is None, "the output came while the task still ran"
            output = s.of("out", "output")[0].output
            assert output.stream == "stdout" and output.text == "first line\n"
            marker.touch()
            (value,) = (await s.done("out")).values
            assert s.value(value) == "seen"
            kinds = [e.WhichOneof("kind") for e in s.of("out")]
            assert kinds == ["started", "output", "done"]

    run(scenario())


def test_an_exception_comes_back_with_its_traceback(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("boom", call_work(boom)))
            failure = await s.failed("boom")
            assert failure.kind == "raised"
            assert failure.type_name == "ValueError"
            assert failure.message == "bad value 42"
            assert (
                "in boom" in failure.traceback and "ValueError: bad value 42" in failure.traceback
            )
            assert "sperse/_server" not in failure.traceback, "our frames are cut"

    run(scenario())


def test_an_unpicklable_result_names_the_value(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(
                s.task("call", call_work(make_lock)),
                s.task(
                    "stmt", statement("import threading\nlock = threading.Lock()", {}, ("lock",))
                ),
            )
            call = await s.failed("call")
            assert call.kind == "serialization" and "the result" in call.message
            stmt = await s.failed("stmt")
            assert stmt.kind == "serialization" and "`lock`" in stmt.message

    run(scenario())


def test_a_killed_worker_fails_its_task(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("die", call_work(kill_self)))
            failure = await s.failed("die")
            pid = s.of("die", "started")[0].started.worker
            assert failure.kind == "worker_died"
            assert str(pid) in failure.message and "task die" in failure.message
            assert s.welcome is not None and s.welcome.session_id not in failure.message
            # The worker was replaced: the server still runs tasks.
            await s.submit(s.task("after", call_work(add, 1, 1)))
            (value,) = (await s.done("after")).values
            assert s.value(value) == 2

    run(scenario())


def test_a_task_whose_worker_dies_once_is_retried(server: ServerThread, tmp_path: Path) -> None:
    marker = tmp_path / "died"

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("retry", call_work(die_once, str(marker)), retries=1))
            (value,) = (await s.done("retry")).values
            assert marker.exists()
            starts = [e.started.worker for e in s.of("retry", "started")]
            assert len(starts) == 2 and s.value(value) == starts[1] != starts[0]
            # Retries run out: the last attempt's failure is the task's.
            await s.submit(s.task("dies", call_work(kill_self), retries=1))
            failure = await s.failed("dies")
            assert failure.kind == "worker_died" and "2 attempts" in failure.message
            assert len(s.of("dies", "started")) == 2

    run(scenario())


def test_cancel_a_running_task(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("long", call_work(run_long)))
            await s.wait_for(lambda: bool(s.of("long", "output")))
            await s.cancel("long", "unknown-task")
            failure = await s.failed("long")
            assert failure.kind == "cancelled"
            # Exactly one terminal event: a later task's events arrive, and no second one.
            await s.submit(s.task("next", call_work(add, 0, 1)))
            await s.done("next")
            assert s.terminal("long") is not None  # (asserts there is only one)

    run(scenario())


def test_a_module_missing_on_the_server(server: ServerThread, tmp_path: Path) -> None:
    # Outside the working directory, so cloudpickle sends the function by reference; and
    # off sys.path again before anything could start a worker that would inherit it.
    name = f"sperse_test_missing_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module(name)
        work = call_work(module.f)

        async def scenario() -> None:
            async with RawSession(server.address) as s:
                task = s.task("mod", work)
                sys.path.remove(str(tmp_path))
                await s.hello()
                await s.submit(task)
                failure = await s.failed("mod")
                assert failure.kind == "missing_module"
                assert repr(name) in failure.message and "'test-server'" in failure.message

        run(scenario())
    finally:
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_a_known_task_id_is_not_run_twice(server: ServerThread, tmp_path: Path) -> None:
    marker = tmp_path / "go"

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("once", call_work(add, 20, 22)))
            await s.done("once")
            # Resubmitting a finished id (even without work) replays its terminal event.
            await s.send_raw_task("once")
            await s.wait_for(lambda: len(s.of("once", "done")) == 2)
            first, second = s.of("once", "done")
            assert first == second
            # ... and an id that is still running is ignored; an unknown one without work fails.
            await s.submit(s.task("slow", call_work(print_then_wait, str(marker))))
            await s.wait_for(lambda: bool(s.of("slow", "output")))
            await s.send_raw_task("slow")
            await s.send_raw_task("never-seen")
            failure = await s.failed("never-seen")
            assert failure.kind == "internal" and "never-seen" in failure.message
            marker.touch()
            await s.done("slow")
            assert len(s.of("slow", "started")) == 1

    run(scenario())


def test_stats_reply(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("x", call_work(np.zeros, 1 << 18), inline_limit=1024))
            await s.done("x")
            stats = await s.stats()
            assert stats.objects == 1 and stats.object_bytes >= 8 * (1 << 18)
            assert stats.objects_total >= 1
            assert stats.tasks_done >= 1 and stats.workers == 2 and stats.sessions >= 1
            assert stats.busy == 0
            server_stats = server.stats()
            assert server_stats.tasks_done == stats.tasks_done
            assert len(server_stats.worker_pids) == 2

    run(scenario())


def parent_pid() -> int:
    return os.getppid()


def test_task_workers_are_forked_by_the_tasks_forkserver(server: ServerThread) -> None:
    # Forked, a worker answers milliseconds after the server asks for it; spawned, it first
    # imports the worker in a new interpreter (about 0.1 s of CPU, before a first result).
    # The tasks' forkserver imports the tasks' runner, not what objects and flows need: it
    # is ready before the server listens.
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("ppid", call_work(parent_pid)))
            done = await s.done("ppid")
            ppid = s.value(done.values[0])
            assert ppid != os.getpid(), "the worker was spawned by the server itself"
            forkserver = Path(f"/proc/{ppid}/cmdline").read_bytes()
            assert b"multiprocessing.forkserver" in forkserver
            assert b"sperse._server.runner" in forkserver  # what it preloads
            assert b"sperse._flow.host" not in forkserver

    run(scenario())


def test_a_server_whose_forkserver_cannot_fork_spawns_its_task_workers(
    make_server: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def cannot_fork(process: object) -> None:
        raise OSError("no forkserver here")

    monkeypatch.setattr(forking._TaskProcess, "_Popen", staticmethod(cannot_fork))
    with caplog.at_level(logging.WARNING, logger="sperse.server"):
        server = make_server()

        async def scenario() -> None:
            async with RawSession(server.address) as s:
                await s.hello()
                await s.submit(s.task("ppid", call_work(parent_pid)))
                done = await s.done("ppid")
                assert s.value(done.values[0]) == os.getpid()  # spawned by the server

        run(scenario())
    assert "forkserver_failed" in caplog.text and "no forkserver here" in caplog.text
