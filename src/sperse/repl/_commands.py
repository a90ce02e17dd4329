"""The ``%`` commands of the prompt, as a table of command objects.

A :class:`Command` has a name, an argument spec, a help text, and a function
of ``(workspace, args)`` returning the text to show. :class:`CommandRegistry`
parses a ``%name args`` line against the spec and calls the function; it
never looks a name up on an object, so only the commands in the table can
run. The terminal REPL uses :data:`COMMANDS`; the IPython extension registers
the same objects as line magics.

A command that the person used wrongly (unknown name, missing or malformed
argument, a name the workspace does not define) raises :class:`UsageError`,
whose message is one line that says what to type instead.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Literal

from sperse._flow.api import runs
from sperse._flow.serving import services
from sperse._workspace import Workspace
from sperse.errors import SperseError, UsageError, did_you_mean
from sperse.repl._display import (
    describe_name,
    flows_text,
    format_error,
    format_size,
    servers_table,
    services_text,
    short_repr,
    where_text,
)

__all__ = [
    "COMMANDS",
    "Arg",
    "Args",
    "Command",
    "CommandRegistry",
    "UsageError",
    "browser_at_hand",
]


ArgKind = Literal["name", "number", "choice", "command"]


@dataclass(frozen=True, slots=True)
class Arg:
    """One positional argument: a workspace name, a number, one of ``choices``, or a command."""

    name: str
    kind: ArgKind = "name"
    optional: bool = False
    choices: tuple[str, ...] = ()

    def usage(self) -> str:
        text = "|".join(self.choices) if self.kind == "choice" else self.name
        return f"[{text}]" if self.optional else text


def _print(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True, slots=True)
class Args:
    """Parsed arguments: strings for names and choices, floats for numbers, None if omitted.

    ``say`` shows a line at once, for a command that blocks (``%wait`` says
    what it waits for and how to stop); the front end decides where it goes.
    """

    values: Mapping[str, str | float | None] = field(default_factory=dict)
    say: Callable[[str], None] = _print

    def text(self, key: str) -> str | None:
        value = self.values.get(key)
        return None if value is None else str(value)

    def required(self, key: str) -> str:
        value = self.text(key)
        assert value is not None, f"argument {key} is required by its spec"
        return value

    def number(self, key: str) -> float | None:
        value = self.values.get(key)
        return None if value is None else float(value)


CommandFn = Callable[[Workspace, Args], str]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    args: tuple[Arg, ...]
    help: str
    fn: CommandFn

    @property
    def usage(self) -> str:
        return " ".join([f"%{self.name}", *(a.usage() for a in self.args)])

    @property
    def summary(self) -> str:
        return self.help.strip().splitlines()[0]

    def parse(self, text: str, say: Callable[[str], None] = _print) -> Args:
        """Check ``text`` (what follows the command's name) against the spec."""
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise UsageError(f"%{self.name}: {exc}; usage: {self.usage}") from None
        if len(words) > len(self.args):
            extra = " ".join(words[len(self.args) :])
            raise UsageError(f"%{self.name}: unexpected `{extra}`; usage: {self.usage}")
        values: dict[str, str | float | None] = {}
        for index, arg in enumerate(self.args):
            if index >= len(words):
                if not arg.optional:
                    raise UsageError(f"%{self.name}: missing {arg.name}; usage: {self.usage}")
                values[arg.name] = None
                continue
            values[arg.name] = self._convert(arg, words[index])
        return Args(values, say)

    def _convert(self, arg: Arg, word: str) -> str | float:
        if arg.kind == "number":
            try:
                number = float(word)
            except ValueError:
                number = -1.0
            if not number >= 0:
                raise UsageError(
                    f"%{self.name}: {arg.name} must be a number of seconds, not `{word}`; "
                    f"usage: {self.usage}"
                ) from None
            return number
        if arg.kind == "choice" and word not in arg.choices:
            raise UsageError(
                f"%{self.name}: {arg.name} must be one of {', '.join(arg.choices)}, not `{word}`"
            )
        if arg.kind == "name" and not word.isidentifier():
            raise UsageError(f"%{self.name}: `{word}` is not a name; usage: {self.usage}")
        return word

    def __call__(self, ws: Workspace, text: str = "", say: Callable[[str], None] = _print) -> str:
        return self.fn(ws, self.parse(text, say))


class CommandRegistry:
    """The commands by name, plus ``%help`` about them."""

    def __init__(self, commands: Iterable[Command]) -> None:
        self._commands: dict[str, Command] = {}
        for command in commands:
            self.add(command)
        self.add(
            Command(
                "help",
                (Arg("command", "command", optional=True),),
                "Show the commands, or the help of one (`%help wait`).",
                self._help,
            )
        )

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"a command %{command.name} already exists")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def __iter__(self) -> Iterator[Command]:
        return iter(sorted(self._commands.values(), key=lambda c: c.name))

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    def lookup(self, name: str) -> Command:
        command = self._commands.get(name)
        if command is None:
            hint = did_you_mean(name, self._commands).replace(" '", " '%")
            raise UsageError(f"unknown command %{name};{hint or ''} %help lists the commands")
        return command

    def execute(self, ws: Workspace, line: str, say: Callable[[str], None] = _print) -> str:
        """Run a ``%name args`` line; raises ``UsageError`` for a wrong one."""
        body = line.strip().removeprefix("%")
        name, _, rest = body.partition(" ")
        if not name:
            raise UsageError("a command name must follow `%`; %help lists the commands")
        return self.lookup(name)(ws, rest, say)

    def _help(self, ws: Workspace, args: Args) -> str:
        name = args.text("command")
        if name is not None:
            command = self.lookup(name.removeprefix("%"))
            return f"{command.usage}\n    {command.help.strip()}"
        width = max(len(c.usage) for c in self)
        lines = [f"  {c.usage.ljust(width)}  {c.summary}" for c in self]
        return "\n".join(
            [
                "Commands:",
                *lines,
                "Statements: `x = remote f(y)` (any server), `remote[gpu] f()` (tagged gpu),",
                "`remote[@name] f()` (pinned), `remote[db]:` + an indented block.",
            ]
        )


