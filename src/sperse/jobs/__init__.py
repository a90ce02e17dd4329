"""Batch jobs: a program (a WebAssembly module or a Python function) over a directory of inputs.

Every input file is a unit of work; its output is written under the same name in the
output directory. ``sperse submit`` is the command; ``submit_job`` the same from Python.
See ``docs/jobs.md``.

Names are imported on first use (PEP 562): a worker that runs units imports only
``sperse.jobs._worker``, not the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sperse.jobs._job import Job, submit_job
    from sperse.jobs._results import JobError, JobProgress, JobSummary, UnitError, UnitResult

__all__ = ["Job", "JobError", "JobProgress", "JobSummary", "UnitError", "UnitResult", "submit_job"]

_LAZY = {
    "Job": "sperse.jobs._job",
    "submit_job": "sperse.jobs._job",
    "JobError": "sperse.jobs._results",
    "JobProgress": "sperse.jobs._results",
    "JobSummary": "sperse.jobs._results",
    "UnitError": "sperse.jobs._results",
    "UnitResult": "sperse.jobs._results",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sperse.jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
