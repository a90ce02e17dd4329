"""A server killed (SIGKILL, by its pid) under a service on 3 real servers: the requests in
flight through its replicas fail with ``ServerLost`` naming the service and the operator,
or are sent again when no operator up to the lost one keeps state; the service goes on,
its surviving keyed state exact; no request is left pending (docs/flows.md, Services).
Waits are on Pendings with deadlines, never sleeps."""

from __future__ import annotations

import time
from typing import Any

import pytest

import sperse
from sperse._flow.ops import stable_hash
from sperse._up import LocalCluster

WAIT = 90.0
TIMEOUT = 60.0  # each request's own: it settles by then whatever happens


def count(state: int, r: dict[str, Any]) -> tuple[int, Any]:
    return state + 1, (r["tag"], state + 1)


def answer(pair: tuple[str, tuple[Any, int]]) -> dict[str, Any]:
    user, (tag, n) = pair
    return {"user": user, "tag": tag, "n": n}


def slow_double(x: int) -> int:
    time.sleep(0.01)  # work that takes time: requests are in flight when the server dies
    return 2 * x


def hosts_of(svc: sperse.Service) -> list[dict[str, Any]]:
    assert svc._run is not None
    return svc._run._handle.hosts()  # type: ignore[no-any-return]


def victim_of(svc: sperse.Service, operator: str) -> str:
    """The server of replica 0 of ``operator``, which is not the requests replica's."""
    hosts = hosts_of(svc)
    source = next(h["server"] for h in hosts if h["stage"] == 0)
    victim = next(h for h in hosts if h["operators"].startswith(operator) and h["replica"] == 0)
    assert victim["server"] != source
    return str(victim["server"])


def test_a_killed_server_fails_the_requests_through_it_and_the_service_goes_on(
    three: tuple[LocalCluster, sperse.Cluster],
) -> None:
    lc, client = three
    f = sperse.Flow("survivor", cluster=client)
    (
        f.requests()
        .key_by(lambda r: r["user"], name="by_user")
        .scan(0, count, name="count")
        .on(replicas=2)
        .map(answer, name="answer")
        .respond()
    )
    svc = f.serve("survivor")
    users = [f"u{i}" for i in range(12)]
    lost_keys = {u for u in users if stable_hash(u) % 2 == 0}  # replica 0's
    assert lost_keys and lost_keys != set(users)
    sent = dict.fromkeys(users, 0)
    try:
        for u in users:
            assert svc.request({"user": u, "tag": "first"}).result(WAIT)["n"] == 1
            sent[u] += 1
        victim = victim_of(svc, "count")
        burst = [
            (u, svc.request({"user": u, "tag": i}, timeout=TIMEOUT))
            for i in range(20)
            for u in users
        ]
        lc.kill_server(victim)
        burst += [
            (u, svc.request({"user": u, "tag": i}, timeout=TIMEOUT))
            for i in range(20, 40)
            for u in users
        ]
        failed: list[BaseException] = []
        for u, pending in burst:
            error = pending.exception(TIMEOUT + 30)  # settled by its timeout at the latest
            if error is None:
                sent[u] += 1
                continue
            assert isinstance(error, sperse.ServerLost), repr(error)
            assert u in lost_keys, f"{u} was on a surviving replica: {error}"
            failed.append(error)
        for error in failed:
            assert "service 'survivor'" in str(error) and "'count" in str(error)
            assert victim in str(error) and "keyed state" in str(error)
        # the service goes on: every key answered, the surviving ones counted exactly
        after = {
            u: svc.request({"user": u, "tag": "last"}, timeout=TIMEOUT).result(WAIT) for u in users
        }
        for u in users:
            if u not in lost_keys:
                assert after[u]["n"] == sent[u] + 1, (u, after[u], sent[u])
        assert svc.running
        assert victim not in {h["server"] for h in hosts_of(svc)}
    finally:
        svc.stop()
    assert svc.waiting == 0


def test_requests_through_a_lost_stateless_operator_are_sent_again(
    three: tuple[LocalCluster, sperse.Cluster],
) -> None:
    lc, client = three
    f = sperse.Flow("doubler", cluster=client)
    f.requests().map(slow_double, name="double").on(replicas=2).respond()
    svc = f.serve("doubler", retries=2)
    other = sperse.service("doubler")  # a client of another session: retries per request
    try:
        assert svc.request(1).result(WAIT) == 2
        victim = victim_of(svc, "double")
        mine = [svc.request(i, timeout=TIMEOUT, key=f"k{i}") for i in range(150)]
        theirs = [other.request(i, timeout=TIMEOUT, retries=1) for i in range(150)]
        lc.kill_server(victim)
        mine += [svc.request(i, timeout=TIMEOUT, key=f"k{i}") for i in range(150, 200)]
        assert [p.result(TIMEOUT + 30) for p in mine] == [2 * i for i in range(200)]
        assert [p.result(TIMEOUT + 30) for p in theirs] == [2 * i for i in range(150)]
        resent = svc._route.resent + other._route.resent  # type: ignore[union-attr]
        assert resent > 0, "no request was in flight through the killed server"
        # answered once: a retry of a key gets its first answer, not a run of its own
        assert svc.request("not run", key="k3").result(WAIT) == 6
        assert other.request(5, key="k5").result(WAIT) == 10
    finally:
        other.close()
        svc.stop()


def test_with_no_server_left_for_an_operator_the_service_stops_saying_why(
    three: tuple[LocalCluster, sperse.Cluster],
) -> None:
    lc, client = three
    f = sperse.Flow("pinned", cluster=client)
    f.requests().on("@server-1").map(slow_double, name="double").on("@server-3").respond()
    svc = f.serve("pinned", retries=3)
    assert svc.request(1).result(WAIT) == 2
    pendings = [svc.request(i, timeout=TIMEOUT) for i in range(100)]
    lc.kill_server("server-3")
    errors = [p.exception(TIMEOUT + 30) for p in pendings]  # answered, or failed: settled
    failed = [e for e in errors if e is not None]
    assert failed
    assert all(isinstance(e, sperse.FlowFailed | sperse.ServiceStopped) for e in failed), failed
    assert any("server-3" in str(e) and "could not replace" in str(e) for e in failed), failed
    run = f.started
    assert run is not None
    with pytest.raises(sperse.FlowFailed, match="server-3"):
        run.result(WAIT)
    assert not svc.running
    with pytest.raises(sperse.ServiceStopped, match="failed"):
        svc.request(2)
