"""What a client finds when it connects to a coordinator's address: whether a coordinator
answers there (``is_coordinator``), and the first list of servers of one that has only just
started."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest
from coordinator_helpers import TOKEN, CoordinatorThread, member, wait_until

import sperse
import sperse._cluster.connect as connect_module
from sperse._backends.membership import MembershipWatch
from sperse._backends.multi import ClusterBackend, is_coordinator


def test_a_coordinator_that_starts_after_it_was_asked_for_is_found(
    make_coordinator: Callable[..., CoordinatorThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``connect`` asked (nothing answered: the coordinator was restarting), then reached
    it as a server: the session is refused as not a sperse server, and ``connect`` asks
    again (``sperse submit`` failed with UNIMPLEMENTED under chaos)."""
    coordinator = make_coordinator(heartbeat_timeout=0.5)
    asked: list[str] = []

    def first_nothing(url: str, **kwargs: object) -> bool:
        asked.append(url)
        return len(asked) > 1 and is_coordinator(url, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(connect_module, "is_coordinator", first_nothing)
    cluster = sperse.connect(coordinator.url, token=TOKEN)
    try:
        assert len(asked) == 2
        assert isinstance(cluster.backend, ClusterBackend)
    finally:
        cluster.close()


def test_nothing_answering_is_not_a_coordinator() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not is_coordinator(f"sperse://127.0.0.1:{port}", timeout=1)


def test_a_client_of_a_coordinator_that_has_just_started_waits_for_its_servers(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    """Its first list is empty while servers (re-)join: a client's work must not fail with
    ``NoMatchingServer`` meanwhile (``sperse submit`` did, under chaos)."""
    coordinator = make_coordinator(heartbeat_timeout=30)  # settling for 30 s
    watch = MembershipWatch(coordinator.url, TOKEN, wait_settled=True)
    first: list[list[str]] = []
    started = threading.Thread(target=lambda: first.append([m.name for m in watch.start()]))
    started.start()
    try:
        wait_until(lambda: watch.streams == 1, what="the coordinator's first, empty list")
        coordinator.join(member("late", "127.0.0.1:1"))
        started.join(30)
        assert first == [["late"]]
    finally:
        watch.close()


def test_a_coordinator_that_settles_with_no_one_is_an_empty_cluster(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    coordinator = make_coordinator(heartbeat_timeout=0.5)
    with MembershipWatch(coordinator.url, TOKEN, wait_settled=True) as watch:
        assert watch.members() == [] and not watch.settling
