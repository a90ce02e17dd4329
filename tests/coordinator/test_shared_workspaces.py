"""What clients share with a coordinator's dashboard (workspaces, flow runs): the pure
translation into the hub, the RPC's rules (the cluster's token; a coordinator without a
dashboard shows none), and the client's sender, which coalesces a burst of changes. The
pages themselves, in a real browser, are in tests/dashboard/."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from coordinator_helpers import TOKEN, CoordinatorThread, wait_until

import sperse
from sperse._backends.client_share import ClientShare
from sperse._coordinator.workspaces import apply_share
from sperse._dashboard.hub import Hub
from sperse._wire import pb

GRAPH = {"name": "w", "version": 3, "mode": "reactive", "cells": [{"id": 1}], "edges": []}


RUN = {"name": "f", "state": "running", "operators": [{"id": 0}], "edges": [], "rounds": []}


def ws(client: str, name: str, data: object) -> tuple[str, str, str, str]:
    return ("workspace", client, name, data if isinstance(data, str) else json.dumps(data))


def run(client: str, key: str, data: object) -> tuple[str, str, str, str]:
    return ("flow", client, key, data if isinstance(data, str) else json.dumps(data))


@dataclass(frozen=True)
class Case:
    name: str
    shares: list[tuple[str, str, str, str]]  # (kind, client, name, data JSON), in order
    workspaces: list[str]  # the workspaces the hub has then
    flows: list[str] = field(default_factory=list)  # and the flow runs
    taken: bool = True  # the last share


CASES = [
    Case("a graph", [ws("h:1", "pid 1 workspace 1", GRAPH)], ["h:1 pid 1 workspace 1"]),
    Case(
        "two clients, one name", [ws("h:1", "w", GRAPH), ws("h:2", "w", GRAPH)], ["h:1 w", "h:2 w"]
    ),
    Case("a workspace's end", [ws("h:1", "w", GRAPH), ws("h:1", "w", "")], []),
    Case("no slash in a name", [ws("h/1", "a/b", GRAPH)], ["h_1 a_b"]),
    Case("not JSON", [ws("h:1", "w", "{not json")], [], taken=False),
    Case("not a graph", [ws("h:1", "w", {"cells": "x", "edges": []})], [], taken=False),
    Case("a flow run", [run("h:1", "1", RUN)], [], ["h:1 1"]),
    Case(
        "two clients' first runs",
        [run("h:1", "1", RUN), run("h:2", "1", RUN)],
        [],
        ["h:1 1", "h:2 1"],
    ),
    Case(
        "a run stays when its client ends",
        [run("h:1", "1", RUN), run("h:1", "1", "")],
        [],
        ["h:1 1"],
    ),
    Case("not a run", [run("h:1", "1", GRAPH)], [], [], taken=False),
    Case("an unknown kind", [("secrets", "h:1", "w", json.dumps(GRAPH))], [], [], taken=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_shares_become_the_hub_s_workspaces_and_flows(case: Case) -> None:
    hub = Hub("test")
    taken = True
    for kind, client, name, data in case.shares:
        taken = apply_share(hub, pb.ClientShare(client=client, kind=kind, name=name, data=data))
    assert taken == case.taken
    assert hub.workspace_list() == sorted(case.workspaces)
    for name in case.workspaces:
        shown = hub.workspace_graph(name)
        assert shown is not None and shown["name"] == name and shown["cells"] == GRAPH["cells"]
    flows = hub.flow_list()["flows"]
    assert [f["id"] for f in flows] == case.flows
    for flow in flows:
        assert flow["client"] == flow["id"].split()[0] and flow["order"] > 0
        assert flow["operators"] == RUN["operators"]


def _get(coordinator: CoordinatorThread, path: str) -> Any:
    base = coordinator.server.dashboard_url.split("?", 1)[0].rstrip("/")
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_share_checks_the_token_and_needs_a_dashboard(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    share = pb.ClientShare(
        token=TOKEN, client="h:1", kind="workspace", name="w", data=json.dumps(GRAPH)
    )
    plain = make_coordinator()
    assert not plain.stub.Share(share, timeout=10).shown
    shown = make_coordinator(dashboard_port=0)
    wrong = pb.ClientShare(
        token="wrong", client="h:1", kind="workspace", name="w", data=json.dumps(GRAPH)
    )
    with pytest.raises(grpc.RpcError) as caught:
        shown.stub.Share(wrong, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _get(shown, "/api/workspaces")["workspaces"] == []
    assert shown.stub.Share(share, timeout=10).shown
    assert _get(shown, "/api/workspaces")["workspaces"] == ["h:1 w"]
    assert _get(shown, "/api/workspaces/h:1 w".replace(" ", "%20"))["version"] == 3


def test_a_burst_of_changes_is_one_message_and_close_ends_the_workspace(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    coordinator = make_coordinator(dashboard_port=0)
    # A long interval: after its first send, the sender waits until it is closed.
    share = ClientShare(coordinator.url, TOKEN, client="h:1", interval=600.0)
    try:
        share.publish_workspace("w", {**GRAPH, "version": 1})
        wait_until(lambda: share.sent == 1, what="the first graph sent")
        assert _get(coordinator, "/api/workspaces")["workspaces"] == ["h:1 w"]
        for version in range(2, 100):
            share.publish_workspace("w", {**GRAPH, "version": version})
    finally:
        share.close()
    assert share.sent == 2  # the burst waited, then only the end went
    assert _get(coordinator, "/api/workspaces")["workspaces"] == []


def test_a_wrong_token_is_logged_once_and_never_raises(
    make_coordinator: Callable[..., CoordinatorThread], caplog: pytest.LogCaptureFixture
) -> None:
    coordinator = make_coordinator(dashboard_port=0)
    share = ClientShare(coordinator.url, "wrong", client="h:1", interval=0.0)
    try:
        share.publish_workspace("w", GRAPH)
        wait_until(lambda: "cannot share workspace" in caplog.text, what="the warning")
    finally:
        share.close()
    assert share.sent == 0
    assert caplog.text.count("cannot share workspace") == 1
    assert _get(coordinator, "/api/workspaces")["workspaces"] == []


def test_share_workspace_without_a_coordinator_or_a_dashboard_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="connect to the coordinator"):
        sperse.connect(backend="memory", share_workspace=True)
