"""Servers joining a coordinator: real ``sperse server --join`` processes, and the ``Joiner``
in-process for what a process would make slow (a coordinator that never answers)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable

import pytest
from coordinator_helpers import (
    DEADLINE,
    TOKEN,
    Child,
    CoordinatorThread,
    member,
    wait_until,
)

from sperse._backends.membership import MembershipWatch
from sperse._server.config import ServerConfigError
from sperse._server.join import Joiner, advertised_address
from sperse._wire import pb

StartChild = Callable[..., Child]


def server_args(coordinator: CoordinatorThread, name: str, *extra: str) -> list[str]:
    return [
        "--token-stdin",
        "--join",
        coordinator.address,
        "--name",
        name,
        "--workers",
        "1",
        "--no-shm",
        *extra,
    ]


def no_load() -> pb.Member:
    return pb.Member()


def test_a_stopped_server_is_removed_and_joins_again_when_continued(
    make_coordinator: Callable[..., CoordinatorThread], start_child: StartChild
) -> None:
    coordinator = make_coordinator(heartbeat_timeout=1.0)
    server = start_child("sperse.server", server_args(coordinator, "s1"), token=TOKEN)
    url = server.ready_url()  # printed once the coordinator has registered it
    with MembershipWatch(coordinator.url, TOKEN) as watch:
        (info,) = watch.members()
        assert (info.name, info.url, info.workers) == ("s1", url, 1)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: watch.members() == [], what="s1 removed while stopped")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        wait_until(lambda: [m.name for m in watch.members()] == ["s1"], what="s1 back")
        assert server.process.stdin is not None
        server.process.stdin.close()  # --token-stdin: EOF stops it, and it says Leave
        assert server.wait() == 0
        wait_until(lambda: watch.members() == [], what="s1 left")
    assert "joined_again" in server.stderr()


def test_a_server_with_a_wrong_token_exits_2(
    coordinator: CoordinatorThread, start_child: StartChild
) -> None:
    server = start_child("sperse.server", server_args(coordinator, "s1"), token="wrong-token")
    assert server.wait() == 2
    assert "refused this server's token" in server.stderr()
    assert "cluster token" in server.stderr()
    assert server.process.stdout is not None
    assert server.process.stdout.read() == b""  # no ready line
    assert coordinator.names() == []


def test_a_server_whose_name_is_taken_exits_2(
    coordinator: CoordinatorThread, start_child: StartChild
) -> None:
    coordinator.join(member("dup", "127.0.0.1:1001"))
    server = start_child("sperse.server", server_args(coordinator, "dup"), token=TOKEN)
    assert server.wait() == 2
    assert "refused the name 'dup'" in server.stderr()
    assert "--name" in server.stderr()


def test_advertise_is_the_registered_address(
    coordinator: CoordinatorThread, start_child: StartChild
) -> None:
    args = server_args(coordinator, "s1", "--advertise", "sperse://db.example:7777")
    server = start_child("sperse.server", args, token=TOKEN)
    server.ready_url()
    with MembershipWatch(coordinator.url, TOKEN) as watch:
        assert [m.address for m in watch.members()] == ["db.example:7777"]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1:7"),
        ("::1", "[::1]:7"),
        ("0.0.0.0", f"{socket.gethostname()}:7"),
        ("::", f"{socket.gethostname()}:7"),
    ],
)
def test_advertised_address(host: str, expected: str) -> None:
    assert advertised_address(host, 7) == expected


def test_a_coordinator_that_never_answers_fails_the_start(
    coordinator: CoordinatorThread,
) -> None:
    port = coordinator.server.port
    coordinator.close()
    joiner = Joiner(f"127.0.0.1:{port}", TOKEN, member("s1"), no_load, start_timeout=0.5)
    with pytest.raises(ServerConfigError, match="no coordinator answered"):
        asyncio.run(joiner.start())


def test_a_forgotten_server_joins_again(coordinator: CoordinatorThread) -> None:
    async def scenario() -> None:
        joiner = Joiner(coordinator.address, TOKEN, member("s1"), no_load)
        await joiner.start()
        try:
            assert await asyncio.to_thread(coordinator.names) == ["s1"]
            await asyncio.to_thread(coordinator.leave, "s1")  # as if it had been removed
            async with asyncio.timeout(DEADLINE):
                while await asyncio.to_thread(coordinator.names) != ["s1"]:
                    await asyncio.sleep(0.05)
        finally:
            await joiner.stop()
        assert await asyncio.to_thread(coordinator.names) == []  # stop() said Leave

    asyncio.run(scenario())


def test_join_reply_sets_the_heartbeat_interval(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    coordinator = make_coordinator(heartbeat_timeout=2.0)
    reply = coordinator.join(member("a"))
    assert isinstance(reply, pb.JoinReply)
    assert reply.heartbeat_interval == pytest.approx(0.4)


def test_a_server_joins_a_restarted_coordinator_as_the_same_instance(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    """The new coordinator knows no one: the server's next heartbeat is told so, and it
    joins again at once, with the instance id it started with."""
    first = make_coordinator(heartbeat_timeout=0.5)  # heartbeats every 0.1 s
    port = first.server.port

    async def scenario() -> None:
        joiner = Joiner(first.address, TOKEN, member("s1", instance="i-1"), no_load)
        await joiner.start()
        try:
            await asyncio.to_thread(first.close)
            second = await asyncio.to_thread(make_coordinator, port=port, heartbeat_timeout=0.5)

            def listed() -> list[tuple[str, str]]:
                async def snapshot() -> list[tuple[str, str]]:
                    return [(m.name, m.instance) for m in second.server.members().members]

                return second.call(snapshot())

            async with asyncio.timeout(DEADLINE):
                while await asyncio.to_thread(listed) != [("s1", "i-1")]:
                    await asyncio.sleep(0.05)
        finally:
            await joiner.stop()

    asyncio.run(scenario())
