"""Services on real servers: a 2-server ``LocalCluster`` and the embedded server. Requests
go from the client to the requests replica's host, answers come back from the respond
replica's host (docs/flows.md, Services). Waits are on Pendings with deadlines."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sperse
from sperse._backends.membership import MemberInfo, MembershipWatch
from sperse._flow import routes, serving
from sperse._status import main as status_main
from sperse._up import LocalCluster

WAIT = 90.0


def remember(state: dict[str, int], r: dict[str, Any]) -> tuple[dict[str, int], Any]:
    n = state.get("n", 0) + 1
    return {"n": n}, (r["x"], n)


def score(pair: tuple[str, tuple[int, int]]) -> dict[str, Any]:
    user, (x, n) = pair
    return {"user": user, "x": x, "n": n}


def picky(r: Any) -> Any:
    if r == "boom":
        raise ValueError("no boom here")
    return r


def counter(cluster: sperse.Cluster, name: str, replicas: int = 2) -> sperse.Service:
    f = sperse.Flow(name, cluster=cluster)
    (
        f.requests()
        .map(picky, name="check")
        .key_by(lambda r: r["user"], name="by_user")
        .scan({}, remember, name="remember")
        .on(replicas=replicas)
        .map(score, name="score")
        .respond()
    )
    return f.serve(name)


@pytest.fixture(scope="module")
def two() -> Iterator[LocalCluster]:
    with LocalCluster(2, workers=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(two: LocalCluster) -> Iterator[sperse.Cluster]:
    cluster = sperse.connect(two.url, token=two.token)
    try:
        with cluster:
            yield cluster
    finally:
        cluster.close()


def test_a_keyed_service_on_two_servers_answers_many_client_threads(
    client: sperse.Cluster,
) -> None:
    svc = counter(client, "counter")
    hosts = svc._run._handle.hosts() if svc._run is not None else []
    assert {h["server"] for h in hosts} == {"server-1", "server-2"}
    errors: list[str] = []

    def user(t: int) -> None:
        pendings = [(i, svc.request({"user": f"u{t % 3}", "x": (t, i)})) for i in range(60)]
        for i, pending in pendings:
            got = pending.result(WAIT)
            if got["x"] != (t, i) or got["user"] != f"u{t % 3}":
                errors.append(f"thread {t}, request {i}: {got}")

    threads = [threading.Thread(target=user, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    # each key's counter counted every request of its key, once
    last = {u: svc.request({"user": u, "x": None}).result(WAIT)["n"] for u in ("u0", "u1", "u2")}
    assert last == {"u0": 121, "u1": 121, "u2": 121}
    svc.stop()
    assert svc.sent == svc.answered == 363


def test_requests_of_one_key_are_answered_in_order(client: sperse.Cluster) -> None:
    svc = counter(client, "ordered")
    try:
        pendings = [svc.request({"user": "ada", "x": i}) for i in range(200)]
        assert [p.result(WAIT)["n"] for p in pendings] == list(range(1, 201))
    finally:
        svc.stop()


def test_an_operator_error_fails_its_request_only(client: sperse.Cluster) -> None:
    svc = counter(client, "errors")
    try:
        bad = svc.request("boom")
        good = svc.request({"user": "a", "x": 1})
        with pytest.raises(sperse.FlowFailed, match="check") as info:
            bad.result(WAIT)
        assert info.value.type_name == "ValueError"
        assert "no boom here" in str(info.value)
        assert good.result(WAIT)["n"] == 1
    finally:
        svc.stop()


def test_stop_drains_then_refuses(client: sperse.Cluster) -> None:
    svc = counter(client, "drained")
    pendings = [svc.request({"user": "a", "x": i}) for i in range(300)]
    svc.stop()
    assert [p.result(WAIT)["n"] for p in pendings] == list(range(1, 301))
    with pytest.raises(sperse.ServiceStopped):
        svc.request({"user": "a", "x": 0})


def test_a_poll_whose_reply_is_lost_loses_no_answer(
    client: sperse.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A respond replica's host keeps each answer until the client's next poll says it
    received it. A stopping service's hosts are closed once their answers are taken, and a
    poll's reply still on its way then failed (the object closed): the answers it took were
    lost, and stop() failed their requests (1 of 300 in a CI run). Here the client drops
    the reply that carries the last answer, as if it were lost: the next poll brings it
    again."""
    svc = counter(client, "lost-reply")
    value = routes._value
    dropped = threading.Event()

    def lossy(pending: Any) -> Any:
        got = value(pending)
        last = any(isinstance(a, tuple) and a[2] == {"user": "a", "x": 49, "n": 50} for a in got)
        if last and not dropped.is_set():
            dropped.set()
            return []  # this reply never arrived
        return got

    monkeypatch.setattr(routes, "_value", lossy)
    pendings = [svc.request({"user": "a", "x": i}) for i in range(50)]
    svc.stop()
    assert dropped.is_set()
    assert [p.result(WAIT)["n"] for p in pendings] == list(range(1, 51))


