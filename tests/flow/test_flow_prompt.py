"""Flows at the prompt: through the workspace API (the layer the REPL and IPython share) and
the ``%flows`` command, in this process and in IPython. A flow's sinks are Pendings like any
other, so what reads them runs when they arrive; the statement that builds and runs a flow
(``with sperse.Flow(...) as f:``) reads the functions its operators use, so redefining one
runs the flow again. No sleeps: every wait has a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

import sperse
import sperse.ipython
from sperse._flow.api import runs
from sperse.repl._commands import COMMANDS

WAIT = 30.0

WORDS = """
import sperse

lines = ["the cat", "the dog", "a cat"]

def words(line):
    return line.split()
"""

FLOW = """
with sperse.Flow("wc") as f:
    counts = (
        f.source(lines)
        .flat_map(words, name="split")
        .key_by(lambda w: w)
        .fold(0, lambda n, w: n + 1, name="count")
        .collect()
    )
"""


def wait_until(predicate: Callable[[], bool], what: str, ws: sperse.Workspace) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        ws.process_events(0.02)


@pytest.fixture
def ws() -> Iterator[sperse.Workspace]:
    with sperse.Cluster(sperse.MemoryBackend()) as cluster:
        yield sperse.Workspace(cluster)


def test_a_flow_result_is_pending_and_its_readers_run_when_it_arrives(
    ws: sperse.Workspace,
) -> None:
    ws.run(WORDS)
    ws.run(FLOW)
    ws.run("top = sorted(counts.result().items())")
    assert ws.wait("top", timeout=WAIT) == [("a", 1), ("cat", 2), ("dog", 1), ("the", 2)]
    assert ws.cell("top").runs == 1
    assert ws["f"].started is not None and ws["f"].started.result(WAIT).state == "done"


def test_redefining_a_function_an_operator_uses_runs_the_flow_again(
    ws: sperse.Workspace,
) -> None:
    ws.run(WORDS)
    ws.run(FLOW)
    ws.run("top = sorted(counts.result().items())")
    ws.wait("top", timeout=WAIT)
    first = ws["f"]
    ws.run("def words(line):\n    return line.upper().split()")
    assert ws.wait("top", timeout=WAIT) == [("A", 1), ("CAT", 2), ("DOG", 1), ("THE", 2)]
    assert ws["f"] is not first  # a new flow, built and run by the same statement
    assert ws.cell("counts").runs == 2 and ws.cell("top").runs == 2


def test_a_statement_run_again_cancels_its_running_flow(ws: sperse.Workspace) -> None:
    ws.run("import sperse\nimport threading\ngate = threading.Event()")
    ws.run(
        "with sperse.Flow('blocked') as f:\n"
        "    out = f.source([1, 2]).map(lambda x, g=gate: g.wait(30) and x).collect()"
    )
    old_gate, old = ws.namespace["gate"], ws.namespace["f"].started
    ws.run("gate = threading.Event()")  # the flow's statement reads gate: it runs again
    old_gate.set()  # the old run's operator returns, and its run sees the cancel
    wait_until(old.done, "the old run to stop", ws)
    assert old.progress().state == "cancelled"
    assert ws.namespace["f"].started is not old
    ws.namespace["gate"].set()
    assert ws.wait("out", timeout=WAIT).result() == [1, 2]


def live_flow(ws: sperse.Workspace) -> None:
    """A flow fed from a queue, in separate statements: its queue stays usable."""
    ws.run("import sperse\nf = sperse.Flow('live')")
    ws.run("q = f.queue(name='q')")
    ws.run("seen = q.map(str.upper, name='upper').on(replicas=2).collect(name='out')")
    ws.run("run = f.run()")


def test_flows_lists_running_flows_with_their_operators(ws: sperse.Workspace) -> None:
    live_flow(ws)
    ws.run("q.push('a', 'b', 'c')")
    run = ws["run"]

    def through() -> bool:  # every item taken in by the map and by the sink
        counts = {op.name: op.items_in for op in run.operators()}
        return counts.get("upper") == counts.get("out") == 3

    wait_until(through, "the items to go through", ws)
    text = COMMANDS.execute(ws, "%flows")
    head, columns, *rows = text.splitlines()
    assert head.startswith("flow 'live': running in this process, ")
    assert columns.split() == ["operator", "replicas", "in", "out", "rate/s", "backlog"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    assert table["q"][:3] == ["1", "3", "3"]
    assert table["upper"][:3] == ["2", "3", "3"]
    assert table["out"][:3] == ["1", "3", "0"]
    assert float(table["upper"][3].replace(",", "")) > 0  # a rate
    ws.run("q.close()")
    assert sorted(ws.wait("seen", timeout=WAIT).result()) == ["A", "B", "C"]
    wait_until(run.done, "the run to end", ws)
    assert COMMANDS.execute(ws, "%flows").startswith("no flow is running (")
    ended = COMMANDS.execute(ws, "%flows all")
    assert "flow 'live': done in this process" in ended


def test_operator_stats_once_a_run_ended() -> None:
    f = sperse.Flow("stats")
    out = (
        f.source(range(100), name="src")
        .filter(lambda x: x % 2 == 0, name="even")
        .on(replicas=3)
        .flat_map(lambda x: [x, x], name="twice")
        .collect(name="out")
    )
    run = f.run()
    assert len(out.result(WAIT)) == 100
    run.result(WAIT)
    assert run in runs()
    stats = {op.name: op for op in run.operators()}
    shape = {n: (s.replicas, s.items_in, s.items_out, s.backlog) for n, s in stats.items()}
    assert shape == {
        "src": (1, 100, 100, 0),
        "even": (3, 100, 50, 0),
        "twice": (3, 50, 100, 0),
        "out": (1, 100, 0, 0),
    }
    assert stats["even"].rate > 0


# -- IPython ---------------------------------------------------------------------------------


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    config = Config()
    config.HistoryManager.enabled = False
    ip = InteractiveShell.instance(config=config)
    try:
        with sperse.Cluster(sperse.MemoryBackend()):
            ip.run_line_magic("load_ext", "sperse")
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "sperse")
        InteractiveShell.clear_instance()


def test_flows_magic_and_a_rerun_in_ipython(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("mode", "auto")  # as at the REPL: a new definition re-runs readers
    for code in (WORDS, FLOW, "top = sorted(counts.result().items())"):
        assert shell.run_cell(code).success
    ws = sperse.ipython.workspace(shell)
    assert ws.wait("top", timeout=WAIT)[0] == ("a", 1)
    # The sinks settle just before the run ends: wait for the end (its state is shown).
    run = [r for r in runs() if r.flow.name == "wc"][-1]  # the newest, oldest first
    run.result(WAIT)
    shell.run_line_magic("flows", "all")
    shown = capsys.readouterr().out
    assert "flow 'wc': done " in shown and "split" in shown
    assert shell.run_cell("def words(line):\n    return [w[0] for w in line.split()]").success
    assert ws.wait("top", timeout=WAIT) == [("a", 1), ("c", 2), ("d", 1), ("t", 2)]
    assert shell.user_ns["top"] == [("a", 1), ("c", 2), ("d", 1), ("t", 2)]


SERVICE = """
import sperse

