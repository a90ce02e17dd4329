"""Ray, imported on first use, with sperse's defaults (below the Ray backend and its
store, which both need it)."""

from __future__ import annotations

import os
import sys
from types import ModuleType

__all__ = ["import_ray"]


def import_ray() -> ModuleType:
    """``ray``, imported on first use.

    Before the first import: no usage statistics are sent and Ray's node addresses stay as
    given (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), unless the environment says otherwise.
    """
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    return ray
