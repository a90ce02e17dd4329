"""Ordinary public notebooks show the same outputs with ``%load_ext sperse`` as without it.

DESIGN.md §2 rule 10: a notebook that knows nothing of Sperse, run top to bottom, gives the
same outputs with the extension loaded. The notebooks are real, published ones, kept
unmodified in ``notebooks/`` (their sources and licences are in ``notebooks/SOURCES.md``):
textbook NumPy, Pandas and Matplotlib chapters that rebind names and mutate objects, and
IPython's tour of its own features (magics, ``;``, ``_``/``In``/``Out``, ``%xmode``, ``!``).

Each notebook runs with nbclient in a real kernel of this venv (the kernel spec and
environment of :mod:`jupyter_kernel`) three times, each in an empty working directory of its
own: twice as published, and once with ``%load_ext sperse`` run first (the extension starts
its embedded cluster). That first cell is executed with ``store_history=False``, so execution
counts, ``In``/``Out`` and ``%history`` line up with the plain runs (a user's extra first cell
would shift them all by one, which is not Sperse's doing). All the runs of all the notebooks
go at once: most of the time is ``%timeit``, which takes its time whatever the load.

Every cell's outputs are reduced to a comparable form (:meth:`Masking.outputs`): output types
in order and ``Out[n]`` numbers; text (streams, ``text/plain``, ``text/html``, errors' name,
value and traceback without colours) with what differs from run to run masked (addresses,
timings, the run's directory, process ids, connection ports and keys); images by digest; and
pager output (``x?``, ``%quickref``), which comes as a reply payload. A cell whose outputs
differ between the two plain runs shows something inherently run-dependent (unseeded random
numbers, disk usage): it is left out, and the test says which. Every other cell must agree
with the run under the extension; a failure lists each differing cell (its index among the
notebook's cells, markdown included), the start of its source, and both outputs.

Run-to-run conditions are fixed for all three runs: ``PYTHONHASHSEED=0``, and a Matplotlib
config directory whose ``stylelib`` maps the style names the handbook uses
(``seaborn-whitegrid``, ``seaborn-white``, removed in Matplotlib 3.8) to the styles Matplotlib
renamed them to (``seaborn-v0_8-*``), as Matplotlib 3.6 and 3.7 did themselves, so the
chapters run as their author meant without editing them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_kernel import KERNEL_NAME, kernel_env, kernel_spec_manager, over_ipc
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))
LOAD_EXTENSION = "%load_ext sperse"
CELL_TIMEOUT = 60  # seconds for one cell; past it the kernel is interrupted and the run goes on
SOURCE_LINES = 4  # of a differing cell's source, in the report
SHOWN_OUTPUTS, SHOWN_LINES = 6, 8  # of its outputs, and of each output
# The styles the handbook's chapters ask for, and the ones Matplotlib renamed them to.
RENAMED_STYLES = {
    "seaborn-whitegrid": "seaborn-v0_8-whitegrid",
    "seaborn-white": "seaborn-v0_8-white",
}

Output = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Run:
    """One execution of a notebook: its code cells (index in the notebook, cell) in order,
    and the names of the magics the kernel had at the end (``%name``, ``%%name``)."""

    cells: tuple[tuple[int, nbformat.NotebookNode], ...]
    directory: Path  # the kernel's files in kernel/, the notebook's working directory work/
    magics: frozenset[str]
    seconds: float


# --- running a notebook ---------------------------------------------------------------------

# Run after the notebook, out of the history: the magics the kernel knows then.
MAGICS_PROBE = (
    "print(__import__('json').dumps("
    "{k: sorted(v) for k, v in get_ipython().magics_manager.lsmagic().items()}))"
)


@pytest.fixture(scope="module")
def mpl_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Matplotlib config directory shared by every run: its font cache is built once."""
    import matplotlib

    config = tmp_path_factory.mktemp("matplotlib")
    stylelib = config / "stylelib"
    stylelib.mkdir()
    styles = Path(matplotlib.get_data_path()) / "stylelib"
    for old, new in RENAMED_STYLES.items():
        shutil.copyfile(styles / f"{new}.mplstyle", stylelib / f"{old}.mplstyle")
    # Build the font cache once here, not in every kernel at the same time.
    env = {**os.environ, "MPLCONFIGDIR": str(config)}
    subprocess.run([sys.executable, "-c", "import matplotlib.pyplot"], env=env, check=True)
    return config


