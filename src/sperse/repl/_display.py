"""Text for the front ends: values, pending names, arrivals and errors.

Pure functions of a workspace and its events, shared by the terminal REPL,
``sperse run`` and (later) the IPython extension. Nothing here prints or
fetches: a value held on a server is described by its reference, never
brought here just to be shown.

Errors are shown as a person at a Python prompt expects: a local failure as
a traceback of the user's own frames (frames of Sperse's machinery hidden), a
remote one as its message and the traceback the server sent, marked as
remote, and Sperse's own errors (bad input, no matching server, an upstream
failure) as one line.
"""

from __future__ import annotations

import os
import reprlib
import time
import traceback
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from sperse._flow.api import Run
from sperse._flow.plan import PhysicalPlan
from sperse._flow.serving import Service
from sperse._workspace import Cell, CellEvent, Workspace
from sperse.errors import (
    CellError,
    RemoteError,
    SperseError,
    TaskCancelled,
    did_you_mean,
)

__all__ = [
    "describe_name",
    "format_arrival",
    "format_error",
    "format_size",
    "servers_table",
    "short_repr",
    "where_text",
]

_SPERSE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHORT = 60

_repr = reprlib.Repr()
_repr.maxstring = _SHORT
_repr.maxother = _SHORT
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 8
_repr.maxdict = 6


