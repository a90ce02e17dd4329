"""The dashboard end to end, in headless Chromium: `sperse up --servers 2` (its coordinator's
dashboard) and a real session's own dashboard (`sperse.connect(..., dashboard=True)`) on
that cluster. Screenshots of each page go to test-artifacts/dashboard/."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dashboard_helpers import Watched

import sperse

pytestmark = pytest.mark.slow
DEADLINE = 30.0
ENDPOINTS = [
    "/",
    "/tasks",
    "/objects",
    "/workspace",
    "/flows",
    "/static/dashboard.js",
    "/static/vendor/cytoscape.min.js",
    "/api/info",
    "/api/servers",
    "/api/tasks",
    "/api/tasks/t1",
    "/api/timeline",
    "/api/objects",
    "/api/workspaces",
    "/api/workspaces/w",
    "/api/flows",
    "/api/flows/1",
    "/api/events",
    "/no/such/page",
]


@dataclass
class Up:
    """A running `sperse up`: its process, what it printed, and where things are."""

    process: subprocess.Popen[bytes]
    token_file: Path
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return next(line.split()[-1] for line in self.lines if " cluster ready at " in line)

    @property
    def base(self) -> str:
        """The dashboard's address, as printed (the token is in its file, not printed)."""
        line = next(line for line in self.lines if line.startswith("dashboard: "))
        return line.split()[1].rstrip("/")

    @property
    def dashboard(self) -> str:
        """The address that logs in."""
        return f"{self.base}/?token={self.token_file.read_text().strip()}"

    def server_pid(self, name: str) -> int:
        for line in self.lines:
            if line.strip().startswith(name + " "):
                found = re.search(r"pid: (\d+)", line)
                assert found is not None
                return int(found.group(1))
        raise KeyError(name)


