"""Deadlines on a controllable clock (``MockClock``) and the in-memory backend: a timeout is
tested by moving time, not by waiting for a remote ``sleep``."""

from __future__ import annotations

import sys
import threading

import pytest

import sperse
from sperse._backends.memory import MemoryBackend
from sperse._core.clock import MockClock, SystemClock

WAIT = 30.0
entered = threading.Event()  # shared with the tasks: they run in this process
release = threading.Event()


@sperse.remote
def blocked() -> str:
    # Shipped by value, as user code is: the events are this process's module's.
    here = sys.modules[__name__]
    here.entered.set()
    here.release.wait(WAIT)
    return "released"


@sperse.remote
def quick(x: int) -> int:
    return x + 1


@pytest.fixture
def clock() -> MockClock:
    entered.clear()
    release.clear()
    return MockClock()


def test_the_mock_clock_runs_what_falls_due_in_order_at_its_deadline() -> None:
    clock = MockClock(start=10.0)
    seen: list[tuple[str, float]] = []
    clock.call_later(3, lambda: seen.append(("c", clock.now())))
    clock.call_later(1, lambda: seen.append(("a", clock.now())))
    clock.call_later(1, lambda: seen.append(("b", clock.now())))  # same deadline: in order
    clock.advance(0.5)
    assert seen == [] and clock.now() == 10.5
    clock.advance(2)
    assert seen == [("a", 11.0), ("b", 11.0)] and clock.now() == 12.5
    clock.advance(10)
    assert seen[-1] == ("c", 13.0) and clock.now() == 22.5
    with pytest.raises(ValueError, match="does not go back"):
        clock.advance(-1)


def test_a_deadline_set_while_advancing_runs_in_the_same_advance() -> None:
    clock = MockClock()
    seen: list[float] = []
    clock.call_later(1, lambda: clock.call_later(1, lambda: seen.append(clock.now())))
    clock.advance(5)
    assert seen == [2.0]


def test_a_closed_clock_forgets_its_deadlines() -> None:
    clock = MockClock()
    seen: list[int] = []
    clock.call_later(1, lambda: seen.append(1))
    clock.close()
    clock.call_later(1, lambda: seen.append(2))
    clock.advance(5)
    assert seen == []


def test_the_system_clock_calls_back_on_its_thread() -> None:
    clock = SystemClock()
    called = threading.Event()
    where: list[str] = []
    clock.call_later(0.01, lambda: (where.append(threading.current_thread().name), called.set()))
    assert called.wait(WAIT)
    assert where == ["sperse-timers"]
    clock.close()


def test_a_call_times_out_exactly_when_its_deadline_passes(clock: MockClock) -> None:
    with sperse.Cluster(MemoryBackend(1), clock=clock) as cluster:
        p = blocked.options(timeout=5)()
        assert entered.wait(WAIT)  # it runs, and would go on for as long as it is let
        clock.advance(4.999)
        assert not cluster.run_until(p.done, 0.05)  # a moment of real time: nothing happens
        clock.advance(0.001)
        with pytest.raises(sperse.TaskTimeout, match="within its timeout of 5"):
            p.result(timeout=WAIT)
        # The backend is free again at once (its thread replaced), before the task ends.
        assert cluster.run_until(lambda: cluster.servers()[0].busy == 0, WAIT)
        assert quick(1).result(timeout=WAIT) == 2
        release.set()


def test_a_call_that_ended_in_time_keeps_its_value_when_the_deadline_passes(
    clock: MockClock,
) -> None:
    with sperse.Cluster(MemoryBackend(1), clock=clock):
        p = quick.options(timeout=5)(41)
        assert p.result(timeout=WAIT) == 42
        clock.advance(60)
        assert p.result(timeout=0) == 42


def test_a_closed_cluster_ignores_its_deadlines(clock: MockClock) -> None:
    cluster = sperse.Cluster(MemoryBackend(1), clock=clock)
    with cluster:
        p = blocked.options(timeout=5)()
        assert entered.wait(WAIT)
    assert isinstance(p.exception(timeout=WAIT), sperse.ServerLost)  # closed: it ended
    clock.advance(10)  # the deadline runs nothing on a closed cluster
    assert isinstance(p.exception(timeout=0), sperse.ServerLost)
    release.set()
