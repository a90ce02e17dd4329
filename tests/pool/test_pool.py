"""The worker pool with real worker processes.

No test sleeps to wait: each waits on a condition (events from the pool, a pidfd) with a
deadline. Every pool is closed by its test; the ``make_pool`` fixture closes any pool a
failing test left open.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import runners

from sperse._core.events import BackendEvent, Done, ErrorInfo, ErrorKind, Failed, Output, Started
from sperse._pool import forking, procs
from sperse._pool.pool import WorkerPool

RUNNERS_DIR = Path(runners.__file__).parent
COMMAND = f"{runners.__name__}:command"
DEADLINE = 10.0
POOL = "test"  # the name of make_pool's pools: ``where`` of their events

# The pool's reasons of a failure, as the (kind, type_name) of the error it reports.
REASONS: dict[str, tuple[ErrorKind, str]] = {
    "worker_died": ("worker_died", "WorkerDied"),
    "cancelled": ("cancelled", "TaskCancelled"),
    "runner_error": ("internal", "RunnerError"),
}


def task_done(task_id: str, result: bytes, where: str = POOL) -> Done:
    return Done(task_id, where, result)


def task_failed(task_id: str, reason: str, message: str) -> Failed:
    kind, type_name = REASONS[reason]
    return Failed(task_id, POOL, ErrorInfo(kind, type_name, message))


def reason(event: BackendEvent) -> str:
    """The pool's reason of a failure (worker_died, cancelled, runner_error)."""
    assert isinstance(event, Failed), event
    error = event.error
    (found,) = [r for r, names in REASONS.items() if names == (error.kind, error.type_name)]
    return found


class Events:
    """The ``on_event`` callback of a test: records events and lets the test wait on them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.items: list[BackendEvent] = []
        self.threads: set[int] = set()
        self.hook: Callable[[BackendEvent], None] | None = None

    def __call__(self, event: BackendEvent) -> None:
        with self._cond:
            self.items.append(event)
            self.threads.add(threading.get_ident())
            self._cond.notify_all()
        if self.hook is not None:
            self.hook(event)

    def wait_for(self, predicate: Callable[[list[BackendEvent]], bool]) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.items), DEADLINE):
                raise AssertionError(f"timed out after {DEADLINE}s; events: {self.items}")

    def of(self, task_id: str) -> list[BackendEvent]:
        with self._cond:
            return [e for e in self.items if e.task_id == task_id]

    def terminal(self, task_id: str) -> list[Done | Failed]:
        return [e for e in self.of(task_id) if isinstance(e, Done | Failed)]

    def wait_terminal(self, *task_ids: str) -> dict[str, Done | Failed]:
        def ended(items: list[BackendEvent]) -> bool:
            done = {e.task_id for e in items if isinstance(e, Done | Failed)}
            return done.issuperset(task_ids)

        self.wait_for(ended)
        return {task_id: self.terminal(task_id)[0] for task_id in task_ids}

    def wait_started(self, task_id: str) -> int:
        """Wait until the task has been sent to a worker; return the worker's pid."""
        self.wait_for(
            lambda items: any(isinstance(e, Started) and e.task_id == task_id for e in items)
        )
        return next(e.worker for e in self.of(task_id) if isinstance(e, Started))

    def wait_output(self, task_id: str) -> int:
        """Wait until the task has printed (so it really runs); return the worker's pid."""
        self.wait_for(
            lambda items: any(isinstance(e, Output) and e.task_id == task_id for e in items)
        )
        return self.wait_started(task_id)

    def assert_well_formed(self) -> None:
        """Per task: at most one Started first, outputs, exactly one terminal event last."""
        with self._cond:
            ids = {e.task_id for e in self.items}
        for task_id in ids:
            events = self.of(task_id)
            assert isinstance(events[-1], Done | Failed), events
            assert len(self.terminal(task_id)) == 1, events
            starts = [i for i, e in enumerate(events) if isinstance(e, Started)]
            assert starts in ([], [0]), events
            if not starts:
                assert len(events) == 1, events  # never reached a worker: no output either


