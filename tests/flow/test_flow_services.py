"""Services in this process: ``f.requests()`` ... ``respond()``, ``f.serve(name)``,
``Service.request`` and ``stop``. Waits are on Pendings with deadlines, never sleeps."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import sperse
from sperse._flow.api import InProcess

WAIT = 30.0


def remember(state: dict[str, int], r: dict[str, Any]) -> tuple[dict[str, int], Any]:
    n = state.get("n", 0) + 1
    return {"n": n}, (r["x"], n)


def score(pair: tuple[str, tuple[int, int]]) -> dict[str, Any]:
    user, (x, n) = pair
    return {"user": user, "x": x, "n": n}


def counter(name: str = "scorer") -> tuple[sperse.Flow, sperse.Pending[Any]]:
    f = sperse.Flow(name=name)
    out = (
        f.requests()
        .key_by(lambda r: r["user"])
        .scan({}, remember, name="remember")
        .map(score, name="score")
    )
    return f, out.respond()


def serve(name: str = "scorer") -> tuple[sperse.Service, sperse.Pending[Any]]:
    f, done = counter(name)
    return f.serve(name, executor=InProcess()), done


def test_each_request_is_answered_with_its_keys_state() -> None:
    svc, done = serve()
    try:
        pendings = [(u, i, svc.request({"user": u, "x": i})) for i in range(50) for u in "abc"]
        for user, i, pending in pendings:
            assert pending.result(WAIT) == {"user": user, "x": i, "n": i + 1}
    finally:
        svc.stop()
    assert done.result(WAIT) is None
    assert svc.sent == svc.answered == 150


def test_many_client_threads_at_once_each_get_their_own_answers() -> None:
    svc, _ = serve()
    errors: list[str] = []

    def client(t: int) -> None:
        for i in range(100):
            got = svc.request({"user": f"u{t}", "x": i}).result(WAIT)
            if got != {"user": f"u{t}", "x": i, "n": i + 1}:
                errors.append(f"thread {t}: {got}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    svc.stop()
    assert errors == []
    assert svc.answered == 600


def test_keyed_state_is_partitioned_over_replicas() -> None:
    f = sperse.Flow("parts")
    out = (
        f.requests()
        .key_by(lambda r: r["user"])
        .scan({}, remember, name="remember")
        .on(replicas=3)
        .map(score, name="score")
    )
    out.respond()
    svc = f.serve("parts", executor=InProcess(seed=7))
    try:
        ps = [(u, i, svc.request({"user": u, "x": i})) for i in range(20) for u in "abcdefg"]
        assert all(p.result(WAIT) == {"user": u, "x": i, "n": i + 1} for u, i, p in ps)
    finally:
        svc.stop()


def picky(x: int) -> int:
    if x == 3:
        raise ValueError("three is not welcome")
    return x * 10


def test_an_operator_that_raises_fails_that_request_only() -> None:
    f = sperse.Flow("picky")
    f.requests().map(picky, name="picky").respond()
    svc = f.serve("picky", executor=InProcess())
    try:
        ps = [svc.request(x) for x in range(6)]
        with pytest.raises(sperse.FlowFailed, match="picky") as info:
            ps[3].result(WAIT)
        assert info.value.operator == "picky"
        assert info.value.type_name == "ValueError"
        assert [p.result(WAIT) for i, p in enumerate(ps) if i != 3] == [0, 10, 20, 40, 50]
        assert svc.request(7).result(WAIT) == 70
    finally:
        svc.stop()


def test_stop_answers_what_is_in_flight_and_refuses_new_requests() -> None:
    gate = threading.Event()

    def slow(x: int) -> int:
        gate.wait(WAIT)
        return x + 1

    f = sperse.Flow("slow")
    done = f.requests().map(slow, name="slow").respond()
    svc = f.serve("slow", executor=InProcess())
    ps = [svc.request(x) for x in range(5)]
    stopper = threading.Thread(target=svc.stop)
    stopper.start()
    gate.set()
    stopper.join(WAIT)
    assert [p.result(WAIT) for p in ps] == [1, 2, 3, 4, 5]
    assert done.result(WAIT) is None
    with pytest.raises(sperse.ServiceStopped, match="slow"):
        svc.request(9)
    assert not svc.running


def test_a_request_that_gets_no_answer_in_time_fails_with_task_timeout() -> None:
    gate = threading.Event()

    def held(x: int) -> int:
        gate.wait(WAIT)
        return x

    f = sperse.Flow("held")
    f.requests().map(held, name="held").respond()
    svc = f.serve("held", executor=InProcess())
    try:
        pending = svc.request(1, timeout=0.2)
        with pytest.raises(sperse.TaskTimeout, match="held"):
            pending.result(WAIT)
    finally:
        gate.set()
        svc.stop()


def test_a_retried_request_with_the_same_key_is_answered_once() -> None:
    svc, _ = serve("idem")
    try:
        first = svc.request({"user": "ada", "x": 1}, key="req-1")
        again = svc.request({"user": "ada", "x": 1}, key="req-1")
        assert again is first
        assert first.result(WAIT) == {"user": "ada", "x": 1, "n": 1}
        # the key's state counted it once
        assert svc.request({"user": "ada", "x": 2}).result(WAIT)["n"] == 2
    finally:
        svc.stop()


def test_service_finds_a_service_of_this_process_by_name() -> None:
    svc, _ = serve("found")
    try:
        assert sperse.service("found") is svc
        assert sperse.service("found").request({"user": "a", "x": 0}).result(WAIT)["n"] == 1
        assert svc in sperse.services()
    finally:
        svc.stop()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda f: f.requests().filter(bool).respond(), "filter is not one of them"),
        (lambda f: f.requests().collect(), "one requests\\(\\) source and one respond"),
        (lambda f: f.source([1]).map(str).respond(), "one requests\\(\\) source"),
    ],
)
def test_a_service_that_cannot_answer_one_to_one_is_refused(build: Any, match: str) -> None:
    f = sperse.Flow("bad")
    build(f)
    with pytest.raises(ValueError, match=match):
        f.serve("bad", executor=InProcess())


def test_a_service_flow_is_served_not_run() -> None:
    f, _ = counter("notrun")
    with pytest.raises(ValueError, match="serve"):
        f.run()
    g = sperse.Flow("plain")
    g.source([1]).collect()
    with pytest.raises(ValueError, match="not a service"):
        g.serve("plain")


def test_a_retry_from_another_client_is_answered_from_the_first_answer() -> None:
    svc, _ = serve("idem2")
    try:
        first = svc.request({"user": "ada", "x": 1}, key="k").result(WAIT)
        svc._by_key.clear()  # as another client, which has Pendings of its own
        retry = svc.request({"user": "ada", "x": 1}, key="k")
        assert retry.result(WAIT) == first == {"user": "ada", "x": 1, "n": 1}
        assert svc.request({"user": "ada", "x": 2}).result(WAIT)["n"] == 2  # counted once
        svc._by_key.clear()
        # retries while the first is in flight wait for its answer
        ps = []
        for _ in range(3):
            ps.append(svc.request({"user": "bob", "x": 5}, key="k2"))
            svc._by_key.clear()
        assert [p.result(WAIT)["n"] for p in ps] == [1, 1, 1]
    finally:
        svc.stop()


def test_idempotency_keys_in_the_replica() -> None:
    from sperse._flow.service import Answer, Envelope, Idempotency

    idem = Idempotency(keep=2)
    a, b, c = (Envelope("c", i, i, key="k") for i in range(3))
    assert idem.arrive([a, b]) == [a]  # b waits for a's answer
    [b_answered] = idem.answered([Answer("c", 0, "A", key="k")])
    assert (b_answered.rid, b_answered.value, b_answered.answered) == (1, "A", True)
    [c_answered] = idem.arrive([c])
    assert (c_answered.value, c_answered.answered) == ("A", True)
    idem.answered([Answer("c", 5, 1, key="x"), Answer("c", 6, 2, key="y")])
    assert idem.arrive([Envelope("c", 7, 7, key="k")])[0].answered is False  # forgotten


def score_v2(pair: tuple[str, tuple[int, int]]) -> dict[str, Any]:
    user, (x, n) = pair
    return {"user": user, "x": x, "n": n, "v": 2}


def test_update_swaps_an_operator_keeping_keyed_state_and_losing_no_request() -> None:
    svc, _ = serve("updated")
    stop = threading.Event()
    seen: list[dict[str, Any]] = []

    def busy() -> None:  # requests flowing while the update happens
        i = 0
        while not stop.is_set():
            seen.append(svc.request({"user": "busy", "x": i}).result(WAIT))
            i += 1

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        before = [svc.request({"user": "ada", "x": i}).result(WAIT) for i in range(3)]
        assert all("v" not in a for a in before)
        svc.update("score", score_v2)
        after = svc.request({"user": "ada", "x": 3}).result(WAIT)
        assert after == {"user": "ada", "x": 3, "n": 4, "v": 2}  # the state survived
    finally:
        stop.set()
        thread.join(WAIT)
        svc.stop()
    # every busy request answered once, in order, by the old function then the new one
    assert [a["n"] for a in seen] == list(range(1, len(seen) + 1))
    versions = [a.get("v", 1) for a in seen]
    assert versions == sorted(versions)


def test_update_refuses_an_unknown_or_functionless_operator() -> None:
    svc, _ = serve("refused")
    try:
        with pytest.raises(ValueError, match=r"no operator called 'scroe'.*Did you mean: 'score'"):
            svc.update("scroe", score_v2)
        with pytest.raises(ValueError, match="a respond has no function"):
            svc.update("respond", score_v2)
    finally:
        svc.stop()


def test_timeouts_share_one_thread_and_answered_requests_keep_their_answer() -> None:
    svc, _ = serve("timed")
    try:
        svc.request({"user": "a", "x": -1}, timeout=600).result(WAIT)  # the timeouts' thread
        threads = threading.active_count()
        pendings = [svc.request({"user": "a", "x": i}, timeout=600) for i in range(300)]
        assert threading.active_count() <= threads + 1
        assert [p.result(WAIT)["x"] for p in pendings] == list(range(300))
    finally:
        svc.stop()