def _start_up(tmp_path: Path) -> Up:
    token_file = tmp_path / "token"
    with (tmp_path / "up.stderr").open("wb") as stderr:  # the child keeps its own copy
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "sperse.cli", "up", "--servers", "2"),
                *("--heartbeat-timeout", "1", "--token-file", str(token_file)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    up = Up(process, token_file)
    assert process.stdout is not None
    buffered = b""
    deadline = time.monotonic() + DEADLINE
    while not any(line.startswith("Ctrl-C") for line in up.lines):
        left = deadline - time.monotonic()
        if left <= 0 or process.poll() is not None:
            process.kill()
            process.wait()
            stderr = (tmp_path / "up.stderr").read_text(errors="replace")
            pytest.fail(f"sperse up did not start: {up.lines}\n{stderr}")
        if select.select([process.stdout], [], [], left)[0]:
            buffered += os.read(process.stdout.fileno(), 4096)
            *done, rest = buffered.split(b"\n")
            up.lines += [line.decode() for line in done]
            buffered = rest
    return up


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    started = _start_up(tmp_path)
    try:
        yield started
    finally:
        started.process.send_signal(signal.SIGINT)
        try:
            started.process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            started.process.kill()
            started.process.wait()
        if started.process.stdout is not None:
            started.process.stdout.close()


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(64)  # the feed never ends: a start is enough
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return exc.code, body


def test_every_endpoint_refuses_without_the_token(up: Up) -> None:
    for path in ENDPOINTS:
        status, body = _status(up.base + path)
        assert status == 401, path
        assert b"server-" not in body and b"sperse://" not in body
        status, body = _status(up.base + path, {"Authorization": "Bearer wrong"})
        assert status == 403, path
        status, body = _status(up.base + path, {"Cookie": "sperse-dashboard-1=x; a=b"})
        assert status == 401, path
    status, _ = _status(up.base + "/api/servers?token=wrong")
    assert status == 403
    token = up.token_file.read_text().strip()
    assert not any(token in line for line in up.lines)  # only in its 0600 file
    status, body = _status(up.base + "/api/servers", {"Authorization": f"Bearer {token}"})
    assert status == 200 and b"server-1" in body


def test_cluster_page_shows_servers_join_and_die(up: Up, open_page: Callable[[], Watched]) -> None:
    from playwright.sync_api import expect

    watched = open_page()
    page = watched.page
    page.goto(up.dashboard)  # ?token= logs in, sets the cookie, and redirects to /
    assert "token" not in page.url
    expect(page.locator("#live")).to_have_text("live")
    for name in ("server-1", "server-2"):
        expect(page.locator(f'tr[data-server="{name}"]')).to_have_count(1)
    expect(page.locator('tr[data-server="server-1"] td.heartbeat')).to_contain_text("s ago")
    expect(page.locator('tr[data-server="server-1"] td.memory')).to_contain_text("MiB")
    expect(page.locator('tr[data-server="server-1"] td.store')).to_contain_text("0 keys")
    watched.screenshot("cluster")

    os.kill(up.server_pid("server-2"), signal.SIGKILL)  # a crash: it says no goodbye
    expect(page.locator('tr[data-server="server-2"]')).to_have_count(0)
    expect(page.locator('tr[data-server="server-1"]')).to_have_count(1)

    page.goto(up.base + "/tasks")  # the cookie is enough now
    expect(page.locator("#tasks")).to_be_visible()  # servers report their tasks
    expect(page.locator("body[data-ready='1']")).to_have_count(1)
    page.goto(up.base + "/workspace")
    expect(page.locator("body[data-ready='1']")).to_have_count(1)
    assert watched.errors == []


GATE_CODE = """\
def wait_for(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 'opened ' + path
"""


def test_a_session_dashboard_shows_tasks_live_and_the_workspace_graph(
    up: Up, open_page: Callable[[], Watched], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    cluster = sperse.connect(up.url, token_file=up.token_file, dashboard=True)
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.close)
        assert cluster.dashboard is not None
        ws = sperse.Workspace(cluster)
        stack.callback(ws.close)
        ws.run("import os, time")
        ws.run(GATE_CODE)
        gate = tmp_path / "gate"
        ws.run(f"x = remote wait_for({str(gate)!r})")
        ws.run("y = len(x)")
        task_id = ws.cell("x")._record.task_id
        assert task_id is not None

        tasks = open_page()
        tasks.page.goto(_at(cluster.dashboard.url, "tasks"))  # logs in, stays there
        row = tasks.page.locator(f'tr[data-task="{task_id}"]')
        expect(row.locator(".state")).to_have_text("running")
        expect(row).to_contain_text("server-")
        gate.touch()
        assert ws.wait("y", timeout=DEADLINE) == len(f"opened {gate}")
        expect(row.locator(".state")).to_have_text("done")

        failing = sperse.remote(_fails)
        p = failing(0)
        with pytest.raises(ZeroDivisionError):
            p.result(DEADLINE)
        failed = tasks.page.locator('tr[data-task] .state:text("failed")')
        expect(failed).to_have_count(1)
        failed.click()
        expect(tasks.page.locator("pre.traceback")).to_contain_text("ZeroDivisionError")
        expect(tasks.page.locator("pre.log")).to_contain_text("about to divide")
        expect(tasks.page.locator('.count[data-state="done"] b')).to_have_text("1")
        tasks.screenshot("tasks")

        graph = open_page()
        graph.page.goto(_at(cluster.dashboard.url, "workspace"))  # logs in, stays there
        cells = graph.page.locator("#cells tr[data-cell]")
        expect(cells).to_have_count(4)
        x_cell = ws.cell("x").id
        expect(graph.page.locator(f'#cells tr[data-cell="{x_cell}"]')).to_have_attribute(
            "data-status", "done"
        )
        assert _node_status(graph, x_cell) == "done"
        graph.screenshot("workspace")

        # A redefinition recolours the picture: x runs again (blue), y waits (pending) ...
        gate2 = tmp_path / "gate2"
        ws.run(f"x = remote wait_for({str(gate2)!r})")
        x_new = ws.cell("x").id
        y_cell = ws.cell("y").id
        expect(graph.page.locator(f'#cells tr[data-cell="{x_new}"]')).to_have_attribute(
            "data-status", "running"
        )
        expect(graph.page.locator(f'#cells tr[data-cell="{y_cell}"]')).to_have_attribute(
            "data-status", "pending"
        )
        assert _node_status(graph, x_new) == "running"
        _wait_running_on(graph, x_new)
        graph.screenshot("workspace-running")
        gate2.touch()
        ws.wait("y", timeout=DEADLINE)
        # ... and a failure paints it red, its reader orange (blocked).
        ws.run("x = remote 1 / 0")
        with contextlib.suppress(Exception):
            ws.wait("y", timeout=DEADLINE)
        x_bad = ws.cell("x").id
        expect(graph.page.locator(f'#cells tr[data-cell="{x_bad}"]')).to_have_attribute(
            "data-status", "failed"
        )
        expect(graph.page.locator(f'#cells tr[data-cell="{y_cell}"]')).to_have_attribute(
            "data-status", "blocked"
        )
        assert _node_status(graph, x_bad) == "failed"
        graph.screenshot("workspace-failed")

        objects = open_page()
        objects.page.goto(_at(cluster.dashboard.url, "objects"))  # logs in, stays there
        expect(objects.page.locator("#objects")).to_be_visible()
        expect(objects.page.locator('#stores tr[data-server="server-1"]')).to_have_count(1)
        objects.screenshot("objects")

        cluster_page = open_page()
        cluster_page.page.goto(cluster.dashboard.url)
        expect(cluster_page.page.locator('tr[data-server="server-2"]')).to_have_count(1)

        for watched in (tasks, graph, objects, cluster_page):
            assert watched.errors == []


def test_the_coordinator_dashboard_shows_every_client_s_tasks_live(
    up: Up, open_page: Callable[[], Watched], tmp_path: Path
) -> None:
    """No dashboard=True on the client: the servers report to the coordinator."""
    from playwright.sync_api import expect

    tasks = open_page()
    tasks.page.goto(_at(up.dashboard, "tasks"))
    expect(tasks.page.locator("#live")).to_have_text("live")
    cluster = sperse.connect(up.url, token_file=up.token_file)
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.close)
        ws = sperse.Workspace(cluster)
        stack.callback(ws.close)
        ws.run("import os, time")
        ws.run(GATE_CODE)
        gate = tmp_path / "gate"
        ws.run(f"x = remote wait_for({str(gate)!r})")
        task_id = ws.cell("x")._record.task_id
        assert task_id is not None
        row = tasks.page.locator(f'tr[data-task$="/{task_id}"]')  # SERVER/SESSION/TASK
        expect(row.locator(".state")).to_have_text("running")
        expect(row).to_contain_text("server-")
        server, worker = (cell.strip() for cell in row.locator("td").all_inner_texts()[2:4])
        assert int(worker) > 0
        tasks.page.wait_for_function(
            "lane => (window.sperseDashboard.lanes || []).includes(lane)",
            arg=f"{server} · {worker}",
        )  # the task stream has a lane per worker
        gate.touch()
        ws.wait("x", timeout=DEADLINE)
        expect(row.locator(".state")).to_have_text("done")

        with pytest.raises(ZeroDivisionError):
            sperse.remote(_fails)(0).result(DEADLINE)
        failed = tasks.page.locator('tr[data-task] .state:text("failed")')
        expect(failed).to_have_count(1)
        failed.click()
        expect(tasks.page.locator("pre.traceback")).to_contain_text("ZeroDivisionError")
        expect(tasks.page.locator("pre.log")).to_contain_text("about to divide")
        tasks.screenshot("coordinator-tasks")

        named = sperse.remote(_Tally)(name="hits")
        unnamed = sperse.remote(_Tally)()
        assert named.incr().result(DEADLINE) == 1 and unnamed.incr().result(DEADLINE) == 1
        objects = open_page()
        objects.page.goto(_at(up.dashboard, "objects"))
        listed = objects.page.locator("#objects tr[data-object]")
        expect(listed).to_have_count(1, timeout=DEADLINE * 1000)  # at the next heartbeat
        expect(listed).to_contain_text("hits")
        counted = objects.page.locator("#stores tr[data-server] td:nth-child(4)")
        expect(counted).to_have_text(["1", "1"], timeout=DEADLINE * 1000)
        html = objects.page.content()
        assert named._object_id not in html and unnamed._object_id not in html
        objects.screenshot("coordinator-objects")
        for watched in (tasks, objects):
            assert watched.errors == []