MakePool = Callable[..., tuple[WorkerPool, Events]]


@pytest.fixture
def make_pool() -> Iterator[MakePool]:
    pools: list[WorkerPool] = []

    def make(size: int = 1, runner: str = COMMAND, **options: Any) -> tuple[WorkerPool, Events]:
        events = Events()
        pool = WorkerPool(size, runner, events, name="test", **options)
        pools.append(pool)
        return pool, events

    yield make
    for pool in pools:
        pool.close()


def wait_gone(pid: int, timeout: float = DEADLINE) -> bool:
    """Wait until process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def assert_no_process(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # exited *and* reaped
    assert pid not in {p.pid for p in multiprocessing.active_children()}


# -- normal operation ----------------------------------------------------------------------


def test_many_tasks_across_two_workers_each_end_once(make_pool: MakePool) -> None:
    pool, events = make_pool(2)
    ids = [f"t{i}" for i in range(40)]
    for task_id in ids:
        pool.submit(task_id, f"echo:{task_id}".encode())
    ended = events.wait_terminal(*ids)
    assert ended == {task_id: task_done(task_id, task_id.encode()) for task_id in ids}
    events.assert_well_formed()
    workers = set(pool.stats().workers)
    assert {e.worker for e in events.items if isinstance(e, Started)} <= workers
    assert len(workers) == 2
    assert len(events.threads) == 1 and threading.get_ident() not in events.threads
    stats = pool.stats()
    assert (stats.busy, stats.queued, stats.tasks_done, stats.tasks_failed) == (0, 0, 40, 0)
    assert stats.workers_replaced == 0
    assert pool.size == 2
    pool.close()


def test_one_worker_dispatches_first_in_first_out(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    ids = [f"t{i}" for i in range(10)]
    for task_id in ids:
        pool.submit(task_id, b"echo:x")
    events.wait_terminal(*ids)
    assert [e.task_id for e in events.items if isinstance(e, Started)] == ids
    events.assert_well_formed()
    pool.close()


def test_duplicate_task_id_is_refused(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    pool.submit("a", b"sleep:0.2")
    with pytest.raises(ValueError, match="already queued or running"):
        pool.submit("a", b"echo:again")
    assert events.wait_terminal("a")["a"] == task_done("a", b"slept")
    pool.submit("a", b"echo:again")  # free once ended
    events.wait_for(lambda items: len([e for e in items if isinstance(e, Done)]) == 2)
    assert events.terminal("a") == [task_done("a", b"slept"), task_done("a", b"again")]
    pool.close()


def test_output_streams_while_the_task_runs(make_pool: MakePool, tmp_path: Path) -> None:
    pool, events = make_pool(1)
    flag = tmp_path / "go"
    pool.submit("w", f"wait_for_file:{flag}".encode())
    # The task only ends once the file exists, and the file is only created once the first
    # line has arrived here: the output cannot have waited for the end of the task.
    events.wait_for(lambda items: any(isinstance(e, Output) for e in items))
    assert not events.terminal("w")
    flag.touch()
    assert events.wait_terminal("w")["w"] == task_done("w", b"seen")
    outputs = [(e.stream, e.text) for e in events.of("w") if isinstance(e, Output)]
    stdout = "".join(text for stream, text in outputs if stream == "stdout")
    assert stdout == f"waiting for {flag}\nseen\n"
    assert [text for stream, text in outputs if stream == "stderr"] == ["on stderr\n"]
    events.assert_well_formed()
    pool.close()


def test_output_keeps_order_and_the_unfinished_last_line(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    pool.submit("p", b"lines:50")
    assert events.wait_terminal("p")["p"] == task_done("p", b"printed")
    text = "".join(e.text for e in events.of("p") if isinstance(e, Output))
    assert text == "".join(f"line {i}\n" for i in range(50)) + "no newline at the end"
    events.assert_well_formed()
    pool.close()


def test_on_event_can_submit(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    chain = {"a": "b", "b": "c"}

    def submit_next(event: BackendEvent) -> None:
        if isinstance(event, Done) and event.task_id in chain:
            pool.submit(chain[event.task_id], f"echo:{chain[event.task_id]}".encode())

    events.hook = submit_next
    pool.submit("a", b"echo:a")
    assert events.wait_terminal("c")["c"] == task_done("c", b"c")
    assert [e.task_id for e in events.items if isinstance(e, Done)] == ["a", "b", "c"]
    pool.close()


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "how"),
    [(b"kill_self", "killed by SIGKILL"), (b"exit:3", "exit code 3")],
)
def test_a_worker_that_dies_is_replaced(make_pool: MakePool, payload: bytes, how: str) -> None:
    pool, events = make_pool(1)
    pool.submit("dies", payload)
    pool.submit("later", b"pid")  # queued behind it
    ended = events.wait_terminal("dies", "later")
    first = events.wait_started("dies")
    assert ended["dies"] == task_failed(
        "dies", "worker_died", f"worker {first} died ({how}) while running task dies"
    )
    second = events.wait_started("later")
    assert ended["later"] == task_done("later", str(second).encode())
    assert second != first
    stats = pool.stats()
    assert stats.workers == (second,)
    assert (stats.workers_replaced, stats.tasks_done, stats.tasks_failed) == (1, 1, 1)
    assert_no_process(first)
    events.assert_well_formed()
    pool.close()


def test_sigkill_from_outside_mid_task(make_pool: MakePool) -> None:
    pool, events = make_pool(2)
    pool.submit("victim", b"sleep:30")
    pool.submit("bystander", b"sleep:0.5")
    victim = events.wait_output("victim")
    events.wait_output("bystander")
    os.kill(victim, signal.SIGKILL)
    ended = events.wait_terminal("victim", "bystander")
    failed = ended["victim"]
    assert isinstance(failed, Failed)
    assert reason(failed) == "worker_died"
    assert (
        failed.error.message
        == f"worker {victim} died (killed by SIGKILL) while running task victim"
    )
    assert ended["bystander"] == task_done("bystander", b"slept")
    pool.submit("after", b"echo:ok")
    assert events.wait_terminal("after")["after"] == task_done("after", b"ok")
    assert pool.stats().workers_replaced == 1
    assert victim not in pool.stats().workers
    events.assert_well_formed()
    pool.close()


def test_runner_error_keeps_the_worker(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    pool.submit("bad", b"boom")
    pool.submit("good", b"pid")
    ended = events.wait_terminal("bad", "good")
    failed = ended["bad"]
    assert isinstance(failed, Failed)
    assert (reason(failed), failed.error.message) == ("runner_error", "RuntimeError: runner bug")
    assert "in boom" in failed.error.traceback
    worker = events.wait_started("bad")
    assert ended["good"] == task_done("good", str(worker).encode())
    assert pool.stats().workers_replaced == 0
    pool.close()


def test_a_runner_that_returns_something_else_than_bytes(make_pool: MakePool) -> None:
    pool, events = make_pool(1, runner=f"{runners.__name__}:text")
    pool.submit("t", b"abc")
    failed = events.wait_terminal("t")["t"]
    assert isinstance(failed, Failed)
    assert (reason(failed), failed.error.message) == (
        "runner_error",
        "TypeError: the runner returned str, not bytes",
    )
    pool.close()


def test_a_runner_that_cannot_be_loaded_fails_every_task(make_pool: MakePool) -> None:
    pool, events = make_pool(2, runner=f"{runners.__name__}:no_such_runner")
    pool.submit("a", b"echo:a")
    failed = events.wait_terminal("a")["a"]
    assert isinstance(failed, Failed)
    assert reason(failed) == "runner_error"
    assert "no_such_runner" in failed.error.message
    pool.submit("b", b"echo:b")  # fails at once, nothing restarts forever
    assert events.wait_terminal("b")["b"] == replace(failed, task_id="b")
    assert pool.stats().workers_replaced == 0
    pool.close()


def test_a_malformed_runner_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"package\.module:function"):
        WorkerPool(1, "no_colon", Events())


def test_workers_ignore_sigint_and_stray_cancel_signals(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    pool.submit("t", b"sleep:0.5")
    worker = events.wait_output("t")
    os.kill(worker, signal.SIGINT)  # Ctrl-C in the terminal is the parent's business
    os.kill(worker, signal.SIGUSR1)  # an interrupt nobody asked for (no cancel)
    assert events.wait_terminal("t")["t"] == task_done("t", b"slept")
    assert pool.stats().workers == (worker,)
    pool.close()


# -- cancellation ------------------------------------------------------------------------------


def test_cancel_queued(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    pool.submit("running", b"sleep:30")
    pool.submit("queued", b"echo:never")
    events.wait_started("running")
    assert pool.cancel("queued") is True
    assert pool.cancel("queued") is False  # ended already
    assert events.wait_terminal("queued")["queued"] == task_failed(
        "queued", "cancelled", "cancelled while queued"
    )
    assert events.of("queued") == [events.terminal("queued")[0]]  # never started
    assert pool.stats().queued == 0
    pool.close()


def test_cancel_running_interrupts_and_keeps_the_worker(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    pool.submit("long", b"sleep:30")
    worker = events.wait_output("long")
    assert pool.cancel("long") is True
    pool.cancel("long")  # again: True or False depending on timing, never a second event
    assert events.wait_terminal("long")["long"] == task_failed(
        "long", "cancelled", "cancelled while running"
    )
    pool.submit("next", b"pid")
    assert events.wait_terminal("next")["next"] == task_done("next", str(worker).encode())
    assert pool.cancel("long") is False
    assert pool.stats().workers_replaced == 0
    events.assert_well_formed()
    pool.close()


def test_cancel_a_task_that_ignores_the_interrupt_kills_its_worker(make_pool: MakePool) -> None:
    pool, events = make_pool(1, cancel_grace=0.3)
    pool.submit("stuck", b"stubborn")
    worker = events.wait_output("stuck")  # a cancel before it runs would stop it cleanly
    assert pool.cancel("stuck") is True
    failed = events.wait_terminal("stuck")["stuck"]
    assert isinstance(failed, Failed)
    assert reason(failed) == "cancelled"
    assert f"worker {worker} did not stop within 0.3s" in failed.error.message
    pool.submit("next", b"pid")
    done = events.wait_terminal("next")["next"]
    assert isinstance(done, Done)
    assert done.value != str(worker).encode()
    assert pool.stats().workers_replaced == 1
    assert len(events.terminal("stuck")) == 1
    assert_no_process(worker)
    events.assert_well_formed()
    pool.close()


def test_cancel_after_done_is_false_and_silent(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    pool.submit("quick", b"echo:q")
    events.wait_terminal("quick")
    assert pool.cancel("quick") is False
    assert pool.cancel("unknown") is False
    pool.submit("marker", b"echo:m")  # any late event for "quick" would come before this one
    events.wait_terminal("marker")
    assert events.of("quick")[-1] == task_done("quick", b"q")
    assert len(events.terminal("quick")) == 1
    pool.close()


# -- shutdown ----------------------------------------------------------------------------------


def test_close_cancels_everything_and_leaves_no_process(make_pool: MakePool) -> None:
    pool, events = make_pool(2, cancel_grace=0.5)
    pool.submit("sleeping", b"sleep:30")
    pool.submit("stuck", b"stubborn")
    pool.submit("queued", b"echo:never")
    workers = {events.wait_output("sleeping"), events.wait_output("stuck")}
    assert set(pool.stats().workers) == workers
    pool.close()
    for task_id in ("sleeping", "stuck", "queued"):
        assert events.terminal(task_id) == [task_failed(task_id, "cancelled", "pool closed")]
    for pid in workers:
        assert_no_process(pid)
    assert pool.stats().workers == ()
    count = len(events.items)
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("late", b"echo:x")
    assert pool.cancel("sleeping") is False
    assert len(events.items) == count
    events.assert_well_formed()


def test_context_manager_closes() -> None:
    events = Events()
    with WorkerPool(1, COMMAND, events) as pool:
        pool.submit("a", b"echo:a")
        events.wait_terminal("a")
        workers = pool.stats().workers
    for pid in workers:
        assert_no_process(pid)


def test_close_from_on_event(make_pool: MakePool) -> None:
    pool, events = make_pool(1)
    events.hook = lambda event: pool.close() if isinstance(event, Done) else None
    pool.submit("a", b"echo:a")
    pool.submit("b", b"sleep:30")
    events.wait_terminal("a", "b")
    assert events.terminal("b") == [task_failed("b", "cancelled", "pool closed")]
    pool.close()  # from this thread: waits until the workers are gone
    assert pool.stats().workers == ()


def test_a_forked_worker_starts_as_a_spawned_one_would(
    make_pool: MakePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker forked by the forkserver gets what its parent has at the spawn (environment,
    working directory), not what the forkserver had when it started, and the variables of
    its pool; its parent, to multiprocessing, is the pool's process."""
    forking.start_forkserver()
    forking.start_objects_forkserver()
    monkeypatch.setenv("SPERSE_TEST_LATER", "set after the forkserver started")
    monkeypatch.chdir(tmp_path)
    for start_method in ("forkserver", "forkserver-tasks", "spawn"):
        env = {"SPERSE_TEST_GIVEN": "the pool's"}
        pool, events = make_pool(env=env, start_method=start_method)
        pool.submit("later", b"where:SPERSE_TEST_LATER")
        pool.submit("given", b"where:SPERSE_TEST_GIVEN")
        ended = events.wait_terminal("later", "given")
        expected = ["set after the forkserver started", str(tmp_path), str(os.getpid())]
        assert ended["later"] == task_done("later", "\n".join(expected).encode()), start_method
        assert ended["given"].value.startswith(b"the pool's\n"), start_method


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_objects_workers_are_forked_by_a_fork_of_the_tasks_forkserver(
    make_pool: MakePool,
) -> None:
    """The objects' forkserver is forked by the tasks' one (which has imported what they
    share), and forks the objects' workers. Killed, it is started again for the next one."""
    forking.start_forkserver()
    forkservers = []
    for _ in ("first", "after the first was killed"):
        pool, events = make_pool(start_method="forkserver")
        pool.submit("pid", b"pid")
        worker = int(events.wait_terminal("pid")["pid"].value)
        forkserver = _parent_of(worker)
        assert _parent_of(forkserver) == forking._tasks_server._forkserver_pid
        assert forkserver not in forkservers
        forkservers.append(forkserver)
        assert forking.objects_forkserver_ready()  # it forks once it has imported all
        pool.close()
        os.kill(forkserver, signal.SIGKILL)
        assert wait_gone(forkserver)
        process = forking._objects_server._process
        assert process is not None
        process.join(DEADLINE)  # its exit seen: the next worker starts a new one
        assert process.exitcode == -signal.SIGKILL
        assert not forking.objects_forkserver_ready()


