"""``Cluster.run_until`` does not poll: whatever makes a waiter's condition true wakes it.

Each test waits with no timeout, on a thread of its own, for a condition that another thread
makes true through one documented path, once the waiter has found it false; the test then
waits for the waiter to return, with a deadline. A path that forgot to wake the cluster
leaves the waiter asleep, and the test fails at the deadline (then lets the waiter go).
Events come from a scripted backend: the test reports each one, from a thread of its own, as
a backend's I/O thread would.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

import pytest
from scripted_backend import Scripted

import sperse
from sperse._cluster import tracking
from sperse._cluster.pending import Pending
from sperse._core import (
    Done,
    ErrorInfo,
    Failed,
    Started,
)
from sperse.repl._commands import _interruptible

WAIT = 30.0  # a deadline, never a delay


def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def backend() -> Scripted:
    return Scripted()


@pytest.fixture
def cluster(backend: Scripted) -> Iterator[sperse.Cluster]:
    with sperse.Cluster(backend) as c:
        yield c


def task_of(backend: Scripted, p: Pending[object]) -> str:
    (spec,) = [s for s in backend.sent if s.task_id == p._task_id]
    return spec.task_id


class Waiter:
    """Runs ``wait()`` on a thread, where every ``run_until`` of ``clusters`` waits with no
    timeout and sets ``asleep`` each time it finds its condition false (it goes to sleep
    right after). ``returned`` is set when ``wait()`` returns."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        wait: Callable[[], object],
        *clusters: sperse.Cluster,
    ) -> None:
        self.asleep = threading.Event()
        self.returned = threading.Event()
        self._give_up = threading.Event()
        self._clusters = clusters
        for cluster in clusters:
            run_until = cluster.run_until

            def checked_run_until(
                done: Callable[[], bool],
                timeout: float | None,
                run_until: Callable[..., bool] = run_until,
                *,
                every_event: bool = True,
            ) -> bool:
                def check() -> bool:
                    if self._give_up.is_set() or done():
                        return True
                    self.asleep.set()
                    return False

                return run_until(check, None, every_event=every_event)

            monkeypatch.setattr(cluster, "run_until", checked_run_until)
        self._thread = threading.Thread(target=self._run, args=(wait,), name="waiter")

    def _run(self, wait: Callable[[], object]) -> None:
        try:
            wait()
        finally:
            self.returned.set()

    def woken(self) -> bool:
        """Whether the waiter returned within the deadline."""
        return self.returned.wait(WAIT)

    def start(self) -> None:
        self._thread.start()
        assert self.asleep.wait(WAIT), "the waiter never checked its condition"

    def stop(self) -> None:
        """Let a waiter that was not woken go (a failed test leaves no thread behind)."""
        self._give_up.set()
        for cluster in self._clusters:
            cluster.wake()
        self._thread.join(WAIT)


@pytest.fixture
def waiting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Waiter]]:
    """``waiting(wait, *clusters)``: a started ``Waiter``, stopped at the end of the test."""
    started: list[Waiter] = []

    def start(wait: Callable[[], object], *clusters: sperse.Cluster) -> Waiter:
        waiter = Waiter(monkeypatch, wait, *clusters)
        started.append(waiter)
        waiter.start()
        return waiter

    yield start
    for waiter in started:
        waiter.stop()


def on_another_thread(fn: Callable[[], object]) -> None:
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join(WAIT)


def test_a_post_wakes_the_waiter(cluster: sperse.Cluster, waiting: Callable[..., Waiter]) -> None:
    ran: list[int] = []
    waiter = waiting(lambda: cluster.run_until(lambda: bool(ran), None), cluster)
    on_another_thread(lambda: cluster.post(lambda: ran.append(threading.get_ident())))
    assert waiter.woken()
    assert ran  # on the waiter's thread: the one that drains the queue


def test_wake_after_a_change_made_elsewhere_wakes_the_waiter(
    cluster: sperse.Cluster, waiting: Callable[..., Waiter]
) -> None:
    flag = threading.Event()
    waiter = waiting(lambda: cluster.run_until(flag.is_set, None), cluster)
    on_another_thread(lambda: (flag.set(), cluster.wake()))
    assert waiter.woken()