SECOND_CLIENT = """
import json, sys
import sperse
cluster = sperse.connect(sys.argv[1], token=sys.argv[2])
try:
    found = sperse.service("shared")
    counts = [found.request({"user": "bob", "x": i}).result(60)["n"] for i in range(3)]
    retried = found.request({"user": "carol", "x": 0}, key="once").result(60)
    after = found.request({"user": "carol", "x": 1}).result(60)["n"]
    try:
        found.stop()
        refused = ""
    except sperse.UsageError as exc:
        refused = str(exc)
    try:
        sperse.service("nope")
        unknown = ""
    except sperse.UnknownObject as exc:
        unknown = str(exc)
    found.close()
    out = {"counts": counts, "refused": refused, "unknown": unknown}
    print(json.dumps({**out, "retried": retried, "after": after}))
finally:
    cluster.close()
"""


def test_another_client_finds_the_service_by_name(
    two: LocalCluster, client: sperse.Cluster
) -> None:
    svc = counter(client, "shared")
    try:
        assert svc.request({"user": "bob", "x": -1}).result(WAIT)["n"] == 1
        first = svc.request({"user": "carol", "x": 0}, key="once").result(WAIT)
        done = subprocess.run(
            [sys.executable, "-c", SECOND_CLIENT, two.url, two.token],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert got["counts"] == [2, 3, 4]  # the same keyed state, from the other client
        assert "another client" in got["refused"]
        assert "no service called 'nope'" in got["unknown"]
        # the other client's retry of the key was answered with the first answer, once
        assert got["retried"] == first == {"user": "carol", "x": 0, "n": 1}
        assert got["after"] == 2
        assert svc.request({"user": "bob", "x": 9}).result(WAIT)["n"] == 5
    finally:
        svc.stop()


def wait_for_card(two: LocalCluster, name: str) -> None:
    """Until the coordinator lists the card of service ``name`` (servers report their named
    objects with their heartbeats)."""
    listed = threading.Event()

    def seen(members: list[MemberInfo], settling: bool) -> None:
        if any(f"sperse.service:{name}" in m.named for m in members):
            listed.set()

    with MembershipWatch(two.url, two.token, on_change=seen) as watch:
        seen(watch.members(), watch.settling)
        assert listed.wait(WAIT), "the service's card never reached the coordinator"


def test_sperse_status_lists_the_services(
    two: LocalCluster, client: sperse.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = counter(client, "listed")
    try:
        wait_for_card(two, "listed")
        capsys.readouterr()
        assert status_main(["--json", "--token", two.token, two.url]) == 0
        found = json.loads(capsys.readouterr().out)
        assert [s for m in found for s in m["services"]] == ["listed"]
        assert status_main(["--token", two.token, two.url]) == 0
        assert "services: listed (on " in capsys.readouterr().out
    finally:
        svc.stop()


def test_sperse_status_shows_each_services_operators_replicas_and_rate(
    two: LocalCluster, client: sperse.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = counter(client, "rated")
    try:
        pendings = [svc.request({"user": f"u{i % 3}", "x": i}) for i in range(30)]
        assert [p.result(WAIT)["x"] for p in pendings] == list(range(30))
        reporter = svc._reporter
        assert reporter is not None
        deadline = time.monotonic() + WAIT  # the hosts' counts reach the driver, then the card
        pushed = reporter.push()
        while pushed is None or any(op["items_in"] < 30 for op in pushed["operators"]):
            assert time.monotonic() < deadline, (
                f"the card never had the 30 requests at every operator: {pushed}"
            )
            pushed = reporter.push()
        wait_for_card(two, "rated")
        capsys.readouterr()
        assert status_main(["--json", "--token", two.token, two.url]) == 0
        found = json.loads(capsys.readouterr().out)
        [card] = [s for m in found for s in m["service_stats"] if s["name"] == "rated"]
        ops = {op["name"]: op for op in card["operators"]}
        assert list(ops) == ["requests", "check", "by_user", "remember", "score", "respond"]
        assert ops["remember"]["replicas"] == 2
        assert ops["remember"]["kind"] == "scan"
        assert sum(ops["remember"]["servers"].values()) == 2
        assert ops["remember"]["items_in"] == 30
        assert card["requests"] == 30
        # the rate of the last seconds (0 once they are over): the requests source's
        assert card["rate"] == ops["requests"]["rate"] >= 0
        assert card["flow"] == "rated" and card["state"] == "running"
        assert 0 <= card["age"] < WAIT
        assert status_main(["--token", two.token, two.url]) == 0
        text = capsys.readouterr().out
        assert "service 'rated' (flow 'rated'): running, 30 requests (" in text
        row = next(line.split() for line in text.splitlines() if line.split()[:1] == ["remember"])
        assert row[:3] == ["remember", "scan", "2"] and row[-2] == "30"
    finally:
        svc.stop()
    assert svc._reporter is not None and svc._reporter.push() is None  # stopped: no more


def test_a_service_whose_card_has_no_summary_is_listed_by_name_alone() -> None:
    from sperse._status import as_json, services_text

    member = MemberInfo(
        "server-1", "127.0.0.1:1", frozenset(), {}, 2, 0, 0, 1, 0, 1, 0.0, 0.0, False,
        named=("sperse.service:quiet", "sperse.service-copy:other", "plain"),
    )  # fmt: skip
    assert services_text([member], {}).splitlines() == [
        "services: quiet (on server-1)",
        "service 'quiet': no summary from the client that served it yet",
    ]
    [entry] = as_json([member])
    assert entry["services"] == ["quiet"]
    assert entry["service_stats"] == [{"name": "quiet"}]


def score_v2(pair: tuple[str, tuple[Any, int]]) -> dict[str, Any]:
    user, (x, n) = pair
    return {"user": user, "x": x, "n": n, "v": 2}


def test_update_on_servers_keeps_the_keyed_state(client: sperse.Cluster) -> None:
    svc = counter(client, "live")
    try:
        pendings = [svc.request({"user": f"u{i % 4}", "x": i}) for i in range(40)]
        svc.update("score", score_v2)
        after = [svc.request({"user": f"u{i % 4}", "x": i}) for i in range(40, 48)]
        answers = [p.result(WAIT) for p in pendings + after]
        assert [a["x"] for a in answers] == list(range(48))  # none lost
        assert all(a.get("v") == 2 for a in answers[40:])
        assert [a["n"] for a in answers[40:]] == [11, 11, 11, 11, 12, 12, 12, 12]
    finally:
        svc.stop()


# -- scale and move while requests flow --------------------------------------------------------


def test_scale_1_3_1_and_move_on_servers_lose_and_repeat_no_request(
    client: sperse.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_flow_services_reshape import Clients, counter_flow

    svc = counter_flow("reshaped", client).serve("reshaped")

    def servers_of(name: str) -> list[str]:
        run = svc._run
        assert run is not None
        return [h["server"] for h in run.hosts() if name in h["operators"].split(" -> ")]

    with monkeypatch.context() as m:  # a client that found it on the cluster, by its card
        m.delitem(serving._SERVICES, "reshaped")
        remote = sperse.service("reshaped")
    assert remote._run is None
    try:
        with Clients(svc) as clients, Clients(remote, threads=2, prefix="r") as others:
            clients.wait_for(40)
            svc.scale("count", replicas=3)
            assert len(servers_of("count")) == 3
            assert set(servers_of("count")) == {"server-1", "server-2"}
            clients.wait_for(40)
            svc.scale("count", replicas=1)
            [was] = servers_of("count")
            clients.wait_for(40)
            other = next(s for s in ("server-1", "server-2") if s != was)
            svc.move("count", on=f"@{other}")
            assert servers_of("count") == [other]
            clients.wait_for(40)
            others.wait_for(20)
        assert clients.errors == others.errors == []
        for user, sent in {**clients.sent, **others.sent}.items():  # counts end at the sent
            got = svc.request({"user": user, "tag": "last"}).result(WAIT)
            assert got == {"user": user, "tag": "last", "n": sent + 1}
    finally:
        remote.close()
        svc.stop()
    assert svc.sent == svc.answered
    assert remote.sent == remote.answered


def test_a_move_nowhere_is_refused_and_the_service_goes_on(client: sperse.Cluster) -> None:
    from test_flow_services_reshape import counter_flow

    svc = counter_flow("nowhere", client).serve("nowhere")
    try:
        assert svc.request({"user": "a", "tag": "1"}).result(WAIT)["n"] == 1
        with pytest.raises(sperse.NoMatchingServer, match="server-9"):
            svc.move("count", on="@server-9")
        assert svc.request({"user": "a", "tag": "2"}).result(WAIT)["n"] == 2
    finally:
        svc.stop()