def test_a_worker_reaped_by_someone_else_still_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """``multiprocessing`` polls the children it started whenever another thread starts a
    process. A poll that takes a worker's exit status from under the pool's ``join`` sets
    its exit code a moment later; meanwhile ``Process.close`` says it is still running (as
    here, once). The pool stops it without an error all the same."""
    w = procs.spawn(procs.WorkerId(1), COMMAND, 1, "test")
    process_close, closes = w.process.close, []

    def close() -> None:
        closes.append(1)
        if len(closes) == 1:
            raise ValueError("Cannot close a process while it is still running.")
        process_close()

    monkeypatch.setattr(w.process, "close", close)
    os.kill(w.pid, signal.SIGKILL)
    procs.stop([(w, True, None)], timeout=DEADLINE, cancel_grace=1.0, name="test")
    assert len(closes) == 2 and w.conn is None
    assert_no_process(w.pid)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver", "forkserver-tasks"])
def test_workers_exit_when_the_parent_dies(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, threading
            sys.path.insert(0, {str(RUNNERS_DIR)!r})
            from sperse._core.events import Started
            from sperse._pool.pool import WorkerPool

            def main():
                started = threading.Event()
                def on_event(event):
                    if isinstance(event, Started):
                        started.set()
                pool = WorkerPool(2, {COMMAND!r}, on_event, start_method={start_method!r})
                pool.submit("busy", b"sleep:60")  # one busy worker, one idle
                started.wait(30)
                print(*pool.stats().workers, flush=True)
                threading.Event().wait()

            if __name__ == "__main__":
                main()
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        stdout = parent.stdout
        assert stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        pids = [int(pid) for pid in lines.get(timeout=DEADLINE).split()]
        assert len(pids) == 2
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    for pid in pids:
        assert wait_gone(pid), f"worker {pid} outlived its parent"


# -- pipelining and the owner's loop -----------------------------------------------------------


def _warm_up(pool: WorkerPool, events: Events, count: int = 20) -> None:
    """Enough quick tasks that the pool sends short tasks ahead (see "Pipelining")."""
    ids = [f"warm{i}" for i in range(count)]
    for task_id in ids:
        pool.submit(task_id, b"echo:w")
    events.wait_terminal(*ids)


def test_tasks_sent_ahead_of_a_worker_that_dies_run_on_its_replacement(
    make_pool: MakePool,
) -> None:
    pool, events = make_pool(1)
    _warm_up(pool, events)
    pool.submit("dies", b"kill_self")
    behind = [f"b{i}" for i in range(8)]
    for task_id in behind:  # some of them may be sent to the worker that dies
        pool.submit(task_id, f"echo:{task_id}".encode())
    ended = events.wait_terminal("dies", *behind)
    assert reason(ended["dies"]) == "worker_died"
    assert [ended[t] for t in behind] == [task_done(t, t.encode()) for t in behind]
    events.assert_well_formed()  # one Started each, even for a task sent twice
    assert pool.stats().workers_replaced == 1
    pool.close()


def test_cancel_a_task_waiting_behind_another(make_pool: MakePool, tmp_path: Path) -> None:
    pool, events = make_pool(1)
    _warm_up(pool, events)
    flag = tmp_path / "go"
    pool.submit("first", f"wait_for_file:{flag}".encode())
    pool.submit("behind", b"echo:never")  # queued, or sent ahead: either way it never runs
    events.wait_output("first")
    assert pool.cancel("behind") is True
    failed = events.wait_terminal("behind")["behind"]
    assert reason(failed) == "cancelled"
    flag.touch()
    assert events.wait_terminal("first")["first"] == task_done("first", b"seen")
    pool.submit("next", b"echo:next")
    assert events.wait_terminal("next")["next"] == task_done("next", b"next")
    assert len(events.terminal("behind")) == 1
    assert pool.stats().workers_replaced == 0
    events.assert_well_formed()
    pool.close()


def test_a_pool_on_the_owners_event_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="owner-loop")
    thread.start()
    events = Events()
    try:
        pool = WorkerPool(2, COMMAND, events, name="owned", loop=loop)
        try:
            ids = [f"t{i}" for i in range(50)]
            for task_id in ids:
                pool.submit(task_id, f"echo:{task_id}".encode())
            ended = events.wait_terminal(*ids)
            assert ended == {t: task_done(t, t.encode(), "owned") for t in ids}
            assert events.threads == {thread.ident}  # on the owner's loop, nowhere else
            workers = pool.stats().workers
        finally:
            pool.close()  # from another thread than the loop's: returns once they are gone
        for pid in workers:
            assert_no_process(pid)
        events.assert_well_formed()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


