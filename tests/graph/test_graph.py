"""The reactive graph as a pure state machine: no values, no processes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sperse._graph.graph import (
    Blocked,
    Cancel,
    CellId,
    CellStatus,
    Drop,
    Graph,
    GraphView,
    Held,
    Mode,
    Run,
)
from sperse.errors import CycleError


def enter(g: Graph, defs: str, refs: str = "", *, finish: bool = True) -> CellId:
    """Enter a cell; run every Run action to completion (as local cells would)."""
    cell, actions = g.add_cell(defs.split(), refs.split(), label=f"{defs} <- {refs}")
    if finish:
        complete(g, actions)
    return cell


def complete(g: Graph, actions: list) -> list[CellId]:
    """Finish every Run (and the Runs that follows) in order; returns cells run."""
    ran = []
    todo = list(actions)
    while todo:
        action = todo.pop(0)
        if isinstance(action, Run):
            ran.append(action.cell)
            todo.extend(g.finished(action.cell, action.run_id))
    return ran


def runs(actions: list) -> list[CellId]:
    return [a.cell for a in actions if isinstance(a, Run)]


@dataclass(frozen=True)
class Case:
    """Cells entered in order (defs, refs); expected edges afterwards."""

    id: str
    cells: list[tuple[str, str]]
    parents: dict[int, dict[str, int | None]]
    dropped: set[int] = field(default_factory=set)
    definers: dict[str, int] = field(default_factory=dict)


CASES = [
    Case("single", [("x", "")], {1: {}}, definers={"x": 1}),
    Case("reader", [("x", ""), ("y", "x")], {2: {"x": 1}}),
    Case("reader follows new definition", [("x", ""), ("y", "x"), ("x", "")], {2: {"x": 3}}, {1}),
    Case("update reads previous", [("x", ""), ("x", "x")], {2: {"x": 1}}, definers={"x": 2}),
    Case(
        "reader follows update",
        [("x", ""), ("y", "x"), ("x", "x")],
        {2: {"x": 3}, 3: {"x": 1}},
        definers={"x": 3, "y": 2},
    ),
    Case(
        "update chain dropped by a fresh definition",
        [("x", ""), ("x", "x"), ("x", "x"), ("x", "")],
        {4: {}},
        {1, 2, 3},
    ),
    Case("undefined ref", [("y", "x")], {1: {"x": None}}),
    Case("undefined ref bound later", [("y", "x"), ("x", "")], {1: {"x": 2}}),
    Case("diamond", [("a", ""), ("b", "a"), ("c", "a"), ("d", "b c")], {4: {"b": 2, "c": 3}}),
    Case("partial redefinition keeps cell", [("a b", ""), ("a", "")], {1: {}, 2: {}}),
    Case(
        "expression cells stay",
        [("x", ""), ("", "x"), ("x", "")],
        {2: {"x": 3}},
        {1},
    ),
    Case(
        "loser kept alive by a fixed reader",
        [("x", ""), ("y", "x"), ("x", "x")],
        {3: {"x": 1}},
        set(),
        {"x": 3},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_edges(case: Case) -> None:
    g = Graph()
    for defs, refs in case.cells:
        enter(g, defs, refs)
    for cell, parents in case.parents.items():
        assert dict(g.parents(CellId(cell))) == parents
    for cell in case.dropped:
        assert CellId(cell) not in g
    for name, cell in case.definers.items():
        assert g.definer(name) == cell


def test_new_cell_runs_and_becomes_done() -> None:
    g = Graph()
    cell, actions = g.add_cell(["x"], [], label="x = 1")
    assert actions == [Run(cell, actions[0].run_id, {})]
    assert g.status(cell) is CellStatus.RUNNING
    assert g.finished(cell, actions[0].run_id) == []
    assert g.status(cell) is CellStatus.DONE


def test_diamond_runs_each_once_in_topological_order() -> None:
    g = Graph()
    a = enter(g, "a")
    b = enter(g, "b", "a")
    c = enter(g, "c", "a")
    d = enter(g, "d", "b c")
    new_a, actions = g.add_cell(["a"], [], label="a = 2")
    order = complete(g, actions)
    assert order.count(d) == 1
    assert order.index(d) > order.index(b) and order.index(d) > order.index(c)
    assert a not in g
    assert order[0] == new_a


def test_dependent_waits_for_running_remote_cell() -> None:
    g = Graph()
    x, actions = g.add_cell(["x"], [], label="x = remote f()")
    (run_x,) = actions
    y, y_actions = g.add_cell(["y"], ["x"], label="y = x * 10")
    assert y_actions == []
    assert g.status(y) is CellStatus.PENDING
    assert runs(g.finished(x, run_x.run_id)) == [y]


def test_changing_input_cancels_running_cell_and_ignores_stale_result() -> None:
    g = Graph()
    enter(g, "a")
    r, actions = g.add_cell(["r"], ["a"], label="r = remote f(a)")
    (first_run,) = actions
    _, actions = g.add_cell(["a"], [], label="a = 2")
    assert Cancel(r, first_run.run_id) in actions
    second = [a for a in actions if isinstance(a, Run) and a.cell != r]
    resubmitted = complete(g, second)
    assert r in resubmitted
    assert g.finished(r, first_run.run_id) == []  # the stale outcome is ignored


def test_failure_blocks_dependents_until_fixed() -> None:
    g = Graph()
    x, (run_x,) = g.add_cell(["x"], [], label="x = 1/0")
    y, _ = g.add_cell(["y"], ["x"], label="y = x + 1")
    actions = g.failed(x, run_x.run_id)
    assert actions == [Blocked(y, x)]
    assert g.status(y) is CellStatus.BLOCKED
    z, z_actions = g.add_cell(["z"], ["y"], label="z = y")
    assert z_actions == [Blocked(z, x)]
    _, actions = g.add_cell(["x"], [], label="x = 1")
    assert set(complete(g, actions)) >= {y, z}
    assert g.status(z) is CellStatus.DONE


def test_cycle_is_refused_and_graph_unchanged() -> None:
    g = Graph()
    b = enter(g, "b", "a")
    with pytest.raises(CycleError, match="cycle") as info:
        g.add_cell(["a"], ["b"], label="a = b")
    assert "b <- a" in str(info.value)
    assert g.definer("a") is None
    assert dict(g.parents(b)) == {"a": None}
    enter(g, "a")  # still works
    assert g.status(b) is CellStatus.DONE


def test_longer_cycle_names_the_path() -> None:
    g = Graph()
    enter(g, "a")
    enter(g, "b", "a")
    enter(g, "c", "b")
    with pytest.raises(CycleError, match=r"\[3\].*\[2\]"):
        g.add_cell(["a"], ["c"], label="a = c")


def test_self_update_is_not_a_cycle() -> None:
    g = Graph()
    enter(g, "x")
    enter(g, "y", "x")
    enter(g, "x", "x")


def test_dropped_running_cell_is_cancelled() -> None:
    g = Graph()
    x, (run,) = g.add_cell(["x"], [], label="x = remote slow()")
    _, actions = g.add_cell(["x"], [], label="x = 1")
    assert Cancel(x, run.run_id) in actions and Drop(x) in actions


def test_lazy_mode_marks_stale_and_runs_on_request() -> None:
    g = Graph(Mode.LAZY)
    enter(g, "a")
    b = enter(g, "b", "a")
    c = enter(g, "c", "b")
    assert g.status(c) is CellStatus.DONE  # new cells run even in lazy mode
    _, actions = g.add_cell(["a"], [], label="a = 2")
    complete(g, actions)
    assert g.status(b) is CellStatus.STALE and g.status(c) is CellStatus.STALE
    order = complete(g, g.run_stale())
    assert order == [b, c]


def test_lazy_new_cell_brings_stale_inputs_up_to_date() -> None:
    g = Graph(Mode.LAZY)
    enter(g, "a")
    b = enter(g, "b", "a")
    other = enter(g, "o", "b")
    complete(g, g.add_cell(["a"], [], label="a = 2")[1])
    d, actions = g.add_cell(["d"], ["b"], label="d = b")
    assert complete(g, actions) == [b, d]
    assert g.status(other) is CellStatus.STALE


def test_switching_to_auto_runs_stale() -> None:
    g = Graph(Mode.LAZY)
    enter(g, "a")
    b = enter(g, "b", "a")
    complete(g, g.add_cell(["a"], [], label="a = 2")[1])
    assert complete(g, g.set_mode(Mode.AUTO)) == [b]


def test_long_chain_without_recursion() -> None:
    g = Graph()
    n = 100_000
    first = enter(g, "x0")
    for i in range(1, n):
        enter(g, f"x{i}", f"x{i - 1}")
    _, actions = g.add_cell(["x0"], [], label="x0 = 1")
    assert len(complete(g, actions)) == n
    assert first not in g


def test_wide_fan_out() -> None:
    g = Graph()
    enter(g, "root")
    for i in range(10_000):
        enter(g, f"y{i}", "root")
    enter(g, "total", " ".join(f"y{i}" for i in range(10_000)))
    _, actions = g.add_cell(["root"], [], label="root = 2")
    order = complete(g, actions)
    assert len(order) == 10_002
    assert order[-1] == g.definer("total")


def test_rerun_runs_downstream() -> None:
    g = Graph()
    a = enter(g, "a")
    b = enter(g, "b", "a")
    assert complete(g, g.rerun(a)) == [a, b]


# ---- rule 9: re-runs repeat derivations, not effects -------------------------------------


def effect(g: Graph, refs: str, defs: str = "") -> CellId:
    """Enter an effect cell (``x[0] = 99``: it changes an object it reads) and run it."""
    cell, actions = g.add_cell(defs.split(), refs.split(), label=f"effect on {refs}", effect=True)
    complete(g, actions)
    return cell


@dataclass(frozen=True)
class HeldCase:
    """Cells entered in order, ("!", refs) marking an effect cell; then a new definition of
    ``redefine``: the effect cells expected held, and the cells expected to run again."""

    id: str
    cells: list[tuple[str, str]]
    redefine: str
    held: list[int]
    reran: list[int]
    mode: Mode = Mode.AUTO


HELD_CASES = [
    HeldCase(
        "effect held, reader of the name runs",
        [("x", ""), ("!", "x"), ("t", "x")],
        "x",
        held=[2],
        reran=[3],
    ),
    HeldCase(
        "effect on two names held once",
        [("x", ""), ("i", ""), ("!", "x i")],
        "i",
        held=[3],
        reran=[],
    ),
    HeldCase(
        "no effect upstream of the change",
        [("x", ""), ("y", ""), ("!", "x")],
        "y",
        held=[],
        reran=[],
    ),
    HeldCase(
        "effect that also defines: what reads it waits with it",
        [("x", ""), ("!b", "x"), ("c", "b")],
        "x",
        held=[2],
        reran=[],
    ),
    HeldCase(
        "a chain: the effect below a derivation is held",
        [("a", ""), ("x", "a"), ("!", "x"), ("y", "x")],
        "a",
        held=[3],
        reran=[2, 4],
    ),
    HeldCase(
        "lazy mode: held as well",
        [("x", ""), ("!", "x"), ("t", "x")],
        "x",
        held=[2],
        reran=[],
        mode=Mode.LAZY,
    ),
]


@pytest.mark.parametrize("case", HELD_CASES, ids=lambda c: c.id)
def test_effect_cells_are_held_not_run_again(case: HeldCase) -> None:
    g = Graph(case.mode)
    for defs, refs in case.cells:
        if defs.startswith("!"):
            effect(g, refs, defs[1:])
        else:
            enter(g, defs, refs)
    _, actions = g.add_cell(case.redefine.split(), [], label=f"{case.redefine} = new")
    held = [a.cell for a in actions if isinstance(a, Held)]
    ran = complete(g, actions)
    assert held == case.held
    assert ran[1:] == case.reran  # ran[0] is the new definition
    assert g.held() == case.held
    for cell in case.held:
        assert g.status(cell) is CellStatus.STALE
        assert all(g.status(d) is CellStatus.STALE for d in g.downstream(cell))


def test_run_stale_applies_held_effects_and_what_waits_for_them() -> None:
    g = Graph()
    enter(g, "x")
    e = effect(g, "x", "b")
    c = enter(g, "c", "b")
    complete(g, g.add_cell(["x"], [], label="x = new")[1])
    assert g.held() == [e]
    assert complete(g, g.set_mode(Mode.AUTO)) == []  # switching modes applies nothing
    assert complete(g, g.run_stale()) == [e, c]
    assert g.held() == [] and g.status(e) is CellStatus.DONE


def test_an_effect_cell_runs_when_entered_and_when_rerun() -> None:
    g = Graph()
    enter(g, "x")
    e, actions = g.add_cell([], ["x"], label="x[0] = 1", effect=True)
    assert runs(actions) == [e]  # entered: it runs
    complete(g, actions)
    complete(g, g.add_cell(["x"], [], label="x = new")[1])
    assert g.held() == [e]
    assert complete(g, g.rerun(e)) == [e]  # asked for: it runs
    assert g.held() == []


def test_lazy_mode_back_to_auto_runs_stale_derivations_not_held_effects() -> None:
    g = Graph(Mode.LAZY)
    enter(g, "x")
    e = effect(g, "x")
    t = enter(g, "t", "x")
    complete(g, g.add_cell(["x"], [], label="x = new")[1])
    assert complete(g, g.set_mode(Mode.AUTO)) == [t]
    assert g.held() == [e]


# ---- rule 10: notebook mode binds as Python does ------------------------------------------


def nb(g: Graph, defs: str, refs: str = "", replaces: tuple[int, ...] = ()) -> tuple[CellId, list]:
    """Enter a notebook statement; returns the cell and the cells that ran."""
    cell, actions = g.add_cell(
        defs.split(),
        refs.split(),
        label=f"{defs} <- {refs}",
        replaces={CellId(c) for c in replaces},
    )
    return cell, complete(g, actions)


def test_notebook_a_later_cell_shadows_earlier_readers_keep_their_binding() -> None:
    g = Graph(Mode.NOTEBOOK)
    nb(g, "x")
    y, _ = nb(g, "y", "x")
    x2, ran = nb(g, "x")
    assert ran == [x2]  # y does not run again: it read the first x
    assert g.parents(y) == {"x": 1} and g.definer("x") == x2
    assert 1 in g  # kept: y still reads it
    z, _ = nb(g, "z", "x")
    assert g.parents(z) == {"x": x2}  # a later cell reads the new binding


def test_notebook_reexecuting_a_cell_hands_its_readers_over_and_reruns_them() -> None:
    g = Graph(Mode.NOTEBOOK)
    nb(g, "x")  # notebook cell A
    y, _ = nb(g, "y", "x")  # notebook cell B
    nb(g, "x")  # notebook cell C shadows x
    x4, ran = nb(g, "x", replaces=(1,))  # A again
    assert ran == [x4, y]  # what read A's x runs again, on the new x
    assert g.parents(y) == {"x": x4}
    assert g.definer("x") == 3  # C binds x later in the notebook: it stays the binding
    complete(g, g.retire([CellId(1)]))
    assert 1 not in g  # A's old x: nothing needs it


def test_notebook_statements_of_one_cell_bind_in_order() -> None:
    g = Graph(Mode.NOTEBOOK)
    nb(g, "x")
    y, _ = nb(g, "y", "x")
    nb(g, "x")  # the same notebook cell, a later statement: `x = 1; y = x; x = 5`
    assert g.parents(y) == {"x": 1}


def test_notebook_an_update_in_a_later_cell_runs_again_on_the_new_definition() -> None:
    g = Graph(Mode.NOTEBOOK)
    nb(g, "x")
    u, _ = nb(g, "x", "x")  # `x += 1` in another cell
    x3, ran = nb(g, "x", replaces=(1,))
    assert ran == [x3, u] and g.parents(u) == {"x": x3}


def test_notebook_rebinding_what_an_earlier_cell_reads_is_no_cycle() -> None:
    g = Graph(Mode.NOTEBOOK)
    nb(g, "x")
    nb(g, "y", "x")
    nb(g, "x", "y")  # x = y + 1 in a later cell: Python runs it; no cycle
    auto = Graph()
    enter(auto, "x")
    enter(auto, "y", "x")
    with pytest.raises(CycleError):
        auto.add_cell(["x"], ["y"], label="x = y + 1")


def test_notebook_retire_removes_old_statements_nothing_needs() -> None:
    g = Graph(Mode.NOTEBOOK)
    nb(g, "x")  # cell A: `x = 1` ...
    shown, _ = nb(g, "", "x")  # ... `print(x)`
    keep, _ = nb(g, "b")  # ... `b = 2`
    nb(g, "x", replaces=(1, 2, 3))  # A becomes `x = 2`
    actions = g.retire([CellId(1), shown, keep])
    assert [a.cell for a in actions if isinstance(a, Drop)] == [shown]
    assert keep in g and g.definer("b") == keep  # b keeps its value, as in Python


def test_graph_satisfies_the_read_only_view() -> None:
    """``GraphView`` lists queries only, and ``Graph`` answers each of them."""
    view: GraphView = Graph()  # mypy checks the Protocol
    members = [
        n for n in vars(GraphView) if not n.startswith("_") or n in ("__contains__", "__len__")
    ]
    assert {"definer", "status", "children", "held", "mode"} <= set(members)
    for name in members:
        assert hasattr(view, name), name
    mutators = {"add_cell", "retire", "finished", "failed", "rerun", "run_stale", "set_mode"}
    assert not mutators & set(members)


# ---- taking new definitions in place (a running service's operators) ----------------------


def test_a_cell_that_takes_a_name_in_place_is_not_run_again_by_its_new_definition() -> None:
    g = Graph()
    enter(g, "score")
    enter(g, "k")
    svc = enter(g, "svc", "score k")  # started a service whose operator runs `score`
    user = enter(g, "answer", "svc")
    reader = enter(g, "y", "score")  # calls score itself: runs again as always
    g.set_live(svc, ["score", "not_read"])
    new_score, actions = g.add_cell(["score"], [], label="score = new")
    assert complete(g, actions) == [new_score, reader]
    assert g.status(svc) is CellStatus.DONE and g.status(user) is CellStatus.DONE
    assert g.parents(svc)["score"] == new_score  # it reads the new definition from now on
    # A name it does not take in place runs it again, as before.
    new_k, actions = g.add_cell(["k"], [], label="k = 2")
    assert complete(g, actions) == [new_k, svc, user]
    g.set_live(svc, [])  # the service stopped: a new definition runs it again
    newer, actions = g.add_cell(["score"], [], label="score = newer")
    assert set(complete(g, actions)) == {newer, svc, user, reader}
