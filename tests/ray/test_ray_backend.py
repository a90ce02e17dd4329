"""What only the Ray backend does (docs/ray.md): nodes as servers, tags as custom resources,
pins as node affinity, held values as ObjectRefs, Ray's errors as Sperse's, the event order.

The behaviour every backend shares is the conformance suite's (tests/workspace,
tests/mapreduce), which runs on Ray through the ``cluster`` fixture.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sperse
import sperse._cluster.mapreduce as mr
from conftest import Recorder
from sperse._core import CallTask, Done, Failed, Output, ServerInfo, Started, TaskSpec
from sperse._lang.placement import placement_from_options
from sperse._serialize import RemoteRef, RemoteValue

ray = pytest.importorskip("ray")

from sperse._backends.ray import RayBackend  # noqa: E402  (after the skip: Ray is needed below)
from sperse._backends.ray.errors import ray_error  # noqa: E402
from sperse._backends.ray.inflight import CANCEL_GRACE  # noqa: E402
from sperse._backends.ray.placement import nodes_of  # noqa: E402
from sperse._backends.ray.relay import STARTED_AFTER  # noqa: E402

pytestmark = pytest.mark.ray

WAIT = 30.0  # a deadline, never a delay
BIG = 300_000  # float64s: 2.4 MB, above the 1 MiB inline limit


def add(a: int, b: int) -> int:
    return a + b


def ones(n: int) -> Any:
    return np.ones(n)


def total(a: Any) -> float:
    return float(a.sum())


def type_of(value: Any) -> type:
    return type(value)


def hold(path: str, seconds: float) -> tuple[float, float]:
    """Runs for ``seconds``; returns when it started and ended (to compare two runs)."""
    began = time.time()
    time.sleep(seconds)
    Path(path).write_text("done")
    return began, time.time()


def talk(lines: list[str], pause: float) -> int:
    for line in lines:
        print(line, flush=True)
        time.sleep(pause)
    print("to stderr", file=sys.stderr)
    return len(lines)


@pytest.fixture(autouse=True)
def _current(ray_cluster: sperse.Cluster) -> None:
    """Remote functions run on ``sperse.current()``: the module's cluster (its fixture is
    inside ``with cluster:``)."""
    assert sperse.current() is ray_cluster


# ---- nodes are servers -----------------------------------------------------------------------


def test_the_node_is_one_server_with_its_tags(ray_cluster: sperse.Cluster) -> None:
    (server,) = ray_cluster.servers()
    assert server.name == "local"  # the node's sperse/name label
    assert server.tags == {"db", "fast"}  # its custom resources
    assert server.resources == {"CPU": 2.0, "db": 1.0, "fast": 1.0}
    assert server.workers == 2
    assert "127.0.0.1" in server.address


def test_nodes_are_named_by_label_else_by_node_id() -> None:
    def record(node_id: str, labels: dict[str, str], resources: dict[str, float]) -> Any:
        return {
            "NodeID": node_id,
            "Labels": labels,
            "Resources": resources,
            "NodeManagerAddress": "10.0.0.1",
        }

    a, b, c, d = ("a" * 56, "b" * 56, "c" * 56, "d" * 56)
    nodes = nodes_of(
        [
            record(a, {"sperse/name": "db-1"}, {"CPU": 8, "db": 1, "memory": 1e9}),
            record(b, {}, {"CPU": 4, "GPU": 1, "node:10.0.0.2": 1, "object_store_memory": 1e9}),
            record(c, {"sperse/name": "twin"}, {"CPU": 1}),
            record(d, {"sperse/name": "twin"}, {"CPU": 1}),
        ]
    )
    infos = {n.node_id: n.info for n in nodes.values()}
    assert infos[a] == ServerInfo(
        "db-1", frozenset({"db"}), {"CPU": 8.0, "db": 1.0}, 8, 0, "ray node aaaaaaaa at 10.0.0.1"
    )
    assert infos[b].name == "bbbbbbbb"  # no label: the first 8 hex digits of its id
    assert infos[b].tags == {"GPU"} and infos[b].resources == {"CPU": 4.0, "GPU": 1.0}
    assert {infos[c].name, infos[d].name} == {"twin-cccccccc", "twin-dddddddd"}


# ---- placement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("on", ["db", "db & fast", "!gpu", "db | gpu", "@local", "!gpu & db"])
def test_constraints_that_the_node_meets_run_there(on: str) -> None:
    p = sperse.remote(add).options(on=on)(1, 2)
    assert p.result(timeout=WAIT) == 3
    assert p.where == "local"


@pytest.mark.parametrize(
    ("on", "resources", "match"),
    [
        ("gpu", None, r"no server matches \[gpu\] \(no server has the tag gpu\)"),
        ("db & !fast", None, r"no server matches \[db & !fast\]"),
        ("@elsewhere", None, r"no server is named 'elsewhere'"),
        (None, {"db": 2}, r"no server has db=2 \(the most is 1\)"),
        (None, {"CPU": 3}, r"no server has CPU=3 \(the most is 2\)"),
    ],
)
def test_what_no_node_has_is_refused_up_front(
    ray_cluster: sperse.Cluster, on: str | None, resources: dict[str, float] | None, match: str
) -> None:
    # Asked of the backend itself (not only of the cluster's own check): Ray would keep an
    # unschedulable task waiting for a node that may never come.
    spec = TaskSpec("t-refused", CallTask(add, (1, 2), {}), placement_from_options(on, resources))
    with pytest.raises(sperse.NoMatchingServer, match=match) as info:
        ray_cluster.backend.submit([spec])
    assert "local (db, fast; CPU=2, db=1, fast=1)" in str(info.value)  # what exists
    assert ray_cluster.stats()["tasks_running"] == 0  # nothing was sent


def test_resource_needs_are_held_while_tasks_run(tmp_path: Path) -> None:
    # The node has db=1: two tasks needing all of it run one after the other, never together.
    needs_db = sperse.remote(hold).options(resources={"db": 1})
    first, second = needs_db(str(tmp_path / "a"), 0.3), needs_db(str(tmp_path / "b"), 0.3)
    (a_start, a_end), (b_start, b_end) = sperse.gather(first, second, timeout=WAIT)
    assert a_end <= b_start or b_end <= a_start


# ---- held values are ObjectRefs ----------------------------------------------------------------


def test_a_big_result_stays_in_ray_until_fetched(ray_cluster: sperse.Cluster) -> None:
    held_before = ray_cluster.stats()["objects_held"]
    p = sperse.remote(ones)(BIG)
    assert ray_cluster.run_until(p.done, WAIT)
    handle = p.remote_value
    assert isinstance(handle, RemoteValue)
    assert (handle.ref.server, handle.ref.type_name) == ("local", "numpy.ndarray")
    assert handle.ref.size > 1 << 20
    assert ray_cluster.stats()["objects_held"] == held_before + 1

    # Passed on as a reference: Ray moves it, the client never fetches it.
    assert sperse.remote(total)(p).result(timeout=WAIT) == BIG
    assert not handle.fetched

    value = p.result(timeout=WAIT)  # fetched now: ray.get, a view of the object store
    assert handle.fetched and value.shape == (BIG,)
    assert not value.flags.writeable  # zero-copy, as ray.get gives it (docs/ray.md)

    del p, handle, value
    gc.collect()
    assert ray_cluster.stats()["objects_held"] == held_before  # released: Ray frees it


def test_put_keeps_a_big_value_in_ray(ray_cluster: sperse.Cluster) -> None:
    array = np.ones(BIG)
    kept = sperse.put(array)
    array[0] = 5.0  # put copied it
    assert ray_cluster.run_until(kept.done, WAIT)
    assert isinstance(kept.remote_value, RemoteValue)  # an ObjectRef: passed on as one
    assert [sperse.remote(total)(kept).result(timeout=WAIT) for _ in range(3)] == [BIG] * 3
    assert not kept.remote_value.fetched


def test_small_results_come_back_whole_and_writable() -> None:
    array = sperse.remote(ones)(10).result(timeout=WAIT)
    assert array.flags.writeable
    array[0] = 5.0


def test_large_values_are_combined_where_they_are_held() -> None:
    big = sperse.remote(lambda i: np.full(BIG, float(i)))
    total = mr.reduce(np.add, [big(i) for i in range(4)])
    value = total.result(timeout=WAIT)
    assert total.remote_value is not None  # combined in Ray, not brought here
    assert value.shape == (BIG,) and value[0] == 6.0


def test_a_remote_statement_holds_only_its_big_names(ray_cluster: sperse.Cluster) -> None:
    # Values of earlier tests caught in reference cycles are released when the collector
    # runs: let it run now, and not between the two counts.
    gc.collect()
    gc.disable()
    ws = sperse.Workspace(ray_cluster)
    try:
        held = ray_cluster.stats()["objects_held"]
        ws.run("import numpy as np")
        ws.run(f"remote:\n    small = 3\n    big = np.ones({BIG})\n")
        assert ws.wait("small", timeout=WAIT) == 3
        assert ray_cluster.stats()["objects_held"] == held + 1  # big, not small
        assert ws["big"].shape == (BIG,)
    finally:
        gc.enable()
        ws.close()


def test_a_remote_value_this_backend_does_not_hold_is_refused(
    ray_cluster: sperse.Cluster,
) -> None:
    stranger = RemoteValue(RemoteRef("nowhere", "elsewhere", "int", 8, "1"), lambda r, t: 1)
    spec = TaskSpec("t-stranger", CallTask(add, (stranger, 1), {}), label="add(stranger)")
    with pytest.raises(sperse.SerializationError, match="does not hold"):
        ray_cluster.backend.submit([spec])


# ---- events ------------------------------------------------------------------------------------


@pytest.fixture
def backend(ray_session: str, recorder: Recorder) -> Iterator[RayBackend]:
    """A RayBackend of its own, whose sink is ``recorder``."""
    b = RayBackend()
    b.start(recorder)
    try:
        yield b
    finally:
        b.close()


def test_output_comes_live_and_before_the_result(backend: RayBackend, recorder: Recorder) -> None:
    # Pauses longer than STARTED_AFTER: these lines travel through the mailbox actor while
    # the task runs, the result through Ray; the result must still come last.
    lines = ["one", "two", "three"]
    spec = TaskSpec("t-talk", CallTask(talk, (lines, STARTED_AFTER * 3), {}))
    backend.submit([spec])
    recorder.wait_for(lambda: any(isinstance(e, Output) for e in recorder.of("t-talk")))
    assert not any(isinstance(e, Done) for e in recorder.of("t-talk"))  # live: still running
    end = recorder.end_of("t-talk")
    assert isinstance(end, Done) and end.value == 3
    events = recorder.of("t-talk")
    assert isinstance(events[0], Started) and events[0].where == "local"
    assert events[-1] is end
    texts = [(e.stream, e.text) for e in events if isinstance(e, Output)]
    assert "".join(t for s, t in texts if s == "stdout") == "one\ntwo\nthree\n"
    assert ("stderr", "to stderr\n") in texts
    assert recorder.threads != {threading.get_ident()} and len(recorder.threads) == 1


def test_a_quick_task_reports_start_output_and_end_at_once(
    backend: RayBackend, recorder: Recorder
) -> None:
    backend.submit([TaskSpec("t-quick", CallTask(talk, (["hi"], 0), {}))])
    end = recorder.end_of("t-quick")
    kinds = [type(e).__name__ for e in recorder.of("t-quick")]
    assert kinds == ["Started", "Output", "Output", "Done"]
    assert isinstance(end, Done) and end.where == "local"


def test_a_stuck_task_is_cancelled_by_killing_its_worker(
    backend: RayBackend, recorder: Recorder
) -> None:
    # time.sleep(60) does not see Ray's interrupt; after CANCEL_GRACE its worker is killed.
    backend.submit([TaskSpec("t-stuck", CallTask(time.sleep, (60,), {}))])
    recorder.wait_for(lambda: any(isinstance(e, Started) for e in recorder.of("t-stuck")))
    cancelled_at = time.monotonic()
    backend.cancel("t-stuck")
    end = recorder.end_of("t-stuck")
    assert isinstance(end, Failed) and end.error.kind == "cancelled"
    assert time.monotonic() - cancelled_at < CANCEL_GRACE + 10
    assert backend.servers()[0].busy == 0


def test_close_fails_what_is_unfinished_and_removes_the_mailbox(
    ray_session: str, recorder: Recorder
) -> None:
    b = RayBackend()
    b.start(recorder)
    namespace, name = b._started.mailbox_name
    b.submit([TaskSpec("t-left", CallTask(time.sleep, (60,), {}))])
    b.close()
    end = recorder.end_of("t-left")
    assert isinstance(end, Failed) and end.error.kind == "server_lost"
    with pytest.raises(ValueError, match="Failed to look up actor"):
        ray.get_actor(name, namespace=namespace)
    assert ray.is_initialized()  # the session's Ray: used, not owned, so left running


# ---- Ray's errors as Sperse's ------------------------------------------------------------------


def _raised() -> Any:
    try:
        raise ValueError("bad value 7")
    except ValueError as exc:
        return ray.exceptions.RayTaskError("f", traceback.format_exc(), exc)


@pytest.mark.parametrize(
    ("make", "kind", "error"),
    [
        (lambda: ray.exceptions.TaskCancelledError(), "cancelled", sperse.TaskCancelled),
        (lambda: ray.exceptions.WorkerCrashedError(), "worker_died", sperse.WorkerDied),
        (lambda: ray.exceptions.OutOfMemoryError("low memory"), "worker_died", sperse.WorkerDied),
        (lambda: ray.exceptions.NodeDiedError("node died"), "server_lost", sperse.ServerLost),
        (
            lambda: ray.exceptions.TaskUnschedulableError("node gone"),
            "server_lost",
            sperse.ServerLost,
        ),
        (_raised, "raised", sperse.RemoteError),
    ],
)
def test_ray_errors_become_sperse_errors(make: Any, kind: str, error: type[Exception]) -> None:
    info = ray_error(make(), "f" * 56)
    assert info.kind == kind
    exc = info.to_exception("f(1)", "local")
    assert isinstance(exc, error)
    assert str(exc).startswith("f(1): ")
    if kind == "raised":
        assert isinstance(exc, sperse.RemoteError)
        assert exc.type_name == "ValueError" and "bad value 7" in str(exc)
        assert "raise ValueError" in exc.remote_traceback


# ---- connecting --------------------------------------------------------------------------------


def test_connect_backend_ray_uses_the_ray_this_process_runs(ray_session: str) -> None:
    for cluster in (sperse.connect(backend="ray"), sperse.connect(ray_session, backend="ray")):
        try:
            assert isinstance(cluster.backend, RayBackend)
            assert [s.name for s in cluster.servers()] == ["local"]
            with cluster:
                assert sperse.remote(add)(2, 3).result(timeout=WAIT) == 5
        finally:
            cluster.close()
        assert ray.is_initialized()  # not started by the backend: left running


@pytest.mark.parametrize("url", ["ray://127.0.0.1:1", "127.0.0.1:1"])
def test_another_ray_address_is_refused_while_this_process_runs_one(url: str) -> None:
    # `connect("ray://...")` goes to the Ray backend, which says why it cannot join there.
    kwargs: dict[str, Any] = {} if url.startswith("ray://") else {"backend": "ray"}
    with pytest.raises(sperse.SperseError, match="runs Ray already"):
        sperse.connect(url, **kwargs)


def test_ray_is_not_imported_by_import_sperse() -> None:
    import subprocess

    code = "import sys, sperse; sys.exit('ray' in sys.modules)"
    env = dict(os.environ)
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_a_failure_of_the_io_thread_ends_every_task(
    ray_session: str, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug there must not leave pending work pending forever (DESIGN §8).
    b = RayBackend()
    b.start(recorder)
    try:

        def broken(*args: Any) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(b._started.io, "_on_ended", broken)
        b.submit([TaskSpec("t-first", CallTask(add, (1, 2), {}))])
        end = recorder.end_of("t-first")
        assert isinstance(end, Failed) and end.error.kind == "internal"
        assert "I/O thread failed" in end.error.message
        with pytest.raises(sperse.SperseError, match="I/O thread failed"):
            b.submit([TaskSpec("t-next", CallTask(add, (1, 2), {}))])
    finally:
        b.close()


def test_a_module_missing_on_the_node_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module outside the working directory travels by reference (as an installed one
    # would), and the Ray workers cannot import it.
    (tmp_path / "elsewhere_only.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import elsewhere_only

    p = sperse.remote(type_of)(elsewhere_only.Thing())  # (remote(type) is a remote class)
    with pytest.raises(sperse.SerializationError) as info:
        p.result(timeout=WAIT)
    message = str(info.value)
    assert "'elsewhere_only' is not installed on server 'local'" in message
    assert "install it on every node" in message
