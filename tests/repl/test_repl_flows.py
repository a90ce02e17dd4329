"""A flow at the real ``sperse`` REPL (a pseudo-terminal, the embedded server): its result
is a pending name whose readers run when it arrives, redefining a function an operator uses
runs the flow again, and ``%flows`` shows a running flow's operators. The tests wait for
what appears on the screen, with a deadline; they never sleep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import Terminal, running

pytestmark = pytest.mark.slow


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Terminal]:
    with running(["--workers", "2"], tmp_path / "history") as terminal:
        yield terminal


def test_a_flow_at_the_prompt_reruns_and_shows_in_flows(term: Terminal) -> None:
    term.enter("import sperse")
    term.enter("lines = ['a b', 'b c']")
    term.enter("def shout(line):\rreturn line.upper()\r")
    term.enter("with sperse.Flow('loud') as f:\rout = f.source(lines).map(shout).collect()\r")
    term.enter("got = sorted(out.result())")
    # A reader entered while the flow runs waits, then shows "got = ..." as it runs; one
    # entered after the result came (a forked host answers within milliseconds) runs at once.
    # The REPL may show "f, out ready" before either, so the value is read once both could be.
    term.wait_for(
        lambda: term.row_of("got = ['A B', 'B C']") >= 0 or term.row_of("f, out ready") >= 0,
        60,
        "the flow's result",
    )
    term.send("got\r")
    term.wait_for(
        lambda: (
            term.row_of("got = ['A B', 'B C']") >= 0
            or any(line == "['A B', 'B C']" for line in term.lines())
        ),
        60,
        "got's value",
    )
    term.enter("def shout(line):\rreturn line + '!'\r")  # the flow runs again, then got
    term.wait_for(lambda: term.row_of("got = ['a b!', 'b c!']") >= 0, 60, "the new result")

    term.enter("live = sperse.Flow('live')")
    term.enter("q = live.queue(name='q')")
    term.enter("seen = q.map(shout, name='shout').collect(name='sink')")
    term.enter("run = live.run()")
    term.enter("q.push('x', 'y', 'z')")
    shown = term.enter("%flows")
    head, columns, *rows = shown
    assert head.startswith("flow 'live': running on servers, "), term.text()
    assert columns.split() == ["operator", "replicas", "in", "out", "rate/s", "backlog"]
    assert [row.split()[0] for row in rows] == ["q", "shout", "sink"]
    term.enter("q.close()")
    term.wait_for(lambda: term.row_of("seen ready") >= 0, 60, "the live flow's end")
    (line,) = term.enter("%flows")
    assert line.startswith("no flow is running (") and "%flows all shows them" in line
    assert any(row.startswith("flow 'live': done on servers") for row in term.enter("%flows all"))


def test_a_service_takes_a_redefined_function_in_place(term: Terminal) -> None:
    """Issue 15: serve at the prompt, send requests, redefine the function an operator runs:
    the operator swaps it in place, its keyed state survives, and the prompt says so."""
    term.enter("import sperse")
    term.enter("def remember(n, r):\rreturn n + 1, n + 1\r")
    term.enter("def score(pair):\rreturn ('v1', pair[1])\r")
    term.enter(
        "with sperse.Flow('scorer') as f:\r"
        "f.requests().key_by(lambda r: r['user']).scan(0, remember, name='remember')"
        ".map(score, name='score').respond()\r"
        "svc = f.serve('scorer')\r",
        timeout=60,
    )
    ask = "svc.request({'user': 'ada'}).result(60)"
    assert term.enter(ask, timeout=60) == ["('v1', 1)"], term.text()
    shown = term.enter("def score(pair):\rreturn ('v2', pair[1])\r", timeout=60)
    assert any(
        "service 'scorer': operator 'score' now runs the new score, swapped in place" in row
        for row in shown
    ), term.text()
    assert term.enter(ask, timeout=60) == ["('v2', 2)"], term.text()  # the count goes on
    term.enter("svc.stop()", timeout=60)
