"""Servers report their tasks to a coordinator that serves a dashboard: the pure translation
into the dashboard's hub, the RPC's rules, and a real ``sperse server --join`` whose client's
tasks, memory, store and named objects reach the coordinator's dashboard API."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from coordinator_helpers import TOKEN, Child, CoordinatorThread, member, wait_until

import sperse
from sperse._coordinator.tasks import apply_report, server_gone
from sperse._dashboard.hub import Hub
from sperse._wire import pb

StartChild = Callable[..., Child]


def note(task: str, kind: str, **fields: Any) -> pb.TaskNote:
    return pb.TaskNote(task=task, kind=kind, at=fields.pop("at", 100.0), **fields)


def report(*notes: pb.TaskNote, server: str = "s1", dropped: int = 0) -> pb.TaskReport:
    return pb.TaskReport(token=TOKEN, server=server, notes=notes, dropped=dropped)


def rows(hub: Hub, state: str = "") -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in hub.task_page(state, 0, 100)["tasks"]}


def test_notes_become_the_tasks_of_the_hub() -> None:
    hub = Hub("test", clock=lambda: 200.0)
    apply_report(
        hub,
        report(
            note("w.s1/t1", "queued", label="f(1)", client="alice", at=10.0),
            note("w.s1/t2", "queued", at=10.5),
            note("w.s1/t1", "started", worker=4242, at=11.0),
            note("w.s1/t1", "output", text="hi\n"),
            note("w.s1/t1", "done", at=12.5),
            note("w.s1/t2", "started", worker=4243, at=11.0),
            note(
                "w.s1/t2",
                "failed",
                error_kind="raised",
                error_type="KeyError",
                error_message="'k'",
                traceback="Traceback ...",
                at=13.0,
            ),
            dropped=3,
        ),
    )
    found = rows(hub)
    one, two = found["s1/w.s1/t1"], found["s1/w.s1/t2"]
    assert (one["label"], one["client"], one["server"], one["worker"]) == (
        "f(1)",
        "alice",
        "s1",
        4242,
    )
    assert (one["state"], one["submitted"], one["started"], one["ended"]) == (
        "done",
        10.0,
        11.0,
        12.5,
    )
    assert two["label"] == "t2"  # no label: the task id
    assert (two["state"], two["error_type"], two["error"]) == ("failed", "KeyError", "'k'")
    detail = hub.task("s1/w.s1/t1")
    assert detail is not None and detail["log"] == "hi\n"
    page = hub.task_page("", 0, 10)
    assert page["dropped"] == 3
    assert page["counts"]["done"] == 1 and page["counts"]["failed"] == 1


def test_a_merged_note_is_the_task_s_life_in_one() -> None:
    hub = Hub("test", clock=lambda: 200.0)
    seq = hub.seq
    apply_report(
        hub,
        report(
            note(
                "w.s1/t1",
                "task",
                queued_at=10.0,
                label="f(1)",
                client="alice",
                started_at=11.0,
                worker=7,
                ended_at=12.0,
                text="hi\n",
            ),
            note("w.s1/t2", "task", queued_at=10.0, started_at=11.0, worker=8),
            note("w.s1/t3", "task", queued_at=10.0),
        ),
    )
    apply_report(
        hub,
        report(
            note(
                "w.s1/t2",
                "task",
                text="late\n",
                ended_at=13.0,
                error_kind="raised",
                error_type="KeyError",
                error_message="'k'",
                traceback="Traceback ...",
            ),
            note(
                "w.s1/t3", "task", ended_at=14.0, error_kind="cancelled", error_type="TaskCancelled"
            ),
        ),
    )
    found = rows(hub)
    one, two, three = (found[f"s1/w.s1/t{i}"] for i in (1, 2, 3))
    assert (one["state"], one["label"], one["client"], one["worker"]) == (
        "done",
        "f(1)",
        "alice",
        7,
    )
    assert (one["submitted"], one["started"], one["ended"]) == (10.0, 11.0, 12.0)
    assert (two["state"], two["worker"], two["error_type"], two["ended"]) == (
        "failed",
        8,
        "KeyError",
        13.0,
    )
    assert (three["state"], three["label"]) == ("cancelled", "t3")
    assert (hub.task("s1/w.s1/t1") or {})["log"] == "hi\n"
    assert (hub.task("s1/w.s1/t2") or {})["log"] == "late\n"
    _, found_changes, counts = hub.since(seq, 100)
    assert found_changes is not None
    changes, more = found_changes
    assert [c.key for c in changes] == ["s1/w.s1/t1", "s1/w.s1/t2", "s1/w.s1/t3"] and not more
    assert counts["done"] == 1 and counts["failed"] == 1 and counts["cancelled"] == 1


def test_a_gone_server_fails_its_open_tasks_and_an_ended_session_cancels_its_own() -> None:
    hub = Hub("test")
    apply_report(
        hub,
        report(
            note("w.s1/t1", "queued"),
            note("w.s1/t2", "queued"),
            note("w.s1/t2", "done"),
            note("w.s2/t1", "queued"),
            note("w.s2/t1", "started", worker=1),
        ),
    )
    apply_report(hub, report(note("w.s1/t1", "queued"), server="s2"))
    apply_report(hub, report(note("w.s1/", "session_ended")))
    found = rows(hub)
    assert found["s1/w.s1/t1"]["state"] == "cancelled"
    assert found["s1/w.s1/t2"]["state"] == "done"  # ended already: kept as it was
    assert found["s1/w.s2/t1"]["state"] == "running"
    server_gone(hub, "s1", "no heartbeat for 5.0 s")
    found = rows(hub)
    assert found["s1/w.s2/t1"]["state"] == "failed"
    assert "no heartbeat" in found["s1/w.s2/t1"]["error"]
    assert found["s2/w.s1/t1"]["state"] == "queued"  # another server's: untouched


def test_join_asks_for_tasks_only_with_a_dashboard(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    plain = make_coordinator()
    assert not plain.join(member("a")).report_tasks
    shown = make_coordinator(dashboard_port=0)
    assert shown.join(member("a")).report_tasks


def test_report_tasks_checks_the_token_and_the_member(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    coordinator = make_coordinator(dashboard_port=0)
    request = report(note("w.s1/t1", "queued"), server="nobody")
    with pytest.raises(grpc.RpcError) as caught:
        coordinator.stub.ReportTasks(pb.TaskReport(token="wrong", server="nobody"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not coordinator.stub.ReportTasks(request, timeout=10).known
    coordinator.join(member("nobody"))
    assert coordinator.stub.ReportTasks(request, timeout=10).known
    tasks = _get(coordinator, "/api/tasks")["tasks"]
    assert [t["id"] for t in tasks] == ["nobody/w.s1/t1"]


def _get(coordinator: CoordinatorThread, path: str) -> Any:
    base = coordinator.server.dashboard_url.split("?", 1)[0].rstrip("/")
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _echo(x: int) -> int:
    return x


def _fails() -> None:
    print("about to fail")
    raise KeyError("missing")


def _put(key: str, value: bytes) -> None:
    sperse.state().set(key, value)


class Tally:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def test_a_joined_server_reports_tasks_memory_store_and_named_objects(
    make_coordinator: Callable[..., CoordinatorThread], start_child: StartChild
) -> None:
    coordinator = make_coordinator(dashboard_port=0, heartbeat_timeout=1.0)
    args = ["--token-stdin", "--join", coordinator.address, "--name", "s1", "--workers", "1"]
    server = start_child("sperse.server", args, token=TOKEN)
    url = server.ready_url()
    cluster = sperse.connect(url, token=TOKEN)
    try:
        assert sperse.remote(_echo)(7).result(30) == 7
        with pytest.raises(KeyError):
            sperse.remote(_fails)().result(30)
        sperse.remote(_put)("k", b"x" * 1000).result(30)
        named = sperse.remote(Tally)(name="tally")
        unnamed = sperse.remote(Tally)()
        assert named.incr().result(30) == 1 and unnamed.incr().result(30) == 1

        def tasks() -> dict[str, dict[str, Any]]:
            found = _get(coordinator, "/api/tasks?limit=100")["tasks"]
            return {t["label"]: t for t in found if t["state"] in ("done", "failed")}

        done = wait_until(lambda: (t := tasks()) and len(t) >= 5 and t, what="reported tasks")
        echo = next(t for label, t in done.items() if "_echo" in label)
        assert echo["state"] == "done" and echo["server"] == "s1"
        assert echo["worker"] in _descendants(server.pid)  # forked by its forkserver
        failed = next(t for t in done.values() if t["state"] == "failed")
        detail = _get(coordinator, "/api/tasks/" + urllib.request.quote(failed["id"]))
        assert detail["error_type"] == "KeyError" and "_fails" in detail["traceback"]
        assert "about to fail" in detail["log"]

        def loaded() -> dict[str, Any] | None:
            (s1,) = _get(coordinator, "/api/servers")["servers"]
            return s1 if s1["store_keys"] == 1 and s1["remote_objects"] == 2 else None

        s1 = wait_until(loaded, what="the heartbeat's memory and store")
        assert s1["store_bytes"] >= 1000
        assert s1["rss"] > 0 and s1["workers_rss"] > 0
        objects = _get(coordinator, "/api/objects")
        assert objects["named_only"]
        assert [(o["name"], o["server"], o["object_id"]) for o in objects["objects"]] == [
            ("tally", "s1", "")
        ]
        body = json.dumps(_get(coordinator, "/api/objects")) + json.dumps(
            _get(coordinator, "/api/servers")
        )
        for proxy in (named, unnamed):
            assert proxy._object_id not in body  # ids are capabilities
    finally:
        cluster.close()


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as file:
                children = {int(p) for p in file.read().split()}
            todo.extend(children - found)
            found |= children
    return found