def test_cancel_from_another_thread_ends_result(
    cluster: sperse.Cluster, waiting: Callable[..., Waiter]
) -> None:
    p = sperse.remote(double)(1)
    waiter = waiting(p.exception, cluster)
    on_another_thread(p.cancel)
    assert waiter.woken()
    assert isinstance(p.exception(0), sperse.TaskCancelled)


def test_cancel_of_a_call_still_waiting_for_its_inputs_ends_result(
    cluster: sperse.Cluster, backend: Scripted, waiting: Callable[..., Waiter]
) -> None:
    """Nothing was sent, so the backend hears of nothing: settling wakes the cluster."""
    upstream = Pending[int](cluster, label="upstream")
    p = sperse.remote(double)(upstream)
    waiter = waiting(p.exception, cluster)
    on_another_thread(p.cancel)
    assert waiter.woken()
    assert isinstance(p.exception(0), sperse.TaskCancelled) and backend.sent == []


def test_a_result_reported_by_the_backend_ends_result(
    cluster: sperse.Cluster, backend: Scripted, waiting: Callable[..., Waiter]
) -> None:
    p = sperse.remote(double)(1)
    waiter = waiting(p.result, cluster)
    on_another_thread(lambda: backend.report(Done(task_of(backend, p), backend.name, 2)))
    assert waiter.woken()
    assert p.result(0) == 2


def test_a_task_started_wakes_a_waiter_for_where_it_runs(
    cluster: sperse.Cluster, backend: Scripted, waiting: Callable[..., Waiter]
) -> None:
    """``Started`` settles nothing and posts nothing: the event itself wakes the cluster."""
    p = sperse.remote(double)(1)
    waiter = waiting(lambda: cluster.run_until(lambda: p.where != "", None), cluster)
    on_another_thread(lambda: backend.report(Started(task_of(backend, p), backend.name)))
    assert waiter.woken()
    assert p.where == backend.name and not p.done()


def test_the_end_of_a_cancelled_task_wakes_a_waiter_for_the_load(
    cluster: sperse.Cluster, backend: Scripted, waiting: Callable[..., Waiter]
) -> None:
    """A cancelled task has no listener any more: its end, reported when its server has
    stopped it, still wakes the cluster."""
    p = sperse.remote(double)(1)
    task_id = task_of(backend, p)
    p.cancel()
    assert cluster.servers()[0].busy == 1  # the server has not stopped it yet
    waiter = waiting(
        lambda: cluster.run_until(lambda: cluster.servers()[0].busy == 0, None), cluster
    )
    stopped = ErrorInfo("cancelled", "TaskCancelled", "cancelled")
    on_another_thread(lambda: backend.report(Failed(task_id, backend.name, stopped)))
    assert waiter.woken()


def test_a_cancel_that_frees_the_backend_at_once_wakes_a_waiter_for_the_load(
    waiting: Callable[..., Waiter],
) -> None:
    backend = Scripted(frees_at_cancel=True)
    with sperse.Cluster(backend) as cluster:
        p = sperse.remote(double)(1)
        waiter = waiting(
            lambda: cluster.run_until(lambda: cluster.servers()[0].busy == 0, None), cluster
        )
        on_another_thread(lambda: cluster.cancel(task_of(backend, p)))
        assert waiter.woken()


def test_progress_counted_elsewhere_wakes_a_waiter_for_it(
    cluster: sperse.Cluster, waiting: Callable[..., Waiter]
) -> None:
    tracker = tracking.Tracker("job", 2, False, 0.0, wake=cluster.wake)
    waiter = waiting(lambda: cluster.run_until(lambda: tracker.completed == 1, None), cluster)
    on_another_thread(lambda: tracker.add(1))
    assert waiter.woken()


def test_wait_for_pendings_of_two_clusters_wakes_on_either(
    cluster: sperse.Cluster, waiting: Callable[..., Waiter]
) -> None:
    with sperse.Cluster(Scripted()) as other:
        here = Pending[int](cluster, label="here")
        there = Pending[int](other, label="there")
        waiter = waiting(
            lambda: sperse.wait([here, there], return_when="FIRST_COMPLETED"), cluster, other
        )
        on_another_thread(there.cancel)  # wakes its own cluster, which nobody waits on
        assert waiter.woken()
        assert sperse.wait([here, there], 0, "FIRST_COMPLETED") == ({there}, {here})