# ---- the commands ---------------------------------------------------------------------


def _known(ws: Workspace, name: str) -> None:
    if name not in ws:
        raise UsageError(f"{name!r} is not defined in this workspace")


def _pending(ws: Workspace, args: Args) -> str:
    pending = ws.pending()
    if not pending:
        return "nothing is pending"
    width = max(len(n) for n in pending)
    return "\n".join(f"{name.ljust(width)}  {what}" for name, what in pending.items())


def _servers(ws: Workspace, args: Args) -> str:
    rows = []
    for info in ws.cluster.servers():
        resources = ", ".join(f"{k}={v:g}" for k, v in sorted(info.resources.items()))
        rows.append(
            {
                "name": info.name,
                "tags": ", ".join(sorted(info.tags)) or "-",
                "resources": resources or "-",
                "load": f"{info.busy}/{info.workers} busy",
                "address": info.address or "-",
            }
        )
    if not rows:
        return "no servers"
    return servers_table(rows, ["name", "tags", "resources", "load", "address"])


def _flows(ws: Workspace, args: Args) -> str:
    everything = args.text("which") == "all"
    found = runs()
    shown = [r for r in found if everything or not r.done()]
    if not shown:
        ended = len(found) - len(shown)
        return "no flow is running" + (f" ({ended} ended: %flows all shows them)" if ended else "")
    return "\n\n".join(flows_text(run) for run in shown)


def _services(ws: Workspace, args: Args) -> str:
    everything = args.text("which") == "all"
    found = services()
    shown = [s for s in found if everything or s.running]
    if not shown:
        ended = len(found) - len(shown)
        return "no service is running here" + (
            f" ({ended} stopped: %services all shows them)" if ended else ""
        )
    return "\n\n".join(services_text(svc) for svc in shown)


def _graph(ws: Workspace, args: Args) -> str:
    name = args.text("name")
    if name is not None:
        _known(ws, name)
    return ws.graph(name) or "the workspace is empty"


