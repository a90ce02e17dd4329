"""Authentication, versions, where a server may listen, and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from server_helpers import TOKEN, RawSession, ServerThread, call_work, expect_error, run

from sperse._server import ServerConfig, ServerConfigError, SperseServer
from sperse._wire import PROTOCOL, pb

MakeServer = Callable[..., ServerThread]


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


@pytest.mark.parametrize(("token", "words"), [("wrong-token", "wrong token"), ("", "no token")])
def test_a_bad_token_is_refused_and_nothing_runs(
    server: ServerThread, tmp_path: Path, token: str, words: str
) -> None:
    marker = tmp_path / "must-not-exist"
    canary = tmp_path / "canary"

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            # Everything is sent before the answer: the task must still never run.
            hello = pb.Hello(
                token=token, protocol=PROTOCOL, python_version=platform.python_version()
            )
            task, blobs = s.task("evil", call_work(touch, str(marker)))
            # If the server hangs up first, our own write fails and so may the call.
            with contextlib.suppress(grpc.aio.AioRpcError):
                await s.send(pb.ClientMessage(hello=hello))
                await s.submit((task, blobs))
                await expect_error(s, "auth")
        async with RawSession(server.address) as s:
            reply = await s.hello(token, expect="error")
            assert reply.error.code == "auth"
            assert words in reply.error.message and TOKEN not in reply.error.message
            await s.read_to_end()
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("canary", call_work(touch, str(canary))))
            await s.done("canary")
        assert canary.exists() and not marker.exists()

    run(scenario())


def test_an_auth_failure_is_logged_with_the_peer_and_without_the_token(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello("a-secret-guess", expect="error")

    with caplog.at_level(logging.INFO, logger="sperse.server"):
        run(scenario())
    lines = [r.getMessage() for r in caplog.records if "event=auth_failed" in r.getMessage()]
    assert len(lines) == 1
    assert "peer=ipv4:127.0.0.1:" in lines[0]
    assert "a-secret-guess" not in lines[0] and TOKEN not in lines[0]


def test_the_first_message_must_be_hello(server: ServerThread, tmp_path: Path) -> None:
    marker = tmp_path / "must-not-exist"

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.submit(s.task("evil", call_work(touch, str(marker))))
            error = await expect_error(s, "auth")
            assert "Hello" in error.message

    run(scenario())
    assert not marker.exists()


def test_a_blob_piece_first_is_refused_as_not_hello(server: ServerThread) -> None:
    """A piece is read without protobuf's parse (``sperse._wire.read_piece``); first, it is
    refused as any other message that is not a Hello."""

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.send(pb.ClientMessage(blob=pb.Blob(blob_id=1, data=b"x" * 99, last=True)))
            error = await expect_error(s, "auth")
            assert "must be Hello" in error.message and "not blob" in error.message

    run(scenario())


def test_a_protocol_mismatch_is_a_version_error(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            reply = await s.hello(protocol="sperse/0", expect="error")
            assert reply.error.code == "version"
            assert "sperse/0" in reply.error.message and PROTOCOL in reply.error.message

    run(scenario())


def test_a_python_mismatch_is_a_version_error(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            reply = await s.hello(python_version="2.7.18", expect="error")
            message = reply.error.message
            assert reply.error.code == "version"
            assert "2.7.18" in message and platform.python_version() in message

    run(scenario())


def test_another_patch_release_of_python_is_fine(server: ServerThread) -> None:
    major, minor, _ = platform.python_version_tuple()

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello(python_version=f"{major}.{minor}.999")

    run(scenario())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "example.org", "192.168.1.10"])
def test_listening_beyond_loopback_needs_tls_or_insecure(host: str) -> None:
    async def start() -> None:
        async with SperseServer(ServerConfig(host=host, token=TOKEN, workers=1)):
            raise AssertionError("the server should not start")

    with pytest.raises(ServerConfigError) as info:
        asyncio.run(start())
    message = str(info.value)
    assert host in message and "--tls-cert" in message and "--insecure" in message


def test_insecure_allows_listening_beyond_loopback(make_server: MakeServer) -> None:
    server = make_server(host="0.0.0.0", insecure=True)
    port = server.address.rsplit(":", 1)[1]

    async def scenario() -> None:
        async with RawSession(f"127.0.0.1:{port}") as s:
            await s.hello()

    run(scenario())


def test_half_a_tls_pair_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")

    async def start() -> None:
        async with SperseServer(ServerConfig(token=TOKEN, tls_cert=str(cert))):
            raise AssertionError("the server should not start")

    with pytest.raises(ServerConfigError, match="--tls-key"):
        asyncio.run(start())


def test_a_server_that_cannot_start_listening_leaves_no_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers start while the server starts listening: if it cannot, they are
    stopped before the error is raised."""

    workers: list[int] = []

    async def cannot(self: object) -> None:
        assert server._core is not None
        started = server._core._pools._started
        assert started is not None
        await started  # the workers are up meanwhile
        workers.extend(server._core.stats().worker_pids)
        raise RuntimeError("no listening here")

    monkeypatch.setattr(grpc.aio._server.Server, "start", cannot)
    server = SperseServer(ServerConfig(token=TOKEN, workers=2))

    async def start() -> None:
        async with server:
            raise AssertionError("the server should not start")

    with pytest.raises(ServerConfigError, match=r"cannot start listening.*no listening here"):
        asyncio.run(start())
    assert len(workers) == 2
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped


def test_the_token_is_not_in_the_config_repr() -> None:
    assert TOKEN not in repr(ServerConfig(token=TOKEN))


def _self_signed(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:  # (the cryptography package is not installed here)
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def test_tls_end_to_end(make_server: MakeServer, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = make_server(tls_cert=str(cert), tls_key=str(key))
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())

    async def scenario() -> None:
        async with RawSession(server.address, credentials=credentials) as s:
            await s.hello()
            await s.submit(s.task("t", call_work(touch, str(tmp_path / "over-tls"))))
            await s.done("t")
        # A client without TLS gets nowhere.
        async with RawSession(server.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await plain.hello()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    run(scenario())
    assert (tmp_path / "over-tls").exists()
