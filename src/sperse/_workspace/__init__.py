"""The reactive workspace: statements in, reactive cells out (DESIGN.md §2).

``Workspace`` is the one class front ends use; ``Cell`` and ``CellEvent`` are what they
are given back. The modules of this package, and how they fit, are described in
``workspace`` and ``core``.
"""

from __future__ import annotations

from sperse._workspace.cells import Cell, CellEvent
from sperse._workspace.workspace import Workspace

__all__ = ["Cell", "CellEvent", "Workspace"]
