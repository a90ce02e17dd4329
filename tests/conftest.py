"""Shared fixtures: clusters on real backends, stopped by the test that started them."""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

import sperse

# No time limit per example: Hypothesis's default deadline (200 ms) is a timing threshold,
# and the machines that run the tests are shared and noisy.
settings.register_profile("sperse", deadline=None)
settings.load_profile("sperse")

# Ray reads these when it is first imported: its node stays on 127.0.0.1, and it reports
# nothing home. Set here, before any test module can import it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# What Sperse writes under the user's directories (the record of `sperse up`, embedded
# servers' logs) goes to a folder of the test session instead, for every process it starts.
_USER_DIRS = tempfile.mkdtemp(prefix="sperse-tests-")
os.environ["XDG_RUNTIME_DIR"] = os.path.join(_USER_DIRS, "run")
os.environ["XDG_STATE_HOME"] = os.path.join(_USER_DIRS, "state")
os.makedirs(os.environ["XDG_RUNTIME_DIR"], mode=0o700)
atexit.register(shutil.rmtree, _USER_DIRS, ignore_errors=True)

RAY_INSTALLED = importlib.util.find_spec("ray") is not None
# The session's Ray node: custom resources stand for tags (DESIGN §4 `sperse server --tag`),
# and its `sperse/name` label names it "local", like the other backends' one server.
RAY_TAGS = {"db": 1.0, "fast": 1.0}
RAY_NAME = "local"

# Conformance tests that cannot apply to the Ray backend, with the reason. Consulted when the
# suite is collected (`pytest_collection_modifyitems`): each is reported as skipped with it.
NOT_ON_RAY: dict[str, str] = {}
# The same for the in-memory backend: its tasks are threads of this process.
_IN_PROCESS = "its tasks run in this process: one that kills its process would kill the tests"
_THREAD = "its tasks are threads, which cannot be stopped mid-call (a cancel replaces the thread)"
NOT_ON_MEMORY: dict[str, str] = {
    "test_retry_after_the_worker_dies": _IN_PROCESS,
    "test_worker_death_without_retries_is_worker_died": _IN_PROCESS,
    "test_worker_killed_is_object_lost_and_restart_rebuilds": _IN_PROCESS,
    "test_a_worker_killed_inside_update_leaves_the_key_unlocked": _IN_PROCESS,
    "test_failing_units_fail_alone": _IN_PROCESS,
    "test_a_task_cancelled_inside_update_leaves_the_key_unlocked": _THREAD,
    "test_once_runs_the_factory_once_for_16_concurrent_tasks": "one process: no worker pids",
    "test_releasing_the_last_proxy_frees_the_object": "one process: an object has no worker",
    "test_threads_of_one_task_share_the_store_safely": (
        "sperse.state() is known to the task's own thread, not to threads it starts"
    ),
}
NOT_ON = {"ray": NOT_ON_RAY, "memory": NOT_ON_MEMORY}


def _local(request: pytest.FixtureRequest) -> sperse.Cluster:
    return sperse.Cluster(sperse.LocalBackend(2))


def _memory(request: pytest.FixtureRequest) -> sperse.Cluster:
    """Everything in this process (``MemoryBackend``), two threads for tasks, like the
    other backends' two workers."""
    from sperse._backends.memory import MemoryBackend

    return sperse.Cluster(MemoryBackend(2))


def _server(request: pytest.FixtureRequest) -> sperse.Cluster:
    """A real ``sperse server`` child process on loopback, as ``sperse.connect()`` starts."""
    from sperse._backends.sperse import EmbeddedServer, SperseBackend

    server = EmbeddedServer(workers=2)
    return sperse.Cluster(SperseBackend(server.address, token=server.token, process=server))


def _many(request: pytest.FixtureRequest) -> sperse.Cluster:
    """Two real servers (one worker each, one shared token) behind one ``ClusterBackend``.
    The first is named "local", like the other backends' one server."""
    import secrets

    from sperse._backends.multi import ClusterBackend
    from sperse._backends.sperse import EmbeddedServer

    token = secrets.token_urlsafe(16)
    servers: list[EmbeddedServer] = []
    try:
        for name in ("local", "two"):
            servers.append(EmbeddedServer(workers=1, name=name, token=token))
        backend = ClusterBackend([s.address for s in servers], token=token, processes=servers)
        return sperse.Cluster(backend)
    except BaseException:
        for server in servers:
            server.stop()
        raise


def _ray(request: pytest.FixtureRequest) -> sperse.Cluster:
    """A ``RayBackend`` on the session's Ray (one per module, like the others' servers)."""
    from sperse._backends.ray import RayBackend

    request.getfixturevalue("ray_session")
    return sperse.Cluster(RayBackend())


# Every backend the conformance tests run against.
BACKENDS: dict[str, Callable[[pytest.FixtureRequest], sperse.Cluster]] = {
    "local": _local,
    "many": _many,
    "memory": _memory,
    "ray": _ray,
    "server": _server,
}


def _backend_param(name: str) -> object:
    if name != "ray":
        return name
    marks = [pytest.mark.ray]
    if not RAY_INSTALLED:
        marks.append(pytest.mark.skip(reason="Ray is not installed: pip install -e '.[ray]'"))
    return pytest.param(name, marks=marks)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """One local Ray for the whole session (it takes seconds to start): 2 CPUs, the tags of
    ``RAY_TAGS``, loopback only; shut down (its processes stopped) when the session ends.
    Yields the address of its head, for processes that join it."""
    from sperse._backends.ray import NAME_LABEL, import_ray

    ray = import_ray()
    ray.init(
        address="local",
        num_cpus=2,
        resources=RAY_TAGS,
        labels={NAME_LABEL: RAY_NAME},
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
        assert addresses == {"127.0.0.1"}, f"Ray's node is at {addresses}, not 127.0.0.1"
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture(scope="module", params=[_backend_param(name) for name in sorted(BACKENDS)])
def cluster(request: pytest.FixtureRequest) -> Iterator[sperse.Cluster]:
    with BACKENDS[request.param](request) as c:
        yield c


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("cluster") if callspec is not None else None
        if backend not in NOT_ON:
            continue
        reason = NOT_ON[backend].get(getattr(item, "originalname", item.name))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"not on {backend}: {reason}"))