# -- concurrent workers and the front of the queue --------------------------------------------


def test_a_concurrent_worker_runs_its_tasks_at_once(make_pool: MakePool) -> None:
    pool, events = make_pool(1, concurrency=3)
    ids = ["a", "b", "c"]
    for task_id in ids:  # each waits until all three have arrived: only together can they end
        pool.submit(task_id, f"meet:3:{task_id}".encode())
    ended = events.wait_terminal(*ids)
    assert ended == {t: task_done(t, t.encode()) for t in ids}
    for task_id in ids:  # each line is tagged with the task that printed it
        text = "".join(e.text for e in events.of(task_id) if isinstance(e, Output))
        assert text == f"{task_id} arrived\n{task_id} leaves\n"
    assert len({e.worker for e in events.items if isinstance(e, Started)}) == 1
    events.assert_well_formed()
    pool.close()


def test_a_huge_concurrency_costs_nothing_more(make_pool: MakePool) -> None:
    # A client may ask for max_concurrency 2**32-1: tasks submitted before the worker is
    # ready and after must all be assigned and run (assigning once walked every slot).
    pool, events = make_pool(1, concurrency=2**32 - 1)
    early = [f"early{i}" for i in range(5)]
    for task_id in early:
        pool.submit(task_id, f"echo:{task_id}".encode())
    events.wait_terminal(*early)
    late = [f"late{i}" for i in range(20)]
    for task_id in late:
        pool.submit(task_id, f"echo:{task_id}".encode())
    ended = events.wait_terminal(*late)
    assert ended == {t: task_done(t, t.encode()) for t in late}
    assert [e.task_id for e in events.items if isinstance(e, Started)] == early + late
    events.assert_well_formed()
    pool.close()


