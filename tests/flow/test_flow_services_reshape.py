"""``Service.scale`` and ``Service.move`` while requests flow, in this process: keyed state
repartitioned or carried over, no request lost or answered twice, each key's requests
answered in order. Waits are on conditions with deadlines, never sleeps."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import sperse
from sperse._flow.api import InProcess
from sperse._flow.ops import stable_hash
from sperse._flow.plan import LogicalPlan, Partition, physical
from sperse._flow.replica import Replica
from sperse._flow.reshape import hand_over, keyed_state

WAIT = 60.0


def count(state: int, r: dict[str, Any]) -> tuple[int, Any]:
    return state + 1, (r["tag"], state + 1)


def answer(pair: tuple[str, tuple[str, int]]) -> dict[str, Any]:
    user, (tag, n) = pair
    return {"user": user, "tag": tag, "n": n}


def counter_flow(name: str, cluster: sperse.Cluster | None = None) -> sperse.Flow:
    f = sperse.Flow(name=name, cluster=cluster)
    (
        f.requests()
        .key_by(lambda r: r["user"])
        .scan(0, count, name="count")
        .map(answer, name="answer")
        .respond()
    )
    return f


class Clients:
    """``threads`` client threads, each sending bursts of ``burst`` requests for its own
    users and checking every answer against the tag its request carries, until stopped."""

    def __init__(
        self, svc: sperse.Service, threads: int = 4, burst: int = 5, prefix: str = "t"
    ) -> None:
        self.svc = svc
        self.prefix = prefix
        self.burst = burst
        self.errors: list[str] = []
        self.sent: dict[str, int] = {}
        self.answered = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(t,)) for t in range(threads)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)

    def wait_for(self, answers: int) -> None:
        """Until ``answers`` more requests were answered (or a client failed)."""
        with self._cond:
            goal = self.answered + answers
            assert self._cond.wait_for(lambda: self.answered >= goal or self.errors, WAIT)

    def _client(self, t: int) -> None:
        users = [f"{self.prefix}{t}u{u}" for u in range(3)]
        n = dict.fromkeys(users, 0)
        i = 0
        try:
            while not self._stop.is_set():
                sent = []
                for _ in range(self.burst):
                    user = users[i % len(users)]
                    tag = f"{t}:{i}"
                    sent.append((user, tag, self.svc.request({"user": user, "tag": tag})))
                    i += 1
                for user, tag, pending in sent:
                    got = pending.result(WAIT)
                    n[user] += 1  # in order: the n-th request of a user sees count n
                    if got != {"user": user, "tag": tag, "n": n[user]}:
                        self.errors.append(f"{tag} for {user}: got {got}, want n={n[user]}")
                    with self._cond:
                        self.answered += 1
                        self._cond.notify_all()
        except Exception as exc:  # reported by the test
            self.errors.append(f"client {t}: {exc!r}")
        finally:
            with self._cond:
                self.sent.update(n)
                self._cond.notify_all()


def test_scale_1_3_1_during_requests_loses_and_repeats_none_and_keeps_every_count() -> None:
    svc = counter_flow("scaled").serve("scaled", executor=InProcess(seed=3))
    try:
        with Clients(svc) as clients:
            clients.wait_for(50)
            svc.scale("count", replicas=3)
            assert _replicas(svc, "count") == 3
            clients.wait_for(50)
            svc.scale("count", replicas=1)
            assert _replicas(svc, "count") == 1
            clients.wait_for(50)
        assert clients.errors == []
        # each user's count ends at the requests sent for it: one more request sees +1
        for user, sent in clients.sent.items():
            got = svc.request({"user": user, "tag": "last"}).result(WAIT)
            assert got == {"user": user, "tag": "last", "n": sent + 1}
    finally:
        svc.stop()
    assert svc.sent == svc.answered


def test_move_carries_keyed_state_over_and_shows_the_new_placement() -> None:
    svc = counter_flow("moved").serve("moved", executor=InProcess())
    try:
        with Clients(svc, threads=2) as clients:
            clients.wait_for(20)
            svc.move("count", on="@elsewhere")
            clients.wait_for(20)
        assert clients.errors == []
        plan = _plan(svc)
        node = next(n for n in plan.logical.nodes if n.name == "count")
        assert str(node.placement) == "@elsewhere"
        for user, sent in clients.sent.items():
            assert svc.request({"user": user, "tag": "x"}).result(WAIT)["n"] == sent + 1
    finally:
        svc.stop()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda s: s.scale("cuont", replicas=2), ValueError, r"Did you mean: 'count'"),
        (lambda s: s.scale("requests", replicas=2), ValueError, "source cannot be reshaped"),
        (lambda s: s.scale("respond", replicas=2), ValueError, "respond cannot be reshaped"),
        (lambda s: s.scale("count", replicas=0), ValueError, "positive int"),
        (lambda s: s.move("count", on=""), TypeError, "a placement"),
    ],
)
def test_scale_and_move_refuse_what_they_cannot_do(
    call: Callable[[sperse.Service], None], error: type[Exception], match: str
) -> None:
    svc = counter_flow("refusing").serve("refusing", executor=InProcess())
    try:
        with pytest.raises(error, match=match):
            call(svc)
        assert _replicas(svc, "count") == 1  # unchanged
        assert svc.request({"user": "a", "tag": "t"}).result(WAIT)["n"] == 1
    finally:
        svc.stop()


def test_only_the_client_that_served_it_may_scale_it() -> None:
    svc = counter_flow("owned").serve("owned", executor=InProcess())
    try:
        other = sperse.Service("owned", "owned", svc.cluster, owner=None)
        with pytest.raises(sperse.UsageError, match="only the client that served it"):
            other.scale("count", replicas=2)
    finally:
        svc.stop()


@pytest.mark.parametrize(("before", "after"), [(1, 3), (3, 1), (2, 5), (4, 4)])
def test_hand_over_gives_each_key_to_the_replica_that_owns_it(before: int, after: int) -> None:
    logical = counter_flow("pure").plan
    old_plan = _scaled(logical, before)
    old = {
        (s.id, r): Replica(old_plan, s.id, r) for s in old_plan.stages for r in range(s.replicas)
    }
    keys = {f"k{i}": i for i in range(40)}
    for (_, r), replica in old.items():  # put each key where the old plan had it
        for op in replica.ops:
            if op.name == "count":
                inner = op.inner  # type: ignore[attr-defined]
                inner.state = {k: v for k, v in keys.items() if stable_hash(k) % before == r}
    new_plan = _scaled(logical, after)
    new = hand_over(old, new_plan)
    assert keyed_state(list(new.values())) == {"count": keys}
    stage = new_plan.stages[new_plan.stage_of[_node(logical, "count")]]
    for r in range(after):
        held = keyed_state([new[(stage.id, r)]]).get("count", {})
        assert all(stable_hash(k) % after == r for k in held)
    assert sum(len(keyed_state([rep]).get("count", {})) for rep in new.values()) == len(keys)


def _scaled(logical: LogicalPlan, replicas: int) -> Any:
    logical.place(_node(logical, "count"), None, replicas)
    plan = physical(logical, 1)
    stage = plan.stages[plan.stage_of[_node(logical, "count")]]
    assert stage.replicas == replicas
    assert all(i.source is None or plan.stages[i.source] for i in stage.inputs)
    assert replicas == 1 or any(
        o.partition is Partition.HASH for s in plan.stages for o in s.outputs
    )
    return plan


def _node(logical: LogicalPlan, name: str) -> Any:
    return next(n.id for n in logical.nodes if n.name == name)


def _plan(svc: sperse.Service) -> Any:
    run = svc._run
    assert run is not None
    return run.plan


def _replicas(svc: sperse.Service, name: str) -> int:
    plan = _plan(svc)
    return int(plan.stages[plan.stage_of[_node(plan.logical, name)]].replicas)


def test_update_after_scale_reaches_every_new_replica_and_keeps_counting() -> None:
    svc = counter_flow("rescaled").serve("rescaled", executor=InProcess(seed=5))
    try:
        users = [f"u{i}" for i in range(12)]
        for user in users:
            svc.request({"user": user, "tag": "a"}).result(WAIT)
        svc.scale("count", replicas=3)
        svc.update("answer", lambda pair: {"user": pair[0], "n": pair[1][1], "v": 2})
        got = [svc.request({"user": u, "tag": "b"}).result(WAIT) for u in users]
        assert got == [{"user": u, "n": 2, "v": 2} for u in users]
    finally:
        svc.stop()
    with pytest.raises(sperse.ServiceStopped, match="nothing to scale"):
        svc.scale("count", replicas=2)