def remember(state, r):
    return state + 1, state + 1

f = sperse.Flow('counter')
f.requests().key_by(lambda r: r).scan(0, remember, name='remember').respond()
svc = f.serve('counter')
"""


def test_services_lists_a_service_with_its_requests_and_operators(ws: sperse.Workspace) -> None:
    ws.run(SERVICE)
    svc = ws.wait("svc", timeout=WAIT)
    answers = [svc.request(k).result(WAIT) for k in "aab"]
    assert answers == [("a", 1), ("a", 2), ("b", 1)]
    text = COMMANDS.execute(ws, "%services")
    head, columns, *rows = text.splitlines()
    assert head.startswith("service 'counter' (flow 'counter'): running in this process, ")
    assert "3 requests (" in head and "3 requests from this client, 0 waiting" in head
    assert columns.split() == ["operator", "replicas", "in", "out", "rate/s", "backlog"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    assert table["remember"][:2] == ["1", "3"]
    svc.stop()
    assert COMMANDS.execute(ws, "%services").startswith("no service is running here (")
    assert "service 'counter' (flow 'counter'): stopped" in COMMANDS.execute(ws, "%services all")


def test_services_magic_in_ipython(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    assert shell.run_cell(SERVICE).success
    ws = sperse.ipython.workspace(shell)
    svc = ws.wait("svc", timeout=WAIT)
    assert svc.request("x").result(WAIT) == ("x", 1)
    shell.run_line_magic("services", "")
    shown = capsys.readouterr().out
    assert "service 'counter'" in shown and "remember" in shown
    svc.stop()


SCORER = """
import sperse