@contextlib.contextmanager
def _interruptible(stop: threading.Event, wake: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C sets ``stop`` (and wakes the waiter) instead of raising in the middle of work.

    Only the main thread can own signal handlers; elsewhere Ctrl-C keeps its usual meaning.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        stop.set()
        wake()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait(ws: Workspace, args: Args) -> str:
    name = args.required("name")
    timeout = args.number("timeout")
    _known(ws, name)
    stop = threading.Event()
    cluster = ws.cluster
    started = time.monotonic()

    def settled() -> bool:
        return stop.is_set() or describe_name(ws, name) is None or name not in ws

    with _interruptible(stop, cluster.wake):
        if not settled():
            limit = f" up to {timeout:g} s" if timeout is not None else ""
            args.say(f"waiting for {name}{limit} (Ctrl-C stops waiting, not the work)")
        finished = cluster.run_until(settled, timeout)
    if stop.is_set():
        return f"stopped waiting for {name} after {time.monotonic() - started:.1f} s; it goes on"
    if not finished or describe_name(ws, name) is not None:
        state = describe_name(ws, name) or name
        return f"still pending after {timeout:g} s: {state}; it goes on"
    return _show(ws, name)


def _show(ws: Workspace, name: str) -> str:
    try:
        return f"{name} = {short_repr(ws[name], 400)}"
    except SperseError as exc:
        return format_error(exc)


def _cancel(ws: Workspace, args: Args) -> str:
    name = args.required("name")
    _known(ws, name)
    if ws.cancel(name):
        return ""  # the cancellation is shown as the cell's own news
    state = ws.cell(name).status
    return f"{name} is not running ({state}); nothing to cancel"


def _fetch(ws: Workspace, args: Args) -> str:
    name = args.required("name")
    _known(ws, name)
    state = describe_name(ws, name)
    if state is not None:
        raise UsageError(f"{state}: nothing to fetch yet; %wait {name} waits for it")
    held = ws.remote_value(name)
    shown = _show(ws, name)  # brings a held value here
    if held is not None:
        return f"{shown} ({format_size(held.ref.size)} from {held.ref.server})"
    return shown


def _mode(ws: Workspace, args: Args) -> str:
    mode = args.text("mode")
    if mode is None:
        return f"mode: {ws.mode}"
    ws.mode = mode
    return f"mode: {ws.mode}"


def _run_stale(ws: Workspace, args: Args) -> str:
    stale = [c for c in ws.cells() if c.status == "stale"]
    ws.run_stale()
    return "" if stale else "nothing is stale"


def _where(ws: Workspace, args: Args) -> str:
    name = args.required("name")
    _known(ws, name)
    return where_text(ws, name)


def browser_at_hand(environ: Mapping[str, str], platform: str) -> bool:
    """Whether a web browser can open a page for the person here: a desktop (macOS,
    Windows, or a display on Linux and BSD), and not a CI run or a session over ssh."""
    if environ.get("CI") or environ.get("SPERSE_NO_BROWSER"):
        return False
    if platform == "darwin" or platform.startswith("win"):
        return not environ.get("SSH_CONNECTION")
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def _dashboard(ws: Workspace, args: Args) -> str:
    from sperse._cluster.dashboard import serve_dashboard  # starlette, uvicorn: when asked

    cluster = ws.cluster
    started = cluster.dashboard is None
    served = serve_dashboard(cluster)
    if started:
        ws.share()
    url = served.url
    opened = browser_at_hand(os.environ, sys.platform) and webbrowser.open(url)
    what = "started" if started else "serving"
    how = "opened in your browser" if opened else "open it in a browser"
    return f"dashboard {what} at {url}  ({how}; the address carries the token)"


_NAME = (Arg("name"),)

COMMANDS = CommandRegistry(
    [
        Command("pending", (), "List the pending names and what each is waiting for.", _pending),
        Command(
            "servers",
            (),
            "List the servers: name, tags, resources, load and address.",
            _servers,
        ),
        Command(
            "flows",
            (Arg("which", "choice", optional=True, choices=("all",)),),
            "List the running flows: per operator, replicas, items in and out, rate and"
            " backlog; all: the ended ones still referenced too.",
            _flows,
        ),
        Command(
            "services",
            (Arg("which", "choice", optional=True, choices=("all",)),),
            "List the services of this client: requests from every client and from this"
            " one, and per operator replicas, items in and out, rate and backlog; all: the"
            " stopped ones still referenced too.",
            _services,
        ),
        Command(
            "graph",
            (Arg("name", optional=True),),
            "Show the cells; with a name, what it is computed from and what depends on it.",
            _graph,
        ),
        Command(
            "wait",
            (Arg("name"), Arg("timeout", "number", optional=True)),
            "Wait for a name to arrive and show it.\n"
            "Ctrl-C stops waiting; the work goes on and arrives later.",
            _wait,
        ),
        Command("cancel", _NAME, "Cancel the running work that defines a name.", _cancel),
        Command(
            "fetch",
            _NAME,
            "Bring a value that is kept on its server here, and show it.",
            _fetch,
        ),
        Command(
            "mode",
            (Arg("mode", "choice", optional=True, choices=("auto", "lazy", "notebook")),),
            "Show or set the mode: auto re-runs dependents on change, lazy marks them stale,"
            " notebook binds names as Python does (a later cell shadows).",
            _mode,
        ),
        Command(
            "run_stale",
            (),
            "Run the stale cells: lazy mode's, and statements not re-applied (x[0] = 1).",
            _run_stale,
        ),
        Command(
            "where",
            _NAME,
            "Which server holds a name's value, and its type and size.",
            _where,
        ),
        Command(
            "dashboard",
            (),
            "Show this client's dashboard's address (starting it if needed) and open it in a\n"
            "browser when there is one here: servers, tasks, objects, the workspace's graph.",
            _dashboard,
        ),
    ]
)