def test_a_pool_configured_before_its_first_task_is_as_if_created_so(
    make_pool: MakePool,
) -> None:
    # A spare: started with one task at a time under a name of its own, then configured.
    pool, events = make_pool(1)
    (pid,) = pool.stats().workers
    pool.configure("renamed", 3)
    ids = ["a", "b", "c"]
    for task_id in ids:  # only three at once can end (see the test above)
        pool.submit(task_id, f"meet:3:{task_id}".encode())
    pool.submit("name", b"name")
    ended = events.wait_terminal(*ids, "name")
    assert ended == {
        **{t: task_done(t, t.encode(), where="renamed") for t in ids},
        "name": task_done("name", b"renamed-worker", where="renamed"),
    }
    assert {e.worker for e in events.items if isinstance(e, Started)} == {pid}
    with pytest.raises(RuntimeError, match="has had tasks"):
        pool.configure("again", 1)
    pool.close()


def test_a_concurrent_pool_configured_to_one_task_at_a_time_interrupts_again(
    make_pool: MakePool,
) -> None:
    pool, events = make_pool(1, concurrency=2)
    pool.configure("serial", 1)
    pool.submit("long", b"sleep:30")
    pid = events.wait_output("long")
    assert pool.cancel("long")  # a worker of concurrency 1 is interrupted, and kept
    assert reason(events.wait_terminal("long")["long"]) == "cancelled"
    pool.submit("after", b"pid")
    assert events.wait_terminal("after")["after"] == task_done("after", str(pid).encode(), "serial")
    assert pool.stats().workers_replaced == 0  # a concurrent worker would not be interrupted
    pool.close()


