"""The script-level API of DESIGN.md §3: ``@sperse.remote`` functions and ``Pending``.

Every call runs on a real backend (``cluster`` from conftest). Remote code may sleep, that is
its workload; the tests themselves only ever wait on results with a deadline.
"""

from __future__ import annotations

import asyncio
import linecache
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sperse

WAIT = 30.0  # a deadline, never a delay: every wait below returns as soon as it can
LONG = 60.0  # a task that would outlive the test if it were not cancelled


@sperse.remote
def add(a: int, b: int) -> int:
    return a + b


@sperse.remote
def slow(value: object, seconds: float) -> object:
    time.sleep(seconds)
    return value


@sperse.remote
def fail_with(message: str) -> None:
    raise ValueError(message)


@sperse.remote
def touch(marker: str, value: object) -> object:
    Path(marker).write_text("ran")
    return value


@sperse.remote
def chatty(lines: list[str], tail: str, err: str) -> int:
    for line in lines:
        print(line)
    print(err, file=sys.stderr)
    print(tail, end="")
    return len(lines)


@sperse.remote
def announce_then_sleep(seconds: float) -> None:
    print("started", flush=True)
    time.sleep(seconds)


@sperse.remote(retries=1)
def die_once(marker: str) -> tuple[int, int]:
    """Kills its own worker on the first attempt (when the marker file does not exist yet).

    Returns the pid of the first attempt's worker and of the worker that got through.
    """
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return int(path.read_text()), os.getpid()


@sperse.remote
def rendezvous(mine: str, theirs: str, deadline: float) -> bool:
    """True once the other task of the pair has started too: both run at the same time."""
    Path(mine).write_text("here")
    give_up = time.monotonic() + deadline
    while not Path(theirs).exists():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture(autouse=True)
def _uses_cluster(cluster: sperse.Cluster) -> Iterator[None]:
    # Remote functions run on `sperse.current()`: the fixture's `with cluster:` makes it so.
    assert sperse.current() is cluster
    yield
    assert sperse.current() is cluster


def _both_workers_serve(tmp_path: Path) -> None:
    """Two tasks that can only finish together: the pool has its two workers."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    met = sperse.gather(rendezvous(a, b, 10.0), rendezvous(b, a, 10.0), timeout=WAIT)
    assert met == [True, True]


def _started(cluster: sperse.Cluster, pending: sperse.Pending[object]) -> None:
    """Wait (with a deadline) until ``pending``'s task runs on a worker."""
    assert cluster.run_until(lambda: pending.where != "", WAIT), f"{pending!r} never started"


def test_result_and_done() -> None:
    p = slow(7, 0.3)
    assert isinstance(p, sperse.Pending)
    assert not p.done()  # returned at once, before the remote sleep is over
    with pytest.raises(sperse.NotReadyError):
        p.value()
    assert p.result(timeout=WAIT) == 7
    assert p.done()
    assert p.value() == 7
    assert p.where in {s.name for s in sperse.current().servers()}


def test_then_runs_on_the_user_thread() -> None:
    p = add(1, 2)
    chained = p.then(lambda v: (v * 10, threading.get_ident()))
    value, ident = chained.result(timeout=WAIT)
    assert value == 30
    assert ident == threading.get_ident()


def test_then_skips_the_callback_when_the_input_failed() -> None:
    calls: list[object] = []
    chained = fail_with("no value").then(calls.append)
    with pytest.raises(sperse.RemoteError, match="no value"):
        chained.result(timeout=WAIT)
    assert calls == []


def test_pending_is_awaitable() -> None:
    user_thread = threading.get_ident()
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def main() -> tuple[object, object]:
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        first = slow(20, 0.3)
        second = add(first, 1).then(lambda v: (v, threading.get_ident()))
        try:
            return await first, await second
        finally:
            stop.set()
            await tick_task

    first, (second, ident) = asyncio.run(main())
    assert first == 20
    assert second == 21
    assert ident == user_thread  # the callback ran on the loop's thread: the user's
    assert ticks > 1  # awaiting did not block the event loop


def test_cancel_a_running_task(cluster: sperse.Cluster) -> None:
    p = slow("never", LONG)
    _started(cluster, p)
    assert p.cancel()
    with pytest.raises(sperse.TaskCancelled):
        p.result(timeout=WAIT)
    assert not p.cancel()  # already finished
    # The worker really stopped sleeping: it is free again, well before LONG seconds.
    assert cluster.run_until(lambda: cluster.servers()[0].busy == 0, WAIT)
    assert add(2, 2).result(timeout=WAIT) == 4  # the cluster still serves calls


def test_a_call_past_its_timeout_is_cancelled(cluster: sperse.Cluster) -> None:
    p = slow.options(timeout=0.5)("never", LONG)
    with pytest.raises(sperse.TaskTimeout, match=r"within its timeout of 0\.5 s") as caught:
        p.result(timeout=WAIT)
    assert isinstance(caught.value, TimeoutError | sperse.TaskCancelled)
    # The worker really stopped: it is free again, well before LONG seconds.
    assert cluster.run_until(lambda: cluster.servers()[0].busy == 0, WAIT)
    assert slow.options(timeout=WAIT)(3, 0.0).result(timeout=WAIT) == 3  # in time: its value
    with pytest.raises(ValueError, match="positive number of seconds"):
        slow.options(timeout=-1)


