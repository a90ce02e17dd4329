"""A value held on server A, used by a task on server B, moves A -> B (``Pull``), never
through the client.

Servers run in this process (``make_server``), so they share one shared memory prefix: the
replicas a server pulls are its files ``sperse-<pid>-r...`` (``replica_files()``).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from server_helpers import DEADLINE, TOKEN, RawSession, ServerThread, call_work, run, shm_files
from test_server_security import _self_signed

from sperse._backends.sperse import SperseBackend
from sperse._core import BackendEvent, CallTask, Done, Failed, TaskSpec
from sperse._serialize import RemoteRef, RemoteValue, shm
from sperse._wire import pb
from sperse._wire.sperse_pb2_grpc import SperseServicer, SperseStub, add_SperseServicer_to_server

MakeServer = Callable[..., ServerThread]
N = 1 << 19  # float64 items: 4 MiB


def make(n: int) -> Any:
    return np.arange(n, dtype=np.float64)


def total(*arrays: Any) -> float:
    return float(sum(a.sum() for a in arrays))


def no_fetch(ref: RemoteRef, timeout: float | None) -> None:
    raise AssertionError("the value must move server to server, never through the client")


def replica_files() -> set[str]:
    return {name for name in shm_files() if name.startswith(f"{shm.server_prefix()}r")}


async def hold(s: RawSession, task_id: str = "make") -> pb.ObjectRef:
    """A 4 MiB array held on the server of session ``s``."""
    await s.submit(s.task(task_id, call_work(make, N), inline_limit=1 << 20))
    (value,) = (await s.done(task_id)).values
    assert value.WhichOneof("kind") == "ref", value
    ref: pb.ObjectRef = value.ref
    return ref


def held_by(ref: pb.ObjectRef, server: str) -> RemoteValue:
    return RemoteValue(RemoteRef(ref.object_id, server, ref.type_name, ref.size, ""), no_fetch)


def using(
    s: RawSession,
    task_id: str,
    holder: ServerThread | str,
    ref: pb.ObjectRef,
    *more: Any,
    label: str = "",
) -> tuple[pb.Task, list[pb.Blob]]:
    """A task of session ``s`` that sums the object ``ref``, which ``holder`` (a server, or
    an address) holds, and ``more``."""
    name, address = (
        (holder.name, holder.address) if isinstance(holder, ServerThread) else ("gone", holder)
    )
    task, blobs = s.task(task_id, call_work(total, held_by(ref, name), *more), label=label)
    assert task.refs[0] == ref.object_id and not blobs
    task.peer_refs.append(pb.PeerRef(object_id=ref.object_id, server=name, address=address))
    return task, blobs


def test_a_value_moves_between_servers_and_its_replica_goes(make_server: MakeServer) -> None:
    a = make_server(name="alpha")
    b = make_server(name="beta", workers=2)

    async def scenario() -> None:
        async with RawSession(a.address) as sa, RawSession(b.address) as sb:
            await sa.hello()
            await sb.hello()
            ref = await hold(sa)
            own = await hold(sb, "own")  # B's own object, beside the pulled one
            # Two tasks in one Submit need the same object: one pull for both. The second
            # uses an object of B's own too.
            await sb.submit(
                using(sb, "one", a, ref), using(sb, "two", a, ref, held_by(own, "beta"))
            )
            (one,) = (await sb.done("one")).values
            (two,) = (await sb.done("two")).values
            assert sb.value(one) == float(make(N).sum())
            assert sb.value(two) == 2 * float(make(N).sum())

            stats_b = await sb.stats()
            assert stats_b.objects_pulled == 1
            assert stats_b.bytes_pulled >= ref.size >= N * 8
            stats_a = await sa.stats()
            assert stats_a.objects_served == 1 and stats_a.bytes_served == stats_b.bytes_pulled
            assert stats_a.objects == 1, "the original stays where it is"

            # The replica goes with the last task that used it; B's own object stays.
            await b.wait_stats(lambda st: st.replicas == 0 and st.replica_bytes == 0)
            await b.wait_stats(lambda _: not replica_files())
            assert b.stats().objects_total == 1

            # A later task pulls it again (a replica is a copy, kept only while used).
            await sb.submit(using(sb, "again", a, ref))
            (again,) = (await sb.done("again")).values
            assert sb.value(again) == float(make(N).sum())
            assert (await sb.stats()).objects_pulled == 2

    run(scenario())


def test_a_released_object_is_unavailable(make_server: MakeServer) -> None:
    a = make_server(name="alpha")
    b = make_server(name="beta")

    async def scenario() -> None:
        async with RawSession(a.address) as sa, RawSession(b.address) as sb:
            await sa.hello()
            await sb.hello()
            ref = await hold(sa)
            await sa.release(ref.object_id)
            await sa.stats()  # the release has been handled
            await sb.submit(using(sb, "late", a, ref, label="late sum"))
            failure = await sb.failed("late")
            assert failure.kind == "internal" and failure.type_name == "ObjectUnavailable"
            message = failure.message
            for part in ("'late sum'", ref.object_id, "'alpha'", a.address, "released"):
                assert part in message, message
            assert "compute it again" in message
            assert (await sb.stats()).objects_pulled == 0

    run(scenario())


def test_servers_with_different_tokens_cannot_pull(make_server: MakeServer) -> None:
    other = "another-token-" + secrets.token_hex(8)
    a = make_server(name="alpha", token=other)
    b = make_server(name="beta")

    async def scenario() -> None:
        async with RawSession(a.address) as sa, RawSession(b.address) as sb:
            await sa.hello(token=other)
            await sb.hello()
            ref = await hold(sa)
            await sb.submit(using(sb, "sum", a, ref))
            failure = await sb.failed("sum")
            assert failure.type_name == "ObjectUnavailable"
            assert "must share a token" in failure.message, failure.message
            assert (await sa.stats()).objects_served == 0

    run(scenario())


def test_an_unreachable_holder_or_a_value_too_big(make_server: MakeServer) -> None:
    a = make_server(name="alpha")
    gone = make_server(name="gone")
    gone_address = gone.address
    gone.close()
    b = make_server(name="beta", max_value_size=1 << 20)

    async def scenario() -> None:
        async with RawSession(a.address) as sa, RawSession(b.address) as sb:
            await sa.hello()
            await sb.hello()
            ref = await hold(sa)
            await sb.submit(using(sb, "nowhere", gone_address, ref))
            failure = await sb.failed("nowhere")
            assert failure.type_name == "ObjectUnavailable"
            assert gone_address in failure.message and "cannot be reached" in failure.message

            await sb.submit(using(sb, "big", a, ref))
            failure = await sb.failed("big")
            assert failure.type_name == "ObjectUnavailable"
            assert "--max-value-size" in failure.message, failure.message
            assert not replica_files()

    run(scenario())


class StalledHolder(SperseServicer):
    """A holder that announces an object and then sends nothing."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def Pull(self, request: pb.PullRequest, context: Any) -> Any:
        self.calls += 1
        self.called.set()
        header = pb.PullHeader(type_name="bytes", repr="b'...'", data_size=16, buffer_sizes=[N])
        try:
            yield pb.PullChunk(header=header)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def test_cancel_during_a_pull(make_server: MakeServer) -> None:
    b = make_server(name="beta")

    async def scenario() -> None:
        holder = StalledHolder()
        server = grpc.aio.server()
        add_SperseServicer_to_server(holder, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with RawSession(b.address) as sb:
                await sb.hello()
                ref = pb.ObjectRef(object_id=secrets.token_hex(16), type_name="bytes", size=N)
                address = f"127.0.0.1:{port}"
                await sb.submit(using(sb, "one", address, ref), using(sb, "two", address, ref))
                async with asyncio.timeout(DEADLINE):
                    await holder.called.wait()
                await b.wait_stats(lambda _: len(replica_files()) == 1)  # the buffer's file
                assert (await b.wait_stats(lambda st: st.queued == 2)).busy == 0

                await sb.cancel("one")
                assert (await sb.failed("one")).kind == "cancelled"
                await sb.cancel("two")  # the last that waits: the pull is cancelled too
                failure = await sb.failed("two")
                assert failure.kind == "cancelled" and failure.type_name == "TaskCancelled"
                async with asyncio.timeout(DEADLINE):
                    await holder.cancelled.wait()
                assert holder.calls == 1
                await b.wait_stats(lambda _: not replica_files())
                stats = b.stats()
                assert stats.queued == 0 and stats.replicas == 0 and stats.objects_pulled == 0
        finally:
            await server.stop(None)

    run(scenario())


class Harvester(SperseServicer):
    """An address a client points a server at, as an attacker would: it keeps each pull
    request it is sent and answers that it holds nothing."""

    def __init__(self) -> None:
        self.requests: list[pb.PullRequest] = []
        self.called = asyncio.Event()

    async def Pull(self, request: pb.PullRequest, context: Any) -> Any:
        self.requests.append(request)
        self.called.set()
        yield pb.PullChunk(error="nothing here")


def test_a_client_cannot_make_a_server_send_the_token_where_it_points(
    make_server: MakeServer,
) -> None:
    """Issue 17, hole 9: a pull's address comes from a client, so the request must not carry
    the token, and what it carries instead must be useless at any other server."""
    a = make_server(name="alpha")
    b = make_server(name="beta")

    async def scenario() -> None:
        harvester = Harvester()
        server = grpc.aio.server()
        add_SperseServicer_to_server(harvester, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with RawSession(a.address) as sa, RawSession(b.address) as sb:
                await sa.hello()
                await sb.hello()
                ref = await hold(sa)  # on alpha; the client says it is at the harvester's
                lured = using(sb, "lured", a, ref)
                lured[0].peer_refs[0].address = f"127.0.0.1:{port}"
                await sb.submit(lured)
                assert (await sb.failed("lured")).type_name == "ObjectUnavailable"
                (request,) = harvester.requests
                assert TOKEN.encode() not in request.SerializeToString()

                # What it got, relayed to the server that holds the object, is refused.
                async with grpc.aio.insecure_channel(a.address) as channel:
                    stub = SperseStub(channel)  # type: ignore[no-untyped-call]
                    for holder in (request.holder, a.address):
                        relayed = pb.PullRequest()
                        relayed.CopyFrom(request)
                        relayed.holder = holder  # as dialled, then as if dialled to alpha
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            async for _ in stub.Pull(relayed):
                                pass
                        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert (await sa.stats()).objects_served == 0

                # Sent to alpha itself, the same object moves as before.
                await sb.submit(using(sb, "sum", a, ref))
                assert (await sb.done("sum")).values
                assert (await sa.stats()).objects_served == 1
        finally:
            await server.stop(None)

    run(scenario())


class Ends:
    """A backend's sink that keeps the terminal event of each task."""

    def __init__(self) -> None:
        self._ends: dict[str, Done | Failed] = {}
        self._changed = threading.Condition()

    def __call__(self, event: BackendEvent) -> None:
        if isinstance(event, Done | Failed):
            with self._changed:
                self._ends[event.task_id] = event
                self._changed.notify_all()

    def value(self, task_id: str) -> Any:
        with self._changed:
            assert self._changed.wait_for(lambda: task_id in self._ends, DEADLINE), task_id
            end = self._ends[task_id]
        assert isinstance(end, Done), end
        return end.value


def test_two_clients_end_to_end(make_server: MakeServer) -> None:
    a = make_server(name="alpha")
    b = make_server(name="beta")
    ends_a, ends_b = Ends(), Ends()
    backend_a = SperseBackend(a.address, token=TOKEN, client_name="client-a")
    backend_b = SperseBackend(
        b.address,
        token=TOKEN,
        client_name="client-b",
        locate=lambda name: a.address if name == a.name else None,
    )
    backend_a.start(ends_a)
    try:
        backend_b.start(ends_b)
        backend_a.submit([TaskSpec("make", CallTask(make, (N,), {}))])
        held = ends_a.value("make")
        assert isinstance(held, RemoteValue) and held.ref.server == "alpha"
        assert held.ref.size >= N * 8

        backend_b.submit([TaskSpec("sum", CallTask(total, (held,), {}))])
        assert ends_b.value("sum") == float(make(N).sum())
        assert not held.fetched
        stats_b = backend_b.stats()
        stats_a = backend_a.stats()
        assert stats_b["objects_pulled"] == 1 and stats_b["bytes_pulled"] >= held.ref.size
        assert stats_a["objects_served"] == 1 and stats_a["bytes_served"] >= held.ref.size
        assert stats_a["objects"] == 1 and stats_b["objects"] == 0
    finally:
        backend_b.close()
        backend_a.close()


def test_servers_with_tls_pull_over_tls(make_server: MakeServer, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls = {"tls_cert": str(cert), "tls_key": str(key)}
    a = make_server(name="alpha", **tls)
    b = make_server(name="beta", **tls)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())

    async def scenario() -> None:
        async with (
            RawSession(a.address, credentials=credentials) as sa,
            RawSession(b.address, credentials=credentials) as sb,
        ):
            await sa.hello()
            await sb.hello()
            ref = await hold(sa)
            await sb.submit(using(sb, "sum", a, ref))
            (value,) = (await sb.done("sum")).values
            assert sb.value(value) == float(make(N).sum())

    run(scenario())
