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
