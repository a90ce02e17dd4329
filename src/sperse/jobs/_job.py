"""``submit_job`` and ``Job``: a program run over every unit of an input, on the cluster.

Built on ``submit_call`` and ``Pending`` only, so it runs on every backend, and over
several clusters at once (``cluster=[a, b]``).

The parts: ``submit_job`` checks what it is given and finds the slots; the ``Job`` is what
the user holds; the job's thread (``_runner.JobRunner``) does the I/O that the pure
``JobScheduler`` (``_schedule``) decides, whose module doc states the rules (flow control,
batches, retries, time limits).

**Threads.** The job's own thread reads inputs, sends batches, and writes outputs; it ends
before ``wait`` returns, on ``cancel``, or with the job. The user's thread only looks:
``progress()``, ``wait()`` (which draws the bar), ``as_completed()``. No user code runs on
the client, so nothing is posted to the user's thread.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO

from sperse._cluster.cluster import Cluster
from sperse._cluster.connect import current
from sperse._core.routing import no_match_message
from sperse._lang.placement import placement_from_options
from sperse.errors import NoMatchingServer, NotReadyError
from sperse.jobs._io import DirectoryInput, LinesInput, OutputDir
from sperse.jobs._options import DEFAULT_MAX_MEMORY_MB, DEFAULT_MAX_OUTPUT_MB, DEFAULT_RETRIES
from sperse.jobs._programs import Program, PythonProgram, WasmProgram
from sperse.jobs._progress import Bar, Display, PlainLines, is_terminal
from sperse.jobs._results import JobError, JobProgress, JobSummary, UnitResult
from sperse.jobs._runner import JobRunner, Source, slots_of

__all__ = ["DEFAULT_MAX_MEMORY_MB", "DEFAULT_RETRIES", "Job", "submit_job"]

ClusterSpec = Cluster | Sequence[Cluster] | Callable[[], Cluster] | None


class Job:
    """A batch job running on the cluster; made by ``submit_job``.

    ``progress()`` at any time; ``wait()`` for the ``JobSummary`` (with a progress bar in a
    terminal); ``as_completed()`` for each ``UnitResult`` as units finish; ``cancel()`` to
    stop (what is done stays done: run the job again to finish it).
    """

    def __init__(self, runner: JobRunner, output: str) -> None:
        self.name = runner.name
        self.output = output
        self._runner = runner

    # ---- the public API (any thread) ----------------------------------------------------

    def progress(self) -> JobProgress:
        """How far the job is, now."""
        return self._runner.tally.progress()

    def done(self) -> bool:
        return self._runner.tally.finished.is_set()

    @property
    def summary(self) -> JobSummary:
        """How the job ended; ``NotReadyError`` while it runs (``wait()`` waits for it)."""
        summary = self._runner.tally.summary
        if summary is None:
            raise NotReadyError(f"the job {self.name} is still running; use job.wait()")
        return summary

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool | None = None,
        interval: float = 5.0,
        stream: IO[str] | None = None,
    ) -> JobSummary:
        """Wait for the end of the job and return its summary.

        ``progress``: None shows a live bar when ``stream`` (default stderr) is a terminal
        and nothing otherwise; True shows the bar in a terminal and a plain line every
        ``interval`` seconds (and one at the end) otherwise; False nothing. Raises
        ``TimeoutError`` if ``timeout`` passes first (the job goes on). Clusters the job
        started are closed when it has ended.
        """
        out = stream if stream is not None else sys.stderr
        display = (
            None if self._runner.tally.finished.is_set() else self._display(progress, out, interval)
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        tick = 0.1 if isinstance(display, Bar) else min(interval, 0.5)
        try:
            while not self._runner.tally.finished.is_set():
                for cluster in self._runner.clusters:
                    cluster.drain()
                if display is not None:
                    display.update(self.progress())
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"the job {self.name} did not finish within {timeout} s; it goes on "
                        "(job.cancel() stops it)"
                    )
                self._runner.tally.finished.wait(
                    tick if remaining is None else min(tick, remaining)
                )
        finally:
            if display is not None:
                display.close(self.progress())
        self._runner.join()
        self.close()
        return self.summary

    def as_completed(self, timeout: float | None = None) -> Iterator[UnitResult]:
        """Each unit's result as it finishes (skipped units are not included), until the
        job ends. Results wait for a reader; past ``RESULTS_KEPT`` unread, the oldest are
        dropped (the outputs are on disk all the same)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for cluster in self._runner.clusters:
                cluster.drain()
            try:
                result = self._runner.tally.next_result(deadline)
            except TimeoutError:
                raise TimeoutError(f"no unit of {self.name} finished within {timeout} s") from None
            if result is None:
                return
            yield result

    def cancel(self) -> bool:
        """Stop the job: units running are cancelled and not written. False if it had
        already ended. Run it again to finish it."""
        return self._runner.cancel()

    def close(self) -> None:
        """Cancel the job if it runs, and close the clusters it started."""
        if not self._runner.tally.finished.is_set():
            self.cancel()
        owned, self._runner.owned = self._runner.owned, []
        for cluster in owned:
            cluster.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Job {self.name} -> {self.output}: {self.progress().line()}>"

    def _display(self, progress: bool | None, stream: IO[str], interval: float) -> Display | None:
        if progress is False:
            return None
        label = f"sperse: {os.path.basename(self.name) or 'job'}"
        if is_terminal(stream):
            return Bar(stream, label)
        if progress:
            return PlainLines(stream, interval, label, time.monotonic)
        return None


