"""The session protocol under random message sequences (issue 17: "a fuzz test of the
session protocol"), on a real server.

Before a ``Hello`` with the token checks out, nothing a stream sends is unpickled, anywhere:
each pickle sent is a marker that would make a directory if it were loaded. Whatever an
authenticated client sends, the server answers or ends that one stream, stays alive, and
serves the next client. ``SPERSE_FUZZ_EXAMPLES`` sets how many sequences each test tries
(``make soak`` runs many more).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import DEADLINE, TOKEN, RawSession, ServerThread, call_work, run

from sperse._server import ServerConfig
from sperse._wire import MAX_MESSAGE, PROTOCOL, local_frame, local_socket_name, pb

EXAMPLES = int(os.environ.get("SPERSE_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Marker:
    """Loaded, it makes the directory ``path``: proof that it was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    """A server of its own (what the fuzz does to it must not touch other tests), and the
    directory the markers would appear in."""
    thread = ServerThread(ServerConfig(token=TOKEN, workers=2, name="fuzzed"))
    try:
        yield thread, tmp_path_factory.mktemp("markers")
    finally:
        thread.close()


def messages(marker: bytes) -> st.SearchStrategy[pb.ClientMessage]:
    """Any client message, with fields in their whole ranges; pickles are ``marker`` or
    noise."""
    text = st.text(max_size=24)
    ids = st.integers(0, 2**64 - 1)
    u32 = st.integers(0, 2**32 - 1)
    pickled_bytes = st.one_of(st.just(marker), st.binary(max_size=64))
    shm_names = st.sampled_from(["../../etc/passwd", "/dev/zero", "sperse-1-x", ""]) | text
    data = st.one_of(
        st.builds(pb.Bytes, data=pickled_bytes),
        st.builds(pb.Bytes, blob_id=ids),
        st.builds(pb.Bytes, shm=shm_names),
    )
    pickled = st.builds(pb.Pickled, data=data, buffers=st.lists(data, max_size=3))
    op = st.builds(
        pb.ObjectOp,
        object_id=text,
        kind=st.sampled_from(["create", "call", "close", "create-named", ""]) | text,
        name=text,
        max_concurrency=u32,
        restart=st.booleans(),
        type_name=text,
        methods=st.lists(text, max_size=3),
    )
    peer = st.builds(pb.PeerRef, object_id=text, server=text, address=text)
    task = st.builds(
        pb.Task,
        task_id=text,
        work=pickled,
        refs=st.lists(text, max_size=3),
        retries=u32,
        inline_limit=ids,
        label=text,
        peer_refs=st.lists(peer, max_size=2),
        object=st.none() | op,
    )
    hello = st.builds(
        pb.Hello,
        token=st.sampled_from(["", "wrong", TOKEN[:-1]]) | text,
        protocol=st.just(PROTOCOL) | text,
        python_version=st.just(platform.python_version()) | text,
        session_id=text,
        shm_probe=shm_names,
        shm_nonce=st.binary(max_size=16),
    )
    return st.one_of(
        st.builds(pb.ClientMessage, hello=hello),
        st.builds(
            pb.ClientMessage,
            blob=st.builds(pb.Blob, blob_id=ids, data=pickled_bytes, last=st.booleans()),
        ),
        st.builds(pb.ClientMessage, submit=st.builds(pb.Submit, tasks=st.lists(task, max_size=3))),
        st.builds(pb.ClientMessage, cancel=st.builds(pb.Cancel, task_ids=st.lists(text))),
        st.builds(pb.ClientMessage, fetch=st.builds(pb.Fetch, request_id=ids, object_id=text)),
        st.builds(pb.ClientMessage, release=st.builds(pb.Release, object_ids=st.lists(text))),
        st.builds(pb.ClientMessage, stats=st.builds(pb.StatsRequest, request_id=ids)),
        st.builds(pb.ClientMessage, objects=st.builds(pb.ObjectsRequest, request_id=ids)),
        st.builds(
            pb.ClientMessage,
            callback=st.builds(
                pb.CallbackCall, request_id=ids, session_id=text, callback_id=text, args=pickled
            ),
        ),
        st.builds(pb.ClientMessage, logs=st.builds(pb.LogsRequest, request_id=ids, task=text)),
        st.builds(pb.ClientMessage, goodbye=st.builds(pb.Goodbye)),
    )


def marker_in(directory: Path, name: str) -> tuple[Path, bytes]:
    path = directory / name
    return path, pickle.dumps(Marker(str(path)))


