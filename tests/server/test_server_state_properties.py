"""Invariants of the server's state machine over random event sequences (Hypothesis).

Any interleaving of submissions (with retries, resubmissions, uploads), pool events (current
or stale attempts), cancels, drops by the driver and time passing, then every attempt left
run to its end: every task gets one terminal event (re-sent unchanged when resubmitted),
nothing after it, a task runs once per worker death it survives, every upload is unlinked
exactly once, and nothing is left in flight (no attempt, no held-back Started, no timer).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st
from state_harness import Machine, call, create, files, machine, pool_error, value

from sperse._core import Done, ErrorInfo, Failed, Output, Started
from sperse._server.actions import StartObject, StopObject, Submit, SubmitToObject, Unlink
from sperse._server.model import HeldObject, ObjectOp
from sperse._server.remote import REBUILD

TASKS = ("t1", "t2", "t3")

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(TASKS), st.integers(0, 2)),
        st.tuples(
            st.sampled_from(["start", "output", "done", "raise", "cancel", "drop"]),
            st.sampled_from(TASKS),
            st.integers(-3, -1),  # which attempt: -1 the latest, others earlier ones
        ),
        st.tuples(
            st.just("fail"),
            st.sampled_from(TASKS),
            st.sampled_from(["worker_died", "cancelled", "runner_error"]),
        ),
        st.tuples(st.just("tick"), st.sampled_from(TASKS), st.sampled_from([0.001, 0.01])),
    ),
    max_size=40,
)


def apply(m: Machine, op: tuple, uploads: itertools.count) -> None:
    verb, task, arg = op
    if verb == "tick":
        m.tick(arg)
        return
    if verb == "submit":
        m.submit(task, retries=arg, uploads=(f"u{next(uploads)}", f"u{next(uploads)}"))
        return
    if verb == "cancel":
        m.cancel(task)
        return
    attempts = m.pool_ids.get(task, [])
    index = arg if isinstance(arg, int) else -1
    if len(attempts) < -index:
        return
    pool_id = attempts[index]
    tasks = m.state.tasks
    if verb == "start":
        if pool_id not in m.started:  # a pool says once that an attempt started
            m.started.add(pool_id)
            m.feed(tasks.started(pool_id, 1, m.now))
    elif verb == "output":
        m.feed(tasks.output(pool_id, "stdout", "hi"))
    elif verb == "done":
        m.feed(tasks.done(pool_id, [value()]))
    elif verb == "raise":
        m.feed(tasks.done(pool_id, ErrorInfo("raised", "E", "e")))
    elif verb == "drop":  # the driver could not run it (its pool is gone, ...)
        m.feed(tasks.attempt_failed(pool_id, ErrorInfo("internal", "PoolError", "no pool")))
    else:
        m.feed(tasks.failed(pool_id, pool_error(arg, "died")))


def drain(m: Machine) -> None:
    """Run every attempt still in flight to its end, and let time pass."""
    while m.state.tasks.attempts:
        pool_id = next(iter(m.state.tasks.attempts))
        m.feed(m.state.tasks.done(pool_id, [value()]))
    m.tick(1.0)


@settings(max_examples=400, deadline=None)
@given(ops)
def test_every_task_ends_once_and_leaves_nothing_behind(sequence: list[tuple]) -> None:
    m = machine()
    uploads = itertools.count()
    for op in sequence:
        apply(m, op, uploads)
    drain(m)
    submitted = {op[1] for op in sequence if op[0] == "submit"}
    events: dict[str, list[object]] = defaultdict(list)
    for emit in m.emits():
        events[emit.event.task_id].append(emit.event)
    assert set(events) == submitted
    for task_id, sent in events.items():
        ends = [i for i, e in enumerate(sent) if isinstance(e, Done | Failed)]
        assert ends, f"{task_id} never ended"
        first = sent[ends[0]]
        # After its end: only the same end again (a resubmission after the end).
        assert all(e is first for e in sent[ends[0] :]), sent
        starts = [e for e in sent if isinstance(e, Started)]
        assert len(starts) <= len(m.pool_ids[task_id])  # one Started per attempt at most
        assert all(isinstance(e, Started | Output) for e in sent[: ends[0]])
    # A task runs once, and once more per worker death it survives (within the retries of
    # its first submission: a resubmission never runs it again).
    first_retries: dict[str, int] = {}
    for op in sequence:
        if op[0] == "submit":
            first_retries.setdefault(op[1], op[2])
    for task_id, attempts in m.pool_ids.items():
        deaths = sum(
            1 for op in sequence if op[0::2] == ("fail", "worker_died") and op[1] == task_id
        )
        assert len(attempts) <= 1 + min(deaths, first_retries[task_id])
        submits = [s for s in m.of(Submit) if s.pool_id in attempts]
        assert len(submits) == len(attempts)
    # Every upload has exactly one owner, which unlinks it once.
    unlinked = Counter(name for u in m.of(Unlink) for name in u.names)
    made = {f"u{i}" for i in range(next(uploads))}
    assert set(unlinked) == made and set(unlinked.values()) <= {1}
    assert not m.state.sessions["s"].tasks and not m.state.tasks.attempts
    assert len(m.state.tasks.hold_back) == 0 and m.timer is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["use", "end", "release", "pin", "unpin"]), st.integers(0, 3)),
        max_size=30,
    )
)
def test_a_held_values_files_go_once_after_release_and_last_use(
    sequence: list[tuple[str, int]],
) -> None:
    """Tasks that use a held value, readers that pin it, its release: its files are
    unlinked exactly once, when it is released and nothing uses it."""
    m = machine()
    m.submit("make", inline_limit=1)
    m.done("make", value("x", files("f")))
    held: HeldObject = m.state.sessions["s"].objects["obj1"]
    running: list[str] = []
    pins = 0
    released = False
    for n, (verb, i) in enumerate(sequence):
        if verb == "use" and not released:
            m.submit(f"u{n}", refs=("obj1",))
            running.append(f"u{n}")
        elif verb == "end" and running:
            m.done(running.pop(i % len(running)))
        elif verb == "release":
            m.feed(m.state.release("s", "obj1"))
            released = True
        elif verb == "pin" and not released:
            m.state.held.use(held)
            pins += 1
        elif verb == "unpin" and pins:
            m.feed(m.state.held.unpin(held))
            pins -= 1
        gone = [u for u in m.of(Unlink) if "f" in u.names]
        assert len(gone) == (1 if released and not running and not pins else 0)
    assert held.users == len(running) + pins


object_ops = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.integers(0, 3)),
        st.tuples(st.sampled_from(["start", "done", "died", "cancel"]), st.integers(0, 3)),
        st.tuples(st.sampled_from(["exit", "rebuilt", "rebuild_failed", "close"]), st.just(0)),
        st.tuples(st.just("release"), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), object_ops)
def test_every_call_of_a_remote_object_ends_once(restart: bool, sequence: list) -> None:
    """Calls from another session, the object's worker dying (rebuilt or not), closes and
    releases in any order: every call gets one terminal event; a dead object gets nothing
    more submitted and is stopped once."""
    m = machine("s", "other")
    m.submit("c", object=create("o1", restart=restart))
    m.done("c")
    calls: list[str] = []
    rebuilds = 0
    for n, (verb, i) in enumerate(sequence):
        pick = calls[i % len(calls)] if calls else None
        if verb == "call":
            calls.append(f"k{n}")
            m.submit(f"k{n}", session="other", object=call("o1"))
        elif verb == "exit":
            m.feed(m.state.object_worker_exited("o1", 7, "killed"))
        elif verb in ("rebuilt", "rebuild_failed"):
            rebuilds += 1
            pool_id = f"{REBUILD}o1/{rebuilds}"
            if verb == "rebuilt":
                m.feed(m.state.rebuilt("o1", pool_id, [value()]))
            else:
                m.feed(m.state.rebuild_failed("o1", pool_id, pool_error("runner_error", "broken")))
        elif verb == "close":
            m.submit(f"x{n}", session="other", object=ObjectOp("o1", "close"))
        elif verb == "release":
            m.feed(m.state.release("s", "o1"))
        elif pick is not None and pick in m.pool_ids:
            if verb == "start":
                if m.pool_id(pick) not in m.started:
                    m.started.add(m.pool_id(pick))
                    m.start(pick)
            elif verb == "done":
                m.done(pick)
            elif verb == "died":
                m.fail(pick, "worker_died")
            else:
                m.cancel(pick, session="other")
    drain(m)
    ends = Counter(e.event.task_id for e in m.emits("other") if isinstance(e.event, Done | Failed))
    assert all(ends[k] == 1 for k in calls), ends
    stops = [i for i, a in enumerate(m.actions) if isinstance(a, StopObject)]
    assert len(stops) <= 1
    if stops:
        assert m.state.objects.alive == {}
        later = m.actions[stops[0] :]
        assert not [a for a in later if isinstance(a, SubmitToObject | StartObject)]
