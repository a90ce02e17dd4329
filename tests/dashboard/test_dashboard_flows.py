"""The Flows page of a client's dashboard: the snapshot a run is shown from (table-driven,
on real in-process runs), and the page in headless Chromium while flows run."""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from dashboard_helpers import Watched

import sperse
from sperse._flow.api import InProcess
from sperse._flow.dashboard import flow_snapshot

DEADLINE = 30.0


def _pipeline(f: sperse.Flow) -> Any:
    return f.source(range(10), name="numbers").map(lambda x: x + 1, name="inc").collect(name="out")


def _keyed(f: sperse.Flow) -> Any:
    return (
        f.source(["a b", "b c"], name="lines")
        .flat_map(str.split, name="words")
        .key_by(lambda w: w, name="by_word")
        .fold(0, lambda n, _: n + 1, name="count")
        .collect(name="out")
    )


def _halving(f: sperse.Flow) -> Any:
    return (
        f.source([1.0], name="seed")
        .iterate_bulk(
            64.0,
            lambda s, st: s.map(lambda x: x, name="step"),
            lambda acc, x: acc,
            lambda old, parts: old / 2,
            until=lambda old, new: new < 1,
            zero=0,
            delta=lambda old, new: old - new,
            name="half",
        )
        .collect(name="out")
    )


def _failing(f: sperse.Flow) -> Any:
    return f.source([1, 0], name="numbers").map(lambda x: 1 / x, name="inv").collect(name="out")


@dataclass(frozen=True)
class Case:
    build: Callable[[sperse.Flow], Any]
    state: str
    operators: list[tuple[str, str, int, int]]  # name, kind, items in, replicas
    edges: list[tuple[str, str, bool]]  # source, target, feedback
    deltas: list[float]