def remember(n, r):  # keyed state: how many requests this user has sent
    return n + 1, (r["x"], n + 1)

def score(pair):
    user, (x, n) = pair
    return (user, x, n, "v1")
"""

SERVE = """
with sperse.Flow("scorer") as f:
    (
        f.requests()
        .key_by(lambda r: r["user"])
        .scan(0, remember, name="remember")
        .map(score, name="score")
        .respond()
    )
    svc = f.serve("scorer")
"""


def test_redefining_a_function_a_service_runs_swaps_it_in_place(ws: sperse.Workspace) -> None:
    """Issue 15: the operator takes the new function, its keyed state survives, the
    statement that served the service does not run again, and the prompt is told."""
    events: list[sperse.CellEvent] = []
    ws.subscribe(events.append)
    ws.run(SCORER)
    ws.run(SERVE)
    svc = ws["svc"]
    try:
        ask = "svc.request({'user': 'ada', 'x': %d}).result(timeout=30)"
        assert ws.run(ask % 1)[0].value == ("ada", 1, 1, "v1")
        assert ws.run(ask % 2)[0].value == ("ada", 2, 2, "v1")
        (swap,) = ws.run("def score(pair):\n    user, (x, n) = pair\n    return (user, x, n, 'v2')")
        assert ws.run(ask % 3)[0].value == ("ada", 3, 3, "v2")  # the new one; the count goes on
        assert ws["svc"] is svc and ws.cell("svc").runs == 1
        notes = [e.value for e in events if e.kind == "swapped"]
        assert notes == [
            "service 'scorer': operator 'score' now runs the new score, swapped in place "
            "(its keyed state kept)"
        ]
        assert [e.cell.id for e in events if e.kind == "swapped"] == [swap.id]
        # A function no operator runs is an ordinary redefinition.
        ws.run("def unrelated():\n    return 1")
        assert len([e for e in events if e.kind == "swapped"]) == 1
    finally:
        svc.stop()


def test_a_service_takes_a_redefined_function_in_place_in_ipython(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run_line_magic("mode", "auto")
    assert shell.run_cell(SCORER).success and shell.run_cell(SERVE).success
    ws = sperse.ipython.workspace(shell)
    svc = ws.wait("svc", timeout=WAIT)
    try:
        assert svc.request({"user": "ada", "x": 1}).result(WAIT) == ("ada", 1, 1, "v1")
        capsys.readouterr()
        assert shell.run_cell("def score(pair):\n    return ('v2', pair[1][1])").success
        assert "operator 'score' now runs the new score, swapped in place" in (
            capsys.readouterr().out
        )
        assert svc.request({"user": "ada", "x": 2}).result(WAIT) == ("v2", 2)
        assert ws["svc"] is svc
    finally:
        svc.stop()
