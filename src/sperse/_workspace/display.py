"""The printable description of a workspace's cells and edges (``ws.graph()``, ``%graph``).

Typed against ``GraphView``: describing the graph never changes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from sperse._graph.graph import CellId, GraphView
from sperse._workspace.cells import Record

__all__ = ["describe_cell", "describe_graph"]


def describe_graph(
    graph: GraphView, records: Mapping[CellId, Record], name: str | None = None
) -> str:
    """A printable description of the cells, their names, states and edges.

    With a ``name``: the cells upstream of its definer (what it is computed
    from) and downstream (what is computed from it), as two trees.
    """
    if name is None:
        return "\n".join(describe_cell(graph, records, c) for c in graph.cells())
    cell_id = graph.definer(name)
    if cell_id is None:
        raise KeyError(f"{name!r} is not defined in this workspace")
    lines = [describe_cell(graph, records, cell_id)]
    lines += ["upstream:", *(_tree(graph, records, cell_id, up=True) or ["  (nothing)"])]
    lines += ["downstream:", *(_tree(graph, records, cell_id, up=False) or ["  (nothing)"])]
    return "\n".join(lines)


def describe_cell(graph: GraphView, records: Mapping[CellId, Record], cell_id: CellId) -> str:
    """One cell: its label, kind, state, the names it defines and where it reads from."""
    view = graph.view(cell_id)
    record = records[cell_id]
    kind = "remote" if record.remote is not None else "local"
    owned = ", ".join(sorted(view.owned)) or "-"
    reads = ", ".join(
        f"{name}<-[{parent}]" if parent is not None else name
        for name, parent in sorted(view.parents.items())
    )
    return (
        f"[{cell_id}] {record.label}\n"
        f"      {kind}, {view.status.value}; defines: {owned}; reads: {reads or '-'}"
    )


def _tree(
    graph: GraphView, records: Mapping[CellId, Record], root: CellId, *, up: bool
) -> list[str]:
    """An indented tree of the cells above or below ``root`` (each shown once)."""
    out: list[str] = []
    seen = {root}
    stack: list[tuple[CellId, int]] = [(c, 1) for c in reversed(_neighbours(graph, root, up))]
    while stack:
        cell_id, depth = stack.pop()
        record = records[cell_id]
        status = graph.status(cell_id).value
        again = " (shown above)" if cell_id in seen else ""
        out.append(f"{'  ' * depth}[{cell_id}] {record.label}  ({status}){again}")
        if not again:
            seen.add(cell_id)
            stack.extend((c, depth + 1) for c in reversed(_neighbours(graph, cell_id, up)))
    return out


def _neighbours(graph: GraphView, cell_id: CellId, up: bool) -> list[CellId]:
    if up:
        parents = {p for p in graph.parents(cell_id).values() if p is not None}
        return sorted(parents)
    return sorted(graph.children(cell_id))
