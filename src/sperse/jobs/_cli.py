"""``sperse submit``: a job from the command line, its summary, and its exit code.

Exit codes: 0 every unit has its output; 1 some unit failed or did not run (the failed
ones are listed in ``OUTPUT/_failed.jsonl``); 2 the job could not start (an invalid module
or function, a missing input, no server matching ``--on``); 130 interrupted (Ctrl-C): what
was done is kept, and the same command finishes the job.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from sperse._cluster.cluster import Cluster
from sperse.errors import SperseError
from sperse.jobs._job import Job, submit_job
from sperse.jobs._options import SubmitRequest

__all__ = ["run_submit"]


def run_submit(open_cluster: Callable[[], Cluster], request: SubmitRequest) -> int:
    """Run the job to its end, print its summary; returns the exit code."""
    try:
        job = submit_job(
            input=request.input,
            output=request.output,
            wasm=request.wasm,
            python=request.python,
            on=request.on,
            retries=request.retries,
            timeout=request.timeout,
            max_memory_mb=request.max_memory,
            max_output_mb=request.max_output,
            cluster=open_cluster,
            results=False,  # nobody iterates them: the outputs are on disk
        )
    except (SperseError, ValueError, OSError) as exc:
        print(f"sperse submit: {exc}", file=sys.stderr)
        return 2
    return _finish(job, request)


def _finish(job: Job, request: SubmitRequest) -> int:
    interrupted = False
    try:
        summary = job.wait(progress=True, interval=request.progress_interval)
    except KeyboardInterrupt:
        interrupted = True
        job.cancel()
        summary = job.summary
    finally:
        job.close()
    if request.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.report())
    if interrupted:
        return 130
    return summary.exit_code
