"""What a task printed, kept on its server after it ended: ``Pending.log_id`` and
``sperse logs LOG_ID``, on a real server, read by another process after the client left."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend

pytestmark = pytest.mark.slow

WAIT = 30.0


def chatty(n: int) -> int:
    for i in range(n):
        print(f"line {i}")
    print("a warning", file=sys.stderr)
    return n


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    process = EmbeddedServer(workers=1)
    yield process
    process.stop()


def sperse_logs(server: EmbeddedServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sperse.cli", "logs", *args]
    command += ["--connect", f"sperse://{server.address}", "--token", server.token]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_finished_tasks_output_is_read_later_from_another_process(
    server: EmbeddedServer,
) -> None:
    with sperse.Cluster(SperseBackend(server.address, token=server.token)):
        p = sperse.remote(chatty)(3)
        assert p.result(WAIT) == 3
        log_id = p.log_id
        assert log_id is not None and log_id.endswith("/" + str(p._task_id))
    # The client has left (its session ended); the server keeps the log.
    done = sperse_logs(server, log_id)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["a warning", "line 0", "line 1", "line 2"]
    only = sperse_logs(server, log_id, "--stream", "stderr")
    assert only.stdout == "a warning\n"


def test_an_unknown_log_is_a_clear_error(server: EmbeddedServer) -> None:
    done = sperse_logs(server, "no-such-session/t1")
    assert done.returncode == 1
    assert "no server of" in done.stderr and "kept 10 minutes" in done.stderr


def test_logs_need_a_cluster_to_ask() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sperse.cli", "logs", "s/t1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--connect URL" in done.stderr


def test_no_log_id_where_servers_keep_no_logs() -> None:
    with sperse.Cluster(sperse.LocalBackend(1)):
        p = sperse.remote(chatty)(1)
        p.result(WAIT)
        assert p.log_id is None and p.logs("stdout") == "line 0\n"


def test_a_cluster_of_servers_finds_the_log_where_the_task_ran() -> None:
    import secrets

    from sperse._backends.multi import ClusterBackend

    token = secrets.token_urlsafe(16)
    servers = [EmbeddedServer(workers=1, name=n, token=token) for n in ("one", "two")]
    try:
        backend = ClusterBackend([s.address for s in servers], token=token)
        with sperse.Cluster(backend):
            p = sperse.remote(on="@two")(chatty)(2)
            assert p.result(WAIT) == 2 and p.where == "two"
            assert p.log_id is not None
            found = backend.logs(p.log_id)
            assert found is not None and found.text("stdout") == "line 0\nline 1\n"
    finally:
        for server in servers:
            server.stop()