def short_repr(value: Any, width: int = _SHORT) -> str:
    """A one-line repr of at most about ``width`` characters, cheap for big containers."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # a broken __repr__ must not break the prompt
        return f"<{type(value).__name__} (repr failed: {type(exc).__name__})>"
    text = " ".join(text.split("\n"))
    if len(text) > width:
        text = text[: width - 3] + "..."
    return text


def format_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def _seconds(cell: Cell) -> str:
    elapsed = cell.elapsed
    return "" if elapsed is None else f" ({elapsed:.1f} s)"


def _where(cell: Cell) -> str:
    return f" on {cell.where}" if cell.where else ""


def _owned(ws: Workspace, cell: Cell) -> list[str]:
    """The names ``cell`` still defines (a newer cell may have taken some)."""
    names = []
    for name in sorted(cell.defs):
        try:
            if ws.cell(name).id == cell.id:
                names.append(name)
        except KeyError:
            pass
    return names


def describe_name(ws: Workspace, name: str) -> str | None:
    """``<pending x: running on gpu-1 for 3.2 s>`` for a name that has no value yet, else None."""
    pending = ws.pending()
    if name in pending:
        return f"<pending {name}: {pending[name]}>"
    try:
        status = ws.cell(name).status
    except KeyError:
        return None
    if status == "stale":
        return f"<stale {name}: {ws.stale_reason(ws.cell(name).id)}; %run_stale runs it>"
    return None


def format_arrival(ws: Workspace, event: CellEvent) -> str:
    """The line(s) shown when a cell finishes, fails or is blocked after it was entered.

    ``[4] model ready on gpu-1 (3.2 s): model = <remote Model on gpu-1, 2.1 GiB: ...>``
    """
    cell = event.cell
    head = f"[{cell.id}]"
    try:
        owned = _owned(ws, cell)
        label = ", ".join(owned) if owned else f"`{cell.label}`"
        where, seconds = _where(cell), _seconds(cell)
    except SperseError:  # the cell is gone already (redefined meanwhile)
        return ""
    if event.kind == "done":
        if owned:
            values = ", ".join(f"{n} = {short_repr(ws.namespace.get(n))}" for n in owned)
            return f"{head} {label} ready{where}{seconds}: {values}"
        if event.value is None:
            return ""  # `print(x)` and the like: its output is the news
        return f"{head} {label} ready{where}{seconds}: {short_repr(event.value)}"
    if event.kind == "swapped":
        return f"{head} {event.value}"
    if event.kind == "held":
        inputs = ", ".join(sorted(cell.refs)) or "its input"
        return (
            f"{head} `{cell.label}` not re-applied to the new {inputs} (it changes an object "
            "it reads; re-running it would change the new one): %run_stale applies it"
        )
    error = event.error
    if event.kind == "blocked":
        return f"{head} {label} not computed: {error}"
    if isinstance(error, TaskCancelled):
        return f"{head} {label} cancelled"
    assert error is not None
    return f"{head} {label} failed{where}{seconds}:\n{format_error(error)}"


def _is_machinery(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_SPERSE_DIR + os.sep)


def _user_frames(tb: TracebackType | None) -> traceback.StackSummary:
    """The frames from the first one outside Sperse on: the workspace running the
    cell is hidden, Sperse code that user code called is not."""
    frames = traceback.extract_tb(tb)
    start = 0
    while start < len(frames) and _is_machinery(frames[start].filename):
        start += 1
    return traceback.StackSummary.from_list(frames[start:] if start < len(frames) else [])


def _traceback(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(exc)).rstrip("\n")
    if isinstance(exc, RemoteError):  # its message names the remote type already
        return f"RemoteError: {exc}"
    frames = _user_frames(exc.__traceback__)
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines.extend(frames.format())
    last = "".join(traceback.format_exception_only(exc)).rstrip("\n")
    return "".join(lines) + last + _name_hint(exc, last)


def _name_hint(exc: BaseException, text: str) -> str:
    """Python's "Did you mean" for a misspelt name, which its interpreter prints but its
    traceback module (3.11) does not; found among the names the failing frame could see."""
    name = getattr(exc, "name", None)
    tb = exc.__traceback__
    if not isinstance(exc, NameError) or not isinstance(name, str) or tb is None:
        return ""
    if "Did you mean" in text:  # 3.12+: the traceback module gave it
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    frame = tb.tb_frame
    hint = did_you_mean(name, [*frame.f_locals, *frame.f_globals, *frame.f_builtins])
    return "." + hint if hint else ""


def format_error(exc: BaseException) -> str:
    """An error as the person at the prompt should see it (see the module docstring)."""
    if isinstance(exc, CellError) and exc.__cause__ is not None:
        return _traceback(exc.__cause__)
    if isinstance(exc, SyntaxError | RemoteError):
        return _traceback(exc)
    if isinstance(exc, SperseError):
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return _traceback(exc)


def where_text(ws: Workspace, name: str) -> str:
    """Which server holds ``name`` and how big it is (``%where``)."""
    cell = ws.cell(name)
    status = cell.status
    origin = f"cell [{cell.id}] `{cell.label}`"
    if status in ("pending", "running"):
        return f"{name}: pending ({ws.pending().get(name, status)}); computed by {origin}"
    if status != "done":
        return f"{name}: {status}; computed by {origin}"
    ran = f"computed on {cell.where}" if cell.is_remote and cell.where else "computed here"
    took = "" if cell.elapsed is None else f" in {cell.elapsed:.1f} s"
    held = ws.remote_value(name)
    if held is not None:
        ref = held.ref
        fetched = "; a copy is here too" if held.fetched else "; %fetch brings it here"
        return (
            f"{name}: held on {ref.server} ({ref.type_name}, {format_size(ref.size)}){fetched}; "
            f"{ran} by {origin}{took}"
        )
    value = ws.namespace.get(name)
    return f"{name}: here ({type(value).__name__}); {ran} by {origin}{took}"


def servers_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str]) -> str:
    """A plain left-aligned table."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    for row in rows:
        lines.append("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return "\n".join(lines)


def services_text(svc: Service) -> str:
    """A service: where it runs, its requests, then (the client that served it) one row per
    operator as ``%flows`` shows them, with the requests taken in from every client."""
    run = svc._run
    state = "running" if svc.running else "stopped"
    mine = f"{svc.sent:,} requests from this client, {svc.waiting:,} waiting"
    if run is None:
        return (
            f"service {svc.name!r} (flow {svc.flow!r}): {state}, served by another client; " + mine
        )
    until = run.ended_at if run.ended_at is not None else time.monotonic()
    where = "on servers" if run.hosts() else "in this process"
    operators = run.operators()
    taken = operators[0].items_in if operators else 0
    rate = operators[0].rate if operators else 0.0
    head = (
        f"service {svc.name!r} (flow {svc.flow!r}): {state} {where}, "
        f"{until - run.started_at:.1f} s; {taken:,} requests ({rate:,.0f}/s) from every "
        f"client; {mine}"
    )
    return head + "\n" + _operators_table(operators, _async_names(run.plan))


def _async_names(plan: PhysicalPlan) -> set[str]:
    """The names of a run's async operators (``map`` of an ``async def``)."""
    return {n.name for n in plan.logical.nodes if n.kind == "map_async"}


def _operators_table(operators: Sequence[Any], calling: set[str] | None = None) -> str:
    """One row per operator; an ``in flight`` column (the items its calls hold) when some
    are async (``calling``: their names)."""
    rows = [
        {
            "operator": op.name,
            "replicas": str(op.replicas),
            "in": f"{op.items_in:,}",
            "out": f"{op.items_out:,}",
            "rate/s": f"{op.rate:,.0f}",
            "backlog": f"{op.backlog:,}",
            "in flight": f"{op.in_flight:,}" if calling and op.name in calling else "",
        }
        for op in operators
    ]
    columns = ["operator", "replicas", "in", "out", "rate/s", "backlog"]
    table = servers_table(rows, [*columns, "in flight"] if calling else columns)
    return "\n".join("  " + line for line in table.splitlines())


def flows_text(run: Run) -> str:
    """A run of a flow: a line saying where and how long, then one row per operator."""
    state = run.progress().state
    until = run.ended_at if run.ended_at is not None else time.monotonic()
    where = "on servers" if run.hosts() else "in this process"
    head = f"flow {run.flow.name!r}: {state} {where}, {until - run.started_at:.1f} s"
    return head + "\n" + _operators_table(run.operators(), _async_names(run.plan))
