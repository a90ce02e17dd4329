"""The job scheduler as a pure state machine: no processes, no files, no clock.

Each case is a table: the scheduler's set-up, the events told to it, and the actions
expected. ``Driver`` plays the shell: it answers ``ReadInput`` and ``ReadUnit`` from a list
of inputs and collects every other action up to the next ``Wait`` (or ``Finish``,
``ReplaceCluster``). A Hypothesis property drives random runs: every unit ends exactly once,
and no slot ever has more than its credits in flight.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sperse.jobs._schedule import (
    BACKSTOP_GRACE,
    DEPTH,
    LOST_GRACE,
    MAX_BATCH_BYTES,
    MAX_BATCH_UNITS,
    TARGET_BATCH_SECONDS,
    Action,
    BatchId,
    Cancel,
    Completed,
    Fail,
    Finish,
    JobScheduler,
    ModuleMissing,
    Outcome,
    ReadInput,
    ReadUnit,
    Refused,
    ReplaceCluster,
    Send,
    ServerGone,
    Skip,
    SlotId,
    UnitId,
    Wait,
    WorkerGone,
)


@dataclass
class Driver:
    """The shell's part, in memory: inputs ``1..n`` (``done``: outputs there already;
    ``refused``: names that cannot be units; ``unreadable``: reads that fail), each
    ``size`` bytes."""

    scheduler: JobScheduler
    n: int
    done: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)
    unreadable: set[int] = field(default_factory=set)
    size: int = 10
    read: int = 0  # inputs read so far

    def until_wait(self, now: float = 0.0) -> list[Action]:
        """Every action up to and including the next Wait, Finish or ReplaceCluster; the
        reads are answered and not listed."""
        out: list[Action] = []
        while True:
            action = self.scheduler.step(now)
            if isinstance(action, ReadInput):
                out.extend(self.next_input())
            elif isinstance(action, ReadUnit):
                if action.unit in self.unreadable:
                    out.extend(self.scheduler.unit_unreadable(action.unit, "gone"))
                else:
                    self.scheduler.unit_read(action.unit, self.size)
            else:
                out.append(action)
                if isinstance(action, Wait | Finish | ReplaceCluster):
                    return out

    def next_input(self) -> list[Action]:
        if self.read == self.n:
            self.scheduler.inputs_ended()
            return []
        self.read += 1
        unit = UnitId(self.read)
        if unit in self.refused:
            return self.scheduler.input(unit, refused="reserved")
        return self.scheduler.input(unit, done=unit in self.done)


def u(*ids: int) -> tuple[UnitId, ...]:
    return tuple(UnitId(i) for i in ids)


def send(batch: int, slot: int, *units: int, with_module: bool = False) -> Send:
    return Send(BatchId(batch), SlotId(slot), u(*units), with_module)


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def scheduler(
    capacities: list[int],
    *,
    retries: int = 3,
    timeout: float | None = None,
    replacements: int = 0,
) -> JobScheduler:
    return JobScheduler(capacities, retries=retries, timeout=timeout, replacements=replacements)


# ---- sending: credits, skipping, the end --------------------------------------------------


@dataclass(frozen=True)
class FillCase:
    id: str
    capacities: list[int]
    n: int
    expected: list[Action]
    done: set[int] = field(default_factory=set)
    refused: set[int] = field(default_factory=set)
    unreadable: set[int] = field(default_factory=set)


FILL_CASES = [
    FillCase("no input: the job is over at once", [2], 0, [Finish(None)]),
    FillCase(
        "first batches hold one unit, as many as the credits",
        [2],
        5,
        [send(0, 0, 1), send(1, 0, 2), Wait(None)],
    ),
    FillCase(
        "slots take batches in turn",
        [1, 1, 1],
        5,
        [send(0, 0, 1), send(1, 1, 2), send(2, 2, 3), Wait(None)],
    ),
    FillCase(
        "what is done already is skipped",
        [2],
        3,
        [Skip(UnitId(1)), Skip(UnitId(2)), send(0, 0, 3), Wait(None)],
        done={1, 2},
    ),
    FillCase(
        "everything done: nothing is sent",
        [2],
        2,
        [Skip(UnitId(1)), Skip(UnitId(2)), Finish(None)],
        done={1, 2},
    ),
    FillCase(
        "a refused name fails without running",
        [1],
        2,
        [Fail(UnitId(1), "input", "reserved", 1), send(0, 0, 2), Wait(None)],
        refused={1},
    ),
    FillCase(
        "an unreadable input fails, the next one goes in its place",
        [1],
        2,
        [Fail(UnitId(1), "input", "gone", 1), send(0, 0, 2), Wait(None)],
        unreadable={1},
    ),
]


@pytest.mark.parametrize("case", FILL_CASES, ids=lambda c: c.id)
def test_fill(case: FillCase) -> None:
    driver = Driver(
        scheduler(case.capacities),
        case.n,
        done=case.done,
        refused=case.refused,
        unreadable=case.unreadable,
    )
    assert driver.until_wait() == case.expected


def test_inputs_are_read_only_for_free_credits() -> None:
    """However many inputs, only those of the batches in flight are read, plus one."""
    driver = Driver(scheduler([2]), 1000)
    driver.until_wait()
    assert driver.read == 2 * 1  # two batches of one unit
    driver.scheduler.settled(BatchId(0), Completed(0.001, 20), now=1.0)
    actions = driver.until_wait(1.0)
    (batch,) = sends(actions)
    assert driver.read <= 2 + len(batch.units) + 1


def test_a_job_is_over_when_its_last_batch_completes() -> None:
    driver = Driver(scheduler([2]), 2)
    assert driver.until_wait() == [send(0, 0, 1), send(1, 0, 2), Wait(None)]
    assert driver.scheduler.settled(BatchId(0), Completed(0.1, 10), now=1.0) == []
    assert driver.until_wait(1.0) == [Wait(None)]
    assert driver.scheduler.settled(BatchId(1), Completed(0.1, 10), now=2.0) == []
    assert driver.until_wait(2.0) == [Finish(None)]


# ---- batch sizes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeCase:
    id: str
    seconds: float  # the first (one-unit) batch took
    nbytes: int  # its input and output
    expected: int  # units in the next batch
    total: int | None = None  # inputs counted in advance
    capacity: int = 1


SIZE_CASES = [
    SizeCase("about TARGET_BATCH_SECONDS of units", 0.01, 10, int(TARGET_BATCH_SECONDS / 0.01)),
    SizeCase("at most MAX_BATCH_UNITS", 1e-5, 10, MAX_BATCH_UNITS),
    SizeCase("slow units travel alone", 1.0, 10, 1),
    SizeCase("big units: a MiB at most", 1e-5, MAX_BATCH_BYTES // 3, 10),
    SizeCase("near the end, an even share of what is left", 1e-5, 10, 2, total=12, capacity=4),
]


@pytest.mark.parametrize("case", SIZE_CASES, ids=lambda c: c.id)
def test_batch_size(case: SizeCase) -> None:
    s = scheduler([case.capacity])
    if case.total is not None:
        s.inputs_counted(case.total)
    driver = Driver(s, 10_000 if case.total is None else case.total)
    first = sends(driver.until_wait())
    assert [len(b.units) for b in first] == [1] * case.capacity
    s.settled(BatchId(0), Completed(case.seconds, case.nbytes), now=1.0)
    (batch,) = sends(driver.until_wait(1.0))
    assert len(batch.units) == case.expected


def test_a_batch_stops_at_a_mebibyte() -> None:
    driver = Driver(scheduler([1]), 100, size=MAX_BATCH_BYTES // 3 + 1)
    driver.until_wait()
    driver.scheduler.settled(BatchId(0), Completed(1e-5, 10), now=1.0)  # small units, it thinks
    (batch,) = sends(driver.until_wait(1.0))
    assert len(batch.units) == 3  # the third passes the limit


# ---- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeCase:
    """Unit 1 sent alone (batch 0) to slot 0 of ``capacities``; it settles with
    ``outcome``; ``then``: the actions of settling, and of the steps up to the next wait."""

    id: str
    outcome: Outcome
    then: list[Action]
    capacities: list[int] = field(default_factory=lambda: [1])
    retries: int = 3
    replacements: int = 0


LOST = ServerGone("the server went away")
DIED = WorkerGone("the worker died")
NO_WASMTIME = Refused("no wasmtime", "s0 could not run the job: no wasmtime")

OUTCOME_CASES = [
    OutcomeCase("completed: the job is over", Completed(0.1, 10), [Finish(None)]),
    OutcomeCase(
        "a lost server's unit goes to another server",
        LOST,
        [send(1, 1, 1), Wait(None)],
        capacities=[1, 1],
    ),
    OutcomeCase(
        "a lost server's unit without retries fails",
        LOST,
        [Fail(UnitId(1), "server_lost", "the server went away (tried once)", 1), Finish(None)],
        retries=0,
    ),
    OutcomeCase(
        "the last server lost: the job ends with that",
        LOST,
        [Finish("every server of the job was lost")],
    ),
    OutcomeCase(
        "the last server lost: a fresh cluster, when the job may start one",
        LOST,
        [ReplaceCluster()],
        replacements=1,
    ),
    OutcomeCase(
        "a worker that died alone under its unit: tried again",
        DIED,
        [send(1, 0, 1), Wait(None)],
    ),
    OutcomeCase(
        "a worker that died alone under its unit, without retries: it fails",
        DIED,
        [Fail(UnitId(1), "worker_died", "the worker died (tried once)", 1), Finish(None)],
        retries=0,
    ),
    OutcomeCase(
        "a module missing: the batch again, with it",
        ModuleMissing("None", "s0 could not run the job: it answered 'need-module'"),
        [send(0, 0, 1, with_module=True)],
    ),
    OutcomeCase(
        "a server that cannot run the job: the units go elsewhere, unblamed",
        NO_WASMTIME,
        [send(1, 1, 1), Wait(None)],
        capacities=[1, 1],
        retries=0,
    ),
    OutcomeCase(
        "no server can run the job: it ends with why",
        NO_WASMTIME,
        [Finish("s0 could not run the job: no wasmtime")],
    ),
]


@pytest.mark.parametrize("case", OUTCOME_CASES, ids=lambda c: c.id)
def test_outcome(case: OutcomeCase) -> None:
    s = scheduler(case.capacities, retries=case.retries, replacements=case.replacements)
    driver = Driver(s, 1)
    assert sends(driver.until_wait()) == [send(0, 0, 1)]
    actions = s.settled(BatchId(0), case.outcome, now=1.0)
    if not any(isinstance(a, Send) for a in actions):
        actions += driver.until_wait(1.0)
    assert actions == case.then


def test_a_worker_that_died_under_a_batch_blames_no_unit() -> None:
    """Each unit of the batch goes again alone, without counting an attempt."""
    s = scheduler([3], retries=0)
    driver = Driver(s, 6)
    assert sends(driver.until_wait()) == [send(0, 0, 1), send(1, 0, 2), send(2, 0, 3)]
    for batch in (0, 1, 2):  # quick units: more to a batch
        s.settled(BatchId(batch), Completed(1e-5, 10), now=1.0)
    assert sends(driver.until_wait(1.0)) == [send(3, 0, 4, 5, 6)]
    assert s.settled(BatchId(3), DIED, now=2.0) == []
    assert driver.until_wait(2.0) == [send(4, 0, 4), send(5, 0, 5), send(6, 0, 6), Wait(None)]
    assert [s.attempts(unit) for unit in u(4, 5, 6)] == [0, 0, 0]
    # Alone, a death is the unit's: without retries, it fails.
    (fail,) = s.settled(BatchId(5), DIED, now=3.0)
    assert fail == Fail(UnitId(5), "worker_died", "the worker died (tried once)", 1)


def test_a_retried_unit_avoids_the_slot_it_failed_on() -> None:
    s = scheduler([1, 1])
    driver = Driver(s, 3)
    assert sends(driver.until_wait()) == [send(0, 0, 1), send(1, 1, 2)]
    assert s.settled(BatchId(1), DIED, now=1.0) == []  # unit 2 died alone on slot 1
    assert s.attempts(UnitId(2)) == 1
    # Slot 1 is free but unit 2 waits for slot 0; slot 1 takes the next input.
    assert sends(driver.until_wait(1.0)) == [send(2, 1, 3)]
    s.settled(BatchId(0), Completed(0.1, 10), now=2.0)
    assert sends(driver.until_wait(2.0)) == [send(3, 0, 2)]


def test_a_fresh_cluster_takes_the_work() -> None:
    s = scheduler([2], replacements=1)
    driver = Driver(s, 2)
    assert sends(driver.until_wait()) == [send(0, 0, 1), send(1, 0, 2)]
    s.settled(BatchId(0), LOST, now=1.0)
    s.settled(BatchId(1), LOST, now=1.0)
    assert driver.until_wait(1.0) == [ReplaceCluster()]
    assert s.add_slots([2]) == [SlotId(1)]
    # Both were on the lost server: suspects, each alone on the fresh one.
    assert driver.until_wait(1.0) == [send(2, 1, 1), Wait(None)]
    s.settled(BatchId(2), Completed(0.1, 10), now=2.0)
    assert driver.until_wait(2.0) == [send(3, 1, 2), Wait(None)]
    s.settled(BatchId(3), Completed(0.1, 10), now=3.0)
    assert driver.until_wait(3.0) == [Finish(None)]


def test_a_loss_blamed_on_nobody_uses_up_the_fresh_clusters() -> None:
    s = scheduler([2], replacements=0)
    driver = Driver(s, 2)
    driver.until_wait()
    s.settled(BatchId(0), LOST, now=1.0)
    s.settled(BatchId(1), LOST, now=1.0)
    assert driver.until_wait(1.0) == [Finish("every server of the job was lost")]


def test_a_unit_that_kills_its_server_fails_alone() -> None:
    """Unit 1 kills every server it runs on; unit 2 ran beside it once. Unit 2 completes;
    unit 1 is blamed only for the losses when it ran alone, and fails after its retries;
    those losses do not use up the fresh clusters."""
    s = scheduler([2], retries=1, replacements=1)
    driver = Driver(s, 2)
    assert sends(driver.until_wait()) == [send(0, 0, 1), send(1, 0, 2)]
    assert s.settled(BatchId(0), LOST, now=1.0) == []
    assert s.settled(BatchId(1), LOST, now=1.0) == []
    assert (s.attempts(UnitId(1)), s.attempts(UnitId(2))) == (0, 0)
    assert driver.until_wait(1.0) == [ReplaceCluster()]
    s.add_slots([2])
    assert driver.until_wait(1.0) == [send(2, 1, 1), Wait(None)]  # alone: unit 2 waits
    assert s.settled(BatchId(2), LOST, now=2.0) == []
    assert s.attempts(UnitId(1)) == 1
    assert driver.until_wait(2.0) == [ReplaceCluster()]  # the job's one, given back
    s.add_slots([2])
    assert driver.until_wait(2.0) == [send(3, 2, 2), Wait(None)]
    s.settled(BatchId(3), Completed(0.1, 10), now=3.0)
    assert driver.until_wait(3.0) == [send(4, 2, 1), Wait(None)]
    (fail,) = s.settled(BatchId(4), LOST, now=4.0)
    assert fail == Fail(UnitId(1), "server_lost", "the server went away (tried 2 times)", 2)
    assert driver.until_wait(4.0) == [Finish(None)]


def test_while_suspects_wait_slots_drain_and_take_one_each() -> None:
    """Slot 0 is lost with two batches; slot 1, busy, takes no new batch until it is
    empty, then one suspect alone; unit 5 (not a suspect) waits for the suspects."""
    s = scheduler([2, 2])
    driver = Driver(s, 5)
    assert sends(driver.until_wait()) == [
        send(0, 0, 1),
        send(1, 1, 2),
        send(2, 0, 3),
        send(3, 1, 4),
    ]
    s.settled(BatchId(0), LOST, now=1.0)
    s.settled(BatchId(2), LOST, now=1.0)
    s.settled(BatchId(1), Completed(0.1, 10), now=1.0)
    assert sends(driver.until_wait(1.0)) == []  # slot 1 still runs unit 4
    s.settled(BatchId(3), Completed(0.1, 10), now=1.5)
    assert sends(driver.until_wait(1.5)) == [send(4, 1, 1)]
    s.settled(BatchId(4), Completed(0.1, 10), now=2.0)
    assert sends(driver.until_wait(2.0)) == [send(5, 1, 3)]
    s.settled(BatchId(5), Completed(0.1, 10), now=2.5)
    assert sends(driver.until_wait(2.5))[0].units == u(5)


@pytest.mark.parametrize(
    ("replace", "error"),
    [
        (lambda s: s.replacement_failed("boom"), "a new one could not start: boom"),
        (lambda s: s.add_slots([]), "the new cluster has no server that matches"),
    ],
    ids=["cannot start", "no server matches"],
)
def test_a_fresh_cluster_that_does_not_work_ends_the_job(replace, error) -> None:  # type: ignore[no-untyped-def]
    s = scheduler([1], replacements=2)
    driver = Driver(s, 1)
    driver.until_wait()
    s.settled(BatchId(0), LOST, now=1.0)
    assert driver.until_wait(1.0) == [ReplaceCluster()]
    replace(s)
    (finish,) = driver.until_wait(1.0)
    assert isinstance(finish, Finish) and finish.error is not None and error in finish.error


def test_a_module_missing_twice_refuses_the_slot() -> None:
    s = scheduler([1])
    driver = Driver(s, 1)
    driver.until_wait()
    missing = ModuleMissing("None", "s0 could not run the job: it answered 'need-module'")
    assert s.settled(BatchId(0), missing, now=1.0) == [send(0, 0, 1, with_module=True)]
    assert s.settled(BatchId(0), missing, now=2.0) == []
    assert driver.until_wait(2.0) == [Finish(missing.refusal)]


# ---- time limits and lost servers -------------------------------------------------------------


def test_no_time_limit_no_deadline() -> None:
    driver = Driver(scheduler([1]), 1)
    assert driver.until_wait(5.0)[-1] == Wait(None)


def test_a_batch_with_limits_is_watched_until_it_starts() -> None:
    s = scheduler([1], timeout=1.0)
    driver = Driver(s, 1)
    assert driver.until_wait(10.0)[-1] == Wait(10.5)  # look again for its start
    s.started(BatchId(0), 10.2)
    limit = 10.2 + DEPTH * 1 * 1.0 + BACKSTOP_GRACE
    assert driver.until_wait(11.0) == [Wait(limit)]


def test_a_batch_far_past_its_limits_is_cancelled_and_its_unit_fails() -> None:
    s = scheduler([1], timeout=1.0)
    driver = Driver(s, 1)
    driver.until_wait(0.0)
    s.started(BatchId(0), 0.0)
    limit = DEPTH * 1.0 + BACKSTOP_GRACE
    assert driver.until_wait(limit - 0.1) == [Wait(limit)]
    assert driver.until_wait(limit)[0] == Cancel(BatchId(0), "timeout")
    (fail,) = s.settled(BatchId(0), WorkerGone("cancelled"), now=limit)
    assert isinstance(fail, Fail) and fail.kind == "timeout" and "1 s" in fail.message
    assert driver.until_wait(limit) == [Finish(None)]


def test_a_batch_of_a_lost_server_that_never_answers_is_given_up() -> None:
    """Batch 0 reports the server lost; batch 1 of the same server never answers. After
    LOST_GRACE it is cancelled, handled as lost, and its unit goes to the other slot."""
    s = scheduler([2, 1])
    driver = Driver(s, 3)
    assert sends(driver.until_wait()) == [send(0, 0, 1), send(1, 1, 2), send(2, 0, 3)]
    s.settled(BatchId(1), Completed(0.1, 10), now=1.0)  # slot 1 is free again
    s.settled(BatchId(0), LOST, now=3.0)
    actions = driver.until_wait(3.0)
    assert sends(actions) == [send(3, 1, 1)]
    assert actions[-1] == Wait(3.0 + LOST_GRACE)
    assert driver.until_wait(3.0 + LOST_GRACE)[0] == Cancel(BatchId(2), "lost")
    # Cancelled: it settles as cancelled, and counts as lost: not an attempt (it shared its
    # server with unit 1), but a suspect, sent alone once slot 1 is empty.
    assert s.settled(BatchId(2), WorkerGone("cancelled"), now=9.0) == []
    assert s.attempts(UnitId(3)) == 0
    assert driver.until_wait(9.0) == [Wait(None)]  # slot 1 runs the suspect unit 1 alone
    s.settled(BatchId(3), Completed(0.1, 10), now=9.5)
    assert driver.until_wait(9.5) == [send(4, 1, 3), Wait(None)]


# ---- the invariants, on random runs ------------------------------------------------------------

OUTCOMES = st.sampled_from(["completed", "lost", "died", "missing", "refused"])


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 25),
    capacities=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    retries=st.integers(0, 2),
    timeout=st.none() | st.sampled_from([0.5, 2.0]),
    replacements=st.integers(0, 2),
    data=st.data(),
)
def test_every_unit_ends_exactly_once_and_credits_hold(
    n: int,
    capacities: list[int],
    retries: int,
    timeout: float | None,
    replacements: int,
    data: st.DataObject,
) -> None:
    s = JobScheduler(capacities, retries=retries, timeout=timeout, replacements=replacements)
    caps = list(capacities)
    done = data.draw(st.sets(st.integers(1, max(n, 1))))
    ended: Counter[UnitId] = Counter()
    flight: dict[BatchId, tuple[SlotId, tuple[UnitId, ...]]] = {}
    cancelled: set[BatchId] = set()
    read = 0
    now = 0.0
    finish: Finish | None = None

    def end(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Skip | Fail):
                ended[action.unit] += 1
            elif isinstance(action, Send):
                assert action.batch in flight  # only a batch sent again with the module
                cancelled.discard(action.batch)

    for _ in range(5000):
        action = s.step(now)
        if isinstance(action, ReadInput):
            if read == n:
                s.inputs_ended()
            else:
                read += 1
                unit = UnitId(read)
                end(s.input(unit, done=read in done))
        elif isinstance(action, ReadUnit):
            if data.draw(st.integers(0, 9)) == 0:
                end(s.unit_unreadable(action.unit, "gone"))
            else:
                s.unit_read(action.unit, data.draw(st.integers(0, MAX_BATCH_BYTES // 2)))
        elif isinstance(action, Send):
            assert action.batch not in flight and action.units
            for unit in action.units:
                assert ended[unit] == 0
                assert all(unit not in units for _, units in flight.values())
            flight[action.batch] = (action.slot, action.units)
            in_slot = sum(1 for slot, _ in flight.values() if slot == action.slot)
            assert in_slot <= caps[action.slot]
        elif isinstance(action, Cancel):
            assert action.batch in flight
            cancelled.add(action.batch)
        elif isinstance(action, ReplaceCluster):
            if data.draw(st.booleans()):
                new = data.draw(st.lists(st.integers(1, 3), max_size=2))
                s.add_slots(new)
                caps.extend(new)
            else:
                s.replacement_failed("boom")
        elif isinstance(action, Skip | Fail):
            ended[action.unit] += 1
        elif isinstance(action, Wait):
            assert flight, "waiting with nothing in flight"
            batch = data.draw(st.sampled_from(sorted(flight)))
            if timeout is not None and data.draw(st.booleans()):
                s.started(batch, now)
            if action.until is not None and data.draw(st.booleans()):
                now = max(now, action.until)  # nothing settled in time
                continue
            _, units = flight[batch]
            kind = "died" if batch in cancelled else data.draw(OUTCOMES)
            outcome: Outcome = {
                "completed": Completed(0.01 * len(units), 10 * len(units)),
                "lost": ServerGone("lost"),
                "died": WorkerGone("died"),
                "missing": ModuleMissing("None", "refused: need-module"),
                "refused": Refused("refused", "refused"),
            }[kind]
            now += 0.1
            actions = s.settled(batch, outcome, now)
            if not any(isinstance(a, Send) and a.batch == batch for a in actions):
                del flight[batch]
                cancelled.discard(batch)
                if isinstance(outcome, Completed):
                    for unit in units:
                        ended[unit] += 1
            end(actions)
        else:
            assert isinstance(action, Finish)
            finish = action
            break
        assert all(count <= cap for count, cap in zip(s.in_flight.values(), caps, strict=True))
    assert finish is not None, "the job never ended"
    assert all(count == 1 for count in ended.values()), ended
    if finish.error is None:  # nothing left undone
        assert not flight
        assert read == n
        assert set(ended) == {UnitId(i) for i in range(1, n + 1)}
