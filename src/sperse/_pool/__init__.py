"""A pool of worker processes that turns payload bytes into result bytes (see ``pool``)."""

from __future__ import annotations

from sperse._pool.pool import (
    PoolEvent,
    PoolStats,
    TaskDone,
    TaskFailed,
    TaskOutput,
    TaskStarted,
    WorkerPool,
)
from sperse._pool.worker import Runner

__all__ = [
    "PoolEvent",
    "PoolStats",
    "Runner",
    "TaskDone",
    "TaskFailed",
    "TaskOutput",
    "TaskStarted",
    "WorkerPool",
]
