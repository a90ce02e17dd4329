"""``Router.pick_server``: constraints, reservations, locality, load, round robin (DESIGN §4).

A table of cases, one dataclass each, then Hypothesis properties over random servers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sperse._core import ServerInfo
from sperse._core.routing import Busy, Router, check_placement, eligible, input_locations
from sperse._lang.placement import And, Not, Or, Placement, Resources, Tag, TagExpr, parse_placement
from sperse._serialize import RemoteRef, RemoteValue
from sperse.errors import NoMatchingServer


def server(
    name: str,
    *tags: str,
    workers: int = 4,
    busy: int = 0,
    **resources: float,
) -> ServerInfo:
    return ServerInfo(name, frozenset(tags), dict(resources), workers=workers, busy=busy)


@dataclass(frozen=True)
class Case:
    """Servers and a placement; ``picks`` is what successive decisions return.

    ``reserved`` is held before the first pick; ``error`` (fragments of the message) means
    ``NoMatchingServer``; ``busy`` the names a ``Busy`` result lists.
    """

    name: str
    servers: tuple[ServerInfo, ...]
    placement: str = ""
    locations: Mapping[str, int] = field(default_factory=dict)
    reserved: tuple[tuple[str, Mapping[str, float]], ...] = ()
    picks: tuple[str, ...] = ()
    error: tuple[str, ...] = ()
    busy: tuple[str, ...] = ()


A, B, C = server("a"), server("b"), server("c")

CASES = [
    # --- constraints filter
    Case("one server, no constraint", (A,), picks=("a", "a")),
    Case("tag", (server("a", "db"), server("b", "gpu")), "gpu", picks=("b", "b")),
    Case(
        "not binds tighter than and",
        (server("a", "gpu", "slow"), server("b", "gpu"), server("c")),
        "gpu & !slow",
        picks=("b", "b"),
    ),
    Case(
        "or",
        (server("a", "db"), server("b", "gpu"), server("c", "web")),
        "db | gpu",
        picks=("a", "b", "a"),
    ),
    Case("resource capacity", (server("a", gpu=1), server("b", gpu=4)), "gpu=2", picks=("b",)),
    Case(
        "a resource the server lacks counts as zero",
        (server("a"), server("b", gpu=1)),
        "gpu=1",
        picks=("b",),
    ),
    # --- pinning
    Case(
        "pin beats locality and load",
        (server("a"), server("b", busy=4)),
        "@b",
        locations={"a": 10**9},
        picks=("b", "b"),
    ),
    Case(
        "pin to a server that does not exist",
        (A, B),
        "@zz",
        error=("the task: no server matches [@zz]", "no server is named 'zz'", "Servers: a"),
    ),
    Case(
        "pin and a tag the pinned server lacks",
        (server("a", "db"), server("b", "gpu")),
        "gpu, @a",
        error=("no server matches [gpu, @a]", "a (db); b (gpu)"),
    ),
    # --- no match: a clear error naming the constraint and what exists
    Case(
        "no server has the tag",
        (server("a", "db"), server("b", "gpu", "fast", gpu=1)),
        "tpu",
        error=(
            "no server matches [tpu]",
            "no server has the tag tpu",
            "Servers: a (db); b (fast, gpu; gpu=1)",
            "sperse server --tag",
        ),
    ),
    Case(
        "tags exist, but not together",
        (server("a", "db"), server("b", "gpu")),
        "db & gpu",
        error=("no server matches [db & gpu]. Servers: a (db); b (gpu)",),
    ),
    Case(
        "no server has that much",
        (server("a", gpu=1), server("b", gpu=4)),
        "gpu=8",
        error=("no server has gpu=8 (the most is 4)", "sperse server --resource"),
    ),
    Case("no servers at all", (), "db", error=("Servers: none",)),
    # --- reservations
    Case(
        "a reserved server is skipped for a free one",
        (server("a", gpu=4), server("b", gpu=2)),
        "gpu=2",
        reserved=(("a", {"gpu": 3}),),
        picks=("b",),
    ),
    Case(
        "partly reserved still fits",
        (server("a", gpu=4),),
        "gpu=2",
        reserved=(("a", {"gpu": 2}),),
        picks=("a",),
    ),
    Case(
        "every matching server reserved: Busy, not an error",
        (server("a", gpu=1), server("b", gpu=1), server("c")),
        "gpu=1",
        reserved=(("a", {"gpu": 1}), ("b", {"gpu": 0.5})),
        busy=("a", "b"),
    ),
    Case(
        "pinned server reserved: Busy",
        (server("a", gpu=1), server("b", gpu=1)),
        "@a, gpu=1",
        reserved=(("a", {"gpu": 1}),),
        busy=("a",),
    ),
    Case(
        "float reservations add up",
        (server("a", mem=0.3), server("b", mem=0.1)),
        "mem=0.1",
        reserved=(("a", {"mem": 0.1}), ("a", {"mem": 0.1})),
        locations={"a": 10},
        picks=("a",),
    ),
    Case(
        "reservations do not matter to tasks without needs",
        (server("a", gpu=1),),
        "",
        reserved=(("a", {"gpu": 1}),),
        picks=("a",),
    ),
    # --- locality
    Case(
        "most input bytes wins",
        (A, B, C),
        locations={"a": 100, "b": 500, "c": 499},
        picks=("b", "b"),
    ),
    Case(
        "locality beats load",
        (server("a"), server("b", busy=4)),
        locations={"b": 1},
        picks=("b",),
    ),
    Case(
        "a holder that does not match is not chosen",
        (server("a", "db"), server("b", "gpu")),
        "gpu",
        locations={"a": 10**9},
        picks=("b",),
    ),
    Case(
        "a holder that is reserved is not chosen",
        (server("a", gpu=1), server("b", gpu=1)),
        "gpu=1",
        locations={"a": 10**9},
        reserved=(("a", {"gpu": 1}),),
        picks=("b",),
    ),
    Case(
        "locations of unknown servers are ignored",
        (A, B),
        locations={"gone": 10**9},
        picks=("a", "b"),
    ),
    # --- load
    Case(
        "idle first",
        (server("a", workers=4, busy=4), server("b", workers=4, busy=3)),
        picks=("b", "b"),
    ),
    Case(
        "then the smallest share of busy workers",
        (server("a", workers=8, busy=2), server("b", workers=2, busy=1)),
        picks=("a", "a"),
    ),
    Case(
        "overloaded servers still take work (they queue it)",
        (server("a", workers=2, busy=5), server("b", workers=2, busy=3)),
        picks=("b",),
    ),
    Case(
        "unknown worker count: idle only when nothing runs",
        (server("a", workers=0, busy=1), server("b", workers=0, busy=0)),
        picks=("b", "b"),
    ),
    # --- round robin
    Case("round robin over equals", (A, B, C), picks=("a", "b", "c", "a", "b", "c")),
    Case(
        "round robin only among the tied",
        (server("a"), server("b"), server("c", busy=4)),
        picks=("a", "b", "a", "b"),
    ),
    Case(
        "round robin after locality ties",
        (A, B, C),
        locations={"b": 5, "c": 5},
        picks=("b", "c", "b"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_router_table(case: Case) -> None:
    router = Router()
    for name, needs in case.reserved:
        router.reserve(name, needs)
    placement = parse_placement(case.placement)
    if case.error:
        with pytest.raises(NoMatchingServer) as info:
            router.pick_server(placement, case.servers, case.locations)
        message = str(info.value)
        assert "\n" not in message
        for fragment in case.error:
            assert fragment in message
        return
    if case.busy:
        result = router.pick_server(placement, case.servers, case.locations)
        assert result == Busy(placement, case.busy)
        assert f"[{placement}]" in str(result)
        return
    got = [router.pick_server(placement, case.servers, case.locations) for _ in case.picks]
    assert [s.name for s in got if isinstance(s, ServerInfo)] == list(case.picks)


def test_release_frees_a_busy_server() -> None:
    router = Router()
    servers = [server("a", gpu=1)]
    placement = parse_placement("gpu=1")
    chosen = router.pick_server(placement, servers)
    assert isinstance(chosen, ServerInfo)
    router.reserve(chosen.name, placement.resources)
    assert isinstance(router.pick_server(placement, servers), Busy)
    router.release("a", placement.resources)
    assert router.reserved("a") == {}
    assert router.pick_server(placement, servers) == servers[0]


def test_release_of_what_is_not_held_is_an_error() -> None:
    router = Router()
    router.reserve("a", {"gpu": 1})
    with pytest.raises(ValueError, match="every release must match a reserve"):
        router.release("a", {"gpu": 2})


def test_float_reservations_release_to_nothing() -> None:
    router = Router()
    for _ in range(3):
        router.reserve("a", {"mem": 0.1})
    for _ in range(3):
        router.release("a", {"mem": 0.1})
    assert router.reserved("a") == {}


def test_forget_drops_a_servers_state() -> None:
    router = Router()
    router.reserve("a", {"gpu": 1})
    router.pick_server(Placement(), [server("a")])
    router.forget("a")
    assert router.reserved("a") == {}


def test_what_names_the_task_in_the_error() -> None:
    with pytest.raises(NoMatchingServer, match=r"^train\(\): no server matches \[gpu\]"):
        Router().pick_server(parse_placement("gpu"), [server("a")], what="train()")


def test_check_placement_keeps_its_contract() -> None:
    servers = [server("a", "db")]
    check_placement(Placement(), [], "x")  # no constraint: nothing to check
    check_placement(parse_placement("db"), servers, "x")
    with pytest.raises(NoMatchingServer, match=r"^cell \[3\]: no server matches \[gpu\]"):
        check_placement(parse_placement("gpu"), servers, "cell [3]")


def test_input_locations_sum_remote_values_per_server() -> None:
    def held(server_name: str, size: int) -> RemoteValue:
        return RemoteValue(RemoteRef("id", server_name, "bytes", size, "b''"), lambda r, t: None)

    values = [held("a", 10), held("b", 5), held("a", 7), 42, "local"]
    assert input_locations(values) == {"a": 17, "b": 5}


# ---- properties ---------------------------------------------------------------------------

TAGS = ("db", "gpu", "fast", "slow")
NAMES = ("s0", "s1", "s2", "s3", "s4", "s5")


def tag_exprs() -> st.SearchStrategy[TagExpr]:
    leaves = st.sampled_from(TAGS).map(Tag)
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            inner.map(Not),
            st.tuples(inner, inner).map(lambda p: And(*p)),
            st.tuples(inner, inner).map(lambda p: Or(*p)),
        ),
        max_leaves=4,
    )


@st.composite
def server_lists(draw: st.DrawFn, idle: bool = False) -> list[ServerInfo]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    out = []
    for name in names:
        workers = draw(st.integers(1 if idle else 0, 4))
        out.append(
            ServerInfo(
                name,
                frozenset(draw(st.sets(st.sampled_from(TAGS)))),
                draw(st.dictionaries(st.sampled_from(("gpu", "mem")), st.integers(1, 4))),
                workers=workers,
                busy=0 if idle else draw(st.integers(0, 6)),
            )
        )
    return out


placements = st.builds(
    Placement,
    tags=st.none() | tag_exprs(),
    pin=st.none() | st.sampled_from((*NAMES, "gone")),
    resources=st.dictionaries(st.sampled_from(("gpu", "mem")), st.integers(1, 3)).map(Resources),
)
reservations = st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from(("gpu", "mem")), st.integers(1, 2)),
    max_size=4,
)
locations = st.dictionaries(st.sampled_from(NAMES), st.integers(0, 1000), max_size=4)


def free_of(router: Router, s: ServerInfo, placement: Placement) -> bool:
    held = router.reserved(s.name)
    return all(
        s.resources.get(k, 0) - held.get(k, 0) >= need for k, need in placement.resources.items()
    )


@settings(max_examples=300, deadline=None)
@given(server_lists(), placements, reservations, locations)
def test_a_chosen_server_meets_the_constraint(
    servers: list[ServerInfo],
    placement: Placement,
    reserved: list[tuple[str, str, int]],
    where: dict[str, int],
) -> None:
    router = Router()
    for name, resource, amount in reserved:
        router.reserve(name, {resource: amount})
    fits = eligible(placement, servers)
    try:
        chosen = router.pick_server(placement, servers, where)
    except NoMatchingServer as exc:
        assert fits == []
        assert f"[{placement}]" in str(exc)
        return
    if isinstance(chosen, Busy):
        assert fits and not any(free_of(router, s, placement) for s in fits)
        assert set(chosen.servers) == {s.name for s in fits}
        return
    assert chosen in fits
    assert free_of(router, chosen, placement)
    # Locality: nothing free and eligible holds more of the inputs.
    free = [s for s in fits if free_of(router, s, placement)]
    assert where.get(chosen.name, 0) == max(where.get(s.name, 0) for s in free)


@settings(max_examples=300, deadline=None)
@given(server_lists(), placements, st.sampled_from(NAMES), reservations, locations)
def test_pinning_wins_or_fails_clearly(
    servers: list[ServerInfo],
    placement: Placement,
    pin: str,
    reserved: list[tuple[str, str, int]],
    where: dict[str, int],
) -> None:
    pinned = Placement(placement.tags, pin, placement.resources)
    router = Router()
    for name, resource, amount in reserved:
        router.reserve(name, {resource: amount})
    try:
        chosen = router.pick_server(pinned, servers, where)
    except NoMatchingServer as exc:
        assert f"@{pin}" in str(exc)
        assert eligible(pinned, servers) == []
        return
    if isinstance(chosen, Busy):
        assert chosen.servers == (pin,)
    else:
        assert chosen.name == pin


@settings(max_examples=200, deadline=None)
@given(server_lists(idle=True), st.integers(0, 5))
def test_round_robin_visits_every_idle_server(servers: list[ServerInfo], warmup: int) -> None:
    router = Router()
    for _ in range(warmup):
        router.pick_server(Placement(), servers)
    names = [router.pick_server(Placement(), servers) for _ in servers]
    assert sorted(s.name for s in names if isinstance(s, ServerInfo)) == sorted(
        s.name for s in servers
    )
