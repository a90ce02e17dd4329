"""What a job reports: each unit's result, its progress, and the summary at the end.

Frozen values, safe to hand from the job's thread to the user's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sperse.errors import SperseError
from sperse.jobs._worker import UnitKind

__all__ = ["JobError", "JobProgress", "JobSummary", "UnitError", "UnitResult"]


class JobError(SperseError):
    """A job cannot start: its program is invalid (a WebAssembly module wasmtime refuses, a
    function that cannot be imported), or its input or output directory is unusable.
    Nothing has run."""


@dataclass(frozen=True, slots=True)
class UnitError:
    """Why a unit failed: ``kind`` says who caused it (see ``sperse.jobs._worker.UnitKind``),
    ``message`` what happened, ``detail`` the unit's stderr (and a Python traceback)."""

    kind: UnitKind
    message: str
    detail: str = ""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class UnitResult:
    """One finished unit: its output file, or its error."""

    name: str
    ok: bool
    output: str | None = None  # the output file's path, when ok
    error: UnitError | None = None
    where: str = ""  # the server that ran it (last)
    attempts: int = 1
    seconds: float = 0.0  # time it computed, measured on the worker

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.name, "ok": self.ok, "where": self.where}
        if self.error is not None:
            out |= {
                "kind": self.error.kind,
                "error": self.error.message,
                "detail": self.error.detail,
                "attempts": self.attempts,
            }
        return out


@dataclass(frozen=True, slots=True)
class JobProgress:
    """A snapshot of a running job. ``total`` is None while it is not known yet (input on
    stdin, or a directory still being counted)."""

    total: int | None
    succeeded: int
    failed: int
    skipped: int  # their output was already there (a resumed job)
    running: int  # units sent and not finished
    elapsed: float
    rate: float  # units finished per second, recently
    finished: bool

    @property
    def done(self) -> int:
        """Units finished, one way or another."""
        return self.succeeded + self.failed + self.skipped

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent rate; None if unknown."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)

    def line(self) -> str:
        """One line for a log: ``1200/10000 done (3 failed, 0 skipped), 812.4 units/s, ...``."""
        total = "?" if self.total is None else str(self.total)
        eta = self.eta
        left = "" if eta is None or self.finished else f", ETA {_duration(eta)}"
        return (
            f"{self.done}/{total} done ({self.failed} failed, {self.skipped} skipped), "
            f"{self.rate:.1f} units/s, {_duration(self.elapsed)} elapsed{left}"
        )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True, slots=True)
class JobSummary:
    """How a job ended. ``ok`` only when every unit has its output."""

    output: str
    total: int
    succeeded: int
    failed: int
    skipped: int
    not_run: int  # cancelled, or every server was lost
    seconds: float
    failures: tuple[UnitResult, ...] = ()  # the first ``FAILURES_KEPT``; all in _failed.jsonl
    failed_list: str | None = None  # the path of _failed.jsonl, if any unit failed
    error: str | None = None  # why the job stopped early, if it did
    cancelled: bool = False
    # Counters for benchmarks and tests: batches sent, module sends, units retried, clusters
    # started to replace lost ones. Read-only.
    extra: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.not_run == 0 and self.error is None

    @property
    def exit_code(self) -> int:
        """0 when every unit has its output, 1 otherwise (the command's exit code)."""
        return 0 if self.ok else 1

    @property
    def rate(self) -> float:
        ran = self.succeeded + self.failed
        return ran / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "output": self.output,
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "not_run": self.not_run,
            "seconds": round(self.seconds, 3),
            "units_per_second": round(self.rate, 1),
            "failed_list": self.failed_list,
            "failures": [f.to_json() for f in self.failures],
            "error": self.error,
            "cancelled": self.cancelled,
        }

    def report(self, limit: int = 10) -> str:
        """A few lines for a person: counts, then the first failures."""
        head = (
            f"{self.total} units: {self.succeeded} succeeded, {self.failed} failed, "
            f"{self.skipped} skipped (already done)"
        )
        if self.not_run:
            head += f", {self.not_run} not run"
        head += f", in {_duration(self.seconds)}"
        if self.succeeded + self.failed:
            head += f" ({self.rate:.1f} units/s)"
        lines = [head + "."]
        if self.error:
            lines.append(f"The job stopped: {self.error}")
        if self.cancelled:
            lines.append("The job was interrupted: run the same command again to finish it.")
        if self.failures:
            lines.append(f"Failed units (all of them, with details, in {self.failed_list}):")
            for failure in self.failures[:limit]:
                assert failure.error is not None
                lines.append(f"  {failure.name}: {failure.error.message}")
                detail = failure.error.detail.strip().splitlines()
                if detail and failure.error.kind in ("exit", "raised"):
                    lines.append(f"    {detail[-1][:200]}")
            if self.failed > limit:
                lines.append(f"  ... and {self.failed - limit} more")
        elif self.not_run and not self.cancelled:
            lines.append("Run the same command again to finish the units not run.")
        return "\n".join(lines)
