"""The dashboard's pure state: the journal's deltas, the server table's diffs, the task table's
states, counts, pages and limits. Table-driven, no threads, no clock."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from sperse._dashboard.app import delta_of
from sperse._dashboard.hub import Hub
from sperse._dashboard.model import LOG_LIMIT, Journal, ServerTable, TaskTable


def test_journal_coalesces_by_key_and_keeps_the_order_of_the_last_change() -> None:
    journal = Journal()
    journal.add("task", "a", {"state": "queued"})
    journal.add("task", "b", {"state": "queued"})
    journal.add("task", "a", {"state": "done"})
    changes = journal.since(0)
    assert changes is not None
    assert [(c.key, c.data["state"]) for c in changes] == [("b", "queued"), ("a", "done")]
    assert journal.since(3) == []
    assert [c.key for c in journal.since(2) or []] == ["a"]


def test_journal_says_none_when_what_was_missed_is_forgotten() -> None:
    journal = Journal(limit=3)
    for i in range(5):
        journal.add("task", str(i), {})
    assert journal.since(1) is None  # 2 was dropped
    assert [c.key for c in journal.since(2) or []] == ["2", "3", "4"]


@dataclass(frozen=True)
class Look:
    name: str
    added: list[tuple[str, str]]  # (topic, key), in order: seq 1, 2, ...
    seq: int  # what the page saw
    most: int  # tasks it takes at most
    sent: list[tuple[str, str]]
    more: bool = False


LOOKS = [
    Look("a task's changes are one", [("task", "a")] * 3, 0, 10, [("task", "a")]),
    Look(
        "only what came after",
        [("task", "a"), ("task", "b"), ("task", "c")],
        2,
        10,
        [("task", "c")],
    ),
    Look(
        "a task changed again: at its last place",
        [("task", "a"), ("task", "b"), ("task", "a")],
        1,
        10,
        [("task", "b"), ("task", "a")],
    ),
    Look(
        "the tasks changed last, and that more did",
        [("task", "a"), ("task", "b"), ("task", "c")],
        0,
        2,
        [("task", "b"), ("task", "c")],
        True,
    ),
    Look(
        "just as many as taken: no more",
        [("task", "a"), ("task", "b")],
        0,
        2,
        [("task", "a"), ("task", "b")],
    ),
    Look(
        "servers are never left out",
        [("server", "s"), ("task", "a"), ("task", "b"), ("server", "t")],
        0,
        1,
        [("server", "s"), ("task", "b"), ("server", "t")],
        True,
    ),
    Look("no task taken", [("task", "a"), ("workspace", "w")], 0, 0, [("workspace", "w")], True),
    Look(
        "a server gone and back is one change",
        [("server", "s"), ("server_gone", "s"), ("server", "s")],
        0,
        10,
        [("server", "s")],
    ),
    Look(
        "a server gone last is gone",
        [("server", "s"), ("server_gone", "s")],
        0,
        10,
        [("server_gone", "s")],
    ),
    Look("nothing new", [("task", "a"), ("server", "s")], 2, 10, []),
]


@pytest.mark.parametrize("case", LOOKS, ids=lambda c: c.name)
def test_a_look_at_the_journal_is_coalesced_and_bounded(case: Look) -> None:
    journal = Journal()
    for topic, key in case.added:
        journal.add(topic, key, {})  # type: ignore[arg-type]
    found = journal.newest(case.seq, case.most)
    assert found is not None
    changes, more = found
    assert [(c.topic, c.key) for c in changes] == case.sent
    assert more == case.more
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)


def test_the_journal_keeps_one_entry_per_key_and_forgets_past_its_limit() -> None:
    journal = Journal(limit=2)
    for _ in range(100):
        journal.add("task", "a", {})
    assert journal.since(0) is not None  # a hundred changes of one task: nothing forgotten
    journal.add("task", "b", {})
    journal.add("task", "c", {})  # "a" (seq 100) goes
    assert journal.since(99) is None and journal.since(100) is not None
    for i in range(3):  # servers forgotten later than tasks: a page must reload still
        journal.add("server", f"s{i}", {})
    journal.add("task", "d", {})  # forgets "b" (seq 101), after "s0" (seq 103) went
    assert journal.since(102) is None and journal.since(103) is not None


def test_a_task_s_change_is_sent_as_it_is_when_sent() -> None:
    journal = Journal()
    tasks = TaskTable(journal)
    tasks.submitted("t", "f()", now=1.0)
    tasks.started("t", "s1", now=2.0, worker=7)
    tasks.ended("t", "s1", now=3.0)
    (change,) = journal.since(0) or []
    assert change.json()["state"] == "done" and change.json()["worker"] == 7


def test_a_server_that_leaves_and_comes_back_is_one_change() -> None:
    journal = Journal()
    table = ServerTable(journal)
    table.update([{"name": "a", "busy": 0}])
    seq = journal.seq
    table.update([])
    table.update([{"name": "a", "busy": 1}])
    changes = journal.since(seq) or []
    assert [(c.topic, c.key) for c in changes] == [("server", "a")]


@dataclass(frozen=True)
class Case:
    name: str
    servers: list[list[dict[str, object]]]
    changes: list[tuple[str, str]]  # after the first list


SERVER_CASES = [
    Case("nothing changes", [[{"name": "a"}], [{"name": "a"}]], []),
    Case("one joins", [[{"name": "a"}], [{"name": "a"}, {"name": "b"}]], [("server", "b")]),
    Case("one leaves", [[{"name": "a"}, {"name": "b"}], [{"name": "a"}]], [("server_gone", "b")]),
    Case(
        "load changes",
        [[{"name": "a", "busy": 0}], [{"name": "a", "busy": 2}]],
        [("server", "a")],
    ),
]


@pytest.mark.parametrize("case", SERVER_CASES, ids=lambda c: c.name)
def test_server_table_journals_only_differences(case: Case) -> None:
    journal = Journal()
    table = ServerTable(journal)
    table.update(case.servers[0])
    seq = journal.seq
    for servers in case.servers[1:]:
        table.update(servers)
    assert [(c.topic, c.key) for c in journal.since(seq) or []] == case.changes


def test_task_states_and_counts() -> None:
    journal = Journal()
    tasks = TaskTable(journal)
    for i in range(4):
        tasks.submitted(f"t{i}", f"f({i})", now=float(i))
    tasks.started("t0", "s1", now=10.0)
    tasks.started("t1", "s2", now=10.0)
    tasks.ended("t0", "s1", now=11.0)
    tasks.ended(
        "t1",
        "s2",
        now=11.0,
        error=("raised", "ZeroDivisionError", "division by zero", "Traceback..."),
    )
    tasks.ended("t2", "", now=11.0, error=("cancelled", "TaskCancelled", "cancelled", ""))
    assert tasks.counts == {"queued": 1, "running": 0, "done": 1, "failed": 1, "cancelled": 1}
    failed = tasks.get("t1")
    assert failed is not None and failed.as_json(full=True)["traceback"] == "Traceback..."
    tasks.ended("t0", "s1", now=12.0, error=("raised", "X", "late", ""))  # a second end: ignored
    assert tasks.counts["done"] == 1


def test_pages_are_newest_first_and_filter_by_state() -> None:
    tasks = TaskTable(Journal())
    for i in range(10):
        tasks.submitted(f"t{i}", "", now=float(i))
        if i % 2:
            tasks.started(f"t{i}", "s", now=float(i))
            tasks.ended(f"t{i}", "s", now=float(i))
    rows, total = tasks.page(offset=0, limit=3)
    assert [r["id"] for r in rows] == ["t9", "t8", "t7"] and total == 10
    rows, total = tasks.page(offset=8, limit=3)
    assert [r["id"] for r in rows] == ["t1", "t0"]
    rows, total = tasks.page(state="done", offset=1, limit=2)
    assert [r["id"] for r in rows] == ["t7", "t5"] and total == 5


def test_the_table_forgets_the_oldest_finished_tasks_first() -> None:
    tasks = TaskTable(Journal(), keep=3)
    tasks.submitted("running", "", now=0.0)
    tasks.started("running", "s", now=0.0)
    for i in range(5):
        tasks.submitted(f"t{i}", "", now=1.0)
        tasks.ended(f"t{i}", "s", now=1.0)
    assert tasks.get("running") is not None
    assert len(tasks) == 3
    assert tasks.counts["done"] == 5  # counts stay exact


def test_a_task_log_keeps_its_end() -> None:
    tasks = TaskTable(Journal())
    tasks.submitted("t", "", now=0.0)
    tasks.output("t", "a" * LOG_LIMIT)
    tasks.output("t", "END")
    row = tasks.get("t")
    assert row is not None
    log = row.as_json(full=True)
    assert log["log"].endswith("END") and len(log["log"]) == LOG_LIMIT and log["log_cut"]


def test_a_delta_holds_the_tasks_changed_last_and_what_else_changed() -> None:
    hub = Hub("test", clock=lambda: 5.0)
    hub.servers([{"name": "s1"}])
    seq = hub.seq
    for i in range(5):
        hub.task_submitted(f"t{i}", "f()")
    hub.task_ended("t0", "s1")
    hub.servers([])
    newest, found, counts = hub.since(seq, 3)
    assert found is not None
    delta = delta_of(newest, *found, counts)
    assert delta["gone"] == ["s1"] and delta["seq"] == newest
    assert [t["id"] for t in delta["tasks"]] == ["t3", "t4", "t0"] and delta["tasks_more"]
    assert delta["tasks"][-1]["state"] == "done" and delta["counts"]["queued"] == 4
    assert json.loads(json.dumps(delta)) == delta  # JSON-ready
    _, found, counts = hub.since(seq, 0)  # a page that shows no task
    assert found is not None
    assert "tasks" not in delta_of(newest, *found, counts)


def test_a_batch_journals_each_task_once_in_the_order_of_its_last_change() -> None:
    hub = Hub("t", clock=lambda: 100.0)
    with hub.task_batch() as tasks:
        tasks.submitted("a", "a", 1.0)
        tasks.submitted("b", "b", 1.0)
        tasks.started("b", "s", 2.0)
        tasks.started("a", "s", 2.0)
        tasks.ended("a", "s", 3.0)
        tasks.submitted("c", "c", 3.0)
    seq, found, counts = hub.since(0, 10)
    assert found is not None
    changes, more = found
    assert [(c.key, c.data["state"]) for c in changes] == [
        ("b", "running"),
        ("a", "done"),
        ("c", "queued"),
    ]
    assert seq == 3 and not more
    assert counts == {"queued": 1, "running": 1, "done": 1, "failed": 0, "cancelled": 0}
    hub.task_ended("b", "s", at=4.0)  # outside a batch: journalled at once
    assert hub.seq == 4
