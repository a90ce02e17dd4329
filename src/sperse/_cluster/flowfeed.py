"""Where a client's dashboard finds this process's flow runs: ``sperse._flow`` (a layer
above this one) registers its ``runs()`` and its snapshot function here when it is imported;
before that there is no run to show."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["register", "source"]

# (runs: this process's runs, oldest first; snapshot(run, key): a run as JSON), or None.
source: tuple[Callable[[], list[Any]], Callable[[Any, str], dict[str, Any]]] | None = None


def register(runs: Callable[[], list[Any]], snapshot: Callable[[Any, str], dict[str, Any]]) -> None:
    global source
    source = (runs, snapshot)
