"""What ``%flows``, ``run.operators()`` and ``sperse status`` show of async operators: the
items their calls hold (``in flight``), while calls wait on an event the test sets. Waits
have deadlines; no sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import sperse
from sperse._backends.membership import MemberInfo
from sperse._flow.api import InProcess
from sperse._status import services_text
from sperse.repl._display import flows_text

WAIT = 60.0  # a deadline, never a delay

RELEASE = threading.Event()


async def held(x: int) -> int:
    await asyncio.to_thread(RELEASE.wait, WAIT)  # the calls wait until the test lets them
    return x + 1


def test_operators_and_flows_show_the_calls_in_flight() -> None:
    RELEASE.clear()
    f = sperse.Flow("held")
    q = f.queue(name="q")
    out = q.map(held, name="call", max_in_flight=8).map(str, name="show").collect(name="out")
    run = f.run(executor=InProcess())
    try:
        q.push(1, 2, 3)
        deadline = time.monotonic() + WAIT

        def stats() -> dict[str, Any]:
            return {op.name: op for op in run.operators()}

        while stats()["call"].in_flight != 3:
            assert time.monotonic() < deadline, f"no 3 calls in flight: {stats()}"
            threading.Event().wait(0.01)  # polling a count, with a deadline
        assert stats()["show"].in_flight == 0  # not async: none
        head, columns, *rows = flows_text(run).splitlines()
        assert head.startswith("flow 'held': running in this process")
        header = ["operator", "replicas", "in", "out", "rate/s", "backlog", "in", "flight"]
        assert columns.split() == header
        table = {row.split()[0]: row.split()[1:] for row in rows}
        assert table["call"] == ["1", "3", "0", *table["call"][3:5], "3"]
        assert len(table["show"]) == 5  # no in-flight cell
    finally:
        RELEASE.set()
        q.close()
    assert out.result(WAIT) == ["2", "3", "4"]
    assert {op.name: op.in_flight for op in run.operators()}["call"] == 0


def test_status_shows_an_async_operators_calls_in_flight() -> None:
    member = MemberInfo(
        "server-1", "127.0.0.1:1", frozenset(), {}, 2, 0, 0, 1, 0, 1, 0.0, 0.0, False,
        named=("sperse.service:front",),
    )  # fmt: skip
    op: dict[str, Any] = {"replicas": 1, "servers": {"server-1": 1}, "rate": 0.0}
    card = {
        "flow": "front",
        "state": "running",
        "requests": 5,
        "rate": 0.0,
        "age": 0.1,
        "operators": [
            {**op, "name": "requests", "kind": "source", "items_in": 5, "in_flight": 0},
            {**op, "name": "call", "kind": "map_async", "items_in": 5, "in_flight": 4},
            {**op, "name": "respond", "kind": "respond", "items_in": 1},  # an older card
        ],
    }
    lines = services_text([member], {"front": card}).splitlines()
    header = ["operator", "kind", "replicas", "servers", "in", "rate/s", "in", "flight"]
    assert lines[2].split() == header
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    assert rows["call"] == ["map_async", "1", "server-1", "5", "0", "4"]
    assert rows["requests"] == ["source", "1", "server-1", "5", "0"]  # not async: no cell
    assert rows["respond"] == ["respond", "1", "server-1", "1", "0"]