def test_cancel_in_a_concurrent_worker_ends_the_task_at_once(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool, events = make_pool(1, concurrency=2)
    flag = tmp_path / "go"
    pool.submit("slow", f"wait_for_file:{flag}".encode())
    worker = events.wait_output("slow")
    assert pool.cancel("slow") is True
    failed = events.wait_terminal("slow")["slow"]
    assert failed == task_failed("slow", "cancelled", "cancelled while running")
    pool.submit("beside", b"echo:beside")  # the other slot is free
    assert events.wait_terminal("beside")["beside"] == task_done("beside", b"beside")
    flag.touch()  # the cancelled task ends now; its answer is dropped
    pool.submit("after", b"pid")
    assert events.wait_terminal("after")["after"] == task_done("after", str(worker).encode())
    assert len(events.terminal("slow")) == 1
    assert pool.stats().workers_replaced == 0  # neither interrupted nor killed
    events.assert_well_formed()
    pool.close()


def test_a_concurrent_worker_that_dies_fails_every_task_it_ran(
    make_pool: MakePool, tmp_path: Path
) -> None:
    exits: list[tuple[int, str, int]] = []
    recorded: list[Events] = []

    def on_worker_exit(pid: int, how: str) -> None:  # on the pool's loop, like on_event
        ended = [e for e in recorded[0].items if isinstance(e, Done | Failed)]
        exits.append((pid, how, len(ended)))

    pool, events = make_pool(1, concurrency=2, on_worker_exit=on_worker_exit)
    recorded.append(events)
    flag = tmp_path / "never"
    pool.submit("one", f"wait_for_file:{flag}".encode())
    pool.submit("two", f"wait_for_file:{flag}".encode())
    worker = events.wait_output("one")
    events.wait_output("two")
    os.kill(worker, signal.SIGKILL)
    ended = events.wait_terminal("one", "two")
    for task_id in ("one", "two"):
        message = f"worker {worker} died (killed by SIGKILL) while running task {task_id}"
        assert ended[task_id] == task_failed(task_id, "worker_died", message)
    assert exits == [(worker, "killed by SIGKILL", 0)]  # before the tasks' failures
    pool.submit("next", b"echo:next")
    assert events.wait_terminal("next")["next"] == task_done("next", b"next")
    events.assert_well_formed()
    pool.close()


def test_submit_to_the_front(make_pool: MakePool, tmp_path: Path) -> None:
    pool, events = make_pool(1)
    flag = tmp_path / "go"
    pool.submit("first", f"wait_for_file:{flag}".encode())
    events.wait_output("first")
    for task_id in ("b", "c"):
        pool.submit(task_id, f"echo:{task_id}".encode())
    pool.submit("urgent", b"echo:urgent", front=True)
    flag.touch()
    events.wait_terminal("first", "b", "c", "urgent")
    started = [e.task_id for e in events.items if isinstance(e, Started)]
    assert started == ["first", "urgent", "b", "c"]
    pool.close()


def test_closed_from_on_event_on_the_owners_loop_it_leaves_nothing_watched() -> None:
    """The workers' file descriptors are closed only once the loop no longer watches them: a
    number left registered would be reused by a later file that the loop then never sees."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="owner-loop")
    thread.start()

    def watched() -> set[int]:
        async def snapshot() -> set[int]:
            return set(loop._selector.get_map())  # type: ignore[attr-defined]

        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(DEADLINE)

    try:
        before = watched()
        events = Events()
        pool = WorkerPool(2, COMMAND, events, name="owned", loop=loop)
        events.hook = lambda event: pool.close() if isinstance(event, Done) else None
        pool.submit("a", b"echo:a")
        events.wait_terminal("a")
        pool.close()  # from this thread: waits until the workers are gone
        assert watched() == before
        again = Events()
        with WorkerPool(1, COMMAND, again, name="again", loop=loop) as second:
            second.submit("b", b"echo:b")
            assert again.wait_terminal("b")["b"] == task_done("b", b"b", "again")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()
