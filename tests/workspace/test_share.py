"""What a workspace shares with a dashboard: where a running remote cell runs (``on``), as
soon as its task starts there, published from the backend's thread without reading the
graph (``sperse._workspace.share``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from scripted_backend import Scripted

import sperse
from sperse._core import Started
from sperse._workspace.share import on_server


def _snapshot(*cells: dict[str, Any]) -> dict[str, Any]:
    return {"name": "w", "version": 0, "mode": "auto", "cells": list(cells), "edges": []}


def _cell(task: str, status: str, on: str = "") -> dict[str, Any]:
    return {"id": 1, "label": "x = ...", "status": status, "task": task, "where": on, "on": on}


@dataclass(frozen=True)
class Case:
    name: str
    cells: tuple[dict[str, Any], ...]
    task: str
    server: str
    on: str | None  # the cell's ``on`` in the copy; None: no copy


CASES = [
    Case("running: gets its server", (_cell("t1", "running"),), "t1", "s1", "s1"),
    Case("another task's start", (_cell("t1", "running"),), "t2", "s1", None),
    Case("shown already", (_cell("t1", "running", "s1"),), "t1", "s1", None),
    Case("ended already", (_cell("t1", "done"),), "t1", "s1", None),
    Case("moved: retried elsewhere", (_cell("t1", "running", "s1"),), "t1", "s2", "s2"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_on_server(case: Case) -> None:
    before = _snapshot(*case.cells)
    frozen = repr(before)
    after = on_server(before, case.task, case.server)
    assert repr(before) == frozen  # a published snapshot is never changed
    if case.on is None:
        assert after is None
    else:
        assert after is not None
        assert after["cells"][0]["on"] == case.on == after["cells"][0]["where"]
        assert after["version"] > before["version"]


@pytest.fixture
def backend() -> Scripted:
    return Scripted()


@pytest.fixture
def cluster(backend: Scripted) -> Iterator[sperse.Cluster]:
    with sperse.Cluster(backend) as c:
        yield c


def test_a_cell_that_starts_is_shown_on_its_server_at_once(
    backend: Scripted, cluster: sperse.Cluster
) -> None:
    """The start is reported on the backend's thread while the user's thread does nothing:
    the graph is published again from there, with the cell ``on`` its server."""
    shared: list[dict[str, Any]] = []
    cluster.share_workspace = lambda name, graph: shared.append(graph)
    ws = sperse.Workspace(cluster)
    try:
        ws.run("x = remote 1 + 1")
        (spec,) = backend.sent
        (cell,) = [c for c in shared[-1]["cells"] if c["task"] == spec.task_id]
        assert (cell["status"], cell["on"]) == ("running", "")  # sent, not started yet
        published = len(shared)
        reporter = threading.Thread(target=backend.report, args=(Started(spec.task_id, "s7"),))
        reporter.start()
        reporter.join(30.0)
        assert len(shared) == published + 1
        (cell,) = [c for c in shared[-1]["cells"] if c["task"] == spec.task_id]
        assert (cell["status"], cell["on"]) == ("running", "s7")
        ws.share()  # a new snapshot of the graph keeps it
        (cell,) = [c for c in shared[-1]["cells"] if c["task"] == spec.task_id]
        assert cell["on"] == "s7"
    finally:
        ws.close()
