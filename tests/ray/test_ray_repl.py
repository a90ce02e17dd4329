"""``sperse --ray ADDRESS``: the REPL in a pseudo-terminal, on a Ray head started for the test.

The head runs in a helper process (``RayHead``), and is stopped by the test: its processes
are checked gone by pid. The REPL joins it as a driver; leaving the REPL leaves the cluster
running (it was not started by the REPL). Ray's token authentication is on (the default of a
Ray started by ``ray.init``), so the REPL gets ``RAY_AUTH_MODE=token``, as a user would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_head import RayHead
from terminal import CtrlD, Terminal

pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    started = RayHead(num_cpus=2, resources={"db": 1}, name="head")
    try:
        assert started.nodes == ["127.0.0.1"]
        yield started
    finally:
        started.stop()


@pytest.fixture
def term(head: RayHead, tmp_path: Path) -> Iterator[Terminal]:
    terminal = Terminal(["--ray", head.address], tmp_path / "history", {"RAY_AUTH_MODE": "token"})
    try:
        terminal.start()
        yield terminal
    finally:
        terminal.close()


def test_the_repl_runs_remote_cells_as_ray_tasks(term: Terminal, head: RayHead) -> None:
    assert "servers: head (2 workers)" in term.text()  # the node, named by its label
    term.enter("import time")
    term.enter("def slow(n):\rtime.sleep(n)\rreturn n\r")
    term.enter("x = remote slow(1)")
    term.enter("y = x * 10")
    assert term.row_of("y = 10") < 0  # the prompt came back while x runs
    term.wait_for(lambda: term.row_of("y ready") >= 0, what="y to arrive")
    assert term.row_of("x ready on head") < term.row_of("y ready")
    assert "y = 10" in term.lines()[term.row_of("y ready")]

    term.enter("remote print('hello from ray')")
    term.wait_for(lambda: term.row_of("[head] hello from ray") >= 0, what="the remote output")

    term.enter("d = remote[db] slow(0)")  # a tag: the node's custom resource
    term.wait_for(lambda: term.row_of("d ready on head") >= 0, what="d")
    out = "".join(term.enter("g = remote[gpu] slow(0)"))
    assert out.startswith("NoMatchingServer: ") and "[gpu]" in out and "head (db" in out

    term.enter("import numpy as np")
    term.enter("big = remote np.ones(300_000)")  # 2.4 MB: held in Ray's object store
    term.wait_for(lambda: term.row_of("big ready on head") >= 0, what="big")
    assert term.enter("big.shape") == ["(300000,)"]  # fetched when a local cell needs it

    header, row = term.enter("%servers")
    assert header.split() == ["name", "tags", "resources", "load", "address"]
    assert row.startswith("head") and "db" in row and "0/2 busy" in row and "127.0.0.1" in row

    term.send(CtrlD)
    assert term.wait_exit() == 0
    assert head.process.poll() is None  # joined, not started, by the REPL: still running
