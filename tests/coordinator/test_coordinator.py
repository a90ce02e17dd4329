"""The Coordinator service over real gRPC on 127.0.0.1, and its clients: ``MembershipWatch``
and ``members``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures

import grpc
import pytest
from coordinator_helpers import TOKEN, CoordinatorThread, member, wait_until

from sperse._backends.membership import MemberInfo, MembershipWatch, members
from sperse._coordinator.service import CoordinatorConfig, CoordinatorConfigError, check_config
from sperse._wire import pb
from sperse._wire.sperse_pb2_grpc import CoordinatorStub
from sperse.errors import AuthenticationError, ServerUnavailable


def names(snapshot: list[MemberInfo]) -> list[str]:
    return [m.name for m in snapshot]


class Changes:
    """An ``on_change`` that keeps every snapshot."""

    def __init__(self) -> None:
        self.snapshots: list[list[MemberInfo]] = []
        self.settling: list[bool] = []
        self._lock = threading.Lock()

    def __call__(self, snapshot: list[MemberInfo], settling: bool) -> None:
        with self._lock:
            self.snapshots.append(snapshot)
            self.settling.append(settling)

    def last(self) -> list[MemberInfo] | None:
        with self._lock:
            return self.snapshots[-1] if self.snapshots else None


def test_a_wrong_token_is_refused_on_every_rpc(coordinator: CoordinatorThread) -> None:
    watch = MembershipWatch(coordinator.url, "wrong")
    with pytest.raises(AuthenticationError, match="refused the token"):
        watch.start()
    watch.close()
    with pytest.raises(AuthenticationError):
        members(coordinator.address, "")
    calls: list[Callable[[], object]] = [
        lambda: coordinator.join(member("x"), token="wrong"),
        lambda: coordinator.heartbeat(member("x"), token="wrong"),
        lambda: coordinator.leave("x", token="wrong"),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "cluster token" in caught.value.details()
    assert coordinator.names() == []


def test_joins_and_leaves_reach_a_watch(coordinator: CoordinatorThread) -> None:
    changes = Changes()
    with MembershipWatch(coordinator.url, TOKEN, on_change=changes) as watch:
        assert watch.members() == []
        reply = coordinator.join(
            member("db-1", "127.0.0.1:7001", tags=["db"], resources={"mem": 64.0}, workers=3)
        )
        assert reply.heartbeat_interval == pytest.approx(5.0 / 5)
        wait_until(lambda: names(watch.members()) == ["db-1"], what="db-1 in the watch")
        (info,) = watch.members()
        assert (info.address, info.tags, dict(info.resources), info.workers) == (
            "127.0.0.1:7001",
            frozenset({"db"}),
            {"mem": 64.0},
            3,
        )
        assert info.url == "sperse://127.0.0.1:7001"
        coordinator.join(member("gpu-1", "127.0.0.1:7002"))
        wait_until(lambda: names(watch.members()) == ["db-1", "gpu-1"], what="both")
        coordinator.leave("db-1")
        wait_until(lambda: names(watch.members()) == ["gpu-1"], what="db-1 gone")
        last = changes.last()
        assert last is not None and names(last) == ["gpu-1"]  # on_change saw every step
    assert watch.closed


def test_a_duplicate_name_at_another_address_is_refused(coordinator: CoordinatorThread) -> None:
    coordinator.join(member("a", "127.0.0.1:7001"))
    with pytest.raises(grpc.RpcError) as caught:
        coordinator.join(member("a", "127.0.0.1:7002"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "127.0.0.1:7001" in caught.value.details()
    assert "--name" in caught.value.details()
    coordinator.join(member("a", "127.0.0.1:7001", workers=2))  # the same address replaces
    (only,) = members(coordinator.url, TOKEN)
    assert (only.address, only.workers) == ("127.0.0.1:7001", 2)


def test_a_join_without_a_usable_address_is_refused(coordinator: CoordinatorThread) -> None:
    for bad in (member("", "127.0.0.1:1"), member("a", "nowhere")):
        with pytest.raises(grpc.RpcError) as caught:
            coordinator.join(bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_heartbeats_update_the_load_and_unknown_names_are_told(
    coordinator: CoordinatorThread,
) -> None:
    assert coordinator.heartbeat(member("stranger")).known is False
    coordinator.join(member("a"))
    with MembershipWatch(coordinator.address, TOKEN) as watch:
        assert coordinator.heartbeat(member("a", busy=1, queued=4, object_bytes=2048)).known
        (info,) = wait_until(lambda: [m for m in watch.members() if m.queued == 4], what="load")
        assert (info.busy, info.object_bytes) == (1, 2048)


def test_a_silent_member_is_removed(make_coordinator: Callable[..., CoordinatorThread]) -> None:
    coordinator = make_coordinator(heartbeat_timeout=0.5)
    changes = Changes()
    with MembershipWatch(coordinator.url, TOKEN, on_change=changes) as watch:
        coordinator.join(member("quiet", "127.0.0.1:7001"))
        wait_until(
            lambda: watch.members() == [] and ["quiet"] in map(names, changes.snapshots),
            what="joined, then removed for silence",
        )
    assert coordinator.heartbeat(member("quiet", "127.0.0.1:7001")).known is False


def test_a_watch_outlives_a_coordinator_restart(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    first = make_coordinator()
    first.join(member("a"))
    port = first.server.port
    with MembershipWatch(first.url, TOKEN) as watch:
        assert names(watch.members()) == ["a"]
        first.close()
        second = make_coordinator(port=port)
        second.join(member("b"))
        wait_until(lambda: names(watch.members()) == ["b"], what="the new coordinator's view")


def test_a_restarted_coordinator_settles_for_one_heartbeat_timeout(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    """Its first snapshots say ``settling`` (servers missing from them may re-join yet);
    a snapshot that does not follows once the heartbeat timeout is over."""
    first = make_coordinator(heartbeat_timeout=0.5)
    port = first.server.port
    wait_until(lambda: not coordinator_settling(first), what="the first coordinator to settle")
    changes = Changes()
    with MembershipWatch(first.url, TOKEN, on_change=changes) as watch:
        assert not watch.settling
        first.close()
        second = make_coordinator(port=port, heartbeat_timeout=0.5)
        wait_until(lambda: True in changes.settling, what="a snapshot of the new coordinator")
        wait_until(lambda: not watch.settling, what="the new coordinator to settle")
    assert changes.settling[-1] is False
    assert not coordinator_settling(second)


def coordinator_settling(coordinator: CoordinatorThread) -> bool:
    async def settling() -> bool:
        return coordinator.server.members().settling

    return coordinator.call(settling())


def test_nothing_answering_is_server_unavailable(coordinator: CoordinatorThread) -> None:
    port = coordinator.server.port
    coordinator.close()
    with pytest.raises(ServerUnavailable, match="no coordinator answered"):
        MembershipWatch(f"127.0.0.1:{port}", TOKEN, connect_timeout=5).start()
    with pytest.raises(ServerUnavailable, match="no coordinator answered"):
        members(f"sperse://127.0.0.1:{port}", TOKEN, timeout=5)


def test_a_server_that_is_not_a_coordinator_is_server_unavailable() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))  # no services at all
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(ServerUnavailable, match="not a sperse coordinator"):
            MembershipWatch(f"127.0.0.1:{port}", TOKEN).start()
    finally:
        server.stop(None).wait()


def test_a_bad_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="sperse://HOST:PORT"):
        MembershipWatch("no-port", TOKEN)


def test_stop_ends_watch_streams_promptly(coordinator: CoordinatorThread) -> None:
    with grpc.insecure_channel(coordinator.address) as channel:
        call = CoordinatorStub(channel).Watch(pb.WatchRequest(token=TOKEN), timeout=30)
        assert list(next(call).members) == []
        coordinator.close()
        assert list(call) == []  # the stream ended (OK), it did not hang until the deadline


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (CoordinatorConfig(host="0.0.0.0"), "without TLS"),
        (CoordinatorConfig(tls_cert="cert.pem"), "without --tls-key"),
        (CoordinatorConfig(heartbeat_timeout=0), "--heartbeat-timeout"),
        (CoordinatorConfig(port=70000), "between 0 and 65535"),
        (CoordinatorConfig(log_level="loud"), "log level"),
    ],
)
def test_check_config_refuses(config: CoordinatorConfig, message: str) -> None:
    with pytest.raises(CoordinatorConfigError, match=message):
        check_config(config)


def test_check_config_allows_insecure_beyond_loopback() -> None:
    check_config(CoordinatorConfig(host="0.0.0.0", insecure=True))
