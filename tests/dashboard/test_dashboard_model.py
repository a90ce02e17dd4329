"""The dashboard's pure state: the journal's deltas, the server table's diffs, the task table's
states, counts, pages and limits. Table-driven, no threads, no clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

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
