"""The same-host stream: the Session protocol on the server's abstract Unix socket.

A raw client speaks it here frame by frame (a length, then a message): the same
authentication as over gRPC, the same session, and bad bytes end only that stream.
"""

from __future__ import annotations

import asyncio
import platform
import struct
from collections.abc import Callable
from types import TracebackType

import pytest
from server_helpers import TOKEN, RawSession, ServerThread, call_work, run

from sperse._serialize import dumps_oob, shm
from sperse._server import local
from sperse._wire import PROTOCOL, FrameReader, local_frame, local_socket_name, pb

pytestmark = pytest.mark.skipif(
    not (local.available() and shm.available()), reason="no abstract Unix sockets or /dev/shm"
)

MakeServer = Callable[..., ServerThread]
DEADLINE = 20.0


def add(a: int, b: int) -> int:
    return a + b


class LocalSession:
    """A raw client of the same-host socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.frames = FrameReader()
        self.pending: list[pb.ServerMessage] = []

    async def __aenter__(self) -> LocalSession:
        self.reader, self.writer = await asyncio.open_unix_connection(
            local_socket_name(self.address)
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.writer is not None
        self.writer.close()
        await self.writer.wait_closed()

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: pb.ClientMessage) -> None:
        await self.send_raw(local_frame(message))

    async def read(self) -> pb.ServerMessage | None:
        """The next message; None once the server has closed the stream."""
        assert self.reader is not None
        async with asyncio.timeout(DEADLINE):
            while not self.pending:
                data = await self.reader.read(1 << 16)
                if not data:
                    return None
                self.pending.extend(pb.ServerMessage.FromString(f) for f in self.frames.feed(data))
        return self.pending.pop(0)

    async def hello(self, token: str = TOKEN, session_id: str = "") -> pb.ServerMessage | None:
        await self.send(
            pb.ClientMessage(
                hello=pb.Hello(
                    token=token,
                    protocol=PROTOCOL,
                    client_version="test",
                    python_version=platform.python_version(),
                    session_id=session_id,
                )
            )
        )
        return await self.read()


async def local_address(server: ServerThread) -> tuple[str, str]:
    """The server's same-host address, offered to a gRPC client that passed the probe, and
    that client's session id."""
    async with RawSession(server.address) as s:
        welcome = (await s.hello(shm_probe=True)).welcome
        assert welcome.local_address.startswith("@sperse-")
        session_id = welcome.session_id
    async with RawSession(server.address) as s:
        assert not (await s.hello()).welcome.local_address, "only for a same-host client"
    return welcome.local_address, session_id


def test_a_session_on_the_local_socket(make_server: MakeServer) -> None:
    server = make_server()

    async def scenario() -> None:
        address, session_id = await local_address(server)
        async with LocalSession(address) as s:
            reply = await s.hello(session_id=session_id)  # takes the gRPC client's session
            assert reply is not None and reply.welcome.resumed
            data, _, _ = dumps_oob(call_work(add, 2, 3))
            task = pb.Task(task_id="t", work=pb.Pickled(data=pb.Bytes(data=data)))
            await s.send(pb.ClientMessage(submit=pb.Submit(tasks=[task])))
            kinds = []
            while "done" not in kinds:
                message = await s.read()
                assert message is not None and message.WhichOneof("kind") == "events"
                kinds += [e.WhichOneof("kind") for e in message.events.events]
            assert kinds == ["started", "done"]
            await s.send(pb.ClientMessage(goodbye=pb.Goodbye()))
            assert await s.read() is None

    run(scenario())


def test_the_local_socket_wants_the_token(make_server: MakeServer) -> None:
    server = make_server()

    async def scenario() -> None:
        address, _ = await local_address(server)
        async with LocalSession(address) as s:
            reply = await s.hello(token="wrong")
            assert reply is not None and reply.WhichOneof("kind") == "error"
            assert reply.error.code == "auth"
            assert await s.read() is None
        async with LocalSession(address) as s:  # a task before Hello is not even looked at
            await s.send(pb.ClientMessage(submit=pb.Submit(tasks=[pb.Task(task_id="x")])))
            reply = await s.read()
            assert reply is not None and reply.error.code == "auth"

    run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack("!I", 1 << 30),  # a length over the limit
        struct.pack("!I", 4) + b"\xff\xff\xff\xff",  # not a message
    ],
)
def test_garbage_ends_that_stream_only(make_server: MakeServer, garbage: bytes) -> None:
    server = make_server()

    async def scenario() -> None:
        address, _ = await local_address(server)
        async with LocalSession(address) as s:
            await s.hello()
            await s.send_raw(garbage)
            message = await s.read()
            assert message is not None and message.error.code == "protocol"
            assert await s.read() is None
        async with LocalSession(address) as s:  # the server serves on
            reply = await s.hello()
            assert reply is not None and reply.WhichOneof("kind") == "welcome"

    run(scenario())


def test_a_lost_connection_leaves_the_session_for_a_resume(make_server: MakeServer) -> None:
    server = make_server()

    async def scenario() -> None:
        address, _ = await local_address(server)
        async with LocalSession(address) as s:
            session_id = (await s.hello()).welcome.session_id  # type: ignore[union-attr]
        # Closed without Goodbye: the session waits for its client.
        async with LocalSession(address) as s:
            reply = await s.hello(session_id=session_id)
            assert reply is not None and reply.welcome.resumed

    run(scenario())


def test_a_client_that_closes_its_end_is_gone(make_server: MakeServer) -> None:
    """A killed client's socket says only EOF: the stream ends, the session expires."""
    server = make_server(session_grace=0.2)

    async def scenario() -> None:
        address, _ = await local_address(server)
        async with LocalSession(address) as s:
            assert (await s.hello()) is not None
            assert s.writer is not None
            s.writer.write_eof()  # no Goodbye
            assert await s.read() is None, "the server drops the connection"
        await server.wait_stats(lambda stats: stats.sessions == 0)

    run(scenario())
