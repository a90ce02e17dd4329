"""The client's two transports to a server: its same-host socket, and gRPC.

A client on the server's host (the embedded server) moves its session to the server's
Unix socket; ``shm=False`` (as a client on another host) stays on gRPC. Both give the same
results, output and errors, and a broken same-host stream is resumed like a gRPC one.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc.aio
import numpy as np
import pytest

import sperse
from sperse._backends.multi import ClusterBackend
from sperse._backends.sperse import EmbeddedServer, SperseBackend
from sperse._serialize import shm
from sperse._server import local
from sperse._wire import HUGE_MIN, PIECE

WAIT = 30.0


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedServer]:
    process = EmbeddedServer(workers=2, name="both")
    yield process
    process.stop()


def chatty(n: int) -> int:
    print("working on", n)
    return n * 2


def fails() -> None:
    raise KeyError("missing")


def big(n: int) -> np.ndarray:
    return np.arange(n, dtype="f8")


def wait_for(path: str) -> str:
    deadline = time.monotonic() + WAIT
    while not Path(path).exists():
        if time.monotonic() > deadline:
            return "gave up"
        time.sleep(0.01)
    return "seen"


@pytest.mark.parametrize("use_shm", [None, False], ids=["same-host", "grpc"])
def test_both_transports_give_the_same_results(
    server: EmbeddedServer, use_shm: bool | None, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = SperseBackend(server.address, token=server.token, shm=use_shm)
    with sperse.Cluster(backend) as cluster:
        same_host = use_shm is None and local.available() and shm.available()
        assert backend.transport == ("local" if same_host else "grpc")
        assert sperse.remote(chatty)(21).result(WAIT) == 42
        assert "[both] working on 21" in capsys.readouterr().out
        with pytest.raises(sperse.RemoteError, match="KeyError"):
            sperse.remote(fails)().result(WAIT)
        doubled = [sperse.remote(chatty)(i) for i in range(200)]
        assert sperse.gather(*doubled, timeout=WAIT) == [2 * i for i in range(200)]
        p = sperse.remote(big)(1 << 18)
        value = p.result(WAIT)
        assert value.flags.writeable and (value == np.arange(1 << 18)).all()
        del p, value
        gc.collect()
        assert cluster.stats()["objects"] == 0


@pytest.mark.skipif(not local.available() or not shm.available(), reason="no same-host stream")
def test_a_broken_same_host_stream_is_resumed(server: EmbeddedServer, tmp_path: Path) -> None:
    backend = SperseBackend(server.address, token=server.token)
    with sperse.Cluster(backend):
        assert backend.transport == "local"
        flag = tmp_path / "go"
        running = sperse.remote(wait_for)(str(flag))
        assert sperse.remote(chatty)(1).result(WAIT) == 2
        stream = backend._session.stream
        backend._loop.call_soon_threadsafe(stream.close)  # the connection breaks
        flag.touch()
        assert running.result(WAIT) == "seen"  # the task ran on through the break
        assert backend._session.stream is not stream and backend.transport == "local"
        assert sperse.remote(chatty)(2).result(WAIT) == 4


@pytest.mark.skipif(not local.available() or not shm.available(), reason="no same-host stream")
def test_a_client_of_its_embedded_server_connects_on_the_same_host_socket_at_once(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded server names its same-host socket before it says ready: its client's
    session starts there, and no gRPC channel is made (milliseconds of a first result)."""
    channels = grpc_channels(monkeypatch)
    assert server.local_address.startswith("@sperse-")
    backend = SperseBackend(server.address, token=server.token, process=server)
    backend._process = None  # the module's server outlives this backend
    with sperse.Cluster(backend):
        assert backend.transport == "local"
        assert sperse.remote(chatty)(3).result(WAIT) == 6
    assert channels == []


