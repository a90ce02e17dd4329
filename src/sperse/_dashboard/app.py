"""The dashboard's web app (Starlette): pages, the JSON API, the live feed.

Routes (every one behind :class:`~sperse._dashboard.auth.TokenGate`):

=============================  ==========================================================
``/``, ``/tasks``, ``/objects``, ``/workspace``   the pages (one HTML shell, vanilla JS)
``/static/...``                 the pages' script and style, vendored cytoscape + dagre
``/api/info``                   the host's title and what it publishes
``/api/servers``                the servers now, with the journal's ``seq``
``/api/tasks?state=&offset=&limit=``  one page of tasks, newest first, and the counts
``/api/tasks/{id}``             one task: its error with the remote traceback, its output
``/api/timeline?seconds=``      tasks that ran in the last seconds (the task stream)
``/api/objects``                remote objects, loaded when asked (a thread, not the loop)
``/api/workspaces``, ``/api/workspaces/{name}``  shared workspaces, and one's graph
``/api/flows``, ``/api/flows/{id}``  flow runs (snapshots: operators, edges, rounds)
``/api/events?since=SEQ``       server-sent events: the changes after ``SEQ``
                                (``&flows=1``: a page that watches flows; hosts publish
                                flow snapshots only while one is open; ``&tasks=N``: at
                                most N task rows a delta (at most ``TASKS_PER_DELTA``:
                                what the page shows); ``&tasks=0``: a page that shows no
                                task: no task rows, no counts; ``&every=MS``: at most
                                one event every MS milliseconds, at least
                                ``MIN_INTERVAL``: a page that redraws no faster)
=============================  ==========================================================

The live feed sends deltas, never snapshots: a ``delta`` event holds the servers that
changed or left, at most ``TASKS_PER_DELTA`` changed tasks (those changed last;
``tasks_more`` says some were left out, so a page showing an older page of tasks reloads
it), the task counts, the versions of changed workspaces, and the snapshots of changed flow
runs. At most ``1 / MIN_INTERVAL`` events a second per page, however fast tasks end, and
what one costs is bounded by what it holds, not by how many tasks changed (the journal
coalesces as changes come: :class:`~sperse._dashboard.model.Journal`). A page too far
behind (its changes were forgotten) gets ``reset`` and reloads its snapshots. Nothing here
runs code: every route only reads.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from sperse._dashboard.hub import Hub
from sperse._dashboard.model import Change

__all__ = ["MIN_INTERVAL", "PAGES", "TASKS_PER_DELTA", "build_app", "delta_of"]

PAGES = {
    "/": "cluster",
    "/tasks": "tasks",
    "/objects": "objects",
    "/workspace": "workspace",
    "/flows": "flows",
}
TASKS_PER_DELTA = 100  # task rows in one delta at most (those changed last)
MIN_INTERVAL = 0.25  # seconds between two events to one page: at most 4 a second
KEEPALIVE = 15.0

_NO_STORE = {"cache-control": "no-store"}


def _int(request: Request, name: str, default: int) -> int:
    try:
        return int(request.query_params.get(name, default))
    except ValueError:
        return default


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=_NO_STORE)


def build_app(hub: Hub, stopping: asyncio.Event | None = None) -> Starlette:
    """The app for ``hub``. Setting ``stopping`` ends every live feed (for a prompt stop)."""
    static = resources.files("sperse._dashboard") / "static"
    shell = (static / "page.html").read_text(encoding="utf-8")
    stop = stopping or asyncio.Event()

    async def page(request: Request) -> Response:
        name = PAGES[request.url.path]
        text = shell.replace("{{page}}", name).replace("{{title}}", html.escape(hub.title))
        return HTMLResponse(text, headers=_NO_STORE)

    async def info(request: Request) -> Response:
        return _json(
            {"title": hub.title, "tasks": hub.has_tasks, "objects": hub.objects is not None}
        )

    async def servers(request: Request) -> Response:
        seq, found = hub.server_list()
        return _json({"seq": seq, "servers": found})

    async def tasks(request: Request) -> Response:
        state = request.query_params.get("state", "")
        return _json(hub.task_page(state, _int(request, "offset", 0), _int(request, "limit", 50)))

    async def task(request: Request) -> Response:
        found = hub.task(request.path_params["task_id"])
        return _json(
            found if found is not None else {"error": "no such task"}, 200 if found else 404
        )

    async def timeline(request: Request) -> Response:
        seconds = min(max(_int(request, "seconds", 60), 1), 3600)
        return _json(hub.timeline(seconds))

    async def objects(request: Request) -> Response:
        source = hub.objects
        if source is None:
            return _json({"objects": [], "available": False})
        try:
            found = await asyncio.to_thread(source)
        except Exception as exc:  # a server that does not answer: say so on the page
            return _json({"objects": [], "available": True, "error": str(exc)})
        return _json({"objects": found, "available": True, "named_only": hub.objects_named_only})

    async def workspaces(request: Request) -> Response:
        return _json({"seq": hub.seq, "workspaces": hub.workspace_list()})

    async def workspace(request: Request) -> Response:
        found = hub.workspace_graph(request.path_params["name"])
        return _json(
            found if found is not None else {"error": "no such workspace"}, 200 if found else 404
        )

    async def flows(request: Request) -> Response:
        source = hub.flow_source
        if source is not None:
            await asyncio.to_thread(source)  # every run now, ended ones too
        return _json(hub.flow_list())

    async def flow(request: Request) -> Response:
        found = hub.flow_run(request.path_params["key"])
        return _json(
            found if found is not None else {"error": "no such flow"}, 200 if found else 404
        )

    async def feed(
        since: int, watches_flows: bool, most_tasks: int, interval: float
    ) -> AsyncIterator[str]:
        hub.viewers += 1
        hub.flow_viewers += watches_flows
        try:
            seq = since
            yield "retry: 2000\n\n"
            while not stop.is_set():
                await hub.changed(seq, KEEPALIVE)
                if stop.is_set():
                    break
                newest, found, counts = hub.since(seq, most_tasks)
                if found is None:
                    yield f"id: {newest}\nevent: reset\ndata: {{}}\n\n"
                elif found[0]:
                    delta = json.dumps(delta_of(newest, *found, counts))
                    yield f"id: {newest}\nevent: delta\ndata: {delta}\n\n"
                else:
                    yield ": keepalive\n\n"
                seq = newest
                await asyncio.sleep(interval)
        finally:
            hub.viewers -= 1
            hub.flow_viewers -= watches_flows

    async def events(request: Request) -> Response:
        last = request.headers.get("last-event-id")
        since = int(last) if last and last.isdigit() else _int(request, "since", 0)
        return StreamingResponse(
            feed(
                since,
                request.query_params.get("flows") == "1",
                max(0, min(_int(request, "tasks", TASKS_PER_DELTA), TASKS_PER_DELTA)),
                max(MIN_INTERVAL, min(_int(request, "every", 0) / 1000, KEEPALIVE)),
            ),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    routes: list[BaseRoute] = [Route(path, page) for path in PAGES]
    routes += [
        Route("/api/info", info),
        Route("/api/servers", servers),
        Route("/api/tasks", tasks),
        Route("/api/tasks/{task_id:path}", task),  # a coordinator's ids hold "/"
        Route("/api/timeline", timeline),
        Route("/api/objects", objects),
        Route("/api/workspaces", workspaces),
        Route("/api/workspaces/{name}", workspace),
        Route("/api/flows", flows),
        Route("/api/flows/{key}", flow),
        Route("/api/events", events),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    return Starlette(routes=routes)


def delta_of(
    seq: int, changes: list[Change], tasks_more: bool, counts: dict[str, int]
) -> dict[str, Any]:
    """A ``delta`` event: ``changes`` (their data JSON) by kind; ``tasks_more``: more tasks
    changed than ``changes`` holds."""
    delta: dict[str, Any] = {
        "seq": seq,
        "servers": [],
        "gone": [],
        "workspaces": [],
        "flows": [],
    }
    tasks = []
    for change in changes:
        if change.topic == "server":
            delta["servers"].append(change.data)
        elif change.topic == "server_gone":
            delta["gone"].append(change.key)
        elif change.topic == "task":
            tasks.append(change.data)
        elif change.topic == "workspace":
            delta["workspaces"].append(change.data)
        elif change.topic == "flow":
            delta["flows"].append(change.data)
    if tasks:
        delta["tasks"] = tasks
        delta["tasks_more"] = tasks_more
        delta["counts"] = counts
    return delta
