"""The rules of DESIGN.md §2, one test each, with remote cells on a real backend."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import sperse
from sperse import Workspace

WAIT = 30.0


@pytest.fixture
def ws(cluster: sperse.Cluster) -> Workspace:
    workspace = Workspace(cluster)
    yield workspace
    workspace.close()


# Remote code that returns only once the test opens its gate (a file: every backend's workers
# see this host's files): the window in which a cell is pending is the test's to close.
GATED = """
import os, time
def gated(v, gate):
    while not os.path.exists(gate):
        time.sleep(0.005)
    return v
"""


def test_remote_cell_is_pending_then_ready(ws: Workspace, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ws.run(GATED)
    ws.run(f"x = remote gated(21, {str(gate)!r})")
    ws.run("y = x * 2")
    assert set(ws.pending()) == {"x", "y"}
    with pytest.raises(sperse.NotReadyError, match="y is pending"):
        ws["y"]
    gate.touch()
    assert ws.wait("y", timeout=WAIT) == 42
    assert ws["x"] == 21
    assert ws.cell("x").where in {s.name for s in ws.cluster.servers()}
    assert ws.cell("x").is_remote


def test_rule1_newest_definition_wins_and_readers_follow(ws: Workspace) -> None:
    ws.run("x = 1\ny = x + 1")
    ws.run("x = remote 10")
    assert "y" in ws.pending()
    assert ws.wait("y", timeout=WAIT) == 11
    ws.run("x = 100")
    assert ws["y"] == 101
    assert len(ws.cells()) == 2  # earlier definers of x were dropped


def test_rule2_update_reads_previous_definition(ws: Workspace) -> None:
    ws.run("x = 1")
    ws.run("x += 1")
    assert ws["x"] == 2
    ws.run("x = remote x * 10")  # reads the previous x (2)
    assert ws.wait("x", timeout=WAIT) == 20
    updater = ws.cell("x")
    assert updater.runs == 1


def test_rule2_update_reruns_when_earlier_definition_changes(ws: Workspace) -> None:
    ws.run("base = 1\nx = base\nx += 1\ny = x * 10")
    assert ws["y"] == 20
    ws.run("base = 5")
    assert ws["x"] == 6
    assert ws["y"] == 60


def test_rule3_diamond_runs_once_per_change(ws: Workspace) -> None:
    ws.run("a = 1\nb = remote a + 1\nc = a * 2\nd = b + c")
    assert ws.wait("d", timeout=WAIT) == 4
    d = ws.cell("d")
    assert d.runs == 1
    ws.run("a = 10")
    assert ws.wait("d", timeout=WAIT) == 31
    assert d.runs == 2
    ws.run("a = remote 3")
    assert ws.wait("d", timeout=WAIT) == 10
    assert d.runs == 3


def test_rule3_no_glitch_with_two_remote_inputs(ws: Workspace) -> None:
    ws.run("log = []")
    ws.run("a = 1\nb = remote a + 1\nc = remote a * 2\nd = (b, c, log.append((b, c)))[:2]")
    ws.wait(timeout=WAIT)
    ws.run("a = 5")
    ws.wait(timeout=WAIT)
    assert ws["d"] == (6, 10)
    assert ws["log"] == [(2, 2), (6, 10)]  # never a mix of old and new


def test_rule4_remote_error_has_traceback_and_blocks_until_fixed(ws: Workspace) -> None:
    ws.run("def boom(v):\n    raise ValueError(f'bad {v}')")
    ws.run("x = remote boom(3)")
    ws.run("y = x + 1")
    with pytest.raises(sperse.RemoteError) as info:
        ws.wait("x", timeout=WAIT)
    assert info.value.type_name == "ValueError"
    assert "bad 3" in str(info.value)
    assert "boom" in info.value.remote_traceback
    assert "This happened remotely" in str(info.value)
    with pytest.raises(sperse.UpstreamError, match="upstream error in x"):
        ws["y"]
    assert ws.cell("y").runs == 0
    ws.run("x = 1")
    assert ws["y"] == 2


def test_rule4_local_error_names_the_cell(ws: Workspace) -> None:
    ws.run("a = 0")
    with pytest.raises(sperse.CellError, match=r"`b = 1 / a` raised ZeroDivisionError") as info:
        ws.run("b = 1 / a")
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    ws.run("c = b + 1")  # entered: blocked, not an exception
    with pytest.raises(sperse.UpstreamError, match="upstream error in b"):
        ws["c"]
    ws.run("a = 2")
    assert ws["c"] == 1.5


def test_rule5_changed_input_cancels_running_cell(ws: Workspace) -> None:
    seen: list[object] = []
    ws.subscribe(lambda e: seen.append(e.cell.id) if e.kind == "done" else None)
    ws.run("import time\na = 1")
    ws.run("def slow(v):\n    time.sleep(60 if v == 1 else 0)\n    return v\n")
    ws.run("r = remote slow(a)")
    cell = ws.cell("r")
    ws.run("a = 2")  # the run on a == 1 is cancelled, not awaited
    assert ws.wait("r", timeout=WAIT) == 2
    assert cell.runs == 2
    assert seen.count(cell.id) == 1  # only the fresh result was ever shown


def test_rule5_stale_result_is_never_observed(ws: Workspace, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    seen: list[object] = []
    ws.subscribe(
        lambda e: seen.append(ws["r"]) if e.kind == "done" and e.cell.defs == {"r"} else None
    )
    ws.run(GATED)
    ws.run(f"a = 1\ng = {str(gate)!r}")
    ws.run("r = remote gated(a, g)")  # held at the gate while a changes twice
    ws.run("a = 2")
    ws.run("a = 3")
    gate.touch()
    assert ws.wait("r", timeout=WAIT) == 3
    assert seen == [3]  # the runs on a == 1 and 2 were never shown


def test_rule6_results_applied_only_on_the_user_thread(ws: Workspace) -> None:
    ws.run("import threading")
    ws.run("x = remote 1")
    ws.run("where = threading.get_ident() + x * 0")
    # Nothing runs until this thread drains the queue.
    assert ws.wait("where", timeout=WAIT) == threading.get_ident()


def test_rule7_lazy_mode_marks_stale_and_runs_on_request(ws: Workspace) -> None:
    ws.run("a = 1\nb = a + 1")
    ws.mode = "lazy"
    ws.run("a = 5")
    assert ws.cell("b").status == "stale"
    with pytest.raises(sperse.NotReadyError, match="stale"):
        ws["b"]
    ws.run_stale()
    assert ws["b"] == 6
    ws.run("a = remote 7")
    ws.wait("a", timeout=WAIT)
    assert ws.cell("b").status == "stale"
    ws.mode = "auto"  # back to auto: stale cells run
    assert ws["b"] == 8


def test_rule7_unchanged_inputs_do_not_resubmit(ws: Workspace) -> None:
    ws.run("a = 1\nr = remote a * 3")
    assert ws.wait("r", timeout=WAIT) == 3
    cell = ws.cell("r")
    ws.run("a = 1")  # a new definition with the same value
    assert ws.wait("r", timeout=WAIT) == 3
    assert cell.runs == 1
    ws.run("a = 2")
    assert ws.wait("r", timeout=WAIT) == 6
    assert cell.runs == 2


def test_rule8_mutation_is_not_tracked(ws: Workspace) -> None:
    ws.run("lst = [1]\nn = len(lst)")
    ws.run("lst.append(2)")
    assert ws["n"] == 1  # documented: methods that mutate are invisible


def test_expression_cell_value_and_redisplay(ws: Workspace) -> None:
    shown: list[object] = []
    ws.subscribe(lambda e: shown.append(e.value) if e.kind == "done" and e.value else None)
    ws.run("x = 2")
    (cell,) = ws.run("x * 100")
    assert cell.value == 200
    ws.run("x = 3")
    assert shown[-1] == 300
    (rcell,) = ws.run("remote x + 1")
    ws.wait(timeout=WAIT)
    assert rcell.value == 4


def test_remote_block(ws: Workspace) -> None:
    ws.run("n = 4")
    ws.run("remote:\n    squares = [i * i for i in range(n)]\n    total = sum(squares)\n")
    assert ws.wait("total", timeout=WAIT) == 14
    assert ws["squares"] == [0, 1, 4, 9]


def test_remote_uses_prompt_function_and_class(ws: Workspace) -> None:
    ws.run("class P:\n    def __init__(self, v):\n        self.v = v\n")
    ws.run("def make(v):\n    return P(v * 2)")
    ws.run("p = remote make(21)")
    assert ws.wait("p", timeout=WAIT).v == 42


def test_pending_returned_by_local_cell_makes_name_pending(ws: Workspace) -> None:
    """The name holds the Pending, as under plain Python; its readers run once it settled."""
    ws.run("import sperse\n@sperse.remote\ndef double(v):\n    return v * 2\n")
    ws.run("a = 5\nm = double(a)\nk = m.value() + 1")  # value(): no wait, m has settled
    assert ws.wait("k", timeout=WAIT) == 11
    assert isinstance(ws["m"], sperse.Pending) and ws["m"].done()
    ws.run("a = 6")
    assert ws.wait("k", timeout=WAIT) == 13


def test_a_failed_pending_is_a_value_its_readers_handle(ws: Workspace) -> None:
    ws.run("import sperse\n@sperse.remote\ndef inverse(v):\n    return 1 / v\n")
    ws.run("m = inverse(0)")
    ws.run(
        "try:\n    k = m.result()\nexcept ZeroDivisionError as exc:\n"
        "    k = isinstance(exc, sperse.RemoteError) and 'caught'\n"
    )
    assert ws.wait("k", timeout=WAIT) == "caught"


def test_graph_shows_upstream_and_downstream_of_a_name(ws: Workspace) -> None:
    ws.run("a = 1\nb = a + 1\nc = a * 2\nd = b + c\ne = d")
    text = ws.graph("d")
    head, rest = text.split("upstream:")
    up, down = rest.split("downstream:")
    assert "d = b + c" in head
    assert "[2] b = a + 1" in up and "[3] c = a * 2" in up and "[1] a = 1" in up
    assert "[5] e = d" in down and "a = 1" not in down
    assert "defines: e" in ws.graph()


def test_rule_9_a_mutation_is_not_applied_again_to_a_new_object(ws: Workspace) -> None:
    held: list[str] = []
    ws.subscribe(lambda event: held.append(event.cell.label) if event.kind == "held" else None)
    ws.run("x = [0, 1, 2, 3, 4]\nx[0] = 99\ntotal = sum(x)")
    assert ws["x"] == [99, 1, 2, 3, 4] and ws["total"] == 109
    ws.run("x = [0, 0, 0]")
    assert ws["x"] == [0, 0, 0]  # the new x untouched
    assert ws.wait("total", timeout=WAIT) == 0  # a derivation runs again
    assert held == ["x[0] = 99"] and [c.label for c in ws.held()] == ["x[0] = 99"]
    ws.run_stale()  # on request, it is applied
    assert ws["x"] == [99, 0, 0] and ws.held() == []


def test_rule_9_augmented_item_assignment_and_del(ws: Workspace) -> None:
    ws.run("d = {'a': 1, 'b': 2}\ndel d['a']\nd['b'] += 10")
    assert ws["d"] == {"b": 12}
    ws.run("d = {'a': 5, 'b': 5}")
    assert ws["d"] == {"a": 5, "b": 5}
    assert [c.label for c in ws.held()] == ["del d['a']", "d['b'] += 10"]


def test_rule_10_notebook_cells_keep_their_linear_meaning(ws: Workspace) -> None:
    ws.mode = "notebook"
    ws.run("x1 = [1, 2, 3]\nx1[0] = 99", unit="a")
    ws.run("first = list(x1)", unit="b")
    ws.run("x1 = [1, 2, 3]", unit="c")  # another notebook cell binds x1 again: shadows
    assert ws["first"] == [99, 2, 3]  # earlier notebook cells keep their results
    assert ws["x1"] == [1, 2, 3] and ws.held() == []  # x1[0] = 99 is not re-applied
    ws.run("later = list(x1)", unit="d")
    assert ws["later"] == [1, 2, 3]  # later cells read the new binding


def test_rule_10_running_a_notebook_cell_again_replaces_it(ws: Workspace) -> None:
    ws.mode = "notebook"
    ws.run("n = 2\nprint('a ran')", unit="a")
    ws.run("doubled = n * 2", unit="b")
    ws.run("n = 5", unit="a")  # the same notebook cell, edited and run again
    assert ws.wait("doubled", timeout=WAIT) == 10  # what read its names runs again
    assert [c.label for c in ws.cells()] == ["doubled = n * 2", "n = 5"]  # replaced, not added
    ws.run("m = remote n + 1", unit="c")  # remote work flows in notebook mode too
    assert ws.wait("m", timeout=WAIT) == 6
    ws.run("n = 7", unit="a")
    assert ws.wait("m", timeout=WAIT) == 8 and ws.wait("doubled", timeout=WAIT) == 14


def test_rule_10_a_reexecuted_cell_cancels_its_running_work(
    ws: Workspace, cluster: sperse.Cluster
) -> None:
    ws.mode = "notebook"
    ws.run("import time\ndef slow(v, t):\n    time.sleep(t)\n    return v\n", unit="defs")
    ws.run("x = remote slow('first', 60)", unit="a")  # 60 s: it must be cancelled, not awaited
    ws.run("shown = f'x is {x}'", unit="b")
    assert cluster.run_until(lambda: ws.cell("x").where != "", WAIT), "x never started"
    ws.run("x = remote slow('second', 0)", unit="a")  # cell a edited and run again
    assert ws.wait("shown", timeout=WAIT) == "x is second"
    # The first run was stopped: its worker is free again, well before 60 s.
    assert cluster.run_until(lambda: sum(s.busy for s in cluster.servers()) == 0, WAIT)


def test_rule_10_units_of_cells_that_are_gone_are_forgotten(ws: Workspace) -> None:
    """Terminal IPython makes every execution a unit of its own: they must not pile up."""
    ws.mode = "notebook"
    for i in range(300):
        ws.run(f"x = {i}", unit=i)
    assert ws["x"] == 299
    assert len(ws._units) <= 2 * len(ws.cells()) + 64