async def execute(notebook: Path, tmp: Path, mpl_config: Path, *, sperse: bool) -> Run:
    """Run ``notebook`` top to bottom in a new kernel, errors and all, and stop the kernel."""
    nb = nbformat.read(notebook, as_version=4)
    first = 1 if sperse else 0
    if sperse:
        nb.cells.insert(0, nbformat.v4.new_code_cell(LOAD_EXTENSION))
    nb.cells.append(nbformat.v4.new_code_cell(MAGICS_PROBE))
    kernel_dir, workdir = tmp / "kernel", tmp / "work"
    kernel_dir.mkdir(parents=True)
    workdir.mkdir()
    env = kernel_env(kernel_dir)
    env.update(PYTHONHASHSEED="0", MPLCONFIGDIR=str(mpl_config))
    km = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=kernel_spec_manager(kernel_dir)
    )
    km.connection_file = str(kernel_dir / "connection.json")
    over_ipc(km, kernel_dir)
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        interrupt_on_timeout=True,
        allow_errors=True,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(workdir)}},
    )
    replies: dict[int, dict[str, Any]] = {}
    client.on_cell_executed = lambda cell, cell_index, execute_reply: replies.__setitem__(
        cell_index, execute_reply
    )
    start = time.monotonic()
    try:
        async with client.async_setup_kernel(env=env, cleanup_kc=True):
            last = len(nb.cells) - 1
            for index, cell in enumerate(nb.cells):
                # Neither the extension's cell nor the probe is in the history (module docstring).
                await client.async_execute_cell(cell, index, store_history=first <= index < last)
    finally:
        if km.has_kernel:  # a kernel that died is only reaped: its sockets may be gone
            await km.shutdown_kernel(now=not await km.is_alive())
    seconds = time.monotonic() - start
    if sperse:
        failed = [o for o in nb.cells[0].outputs if o.output_type == "error"]
        assert not failed, f"{LOAD_EXTENSION} failed: {failed[0].ename}: {failed[0].evalue}"
    for index, reply in replies.items():
        nb.cells[index]["pager"] = [
            p["data"].get("text/plain", "")
            for p in reply["content"].get("payload", [])
            if p.get("source") == "page"
        ]
    probe = nb.cells.pop()
    listed = json.loads("".join(o.get("text", "") for o in probe.outputs) or "{}")
    magics = frozenset(
        [f"%{name}" for name in listed.get("line", [])]
        + [f"%%{name}" for name in listed.get("cell", [])]
    )
    cells = tuple(
        (index - first, cell)
        for index, cell in enumerate(nb.cells)
        if index >= first and cell.cell_type == "code"
    )
    return Run(cells, tmp, magics, seconds)


async def execute_three(notebook: Path, tmp: Path, mpl_config: Path) -> tuple[Run, Run, Run]:
    """The notebook run twice as published and once under the extension, side by side."""
    async with asyncio.TaskGroup() as tasks:
        plain = tasks.create_task(execute(notebook, tmp / "plain", mpl_config, sperse=False))
        again = tasks.create_task(execute(notebook, tmp / "again", mpl_config, sperse=False))
        with_sperse = tasks.create_task(execute(notebook, tmp / "sperse", mpl_config, sperse=True))
    return plain.result(), again.result(), with_sperse.result()


# --- making outputs comparable --------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TIME = r"\d+(?:\.\d+)?\s*(?:ns|μs|µs|us|ms|s|sec|min|h)\b"  # IPython writes μ (U+03BC)
_MASKS: list[tuple[re.Pattern[str], str]] = [
    # %timeit: its whole line, and the warning it adds when runs vary.
    (
        re.compile(
            rf"{_TIME} ± {_TIME} per loop \(mean ± std\. dev\. of [\d,]+ runs?, [\d,]+ loops? each\)"
        ),
        "<timeit>",
    ),
    (re.compile(r"The slowest run took [\d.]+ times longer than the fastest\..*\n?"), ""),
    # %time: "CPU times: user 1.2 ms, sys: 0 ns, total: 1.2 ms" and "Wall time: 3 ms".
    (re.compile(rf"(CPU times|Wall time|user|sys|total): {_TIME}"), r"\1: <time>"),
    (re.compile(r"\b0x[0-9a-fA-F]+"), "0x<addr>"),
    (re.compile(r"ipykernel_\d+"), "ipykernel_<pid>"),
    (re.compile(r"kernel-[0-9a-f-]{36}"), "kernel-<uuid>"),
    (re.compile(r'"(\w+_port)": \d+'), r'"\1": <port>'),
    (re.compile(r'"key": "[^"]*"'), '"key": "<key>"'),
    # `df -h`: the machine's disk use changes while the notebooks run (other processes).
    (
        re.compile(r"^(\S+\s+)[\d.]+[KMGTP]?\s+[\d.]+[KMGTP]?\s+[\d.]+[KMGTP]?\s+\d+%", re.M),
        r"\1<size> <used> <avail> <use%>",
    ),
]