def test_the_coordinator_dashboard_shows_a_shared_workspace_and_flows_live(
    up: Up, open_page: Callable[[], Watched], tmp_path: Path
) -> None:
    """share_workspace=True on a cluster's client (no dashboard of its own): the graph goes to
    the coordinator's Workspace page, live, and leaves it when the client closes; its flow
    runs go to the coordinator's Flows page."""
    from playwright.sync_api import expect

    graph = open_page()
    graph.page.goto(_at(up.dashboard, "workspace"))
    expect(graph.page.locator("#live")).to_have_text("live")
    cluster = sperse.connect(up.url, token_file=up.token_file, share_workspace=True)
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.close)
        ws = sperse.Workspace(cluster)
        stack.callback(ws.close)
        ws.run("import os, time")
        ws.run(GATE_CODE)
        gate = tmp_path / "gate"
        ws.run(f"x = remote wait_for({str(gate)!r})")
        ws.run("y = len(x)")
        x_cell, y_cell = ws.cell("x").id, ws.cell("y").id
        expect(graph.page.locator("#workspace-picker option")).to_have_text(
            [re.compile(rf":{os.getpid()} pid {os.getpid()} workspace \d+$")]
        )
        row = graph.page.locator(f'#cells tr[data-cell="{x_cell}"]')
        expect(row).to_have_attribute("data-status", "running")
        expect(graph.page.locator(f'#cells tr[data-cell="{y_cell}"]')).to_have_attribute(
            "data-status", "pending"
        )
        assert _node_status(graph, x_cell) == "running"
        # Running on which server: its label and ring, and the table's "where".
        _wait_running_on(graph, x_cell)
        expect(row.locator("td.where")).to_have_text(re.compile(r"^server-\d$"))
        graph.screenshot("coordinator-workspace-running")
        gate.touch()
        ws.wait("y", timeout=DEADLINE)
        expect(row).to_have_attribute("data-status", "done")
        assert _node_status(graph, y_cell) == "done"
        graph.screenshot("coordinator-workspace")
        # A redefinition recolours it: a failure, its reader blocked.
        ws.run("x = remote 1 / 0")
        with contextlib.suppress(Exception):
            ws.wait("y", timeout=DEADLINE)
        x_bad = ws.cell("x").id
        expect(graph.page.locator(f'#cells tr[data-cell="{x_bad}"]')).to_have_attribute(
            "data-status", "failed"
        )
        expect(graph.page.locator(f'#cells tr[data-cell="{y_cell}"]')).to_have_attribute(
            "data-status", "blocked"
        )

        # Its flow runs too, on the coordinator's Flows page.
        flows = open_page()
        flows.page.goto(_at(up.dashboard, "flows"))
        expect(flows.page.locator("#live")).to_have_text("live")
        f = sperse.Flow("shared-map", cluster=cluster)
        q = f.queue(name="in")
        out = q.map(_double, name="double").collect(name="out")
        flow_run = f.run()
        stack.callback(flow_run.cancel)
        q.push(*range(5))
        row = flows.page.locator("#flows tr[data-flow]", has_text="shared-map")
        expect(row.locator(".state")).to_have_text("running")
        expect(row).to_contain_text(f":{os.getpid()} 1")  # the client, and its run's key
        expect(flows.page.locator('#operators tr[data-op="double"] td.in')).to_have_text("5")
        flows.screenshot("coordinator-flows")
        q.push(*range(5, 8))
        expect(flows.page.locator('#operators tr[data-op="double"] td.in')).to_have_text("8")
        q.close()
        assert flow_run.result(DEADLINE).state == "done"
        assert sorted(out.result(0)) == [2 * i for i in range(8)]
        expect(row.locator(".state")).to_have_text("done")

        # A service is a run of the client that serves it: it shows there too.
        served = sperse.Flow("shared-service", cluster=cluster)
        served.requests().map(_double, name="twice").respond()
        service = served.serve("doubler")
        stack.callback(service.stop)
        assert service.request(21).result(DEADLINE) == 42
        service_row = flows.page.locator("#flows tr[data-flow]", has_text="shared-service")
        expect(service_row.locator(".state")).to_have_text("running")
    # The client closed: its workspace leaves the page; its run stays, done.
    expect(graph.page.locator("#workspace-picker option")).to_have_count(0)
    expect(graph.page.locator("#cells tr[data-cell]")).to_have_count(0)
    expect(row.locator(".state")).to_have_text("done")
    assert graph.errors == [] and flows.errors == []


def _double(x: int) -> int:
    return 2 * x


class _Tally:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n


def _at(url: str, page: str) -> str:
    """The login URL of another page: ``/tasks?token=T`` redirects to ``/tasks``."""
    return url.replace("/?token=", f"/{page}?token=")


def _fails(n: int) -> float:
    print("about to divide")
    return 1 / n


def _node_status(watched: Watched, cell: int) -> str:
    status: str = watched.page.evaluate(
        "id => window.sperseDashboard.graph.getElementById('c' + id).data('status')", cell
    )
    return status


def _wait_running_on(watched: Watched, cell: int) -> None:
    """Until the cell's node says the server it runs on, and is ringed in that server's
    colour."""
    watched.page.wait_for_function(
        "id => { const node = window.sperseDashboard.graph.getElementById('c' + id);"
        " return /^server-\\d$/.test(node.data('on')) && node.data('ringWidth') > 0"
        " && node.data('text').endsWith(' on ' + node.data('on')); }",
        arg=cell,
    )