def test_a_wake_queues_no_work(cluster: sperse.Cluster) -> None:
    """A front end drains (and redraws) when work is queued: a wake alone is not work."""
    cluster.wake()
    assert not cluster.wait_for_work(0)
    cluster.post(lambda: None)
    assert cluster.wait_for_work(0)


# ---- Ctrl-C --------------------------------------------------------------------------------


@contextlib.contextmanager
def interrupting(cluster: sperse.Cluster, asleep: threading.Event) -> Iterator[threading.Event]:
    """Once ``asleep`` is set, send SIGINT to this (the main) thread, as Ctrl-C does. Yields
    an event set if the wait had to be let go instead (it was not interrupted in time)."""
    main = threading.main_thread().ident
    assert main == threading.get_ident(), "signals are handled on the main thread"
    done = threading.Event()
    let_go = threading.Event()

    def interrupt() -> None:
        if asleep.wait(WAIT):
            signal.pthread_kill(main, signal.SIGINT)
        if not done.wait(WAIT):
            let_go.set()
            cluster.wake()

    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        yield let_go
    finally:
        done.set()
        thread.join(WAIT)


def test_ctrl_c_interrupts_a_wait_without_a_timeout(cluster: sperse.Cluster) -> None:
    asleep = threading.Event()

    with interrupting(cluster, asleep) as let_go:

        def done() -> bool:
            asleep.set()
            return let_go.is_set()

        with pytest.raises(KeyboardInterrupt):
            cluster.run_until(done, None)
    assert not let_go.is_set()


def test_ctrl_c_handled_at_wait_ends_the_wait(cluster: sperse.Cluster) -> None:
    """``%wait``'s handler sets a flag and wakes the cluster, from the waiting thread."""
    stop = threading.Event()
    asleep = threading.Event()

    with interrupting(cluster, asleep) as let_go:

        def done() -> bool:
            asleep.set()
            return stop.is_set() or let_go.is_set()

        with _interruptible(stop, cluster.wake):
            assert cluster.run_until(done, None)
    assert stop.is_set() and not let_go.is_set()


def test_a_signal_for_an_asyncio_loop_during_a_wait_reaches_the_loop(
    cluster: sperse.Cluster,
) -> None:
    """The main thread's sleep borrows the signal wakeup fd; what came meanwhile is passed
    on to the loop's, which is set again (a wait inside a Jupyter cell, say)."""
    main = threading.main_thread().ident
    assert main is not None and main == threading.get_ident()

    async def wait_while_signalled() -> bool:
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, arrived.set)
        try:
            asleep, signalled = threading.Event(), threading.Event()

            def signal_then_wake() -> None:
                assert asleep.wait(WAIT)
                signal.pthread_kill(main, signal.SIGUSR1)
                signalled.set()
                cluster.wake()

            def done() -> bool:
                asleep.set()
                return signalled.is_set()

            thread = threading.Thread(target=signal_then_wake)
            thread.start()
            assert cluster.run_until(done, WAIT)  # blocks the loop, as a cell's result() does
            thread.join(WAIT)
            await asyncio.wait_for(arrived.wait(), WAIT)
            return arrived.is_set()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)

    assert asyncio.run(wait_while_signalled())


def test_a_task_starting_does_not_wake_a_result_waiter_its_end_does(
    cluster: sperse.Cluster, backend: Scripted, waiting: Callable[..., Waiter]
) -> None:
    """A waiter for a value sleeps through the task's other events (one wake-up per result,
    not one per event); a waiter for anything is woken by them (the test above)."""
    p = sperse.remote(double)(1)
    waiter = waiting(p.result, cluster)

    def asleep() -> list[bool]:
        return [every for _, every in cluster._bell._sleepers]

    assert asleep() == [False]  # asleep, for settles only
    backend.report(Started(task_of(backend, p), backend.name))  # rings, on this thread
    assert asleep() == [False]  # not woken: still asleep
    backend.report(Done(task_of(backend, p), backend.name, 2))
    assert waiter.woken()
    assert p.result(0) == 2
