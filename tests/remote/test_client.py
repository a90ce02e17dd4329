"""The client against real ``sperse server`` processes: what issue 3 promises a user."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import sperse
from sperse._backends.sperse import EmbeddedServer, SperseBackend

WAIT = 30.0


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    process = EmbeddedServer(workers=2, name="alpha")
    yield process
    process.stop()


@pytest.fixture
def cluster(server: EmbeddedServer) -> Iterator[sperse.Cluster]:
    cluster = sperse.Cluster(SperseBackend(server.address, token=server.token))
    with cluster:
        yield cluster


def make_multiplier(k: int):  # a closure, shipped by value
    def multiply(v: int) -> int:
        return v * k

    return multiply


class Point:
    def __init__(self, x: float, y: float) -> None:
        self.x, self.y = x, y

    def norm(self) -> float:
        return float((self.x**2 + self.y**2) ** 0.5)


def test_code_defined_here_runs_there(cluster: sperse.Cluster) -> None:
    triple = make_multiplier(3)
    assert sperse.remote(lambda v: triple(v) + 1)(4).result(WAIT) == 13
    norm = sperse.remote(lambda p: p.norm())(Point(3, 4))
    assert norm.result(WAIT) == 5.0
    moved = sperse.remote(lambda p: Point(p.x + 1, p.y))(Point(1, 1)).result(WAIT)
    assert isinstance(moved, Point) and moved.x == 2
    total = sperse.remote(lambda a: a.sum())(np.arange(10.0)).result(WAIT)
    assert total == 45.0


def test_workspace_cells_use_prompt_definitions(cluster: sperse.Cluster) -> None:
    ws = sperse.Workspace(cluster)
    ws.run("class P:\n    def __init__(self, v):\n        self.v = v\n")
    ws.run("import numpy as np\nscale = lambda a: a * 2\nmake = lambda v: P(v)")
    ws.run("p = remote make(np.ones(3))")  # (`remote P(...)` would make a remote object)
    ws.run("q = remote scale(p.v).sum()")
    assert ws.wait("q", timeout=WAIT) == 6.0
    assert ws.cell("q").where == "alpha"


def test_local_module_only_the_client_has(
    cluster: sperse.Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mylib_for_sperse.py").write_text("def greet(n):\n    return f'hello {n}'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mylib_for_sperse  # type: ignore[import-not-found]

    try:
        greet = sperse.remote(mylib_for_sperse.greet)
        assert greet("there").result(WAIT) == "hello there"
    finally:
        sys.modules.pop("mylib_for_sperse", None)


def test_output_is_prefixed_with_the_server_name(
    cluster: sperse.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    def chatty() -> int:
        print("working")
        return 1

    assert sperse.remote(chatty)().result(WAIT) == 1
    assert "[alpha] working" in capsys.readouterr().out


def test_large_result_stays_remote_until_fetched_and_is_freed(cluster: sperse.Cluster) -> None:
    def big() -> np.ndarray:
        return np.arange(1 << 18, dtype="f8")  # 2 MiB

    p = sperse.remote(big)()
    sperse.wait([p], timeout=WAIT)
    handle = p.remote_value
    assert handle is not None and not handle.fetched
    assert handle.ref.type_name == "numpy.ndarray"
    assert handle.ref.size >= 2 << 20
    assert cluster.stats()["objects"] == 1
    total = sperse.remote(lambda a: float(a.sum()))(p)  # by reference: not through here
    assert total.result(WAIT) == float(np.arange(1 << 18).sum())
    assert not handle.fetched
    assert (p.fetch(WAIT) == np.arange(1 << 18)).all()
    del p, handle, total
    gc.collect()
    assert cluster.backend.stats()["objects"] == 0  # released when no one holds it


def test_large_value_in_the_workspace(cluster: sperse.Cluster) -> None:
    ws = sperse.Workspace(cluster)
    ws.run("import numpy as np")
    ws.run("big = remote np.ones(1 << 18)")
    ws.run("n = remote len(big)")  # remote reader: gets the reference
    assert ws.wait("n", timeout=WAIT) == 1 << 18
    ws.run("s = big.sum()")  # a local reader: fetched here
    assert ws["s"] == float(1 << 18)


def test_server_killed_every_pending_ends_in_server_lost() -> None:
    server = EmbeddedServer(workers=2, name="doomed")
    with sperse.Cluster(SperseBackend(server.address, token=server.token, process=server)) as c:
        ws = sperse.Workspace(c)
        ws.run("import time")
        ws.run("x = remote time.sleep(60)")
        ws.run("y = x")
        slow = sperse.remote(lambda: __import__("time").sleep(60))()
        os.kill(server.process.pid, signal.SIGKILL)
        with pytest.raises(sperse.ServerLost):
            slow.result(WAIT)
        with pytest.raises(sperse.ServerLost):
            ws.wait("x", timeout=WAIT)
        with pytest.raises(sperse.UpstreamError):
            ws["y"]
        with pytest.raises(sperse.ServerLost):
            sperse.remote(abs)(1).result(WAIT)  # new work fails at once, clearly
        server.process.wait(WAIT)


def test_wrong_token_is_refused(server: EmbeddedServer) -> None:
    with pytest.raises(sperse.AuthenticationError, match="refused the token"):
        sperse.Cluster(SperseBackend(server.address, token="wrong"))


def test_no_server_at_the_address() -> None:
    """A refused connection is an error at once, not after the connect timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(sperse.ServerUnavailable, match=r"nothing listens at .* refused"):
        sperse.Cluster(SperseBackend(f"127.0.0.1:{port}", token="t", connect_timeout=3600))
    with pytest.raises(sperse.ServerUnavailable, match="refused"):
        sperse.connect(f"sperse://127.0.0.1:{port}", token="t")