async def send_all(session: RawSession, sequence: list[pb.ClientMessage]) -> None:
    """Send every message; the server may end the stream on any of them."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        for message in sequence:
            await session.send(message)
        await session.call.done_writing()


async def still_serves(server: ServerThread) -> None:
    """A new client's task runs to its end: the server neither died nor hangs."""
    async with RawSession(server.address) as s:
        await s.hello()
        await s.submit(s.task("alive", call_work(sum, [1, 2])))
        done = await s.done("alive", timeout=DEADLINE)
        assert s.value(done.values[0]) == 3


def unauthenticated(marker: bytes) -> st.SearchStrategy[list[pb.ClientMessage]]:
    """Sequences whose first message is not a Hello with the token."""
    first = messages(marker).filter(
        lambda m: m.WhichOneof("kind") != "hello" or m.hello.token != TOKEN
    )
    return st.tuples(first, st.lists(messages(marker), max_size=8)).map(lambda t: [t[0], *t[1]])


@pytest.fixture(scope="module")
def unauth_marker(fuzzed: tuple[ServerThread, Path]) -> tuple[Path, bytes]:
    return marker_in(fuzzed[1], "unpickled-before-auth")


@FUZZ
@given(data=st.data())
def test_before_auth_nothing_is_unpickled_and_the_stream_ends(
    fuzzed: tuple[ServerThread, Path], unauth_marker: tuple[Path, bytes], data: st.DataObject
) -> None:
    server, _ = fuzzed
    path, marker = unauth_marker
    sequence = data.draw(unauthenticated(marker))

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await send_all(s, sequence)
            # The server answers with at most an error, then ends the stream.
            with contextlib.suppress(grpc.aio.AioRpcError):
                async with asyncio.timeout(DEADLINE):
                    while (message := await s.read()) is not None:
                        assert message.WhichOneof("kind") == "error", message
        await still_serves(server)

    run(scenario())
    assert not path.exists(), "a pickle sent before authentication was loaded"


@FUZZ
@given(sequence=st.lists(messages(b"\x80\x05N."), max_size=10))
def test_whatever_an_authenticated_client_sends_the_server_serves_others(
    fuzzed: tuple[ServerThread, Path], sequence: list[pb.ClientMessage]
) -> None:
    server, _ = fuzzed

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await send_all(s, sequence)
        await still_serves(server)

    run(scenario())


@pytest.fixture(scope="module")
def local_address(fuzzed: tuple[ServerThread, Path]) -> str:
    """The fuzzed server's same-host socket (offered in Welcome after the shm probe)."""
    server, _ = fuzzed

    async def ask() -> str:
        async with RawSession(server.address) as s:
            await s.hello(shm_probe=True)
            assert s.welcome is not None and s.welcome.local_address
            return s.welcome.local_address

    return run(ask())


def frames(marker: bytes) -> st.SearchStrategy[bytes]:
    """What a same-host client sends: length-prefixed messages, some well formed (any
    message, a pickle among them), some not (noise, a length past MAX_MESSAGE)."""
    whole = messages(marker).map(local_frame)
    noise = st.binary(max_size=64)
    huge = st.integers(MAX_MESSAGE + 1, 2**32 - 1).map(lambda n: n.to_bytes(4, "big"))
    return st.lists(st.one_of(whole, noise, huge), max_size=8).map(b"".join)


@pytest.fixture(scope="module")
def local_marker(fuzzed: tuple[ServerThread, Path]) -> tuple[Path, bytes]:
    return marker_in(fuzzed[1], "unpickled-on-the-same-host-socket")


@FUZZ
@given(data=st.data())
def test_the_same_host_socket_unpickles_nothing_before_auth_and_serves_on(
    fuzzed: tuple[ServerThread, Path],
    local_address: str,
    local_marker: tuple[Path, bytes],
    data: st.DataObject,
) -> None:
    server, _ = fuzzed
    path, marker = local_marker
    sent = data.draw(frames(marker))

    async def scenario() -> None:
        reader, writer = await asyncio.open_unix_connection(local_socket_name(local_address))
        try:
            with contextlib.suppress(ConnectionError):
                writer.write(sent)
                await writer.drain()
                writer.write_eof()
            async with asyncio.timeout(DEADLINE):  # the server answers, then hangs up
                with contextlib.suppress(ConnectionError):
                    while await reader.read(65536):
                        pass
        finally:
            writer.close()
        await still_serves(server)

    run(scenario())
    assert not path.exists(), "a pickle sent on the same-host socket before auth was loaded"
