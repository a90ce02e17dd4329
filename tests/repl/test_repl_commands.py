"""The ``%`` command table: parsing against each spec, and each command on a workspace."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

import sperse
from sperse.repl import COMMANDS, Arg, Args, Command, CommandRegistry, UsageError


@pytest.mark.parametrize(
    ("line", "values"),
    [
        ("%wait x", {"name": "x", "timeout": None}),
        ("%wait x 2.5", {"name": "x", "timeout": 2.5}),
        ("%graph", {"name": None}),
        ("%graph y", {"name": "y"}),
        ("%mode lazy", {"mode": "lazy"}),
        ("%help wait", {"command": "wait"}),
        ("%pending", {}),
    ],
)
def test_parse(line: str, values: dict[str, object]) -> None:
    name, _, rest = line[1:].partition(" ")
    assert COMMANDS.lookup(name).parse(rest).values == values


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%wait", "%wait: missing name; usage: %wait name [timeout]"),
        ("%wait x soon", "%wait: timeout must be a number of seconds, not `soon`"),
        ("%wait x -1", "%wait: timeout must be a number of seconds, not `-1`"),
        ("%wait x 1 2", "%wait: unexpected `2`; usage: %wait name [timeout]"),
        ("%wait 'x", "%wait: No closing quotation; usage: %wait name [timeout]"),
        ("%where 3x", "%where: `3x` is not a name; usage: %where name"),
        ("%mode fast", "%mode: mode must be one of auto, lazy, notebook, not `fast`"),
        ("%pending now", "%pending: unexpected `now`; usage: %pending"),
        ("%nope", "unknown command %nope; %help lists the commands"),
        ("%", "a command name must follow `%`; %help lists the commands"),
        ("%help nope", "unknown command %nope; %help lists the commands"),
        ("%pendign", "unknown command %pendign; Did you mean: '%pending'? %help lists the"),
    ],
)
def test_wrong_use_is_a_usage_error(line: str, message: str) -> None:
    ws = sperse.Workspace(sperse.Cluster(sperse.LocalBackend(1)))
    try:
        with pytest.raises(UsageError) as caught:
            COMMANDS.execute(ws, line)
        assert str(caught.value).startswith(message)
        assert "\n" not in str(caught.value)
    finally:
        ws.cluster.close()


def test_registry_is_a_table_of_objects() -> None:
    def hello(ws: sperse.Workspace, args: Args) -> str:
        return f"hello {args.text('who')}"

    registry = CommandRegistry([Command("hello", (Arg("who"),), "Greet.", hello)])
    assert [c.name for c in registry] == ["hello", "help"]
    ws = sperse.Workspace(sperse.Cluster(sperse.LocalBackend(1)))
    try:
        assert registry.execute(ws, "%hello you") == "hello you"
        assert registry.execute(ws, "%help hello") == "%hello who\n    Greet."
        with pytest.raises(ValueError, match="already exists"):
            registry.add(Command("hello", (), "Again.", hello))
        with pytest.raises(UsageError):
            registry.execute(ws, "%__init__")  # no lookup of attributes by name
    finally:
        ws.cluster.close()


def test_help_lists_every_command() -> None:
    names = {c.name for c in COMMANDS}
    expected = {"pending", "servers", "graph", "wait", "cancel", "fetch", "mode", "run_stale"}
    assert names == expected | {"where", "help", "dashboard", "flows", "services"}
    ws = sperse.Workspace(sperse.Cluster(sperse.LocalBackend(1)))
    try:
        text = COMMANDS.execute(ws, "%help")
    finally:
        ws.cluster.close()
    for command in COMMANDS:
        assert command.usage in text


# ---- on a workspace ---------------------------------------------------------------------


@pytest.fixture
def ws(cluster: sperse.Cluster) -> Iterator[sperse.Workspace]:
    workspace = sperse.Workspace(cluster)
    workspace.run("import time\ndef slow(n):\n    time.sleep(n)\n    return n\n")
    yield workspace
    workspace.close()


def run(ws: sperse.Workspace, line: str) -> str:
    said: list[str] = []
    text = COMMANDS.execute(ws, line, said.append)
    return "\n".join([*said, text]) if said else text


def test_pending_wait_and_graph(ws: sperse.Workspace) -> None:
    ws.run("x = remote slow(30)\ny = x + 1")
    pending = run(ws, "%pending").splitlines()
    assert [line.split()[0] for line in pending] == ["x", "y"]
    assert "waiting for x" in pending[1]
    said = run(ws, "%wait y 0.1")
    assert said.splitlines() == [
        "waiting for y up to 0.1 s (Ctrl-C stops waiting, not the work)",
        f"still pending after 0.1 s: <pending y: {ws.pending()['y']}>; it goes on",
    ]
    graph = run(ws, "%graph y")
    assert "upstream:" in graph and "x = remote slow(30)  (running)" in graph
    with pytest.raises(UsageError, match="'nope' is not defined"):
        run(ws, "%graph nope")
    assert run(ws, "%cancel x") == ""
    assert ws.cell("x").status == "failed"
    assert run(ws, "%cancel x") == "x is not running (failed); nothing to cancel"
    ws.run("x = remote slow(0)")
    assert run(ws, "%wait y 60").splitlines()[-1] == "y = 1"


def test_ctrl_c_stops_waiting_only(ws: sperse.Workspace) -> None:
    ws.run("x = remote slow(30)")
    said: list[str] = []

    def say(text: str) -> None:  # called once the Ctrl-C handler is in place
        said.append(text)
        signal.raise_signal(signal.SIGINT)

    text = COMMANDS.execute(ws, "%wait x", say)
    assert said == ["waiting for x (Ctrl-C stops waiting, not the work)"]
    assert text.startswith("stopped waiting for x after ") and text.endswith("it goes on")
    assert ws.cell("x").status == "running"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_mode_and_run_stale(ws: sperse.Workspace) -> None:
    assert run(ws, "%mode") == "mode: auto"
    assert run(ws, "%mode lazy") == "mode: lazy"
    ws.run("a = 1\nb = a + 1")
    ws.run("a = 2")
    assert ws.cell("b").status == "stale"
    assert run(ws, "%run_stale") == ""
    assert ws["b"] == 3
    assert run(ws, "%run_stale") == "nothing is stale"
    assert run(ws, "%mode auto") == "mode: auto"


def test_where_and_fetch(ws: sperse.Workspace) -> None:
    ws.run("small = remote slow(1)\nbig = remote bytes(2_000_000)\nhere = 5")
    with pytest.raises(UsageError, match="nothing to fetch yet"):
        run(ws, "%fetch small")
    assert run(ws, "%where small").startswith("small: pending (")
    ws.wait(timeout=60)
    assert run(ws, "%where here").startswith("here: here (int); computed here by cell [5] `her")
    ran_on = ws.cell("small").where
    assert ran_on in {s.name for s in ws.cluster.servers()}
    assert run(ws, "%where small").startswith(
        f"small: here (int); computed on {ran_on} by cell [3]"
    )
    held = isinstance(ws.namespace["big"], sperse.RemoteValue)  # the server keeps big results
    where = run(ws, "%where big")
    if held:
        holder = ws.cell("big").where
        assert where.startswith(f"big: held on {holder} (bytes, 1.9 MiB); %fetch brings it here;")
        assert run(ws, "%fetch big").endswith(f"(1.9 MiB from {holder})")
        assert "a copy is here too" in run(ws, "%where big")
    else:
        assert where.startswith("big: here (bytes); computed on local by cell [4]")
        assert run(ws, "%fetch big").startswith("big = b'\\x00")


def test_servers(ws: sperse.Workspace) -> None:
    header, *rows = run(ws, "%servers").splitlines()
    assert header.split() == ["name", "tags", "resources", "load", "address"]
    assert sorted(row.split()[0] for row in rows) == sorted(s.name for s in ws.cluster.servers())
    assert all("busy" in row for row in rows)


@pytest.mark.parametrize(
    ("environ", "platform", "at_hand"),
    [
        ({}, "linux", False),  # a server, a container, a test run: no display
        ({"DISPLAY": ":0"}, "linux", True),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
        ({"DISPLAY": ":0", "CI": "true"}, "linux", False),
        ({"DISPLAY": ":0", "SPERSE_NO_BROWSER": "1"}, "linux", False),
        ({}, "darwin", True),
        ({"SSH_CONNECTION": "10.0.0.1 22 10.0.0.2 22"}, "darwin", False),
        ({}, "win32", True),
        ({"CI": "1"}, "win32", False),
    ],
)
def test_browser_at_hand(environ: dict[str, str], platform: str, at_hand: bool) -> None:
    from sperse.repl._commands import browser_at_hand

    assert browser_at_hand(environ, platform) is at_hand