def test_a_socket_that_never_answers_times_out() -> None:
    with socket.socket() as s:  # listens, never accepts: a host that does not answer
        s.bind(("127.0.0.1", 0))
        s.listen(0)
        port = s.getsockname()[1]
        with pytest.raises(sperse.ServerUnavailable, match="no sperse server answered"):
            sperse.Cluster(SperseBackend(f"127.0.0.1:{port}", token="t", connect_timeout=1))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "https://host:1", "127.0.0.1", "sperse://h:1/path"]
)
def test_a_bad_url_names_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match="sperse://HOST:PORT or HOST:PORT"):
        sperse.connect(url, token="t")


def test_python_version_mismatch_is_a_clear_error(server: EmbeddedServer) -> None:
    with pytest.raises(sperse.ProtocolError, match="version"):
        sperse.Cluster(SperseBackend(server.address, token=server.token, python_version="3.99.0"))


def test_garbage_on_the_port_leaves_the_server_serving(
    server: EmbeddedServer, cluster: sperse.Cluster
) -> None:
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(os.urandom(4096))
    assert sperse.remote(abs)(-3).result(WAIT) == 3


def test_unpicklable_argument_and_result(cluster: sperse.Cluster) -> None:
    import threading

    with pytest.raises(sperse.SerializationError, match="lock"):
        sperse.remote(lambda v: 1)(threading.Lock()).result(WAIT)
    # The argument is named as the user wrote it, not as the task that carries it.
    with pytest.raises(sperse.SerializationError, match=r"argument 2 of \S*<lambda>\(\) \(a _thr"):
        sperse.remote(lambda a, b: 1)(1, threading.Lock()).result(WAIT)
    with pytest.raises(sperse.SerializationError, match=r"argument `b` of \S*<lambda>\(\)"):
        sperse.remote(lambda a, b: 1)(1, b=threading.Lock()).result(WAIT)
    with pytest.raises(sperse.SerializationError, match="cannot send"):
        sperse.remote(lambda: threading.Lock())().result(WAIT)
    assert sperse.remote(abs)(-1).result(WAIT) == 1


def test_exception_that_cannot_be_pickled(cluster: sperse.Cluster) -> None:
    def fail() -> None:
        class Local(Exception):
            def __init__(self, a: int, b: int) -> None:
                super().__init__(f"{a}-{b}")
                self.lock = __import__("threading").Lock()

        raise Local(1, 2)

    with pytest.raises(sperse.RemoteError, match="1-2") as info:
        sperse.remote(fail)().result(WAIT)
    assert "Local" in info.value.type_name


def test_connect_with_url_and_token_from_the_environment(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPERSE_TOKEN", server.token)
    with sperse.connect(f"sperse://{server.address}") as c:
        assert [s.name for s in c.servers()] == ["alpha"]
        assert sperse.remote(abs)(-5).result(WAIT) == 5


def test_connect_without_url_starts_and_stops_an_embedded_server() -> None:
    with sperse.connect(workers=1) as c:
        backend = c.backend
        assert isinstance(backend, SperseBackend)
        process = backend._process
        assert process is not None and process.alive()
        assert sperse.remote(abs)(-2).result(WAIT) == 2
        token = process.token
        cmdline = Path(f"/proc/{process.process.pid}/cmdline").read_bytes()
        assert token.encode() not in cmdline  # the token never appears on a command line
    assert process.process.wait(WAIT) is not None


def test_embedded_server_dies_with_a_killed_client(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, sperse
            c = sperse.connect(workers=1)
            print(c.backend._process.process.pid, flush=True)
            sys.stdin.read()
            """
        )
    )
    with subprocess.Popen(
        [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as client:
        assert client.stdout is not None
        server_pid = int(client.stdout.readline())
        client.kill()
        client.wait(WAIT)
        _wait_gone(server_pid)


def _wait_gone(pid: int) -> None:
    """Wait (with a deadline, on the pid itself) until a process that is not our child exits."""
    fd = os.pidfd_open(pid)
    try:
        import select

        ready, _, _ = select.select([fd], [], [], WAIT)
        assert ready, f"process {pid} still alive after {WAIT} s"
    finally:
        os.close(fd)
