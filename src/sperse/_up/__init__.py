"""``sperse up``: a coordinator and N servers on this machine, as child processes, in one
command; and ``LocalCluster``, the same thing as a context manager.

Modules: :mod:`~sperse._up.cluster` (``LocalCluster``: the children, started and stopped by
their pids), :mod:`~sperse._up.options` (the command's options and TOML file, into a plan),
:mod:`~sperse._up.record` (``cluster.json``, which ``sperse status`` and ``--up`` read) and
:mod:`~sperse._up.command` (``main``). Each states its invariants.
"""

from __future__ import annotations

from sperse._up.cluster import ClusterProcess, LocalCluster, ServerSpec
from sperse._up.command import main
from sperse._up.options import build_parser
from sperse._up.record import ClusterRecord, record_dir, recorded_cluster

__all__ = [
    "ClusterProcess",
    "ClusterRecord",
    "LocalCluster",
    "ServerSpec",
    "build_parser",
    "main",
    "record_dir",
    "recorded_cluster",
]