def test_run_on_all_runs_once_on_every_server(cluster: sperse.Cluster) -> None:
    names = [s.name for s in cluster.servers()]
    assert sperse.run_on_all(add, 2, b=3) == dict.fromkeys(names, 5)
    with pytest.raises(ValueError, match="bad value 1"):
        sperse.run_on_all(fail_with, "bad value 1")
    errors = sperse.run_on_all(fail_with, "bad value 2", on_error="return")
    assert list(errors) == names and all(isinstance(e, ValueError) for e in errors.values())


def test_cancel_a_call_that_waits_for_its_inputs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    upstream = slow(1, 0.3)
    dependent = touch(str(marker), upstream)
    assert dependent.cancel()
    assert upstream.result(timeout=WAIT) == 1
    with pytest.raises(sperse.TaskCancelled):
        dependent.result(timeout=WAIT)
    assert not marker.exists()  # never sent once its input arrived


def test_pending_arguments_positional_and_keyword() -> None:
    a = slow(1, 0.2)
    b = add(a, 10)  # positional Pending
    c = add(100, b=b)  # keyword Pending
    assert not c.done()
    assert c.result(timeout=WAIT) == 111
    assert (a.value(), b.value()) == (1, 11)


def test_failed_input_fails_dependent_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bad = fail_with("broken input")
    dependent = touch(str(marker), bad)
    with pytest.raises(sperse.UpstreamError, match="broken input") as info:
        dependent.result(timeout=WAIT)
    assert "fail_with" in info.value.upstream
    assert not marker.exists()


class _SettlesWhenLookedAt(sperse.Pending[int]):
    """A Pending that fails the moment a caller first finds it unfinished.

    It stands in for a result that arrives on the backend's thread just after a call taking
    this Pending as an argument has checked it: a window that real results hit, rarely.
    """

    __slots__ = ("_looked",)

    def __init__(self, cluster: sperse.Cluster) -> None:
        super().__init__(cluster, label="input")
        self._looked = False

    def done(self) -> bool:
        finished = super().done()
        if not finished and not self._looked:
            self._looked = True
            self.cancel()
        return finished


def test_input_that_settles_during_the_call_is_not_missed(cluster: sperse.Cluster) -> None:
    arriving = _SettlesWhenLookedAt(cluster)
    dependent = add(arriving, 1)
    arriving.cancel()  # if the call never looked at it, it settles now, after the call
    # Either way the dependent ends (its input failed); it must never stay pending forever.
    with pytest.raises(sperse.UpstreamError, match="cancelled"):
        dependent.result(timeout=5.0)


def test_wait_all_completed() -> None:
    pendings = [add(i, i) for i in range(4)]
    done, not_done = sperse.wait(pendings, timeout=WAIT)
    assert done == set(pendings)
    assert not not_done
    assert [p.value() for p in pendings] == [0, 2, 4, 6]


def test_wait_first_completed() -> None:
    slow_one = slow("slow", LONG)
    fast_one = slow("fast", 0)
    try:
        done, not_done = sperse.wait(
            [slow_one, fast_one], timeout=WAIT, return_when="FIRST_COMPLETED"
        )
        assert done == {fast_one}
        assert not_done == {slow_one}
    finally:
        slow_one.cancel()


def test_wait_timeout_returns_what_is_not_done() -> None:
    slow_one = slow("slow", LONG)
    try:
        done, not_done = sperse.wait([slow_one], timeout=0.2)
        assert not done
        assert not_done == {slow_one}
    finally:
        slow_one.cancel()


def test_gather_keeps_argument_order() -> None:
    assert sperse.gather(slow("first", 0.3), add(1, 1), timeout=WAIT) == ["first", 2]


def test_gather_raises_the_first_error() -> None:
    with pytest.raises(sperse.RemoteError, match="gathered"):
        sperse.gather(add(1, 1), fail_with("gathered"), timeout=WAIT)


def test_gather_takes_a_list_too() -> None:
    assert sperse.gather([add(1, 2), add(3, 4)], timeout=WAIT) == [3, 7]
    assert sperse.gather((add(i, i) for i in range(3)), timeout=WAIT) == [0, 2, 4]
    with pytest.raises(TypeError, match="takes Pendings"):
        sperse.gather([1, 2])


def test_a_remote_exception_is_caught_by_its_own_type() -> None:
    with pytest.raises(ValueError, match="bad value 7") as info:
        fail_with("bad value 7").result(timeout=WAIT)
    assert isinstance(info.value, sperse.RemoteError)
    assert "fail_with" in info.value.remote_traceback


def test_as_completed_yields_in_completion_order() -> None:
    slow_one = slow("slow", 2.0)
    fast_one = slow("fast", 0)
    order = [p.result(0) for p in sperse.as_completed([slow_one, fast_one], timeout=WAIT)]
    assert order == ["fast", "slow"]