# ---- submit_job ---------------------------------------------------------------------------


def submit_job(
    *,
    input: str | os.PathLike[str] | Iterable[bytes],
    output: str | os.PathLike[str],
    wasm: str | os.PathLike[str] | bytes | None = None,
    python: str | Callable[[bytes], bytes | str] | None = None,
    on: str | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float | None = None,
    max_memory_mb: float | None = DEFAULT_MAX_MEMORY_MB,
    max_output_mb: float = DEFAULT_MAX_OUTPUT_MB,
    cluster: ClusterSpec = None,
    results: bool = True,
) -> Job:
    """Run a program over every unit of ``input``, writing each output in ``output``.

    - ``wasm``: a WebAssembly module (a path, or its bytes; binary or WAT), run as a WASI
      command per unit: the unit on stdin, the output from stdout; ``python``: a function
      ``bytes -> bytes | str``, or its name ``"pkg.module:func"`` / ``"file.py:func"``.
    - ``input``: a directory (every file under it is a unit, named by its relative path), or
      ``"-"`` (stdin) or a binary stream (each line a unit, named by its line number).
    - ``output``: the directory of outputs, same names. Units whose output exists are
      skipped: run the same job again to finish an interrupted one.
    - ``on``: a placement, as in ``@sperse.remote`` (``"gpu & !slow"``, ``"@db-1"``).
    - ``retries``: how often a unit whose worker or server died is tried again.
    - ``timeout``: seconds each unit may run; ``max_memory_mb``: the memory of each
      WebAssembly unit (None: the 4 GiB of wasm32); ``max_output_mb``: what a WebAssembly
      unit may write to stdout (past it, its write fails and so does the unit).
    - ``cluster``: a cluster, several (the job spreads over all), or a function that starts
      one (called again for a fresh one if every server is lost); default the current one.
    - ``results``: keep each unit's result for ``Job.as_completed()`` (at most
      ``RESULTS_KEPT`` unread); False for a job nobody iterates (``sperse submit``).

    Returns a running ``Job`` at once. Raises ``JobError`` (an invalid module, with
    wasmtime's reason; a function that cannot be imported; a missing input) or
    ``NoMatchingServer`` before anything runs.
    """
    if (wasm is None) == (python is None):
        raise JobError("give the job one program: wasm=MODULE or python=FUNCTION")
    if retries < 0:
        raise JobError(f"retries must be 0 or more, not {retries}")
    if timeout is not None and timeout <= 0:
        raise JobError(f"timeout must be positive, not {timeout}")
    if max_memory_mb is not None and max_memory_mb <= 0:
        raise JobError(f"max_memory_mb must be positive, not {max_memory_mb}")
    if not max_output_mb > 0:
        raise JobError(f"max_output_mb must be positive, not {max_output_mb}")
    program: Program = WasmProgram(wasm) if wasm is not None else PythonProgram(python)  # type: ignore[arg-type]
    out_dir = os.fspath(output)
    source = _source(input, out_dir)
    placement = placement_from_options(on)
    clusters, factory, owned = _clusters(cluster)
    try:
        slots = [slot for c in clusters for slot in slots_of(c, placement)]
        if not slots:
            servers = [s for c in clusters for s in c.servers()]
            raise NoMatchingServer(no_match_message(placement, servers, f"the job {program.name}"))
        out = OutputDir(out_dir)
        try:
            out.prepare()
        except OSError as exc:
            raise JobError(f"cannot use the output directory {out_dir!r}: {exc}") from None
        runner = JobRunner(
            program=program,
            source=source,
            output=out,
            placement=placement,
            clusters=clusters,
            slots=slots,
            factory=factory,
            owned=owned,
            retries=retries,
            timeout=timeout,
            max_memory=None if max_memory_mb is None else int(max_memory_mb * (1 << 20)),
            max_output=int(max_output_mb * (1 << 20)),
            results=results,
        )
        return Job(runner, out.root)
    except BaseException:
        for c in owned:
            c.close()
        raise


def _source(input: str | os.PathLike[str] | Iterable[bytes], out_dir: str) -> Source:
    if not isinstance(input, str | os.PathLike):
        return LinesInput(input)
    path = os.fspath(input)
    if path == "-":
        return LinesInput(sys.stdin.buffer)
    if not os.path.isdir(path):
        what = "a file" if os.path.exists(path) else "not there"
        raise JobError(f"the input {path!r} is {what}: give a directory of inputs, or - for stdin")
    if os.path.realpath(path) == os.path.realpath(out_dir):
        raise JobError(f"the output directory must not be the input directory ({path!r})")
    return DirectoryInput(path, exclude=out_dir)


def _clusters(
    spec: ClusterSpec,
) -> tuple[list[Cluster], Callable[[], Cluster] | None, list[Cluster]]:
    """The clusters to use now, the factory of fresh ones, and those the job owns."""
    if spec is None:
        return [current()], None, []
    if isinstance(spec, Cluster):
        return [spec], None, []
    if callable(spec):
        first = spec()
        return [first], spec, [first]
    clusters = list(spec)
    if not clusters:
        raise JobError("cluster=[] names no cluster to run the job on")
    return clusters, None, []