@pytest.mark.skipif(not local.available() or not shm.available(), reason="no same-host stream")
def test_a_same_host_socket_that_does_not_answer_is_left_for_grpc(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name that no socket has (the server's is gone): the session opens over gRPC, and
    moves to the socket the server offers."""
    monkeypatch.setattr(server, "local_address", "@sperse-nobody-here")
    channels = grpc_channels(monkeypatch)
    backend = SperseBackend(server.address, token=server.token, process=server)
    backend._process = None
    with sperse.Cluster(backend):
        assert backend.transport == "local"
        assert sperse.remote(chatty)(4).result(WAIT) == 8
    assert channels == [server.address]


def grpc_channels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses of the gRPC channels clients open from now on."""
    opened: list[str] = []
    real = grpc.aio.insecure_channel

    def channel(address: str, *args: Any, **kwargs: Any) -> grpc.aio.Channel:
        opened.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(grpc.aio, "insecure_channel", channel)
    return opened


@pytest.mark.parametrize("where", ["embedded", "url", "servers"])
def test_connect_with_transport_grpc_stays_on_grpc(server: EmbeddedServer, where: str) -> None:
    """``connect(..., transport="grpc")``: every byte over gRPC, to a server on this host too
    (issue 18: the path between machines, measured on one)."""
    url = f"sperse://{server.address}"
    if where == "embedded":
        cluster = sperse.connect(workers=1, transport="grpc")
    elif where == "url":
        cluster = sperse.connect(url, server.token, transport="grpc")
    else:
        cluster = sperse.connect([url], server.token, transport="grpc")
    try:
        backend = cluster.backend
        if isinstance(backend, ClusterBackend):
            backend = backend.backend_of("both")
        assert isinstance(backend, SperseBackend)
        assert backend.transport == "grpc" and not backend.shm
        n = 1 << 18
        assert sperse.remote(big)(n).result(WAIT).sum() == n * (n - 1) / 2
    finally:
        cluster.close()


def same(a: np.ndarray) -> np.ndarray:
    return a


def test_big_arrays_go_up_and_come_down_over_grpc_whole_and_writable(
    server: EmbeddedServer,
) -> None:
    """An array of many ``Blob`` pieces each way over gRPC (written as wire bytes going out,
    read as views of what arrived coming in; the one coming down assembled in memory advised
    for huge pages): the same values back, and an array the user may change in place."""
    cluster = sperse.connect(f"sperse://{server.address}", server.token, transport="grpc")
    try:
        a = np.random.default_rng(7).random((HUGE_MIN + 3 * PIECE) // 8 + 5)
        back = sperse.remote(same)(a).result(WAIT)
        assert back.dtype == a.dtype and np.array_equal(back, a)
        back[0] += 1.0  # writable
        assert back[0] == a[0] + 1.0
    finally:
        cluster.close()


def test_an_unknown_transport_is_refused() -> None:
    with pytest.raises(ValueError, match="'auto' or 'grpc'"):
        sperse.connect(transport="udp")  # type: ignore[arg-type]


def test_a_backend_given_as_the_url_is_refused_with_the_way_to_pass_it() -> None:
    with pytest.raises(TypeError, match=r"not MemoryBackend; pass a backend as connect\(backend="):
        sperse.connect(sperse.MemoryBackend())  # type: ignore[arg-type]


def total(a: np.ndarray) -> float:
    return float(a.sum())


@pytest.mark.parametrize("where", ["url", "servers"])
def test_compression_compresses_what_the_client_sends(server: EmbeddedServer, where: str) -> None:
    """``connect(..., compression="gzip")``: what the client sends over gRPC is compressed
    (off by default); results are the same."""
    url = f"sperse://{server.address}"
    urls: str | list[str] = url if where == "url" else [url]
    cluster = sperse.connect(urls, server.token, transport="grpc", compression="gzip")
    try:
        backend = cluster.backend
        if isinstance(backend, ClusterBackend):
            backend = backend.backend_of("both")
        assert isinstance(backend, SperseBackend)
        assert backend._session._compression is not None and backend.transport == "grpc"
        a = np.arange(1 << 20, dtype=np.float64)  # 8 MB: blob pieces, compressed
        assert sperse.remote(total)(a).result(WAIT) == a.sum()
        n = 1 << 18
        assert sperse.remote(big)(n).result(WAIT).sum() == n * (n - 1) / 2
    finally:
        cluster.close()


def test_an_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="'gzip' or 'deflate'"):
        sperse.connect(compression="zstd")  # type: ignore[arg-type]