@dataclass(frozen=True, slots=True)
class Masking:
    """What one run's text is compared without: colours, run-dependent values (``_MASKS``),
    the run's directory, and the magics the extension adds to IPython's listings of magics
    (``%lsmagic``, ``%quickref``, ``%magic``): registering its own magics is its job."""

    directory: Path
    extension_magics: frozenset[str]

    def text(self, text: str) -> str:
        text = _ANSI.sub("", text).replace(str(self.directory), "<run>")
        for pattern, replacement in _MASKS:
            text = pattern.sub(replacement, text)
        for magic in self.extension_magics:
            name = re.escape(magic)
            # An entry of %quickref or %magic: "%name:" and its indented lines.
            text = re.sub(rf"^{name}:.*\n(?:[ \t]+.*\n)*", "", text, flags=re.MULTILINE)
            # A name in %lsmagic's lists, two spaces apart (the lists may be a repr: "\n").
            text = re.sub(rf"(?<!%){name}  ", "", text)
            text = re.sub(rf"  {name}(?=\n|\\n|'|$)", "", text)
        return text

    def bundle(self, data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        items = []
        for mime, value in sorted(data.items()):
            if mime.startswith("image/") and not mime.endswith("svg+xml"):
                raw = base64.b64decode(value)
                items.append((mime, "sha256:" + hashlib.sha256(raw).hexdigest()[:16]))
            elif isinstance(value, str):
                items.append((mime, self.text(value)))
            else:
                items.append((mime, self.text(json.dumps(value, sort_keys=True))))
        return tuple(items)

    def outputs(self, cell: nbformat.NotebookNode) -> tuple[Output, ...]:
        """The cell's outputs in order, in a form two runs can be compared in (module
        docstring). Consecutive writes to one stream are joined before masking: where they
        split is timing, and a split may fall inside what a mask matches."""
        result: list[Output] = []
        for out in cell.get("outputs", []):
            kind = out["output_type"]
            if kind == "stream":
                text = out["text"]
                if result and result[-1][:2] == ("stream", out["name"]):
                    result[-1] = ("stream", out["name"], result[-1][2] + text)
                else:
                    result.append(("stream", out["name"], text))
            elif kind == "execute_result":
                result.append((kind, out.get("execution_count"), self.bundle(out["data"])))
            elif kind == "display_data":
                result.append((kind, self.bundle(out["data"])))
            elif kind == "error":
                traceback = self.text("\n".join(out["traceback"]))
                result.append((kind, out["ename"], self.text(out["evalue"]), traceback))
            else:
                result.append((kind,))
        for page in cell.get("pager", []):
            result.append(("pager", self.text(page)))
        return tuple(
            (out[0], out[1], self.text(out[2])) if out[0] == "stream" else out for out in result
        )


def show(outputs: tuple[Output, ...]) -> str:
    """Outputs as a reader wants them in a failure report: the first lines of each."""
    if not outputs:
        return "    (no output)"
    lines = []
    for out in outputs[:SHOWN_OUTPUTS]:
        kind, rest = out[0], out[1:]
        if kind == "stream":
            text = rest[1].splitlines()
            lines.append(f"    [{rest[0]}]")
            lines.extend(f"      {line}" for line in text[:SHOWN_LINES])
            if len(text) > SHOWN_LINES:
                lines.append(f"      ... ({len(text) - SHOWN_LINES} more lines)")
        elif kind in ("execute_result", "display_data"):
            bundle = rest[-1]
            lines.append(f"    [{kind}]" if kind == "display_data" else f"    [Out[{rest[0]}]]")
            for mime, value in bundle:
                if mime in ("text/plain", "image/png") or len(bundle) == 1:
                    text = value.splitlines() or [""]
                    lines.append(f"      {mime}: {text[0]}")
                    lines.extend(f"        {line}" for line in text[1:SHOWN_LINES])
                    if len(text) > SHOWN_LINES:
                        lines.append(f"        ... ({len(text) - SHOWN_LINES} more lines)")
                else:
                    lines.append(f"      {mime}: ({len(value)} characters)")
        elif kind == "error":
            lines.append(f"    [error] {rest[0]}: {rest[1]}")
            lines.extend(f"      {line}" for line in rest[2].splitlines()[-SHOWN_LINES:])
        elif kind == "pager":
            lines.append(f"    [pager] ({len(rest[0])} characters)")
        else:
            lines.append(f"    [{kind}]")
    if len(outputs) > SHOWN_OUTPUTS:
        lines.append(f"    ... and {len(outputs) - SHOWN_OUTPUTS} more outputs")
    return "\n".join(lines)


# --- the test -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Difference:
    index: int  # in the notebook's cells, markdown included
    execution_count: int | None
    source: str
    plain: tuple[Output, ...]
    with_sperse: tuple[Output, ...]

    def report(self) -> str:
        lines = self.source.splitlines()
        head = "\n".join(f"    | {line}" for line in lines[:SOURCE_LINES])
        if len(lines) > SOURCE_LINES:
            head += f"\n    | ... ({len(lines) - SOURCE_LINES} more lines)"
        return (
            f"cell {self.index} (In [{self.execution_count}]):\n{head}\n"
            f"  without the extension:\n{show(self.plain)}\n"
            f"  with %load_ext sperse:\n{show(self.with_sperse)}"
        )


def compare(plain: Run, again: Run, with_sperse: Run) -> tuple[list[Difference], list[int]]:
    """The cells whose outputs under the extension differ, and the run-dependent cells."""
    added = with_sperse.magics - plain.magics
    assert added, f"{LOAD_EXTENSION} registered no magics: was the extension loaded?"
    masks = [Masking(run.directory, added) for run in (plain, again, with_sperse)]
    differences, run_dependent = [], []
    for (index, cell), (_, cell2), (_, cell3) in zip(
        plain.cells, again.cells, with_sperse.cells, strict=True
    ):
        first = masks[0].outputs(cell)
        if first != masks[1].outputs(cell2):
            run_dependent.append(index)
            continue
        third = masks[2].outputs(cell3)
        if first != third:
            count = cell.get("execution_count")
            differences.append(Difference(index, count, cell.source, first, third))
    return differences, run_dependent


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, mpl_config: Path
) -> dict[Path, tuple[Run, Run, Run] | Exception]:
    """Every notebook's three runs, all at once (see :func:`execute_three`); a notebook whose
    runs failed has the exception, for its own test to raise."""
    results: dict[Path, tuple[Run, Run, Run] | Exception] = {}

    async def run(notebook: Path) -> None:
        try:
            results[notebook] = await execute_three(
                notebook, tmp_path_factory.mktemp(notebook.stem.replace(" ", "-")), mpl_config
            )
        except Exception as exc:
            results[notebook] = exc

    async def run_all() -> None:
        async with asyncio.TaskGroup() as tasks:
            for notebook in NOTEBOOK_FILES:
                tasks.create_task(run(notebook))

    asyncio.run(run_all())
    return results


@pytest.mark.timeout(170)
@pytest.mark.parametrize("notebook", NOTEBOOK_FILES, ids=[p.stem for p in NOTEBOOK_FILES])
def test_a_public_notebook_shows_the_same_outputs_with_the_extension(
    notebook: Path, runs: dict[Path, tuple[Run, Run, Run] | Exception]
) -> None:
    result = runs[notebook]
    if isinstance(result, Exception):
        raise result
    plain, again, with_sperse = result
    differences, run_dependent = compare(plain, again, with_sperse)
    summary = (
        f"{notebook.name}: {len(differences)} of {len(plain.cells) - len(run_dependent)} "
        f"compared cells differ under the extension; {len(run_dependent)} cells left out, "
        f"their outputs differ between two runs without it {run_dependent}; the runs took "
        f"{plain.seconds:.0f} s and {again.seconds:.0f} s, {with_sperse.seconds:.0f} s with it"
    )
    print(summary)
    assert not differences, summary + "\n\n" + "\n\n".join(d.report() for d in differences)
