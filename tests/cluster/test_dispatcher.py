"""The many-servers dispatcher, without a network: tables of events → expected decisions, and
a Hypothesis property over random runs (every task is in exactly one place; a decision sends
a task to one live member or fails it, never both)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sperse._backends.dispatch import Decision, Dispatcher, MemberId, depth
from sperse._core import CallTask, ServerInfo, TaskSpec
from sperse._lang.placement import Placement, parse_placement
from sperse._serialize import RemoteRef, RemoteValue
from sperse.errors import NoMatchingServer


def _work(*args: object) -> None:
    return None


def _fetch(ref: RemoteRef, timeout: float | None) -> object:
    raise AssertionError("a dispatcher never fetches")


def held_on(server: str) -> RemoteValue:
    """A value held by ``server`` (an input that ties a task to it)."""
    return RemoteValue(RemoteRef(f"obj-{server}", server, "int", 1 << 20, "1"), _fetch)


def task(
    task_id: str, where: str = "", *, pin: str | None = None, uses: str = "", gpu: float = 0
) -> TaskSpec:
    placement = parse_placement(where) if where else Placement()
    if pin is not None or gpu:
        placement = Placement(placement.tags, pin, {"gpu": gpu} if gpu else {})
    args = (held_on(uses),) if uses else ()
    return TaskSpec(task_id, CallTask(_work, args, {}), placement)


def server(name: str, *tags: str, workers: int = 1, gpu: float = 0) -> ServerInfo:
    resources = {"gpu": gpu} if gpu else {}
    return ServerInfo(name, frozenset(tags), resources, workers=workers, address=f"{name}:1")


# ---- the events of a table ---------------------------------------------------------------


@dataclass(frozen=True)
class Join:
    info: ServerInfo


@dataclass(frozen=True)
class Submit:
    specs: tuple[TaskSpec, ...]


@dataclass(frozen=True)
class End:
    task_id: str


@dataclass(frozen=True)
class Lose:
    name: str


@dataclass(frozen=True)
class Cancel:
    task_id: str


Event = Join | Submit | End | Lose | Cancel


@dataclass
class Run:
    """What a dispatcher decided over a run: each send, each failure (by kind)."""

    dispatcher: Dispatcher
    sent: list[tuple[str, str]] = field(default_factory=list)  # (task, server), in order
    failed: dict[str, str] = field(default_factory=dict)  # task → its error's kind
    messages: dict[str, str] = field(default_factory=dict)
    cancels: list[tuple[str, str | None]] = field(default_factory=list)

    def record(self, decision: Decision | None) -> None:
        if decision is None:
            return
        for f in decision.failed:
            self.failed[f.task_id] = f.error.kind
            self.messages[f.task_id] = f.error.message
        for member, specs in decision.sends:
            name = self.dispatcher.name_of(member)
            self.sent.extend((s.task_id, name) for s in specs)

    def apply(self, event: Event) -> None:
        d = self.dispatcher
        if isinstance(event, Join):
            d.join(event.info.name, event.info)
            self.record(d.pump())
        elif isinstance(event, Submit):
            self.record(d.submit(event.specs))
        elif isinstance(event, End):
            member = d.owner(event.task_id)
            assert member is not None, f"{event.task_id} is not running"
            self.record(d.finish([event.task_id], member))
        elif isinstance(event, Lose):
            member = d.member(event.name, alive=True)
            assert member is not None
            self.record(d.lose(member, "it stopped"))
        else:
            member = d.cancel(event.task_id)
            self.cancels.append((event.task_id, None if member is None else d.name_of(member)))


def run(events: Sequence[Event], *, max_reroutes: int = 3) -> Run:
    result = Run(Dispatcher(max_reroutes=max_reroutes))
    for event in events:
        result.apply(event)
    return result


@dataclass(frozen=True)
class Case:
    name: str
    events: tuple[Event, ...]
    sent: tuple[tuple[str, str], ...]  # every send, in order
    failed: dict[str, str] = field(default_factory=dict)
    waiting: tuple[str, ...] = ()
    because: dict[str, str] = field(default_factory=dict)  # task → words of its message
    cancels: tuple[tuple[str, str | None], ...] = ()
    max_reroutes: int = 3


A, B = server("a", "gpu", gpu=1), server("b")
BURST = tuple(task(f"t{k}") for k in range(1, 7))  # 6 tasks: one server of 1 worker has room for 4

CASES = [
    Case(
        "a task goes to a server whose tags fit",
        (Join(A), Join(B), Submit((task("t1", "gpu"),))),
        sent=(("t1", "a"),),
    ),
    Case(
        "tasks beyond a server's room wait, in order, and go as tasks end",
        (Join(B), Submit(BURST), End("t1")),
        sent=(("t1", "b"), ("t2", "b"), ("t3", "b"), ("t4", "b"), ("t5", "b")),
        waiting=("t6",),
    ),
    Case(
        "a task pinned to a server, asking no resources, goes straight to it, room or not",
        (Join(A), Join(B), Submit(tuple(task(f"t{k}", pin="b") for k in range(1, 7)))),
        sent=tuple((f"t{k}", "b") for k in range(1, 7)),
    ),
    Case(
        "a server that joins gets the tasks still waiting",
        (Join(B), Submit(BURST), Join(server("c"))),
        sent=(*((f"t{k}", "b") for k in range(1, 5)), ("t5", "c"), ("t6", "c")),
    ),
    Case(
        "the tasks of a lost server run again on another",
        (Join(B), Submit(BURST[:2]), Join(server("c")), Lose("b")),
        sent=(("t1", "b"), ("t2", "b"), ("t1", "c"), ("t2", "c")),
    ),
    Case(
        "a task pinned to a server that left fails with ServerLost",
        (Join(A), Join(B), Submit((task("t1", pin="a"), task("t2", pin="a", gpu=1))), Lose("a")),
        sent=(("t1", "a"), ("t2", "a")),
        failed={"t1": "server_lost", "t2": "server_lost"},
        because={"t1": "pinned to a", "t2": "pinned to a"},
    ),
    Case(
        "a task using a value only the lost server held fails with ServerLost",
        (Join(A), Join(B), Submit((task("t1", "gpu", uses="a"),)), Lose("a")),
        sent=(("t1", "a"),),
        failed={"t1": "server_lost"},
        because={"t1": "a value that only a held"},
    ),
    Case(
        "a task moved max_reroutes times fails with ServerLost the next time",
        (Join(B), Submit(BURST[:1]), Join(server("c")), Lose("b"), Join(server("d")), Lose("c")),
        sent=(("t1", "b"), ("t1", "c")),
        failed={"t1": "server_lost"},
        because={"t1": "moved 1 times already"},
        max_reroutes=1,
    ),
    Case(
        "the tasks of the last server lost wait for the next one",
        (Join(B), Submit(BURST[:2]), Lose("b"), Join(server("c"))),
        sent=(("t1", "b"), ("t2", "b"), ("t1", "c"), ("t2", "c")),
    ),
    Case(
        "a waiting task whose placement no live server fits any more fails: NoMatchingServer",
        (Join(A), Join(B), Submit(tuple(task(f"t{k}", "gpu") for k in range(1, 6))), Lose("a")),
        sent=tuple((f"t{k}", "a") for k in range(1, 5)),
        failed={f"t{k}": "no_server" for k in range(1, 6)},
    ),
    Case(
        "a placement without room does not hold back the tasks behind it",
        (
            Join(server("g", workers=8, gpu=1)),
            Submit((task("t1", gpu=1), task("t2", gpu=1), task("t3"))),
        ),
        sent=(("t1", "g"), ("t3", "g")),
        waiting=("t2",),
    ),
    Case(
        "a waiting task cancelled is forgotten; a running one names its server",
        (Join(B), Submit(BURST[:5]), Cancel("t5"), Cancel("t1"), End("t2")),
        sent=tuple((f"t{k}", "b") for k in range(1, 5)),
        cancels=(("t5", None), ("t1", "b")),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dispatcher_decides(case: Case) -> None:
    result = run(case.events, max_reroutes=case.max_reroutes)
    assert tuple(result.sent) == case.sent
    assert result.failed == case.failed
    assert tuple(result.dispatcher.waiting()) == case.waiting
    for task_id, words in case.because.items():
        assert words in result.messages[task_id]
    assert tuple(result.cancels) == case.cancels


@pytest.mark.parametrize(
    ("servers", "specs", "message"),
    [
        ((), (task("t1"),), "no server in the cluster"),
        ((B,), (task("t1"), task("t2", "gpu")), "t2"),
        ((A, B), (task("t1", pin="z"),), "z"),
    ],
    ids=["no server at all", "a tag no server has", "pinned to a server not in the cluster"],
)
def test_a_submit_that_fits_no_server_is_refused_whole(
    servers: tuple[ServerInfo, ...], specs: tuple[TaskSpec, ...], message: str
) -> None:
    dispatcher = Dispatcher()
    for info in servers:
        dispatcher.join(info.name, info)
    with pytest.raises(NoMatchingServer, match=message):
        dispatcher.submit(specs)
    assert dispatcher.waiting() == []
    assert all(dispatcher.owner(s.task_id) is None for s in specs)


def test_events_of_a_replaced_member_are_stale() -> None:
    dispatcher = Dispatcher()
    old = dispatcher.join("b", B)
    assert old is not None
    dispatcher.submit([task("t1")])
    dispatcher.lose(old, "it restarted")
    new = dispatcher.join("b", B)
    assert new is not None and new != old
    dispatcher.pump()
    assert dispatcher.is_current("t1", new) and not dispatcher.is_current("t1", old)
    assert dispatcher.lose(old, "again") is None  # lost once only


def test_a_second_connection_to_a_live_server_is_not_used() -> None:
    dispatcher = Dispatcher()
    assert dispatcher.join("b", B) is not None
    assert dispatcher.join("b", B) is None
    assert len(dispatcher.live()) == 1


def test_a_member_has_this_clients_depth_and_its_address() -> None:
    dispatcher = Dispatcher()
    dispatcher.join("w", server("w", workers=3))
    assert depth(3) == 8 and depth(0) == depth(1) == 4
    assert dispatcher.locate("w") == "w:1" and dispatcher.locate("nope") is None
    dispatcher.submit([task(f"t{k}") for k in range(10)])
    assert [i.busy for i in dispatcher.infos()] == [8]


@dataclass(frozen=True)
class Snapshot:
    listed: tuple[tuple[str, str], ...]  # (name, instance)
    gone: tuple[str, ...]
    connect: tuple[str, ...]
    settling: bool = False  # the coordinator has only just started


@pytest.mark.parametrize(
    ("known", "steps"),
    [
        (  # b restarted (another instance), c is new, a stays
            (("a", "1"), ("b", "1")),
            [Snapshot((("a", "1"), ("b", "2"), ("c", "1")), ("b",), ("b", "c"))],
        ),
        (  # a server being connected is not connected twice
            (("a", "1"),),
            [
                Snapshot((("a", "1"), ("c", "1")), (), ("c",)),
                Snapshot((("a", "1"), ("c", "1")), (), ()),
            ],
        ),
        (  # everyone left
            (("a", "1"), ("b", "1")),
            [Snapshot((), ("a", "b"), ())],
        ),
        (  # the coordinator restarted: servers re-join one by one, as the same instances
            (("a", "1"), ("b", "1")),
            [
                Snapshot((), (), (), settling=True),
                Snapshot((("b", "1"),), (), (), settling=True),
                Snapshot((("a", "1"), ("b", "1")), (), (), settling=True),
                Snapshot((("a", "1"), ("b", "1")), (), ()),
            ],
        ),
        (  # ... and one of them never comes back: gone once the coordinator has settled
            (("a", "1"), ("b", "1")),
            [
                Snapshot((("a", "1"),), (), (), settling=True),
                Snapshot((("a", "1"),), ("b",), ()),
            ],
        ),
        (  # ... and one of them restarted meanwhile: replaced while it settles
            (("a", "1"), ("b", "1")),
            [Snapshot((("a", "2"),), ("a",), ("a",), settling=True)],
        ),
    ],
    ids=[
        "restarted and new",
        "being connected",
        "all left",
        "coordinator restarted",
        "coordinator restarted, one server gone",
        "coordinator restarted, one server restarted",
    ],
)
def test_membership_snapshots(known: tuple[tuple[str, str], ...], steps: list[Snapshot]) -> None:
    dispatcher = Dispatcher()
    for name, instance in known:
        dispatcher.join(name, server(name), instance)
    for step in steps:
        listed = [(n, f"{n}:1", i) for n, i in step.listed]
        change = dispatcher.membership(listed, settling=step.settling)
        assert tuple(dispatcher.name_of(m) for m in change.gone) == step.gone
        assert tuple(name for name, _, _ in change.connect) == step.connect
        for member in change.gone:
            dispatcher.lose(member, "gone")


def test_a_server_whose_connection_ended_is_connected_again() -> None:
    dispatcher = Dispatcher()
    assert dispatcher.membership([("c", "c:1", "1")]).connect == (("c", "c:1", "1"),)
    assert dispatcher.membership([("c", "c:1", "1")]).connect == ()
    dispatcher.connect_ended("c")  # it failed: the next snapshot tries again
    assert dispatcher.membership([("c", "c:1", "1")]).connect == (("c", "c:1", "1"),)


# ---- a property over random runs -----------------------------------------------------------

NAMES = ("a", "b", "c")

ops = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(NAMES)),
        st.tuples(st.just("lose"), st.sampled_from(NAMES)),
        st.tuples(
            st.just("submit"),
            st.lists(
                st.tuples(
                    st.sampled_from([None, None, *NAMES]),  # pin
                    st.sampled_from(["", "gpu"]),  # tags
                    st.sampled_from(["", *NAMES]),  # a value held on
                ),
                min_size=1,
                max_size=3,
            ),
        ),
        st.tuples(st.just("end"), st.integers(0, 1000)),
        st.tuples(st.just("cancel"), st.integers(0, 1000)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(0, 3))
@example([("submit", [("a", "", "")]), ("lose", "a")], 3)  # pinned to a server that left
@example([("submit", [(None, "", "b")]), ("lose", "b"), ("lose", "c"), ("join", "b")], 0)
def test_every_task_is_in_one_place_and_sent_to_one_live_member_or_failed(
    steps: list[tuple[object, object]], max_reroutes: int
) -> None:
    d = Dispatcher(max_reroutes=max_reroutes)
    pins: dict[str, str | None] = {}
    running: dict[str, MemberId] = {}  # task → the member it was last sent to
    over: set[str] = set()  # ended, failed, or cancelled while waiting
    counter = 0

    def check(
        decision: Decision | None, *, lost: str = "", lost_tasks: frozenset[str] = frozenset()
    ) -> None:
        if decision is None:
            return
        for task_id in lost_tasks:  # failed below, or waiting again, or sent again below
            running.pop(task_id, None)
        failed = {f.task_id: f.error.kind for f in decision.failed}
        sent = [s.task_id for _, specs in decision.sends for s in specs]
        assert len(sent) == len(set(sent)), "a task sent twice in one decision"
        assert not failed.keys() & set(sent), "a task both sent and failed"
        live = set(d.live())
        for member, specs in decision.sends:
            assert member in live
            for spec in specs:
                assert spec.task_id not in over
                running[spec.task_id] = member
        for task_id in failed:
            assert task_id not in over
            over.add(task_id)
            running.pop(task_id, None)
        for task_id in lost_tasks:  # pinned to the lost server: failed, never moved
            if pins.get(task_id) == lost:
                assert failed.get(task_id) == "server_lost"

    for op, arg in [("join", name) for name in NAMES] + steps:
        if op == "join":
            name = str(arg)
            d.join(name, server(name, "gpu" if name == "a" else "", workers=1))
            check(d.pump())
        elif op == "lose":
            member = d.member(str(arg), alive=True)
            if member is not None:
                on_it = frozenset(d.inflight(member))
                check(d.lose(member, "gone"), lost=str(arg), lost_tasks=on_it)
        elif op == "submit":
            assert isinstance(arg, list)
            specs = []
            for pin, tags, uses in arg:
                counter += 1
                spec = task(f"t{counter}", tags, pin=pin, uses=uses)
                specs.append(spec)
                pins[spec.task_id] = pin
            try:
                check(d.submit(specs))
            except NoMatchingServer:
                over.update(s.task_id for s in specs)  # refused whole: never taken
        elif op in ("end", "cancel") and (running or d.waiting()):
            assert isinstance(arg, int)
            if op == "end" and running:
                task_id = sorted(running)[arg % len(running)]
                member = running.pop(task_id)
                assert d.is_current(task_id, member)
                over.add(task_id)
                check(d.finish([task_id], member))
            elif op == "cancel":
                candidates = sorted(set(running) | set(d.waiting()))
                task_id = candidates[arg % len(candidates)]
                if d.cancel(task_id) is None:
                    over.add(task_id)

        # Every task not over is in exactly one place: waiting, or on one live member.
        waiting = d.waiting()
        assert len(waiting) == len(set(waiting))
        live = set(d.live())
        on_members = {m: d.inflight(m) for m in live}
        for task_id in [f"t{k}" for k in range(1, counter + 1)]:
            places = (task_id in waiting) + sum(task_id in s for s in on_members.values())
            if task_id in over:
                assert places == 0, f"{task_id} is over but still placed"
            else:
                assert places == 1, f"{task_id} is in {places} places"
                if task_id not in waiting:
                    assert d.owner(task_id) in live
                    assert running.get(task_id) == d.owner(task_id)