def test_result_timeout_leaves_the_task_running() -> None:
    p = slow("late", 1.0)
    with pytest.raises(TimeoutError, match="still running"):
        p.result(timeout=0.1)
    assert not p.done()
    assert p.result(timeout=WAIT) == "late"


def test_remote_exception_is_a_remote_error() -> None:
    with pytest.raises(sperse.RemoteError) as info:
        fail_with("bad value 42").result(timeout=WAIT)
    error = info.value
    assert error.type_name == "ValueError"
    assert "bad value 42" in str(error)
    assert "fail_with" in error.remote_traceback
    assert f"This happened remotely on {error.where}" in str(error)
    assert error.where in {s.name for s in sperse.current().servers()}


def _defined_in(filename: str, source: str) -> dict[str, object]:
    """The globals of ``source`` compiled as ``filename``, in a module no server can import."""
    namespace: dict[str, object] = {"__name__": "sperse_test_user_code"}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


INVERSE = "import math\n\ndef inverse(x):\n    y = math.floor(x)\n    return 1 / y\n"


def test_remote_traceback_names_the_file_line_and_text(tmp_path: Path) -> None:
    path = tmp_path / "user_code.py"
    path.write_text(INVERSE)
    inverse = _defined_in(str(path), INVERSE)["inverse"]
    with pytest.raises(sperse.RemoteError) as info:
        sperse.remote(inverse)(0).result(timeout=WAIT)  # type: ignore[arg-type]
    trace = info.value.remote_traceback
    assert f'File "{path}", line 5, in inverse\n    return 1 / y\n' in trace, trace
    assert "dynamic-code" not in trace


def test_remote_traceback_of_code_only_the_client_has_shows_its_text() -> None:
    """Code typed at a prompt or in a notebook cell has no file: its lines travel with it."""
    filename = f"<sperse-test-cell-{os.getpid()}>"
    linecache.cache[filename] = (len(INVERSE), None, INVERSE.splitlines(True), filename)
    try:
        inverse = _defined_in(filename, INVERSE)["inverse"]
        with pytest.raises(sperse.RemoteError) as info:
            sperse.remote(inverse)(0).result(timeout=WAIT)  # type: ignore[arg-type]
    finally:
        del linecache.cache[filename]
    trace = info.value.remote_traceback
    assert f'File "{filename}", line 5, in inverse\n    return 1 / y\n' in trace, trace


def test_remote_output_reaches_the_client_prefixed(capsys: pytest.CaptureFixture[str]) -> None:
    p = chatty(["hello", "world"], "tail", "oops")
    assert p.result(timeout=WAIT) == 2
    captured = capsys.readouterr()
    on = p.where
    assert f"[{on}] hello\n[{on}] world\n" in captured.out
    assert f"[{on}] tail" in captured.out  # a last line without "\n" is not lost
    assert f"[{on}] oops\n" in captured.err
    # What it printed stays with its Pending, as it printed it.
    assert p.logs("stdout") == "hello\nworld\ntail" and p.logs("stderr") == "oops\n"
    assert sorted(p.logs()) == sorted(p.logs("stdout") + p.logs("stderr"))  # both, in order


def test_remote_output_is_live(cluster: sperse.Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    p = announce_then_sleep(LONG)
    seen: list[str] = []

    def announced() -> bool:
        seen.append(capsys.readouterr().out)
        text = "".join(seen)
        return any(f"[{s.name}] started\n" in text for s in cluster.servers())

    try:
        assert cluster.run_until(announced, WAIT)
        assert not p.done()  # printed while the task still runs
    finally:
        p.cancel()


def test_retry_after_the_worker_dies(tmp_path: Path) -> None:
    first_worker, retry_worker = die_once(str(tmp_path / "attempted")).result(timeout=WAIT)
    assert first_worker != retry_worker  # the first attempt's worker really died
    _both_workers_serve(tmp_path)  # and was replaced


def test_worker_death_without_retries_is_worker_died(tmp_path: Path) -> None:
    no_retries = die_once.options(retries=0)
    with pytest.raises(sperse.WorkerDied, match="die_once"):
        no_retries(str(tmp_path / "attempted")).result(timeout=WAIT)
    _both_workers_serve(tmp_path)  # the pool replaced the worker


def test_pin_to_the_server_by_name() -> None:
    pinned = add.options(on="@local")
    p = pinned(1, 1)
    assert p.result(timeout=WAIT) == 2
    assert p.where == "local"


@pytest.mark.parametrize("on", ["gpu", "@db-1"])
def test_constraint_no_server_meets_is_a_clear_error(on: str) -> None:
    # DESIGN.md §3/§4: work goes to a server that can do it; if none can, a clear error
    # naming the constraint and the servers that exist (here: one, "local", untagged).
    # Running it anyway would run GPU work on a machine without one.
    with pytest.raises(sperse.SperseError, match=on) as info:
        add.options(on=on)(1, 1).result(timeout=WAIT)
    assert "local" in str(info.value)


def test_malformed_constraint_is_rejected_when_decorating() -> None:
    with pytest.raises(ValueError, match="after '&'"):
        sperse.remote(on="gpu &")