CASES = {
    "a pipeline": Case(
        _pipeline,
        "done",
        [("numbers", "source", 10, 1), ("inc", "map", 10, 1), ("out", "collect", 10, 1)],
        [("numbers", "inc", False), ("inc", "out", False)],
        [],
    ),
    "a keyed fold": Case(
        _keyed,
        "done",
        [
            ("lines", "source", 2, 1),
            ("words", "flat_map", 2, 1),
            ("by_word", "key_by", 4, 1),
            ("count", "fold", 4, 1),
            ("out", "collect", 3, 1),
        ],
        [
            ("lines", "words", False),
            ("words", "by_word", False),
            ("by_word", "count", False),
            ("count", "out", False),
        ],
        [],
    ),
    "a bulk loop": Case(
        _halving,
        "done",
        [
            ("seed", "source", 1, 1),
            ("half", "bulk_gate", -1, 1),
            ("step", "map", -1, 1),
            ("half.fold", "bulk_end", -1, 1),
            ("out", "collect", 1, 1),
        ],
        [
            ("seed", "half", False),
            ("half", "step", False),
            ("step", "half.fold", False),
            ("half.fold", "out", False),
            ("half.fold", "half", True),
        ],
        [32.0, 16.0, 8.0, 4.0, 2.0, 1.0, 0.5],
    ),
    "a failure": Case(
        _failing,
        "failed",
        [("numbers", "source", -1, 1), ("inv", "map", -1, 1), ("out", "collect", -1, 1)],
        [("numbers", "inv", False), ("inv", "out", False)],
        [],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_flow_snapshot(case: Case) -> None:
    f = sperse.Flow("f", cluster=None)
    case.build(f)
    run = f.run(executor=InProcess())
    with contextlib.suppress(Exception):
        run.result(DEADLINE)
    snap = flow_snapshot(run, "7")
    assert snap["id"] == "7" and snap["name"] == "f" and snap["state"] == case.state
    assert snap["elapsed"] >= 0
    got = [(o["name"], o["kind"], o["items_in"], o["replicas"]) for o in snap["operators"]]
    assert [(n, k, r) for n, k, _, r in got] == [(n, k, r) for n, k, _, r in case.operators]
    for (name, _, items, _), (_, _, want, _) in zip(got, case.operators, strict=True):
        if want >= 0:
            assert items == want, name
    names = {o["id"]: o["name"] for o in snap["operators"]}
    edges = [(names[e["source"]], names[e["target"]], e["feedback"]) for e in snap["edges"]]
    assert sorted(edges) == sorted(case.edges)
    assert [r["delta"] for r in snap["rounds"]] == case.deltas
    assert snap["rounds_total"] == len(case.deltas)
    if case.deltas:
        assert {o["loop"] for o in snap["operators"] if o["kind"] != "source"} >= {"half"}
    assert snap["operators"][0]["loop"] is None
    assert all(o["servers"] == {} for o in snap["operators"])  # in this process
    if case.state == "failed":
        assert snap["error"].startswith("FlowFailed: ") and "ZeroDivisionError" in snap["error"]
        assert "inv" in snap["error"]
    else:
        assert snap["error"] == ""


# ---- the page --------------------------------------------------------------------------


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _in(page: Any, op: str) -> int:
    return int(page.locator(f'#operators tr[data-op="{op}"] td.in').inner_text())


@pytest.mark.slow
def test_the_flows_page_shows_runs_their_operators_and_rounds_live(
    open_page: Callable[[], Watched],
) -> None:
    from playwright.sync_api import expect

    cluster = sperse.connect(workers=1, dashboard=True)
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.close)
        assert cluster.dashboard is not None
        base = cluster.dashboard.url.split("?")[0].rstrip("/")
        token = cluster.dashboard.url.split("token=")[1]
        for path in ("/flows", "/api/flows", "/api/flows/1"):
            assert _status(base + path) == 401, path
            assert _status(base + path, {"Authorization": "Bearer wrong"}) == 403, path
        assert _status(base + "/api/flows", {"Authorization": f"Bearer {token}"}) == 200

        watched = open_page()
        page = watched.page
        page.goto(cluster.dashboard.url.replace("/?token=", "/flows?token="))
        expect(page.locator("body[data-ready='1']")).to_have_count(1)
        expect(page.locator("#live")).to_have_text("live")

        f = sperse.Flow("slow-map", cluster=cluster)
        q = f.queue(name="in")
        out = q.map(lambda x: x * 2, name="double").collect(name="out")
        run = f.run()
        stack.callback(run.cancel)
        q.push(*range(5))
        row = page.locator("#flows tr[data-flow]", has_text="slow-map")
        expect(row.locator(".state")).to_have_text("running")
        expect(page.locator('#operators tr[data-op="double"] td.in')).to_have_text("5")
        page.wait_for_function(
            "() => (window.sperseDashboard.flowGraph.nodes().length === 3"
            " && window.sperseDashboard.flowGraph.edges().length === 2)"
        )
        label = page.evaluate(
            "() => window.sperseDashboard.flowGraph.nodes('[name = \"double\"]').data('text')"
        )
        assert "\u00d71" in label and "backlog" in label and "/s" in label
        (server,) = [s.name for s in cluster.servers()]
        expect(page.locator('#operators tr[data-op="double"] td.where')).to_have_text(server)
        watched.screenshot("flows-running")
        q.push(*range(5, 12))
        expect(page.locator('#operators tr[data-op="double"] td.in')).to_have_text("12")
        page.wait_for_function(
            "() => window.sperseDashboard.flowGraph.nodes('[name = \"double\"]').data('items_in')"
            " === 12"
        )
        q.close()
        assert run.result(DEADLINE).state == "done"
        assert sorted(out.result(0)) == [2 * i for i in range(12)]
        expect(row.locator(".state")).to_have_text("done")

        b = sperse.Flow("halving", cluster=cluster)
        _halving(b)
        bulk = b.run()
        assert bulk.result(DEADLINE).state == "done"
        bulk_row = page.locator("#flows tr[data-flow]", has_text="halving")
        expect(bulk_row.locator(".state")).to_have_text("done")
        bulk_row.click()
        expect(page.locator("#rounds circle")).to_have_count(7)
        expect(page.locator("#rounds polyline[data-loop='half']")).to_have_count(1)
        page.wait_for_function(
            "() => window.sperseDashboard.flowGraph.edges('[?feedback]').length === 1"
        )
        watched.screenshot("flows-rounds")
        expect(page.locator("#flow-error")).to_be_hidden()

        broken = sperse.Flow("broken", cluster=cluster)
        _failing(broken)
        with pytest.raises(sperse.FlowFailed):
            broken.run().result(DEADLINE)
        broken_row = page.locator("#flows tr[data-flow]", has_text="broken")
        expect(broken_row.locator(".state")).to_have_text("failed")
        broken_row.click()
        expect(page.locator("#flow-error")).to_contain_text("ZeroDivisionError")
        expect(page.locator("#flow-error")).to_contain_text("inv")
        assert watched.errors == []
        # no flow page open: nothing more is published (the hub's journal stands still)
        page.goto("about:blank")
        hub = cluster.dashboard.hub
        deadline = time.monotonic() + DEADLINE
        while hub.flow_viewers and time.monotonic() < deadline:
            hub_seq = hub.seq  # the feed ends when its connection closes
            cluster.run_until(lambda s=hub_seq: hub.seq != s or not hub.flow_viewers, 0.2)
        assert hub.flow_viewers == 0
