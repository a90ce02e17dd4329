"""``examples/notebook.ipynb`` runs from top to bottom in a real kernel, and shows what it says."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from jupyter_client.manager import KernelManager
from jupyter_kernel import KERNEL_NAME, kernel_env, kernel_spec_manager, over_ipc
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"


def cell_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("display_data", "execute_result"):
            parts.append(output["data"].get("text/plain", ""))
        else:
            parts.append("\n".join(output.get("traceback", [])))
    return "\n".join(parts)


def run_notebook(tmp: Path) -> list[nbformat.NotebookNode]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager(tmp))
    km.connection_file = str(tmp / "connection.json")
    over_ipc(km, tmp)
    client = NotebookClient(
        nb, km=km, timeout=60, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(tmp)}}
    )
    try:
        # Raises CellExecutionError on an error output; then stops the kernel and its channels.
        client.execute(cleanup_kc=True, env=kernel_env(tmp))
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=False)
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_the_notebook_runs_and_shows_values_in_place(tmp_path: Path) -> None:
    cells = {cell.source.splitlines()[0]: cell for cell in run_notebook(tmp_path)}
    assert cell_text(cells["%%remote"]) == "x = 2"  # the placeholder, filled in place
    assert cell_text(cells["y = x * 10  # noqa: F821"]) == "y = 30"  # followed the redefinition
    assert "x  " in cell_text(cells["%pending"]) and "y  waiting for x" in cell_text(
        cells["%pending"]
    )
    assert cell_text(cells["%%remote [@local]"]) == "x = 3"
    graph = cell_text(cells["%graph y"])
    assert graph.startswith("[4] y = x * 10")
    assert "upstream:\n  [5] remote[@local]: ...  (done)" in graph
    assert cell_text(cells["y + 1"]) == "31"
