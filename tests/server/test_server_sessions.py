"""Sessions: resume after a broken stream, grace expiry, goodbye, takeover, and bad input
that ends one stream without touching the others."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from server_helpers import (
    DEADLINE,
    RawSession,
    ServerThread,
    call_work,
    expect_error,
    run,
)

from sperse._wire import MAX_MESSAGE, pb

_CAP = 20.0

MakeServer = Callable[..., ServerThread]


def add(a: int, b: int) -> int:
    return a + b


def wait_for_file(marker: str) -> str:
    print("waiting")
    deadline = time.monotonic() + _CAP
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            return "gave up"
        time.sleep(0.01)
    return "seen"


async def _works(address: str) -> None:
    """A fresh session on ``address`` runs a task."""
    async with RawSession(address) as s:
        await s.hello()
        await s.submit(s.task("probe", call_work(add, 40, 2)))
        (value,) = (await s.done("probe")).values
        assert s.value(value) == 42


def test_resume_after_the_stream_breaks(make_server: MakeServer, tmp_path: Path) -> None:
    server = make_server()
    marker = tmp_path / "go"

    async def scenario() -> None:
        first = RawSession(server.address)
        async with first:
            await first.hello()
            await first.submit(first.task("r", call_work(wait_for_file, str(marker))))
            await first.wait_for(lambda: bool(first.of("r", "output")))
            session_id = first.welcome.session_id if first.welcome else ""
        # The channel is closed without Goodbye. The task finishes while nobody listens.
        await server.wait_stats(lambda st: st.attached == 0)
        marker.touch()
        await server.wait_stats(lambda st: st.tasks_active == 0)
        async with RawSession(server.address) as second:
            await second.hello(session_id=session_id)
            assert second.welcome is not None
            assert second.welcome.resumed and second.welcome.session_id == session_id
            (value,) = (await second.done("r")).values
            assert second.value(value) == "seen"
            # Live events follow the buffered ones on the resumed stream.
            await second.submit(second.task("live", call_work(add, 1, 2)))
            await second.done("live")

    run(scenario())


def test_resume_of_an_unknown_session_opens_a_new_one(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello(session_id="gone-long-ago")
            assert s.welcome is not None
            assert not s.welcome.resumed and s.welcome.session_id != "gone-long-ago"

    run(scenario())


def test_a_second_stream_takes_the_session_over(server: ServerThread) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as first, RawSession(server.address) as second:
            await first.hello()
            assert first.welcome is not None
            await second.hello(session_id=first.welcome.session_id)
            assert second.welcome is not None and second.welcome.resumed
            await first.read_to_end()  # the first stream is ended by the server
            await second.submit(second.task("t", call_work(add, 2, 2)))
            await second.done("t")

    run(scenario())


def test_grace_expiry_frees_objects_and_cancels_tasks(make_server: MakeServer) -> None:
    server = make_server(session_grace=0.5)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            session_id = s.welcome.session_id if s.welcome else ""
            await s.submit(s.task("held", call_work(np.ones, 1 << 16), inline_limit=1))
            (value,) = (await s.done("held")).values
            assert value.WhichOneof("kind") == "ref"
            await s.submit(s.task("long", call_work(wait_for_file, "/nonexistent/never")))
            await s.wait_for(lambda: bool(s.of("long", "output")))
        stats = server.stats()
        assert stats.objects_total == 1 and stats.busy == 1
        stats = await server.wait_stats(lambda st: st.sessions == 0)
        assert stats.objects_total == 0 and stats.object_bytes_total == 0
        await server.wait_stats(lambda st: st.busy == 0 and st.tasks_active == 0)
        async with RawSession(server.address) as s:
            await s.hello(session_id=session_id)
            assert s.welcome is not None and not s.welcome.resumed

    run(scenario())


def test_goodbye_ends_the_session_at_once(server: ServerThread) -> None:
    async def scenario() -> None:
        before = server.stats().sessions
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("held", call_work(np.ones, 1 << 16), inline_limit=1))
            await s.done("held")
            assert server.stats().sessions == before + 1
            await s.goodbye()
            await s.read_to_end()
            assert s.error is None
            assert await s.call.code() == grpc.StatusCode.OK
        stats = server.stats()
        assert stats.sessions == before and stats.objects_total == 0

    run(scenario())


@pytest.mark.parametrize(
    ("case", "messages", "words"),
    [
        (
            "second hello",
            [pb.ClientMessage(hello=pb.Hello(token="x"))],
            "second Hello",
        ),
        (
            "unknown blob",
            [
                pb.ClientMessage(
                    submit=pb.Submit(
                        tasks=[pb.Task(task_id="t", work=pb.Pickled(data=pb.Bytes(blob_id=77)))]
                    )
                )
            ],
            "blob 77",
        ),
        (
            "reused blob id",
            [
                pb.ClientMessage(blob=pb.Blob(blob_id=5, data=b"a", last=True)),
                pb.ClientMessage(blob=pb.Blob(blob_id=5, data=b"b", last=True)),
            ],
            "blob id 5",
        ),
        ("empty message", [pb.ClientMessage()], "empty"),
        ("task without id", [pb.ClientMessage(submit=pb.Submit(tasks=[pb.Task()]))], "task_id"),
    ],
)
def test_a_protocol_error_ends_that_stream_only(
    server: ServerThread, case: str, messages: list[pb.ClientMessage], words: str
) -> None:
    async def scenario() -> None:
        async with RawSession(server.address) as bystander, RawSession(server.address) as s:
            await bystander.hello()
            await s.hello()
            await s.send(*messages)
            error = await expect_error(s, "protocol")
            assert words in error.message, error.message
            await bystander.submit(bystander.task("t", call_work(add, 1, 1)))
            await bystander.done("t")

    run(scenario())


def test_an_oversized_message_is_refused_and_others_carry_on(server: ServerThread) -> None:
    async def scenario() -> None:
        # This client would send more than the limit: the server refuses it.
        options = (("grpc.max_send_message_length", 4 * MAX_MESSAGE),)
        async with (
            RawSession(server.address) as bystander,
            RawSession(server.address, options=options) as s,
        ):
            await bystander.hello()
            await s.hello()
            huge = pb.ClientMessage(blob=pb.Blob(blob_id=1, data=b"x" * (MAX_MESSAGE + 1)))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.send(huge)
                await s.read_to_end()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await bystander.submit(bystander.task("t", call_work(add, 1, 1)))
            await bystander.done("t")
        await _works(server.address)

    run(scenario())


def test_a_value_over_the_size_limit_fails_its_task_only(make_server: MakeServer) -> None:
    server = make_server(max_value_size=1 << 20)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            big = np.zeros(1 << 19)  # 4 MiB
            await s.submit(s.task("big", call_work(np.sum, big)))
            failure = await s.failed("big")
            assert failure.kind == "serialization" and "max-value-size" in failure.message
            await s.submit(s.task("small", call_work(add, 1, 1)))
            await s.done("small")

    run(scenario())


def test_garbage_bytes_on_the_port_do_not_disturb_sessions(server: ServerThread) -> None:
    host, port = server.address.rsplit(":", 1)

    async def scenario() -> None:
        async with RawSession(server.address) as bystander:
            await bystander.hello()
            # One connection sends garbage and stays open; another sends an HTTP/1 request.
            idle = socket.create_connection((host, int(port)), timeout=DEADLINE)
            idle.sendall(os.urandom(4096))
            try:
                with socket.create_connection((host, int(port)), timeout=DEADLINE) as http:
                    http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(1024))
                    await asyncio.to_thread(_read_until_closed, http)
                await bystander.submit(bystander.task("t", call_work(add, 1, 1)))
                await bystander.done("t")
                await _works(server.address)
            finally:
                idle.close()

    run(scenario())


def _read_until_closed(sock: socket.socket) -> None:
    while True:
        try:
            if not sock.recv(4096):
                return
        except ConnectionResetError:
            return


def test_no_hello_in_time_is_refused(make_server: MakeServer) -> None:
    server = make_server(hello_timeout=0.3)

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.send()  # open the stream, say nothing
            error = await expect_error(s, "auth")
            assert "Hello" in error.message

    run(scenario())


def test_stopping_the_server_ends_attached_streams(make_server: MakeServer) -> None:
    server = make_server()

    async def scenario() -> None:
        async with RawSession(server.address) as s:
            await s.hello()
            await s.submit(s.task("long", call_work(wait_for_file, "/nonexistent/never")))
            await s.wait_for(lambda: bool(s.of("long", "output")))
            await asyncio.to_thread(server.close)  # also checks that the workers are gone
            await s.read_to_end()
            assert s.error is None

    run(scenario())
