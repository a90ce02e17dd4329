"""Chaos, briefly: ``bench/chaos.py`` runs a coordinator and three servers under a mixed
workload while their parts are killed at random (``make soak`` runs it for ten minutes).
Every result reported must be correct or say what was lost; nothing may stay pending;
nothing of the run may be left once it is stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
SECONDS = float(os.environ.get("SPERSE_CHAOS_SECONDS", "30"))


def test_a_cluster_under_chaos_loses_nothing_and_leaves_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(CHAOS), "--seconds", str(SECONDS), "--seed", "7", "--json"],
        capture_output=True,
        text=True,
        timeout=SECONDS + 600,
    )
    assert run.stdout, run.stderr[-3000:]
    report = json.loads(run.stdout)
    detail = f"{json.dumps(report, indent=1)}\n{run.stderr[-3000:]}"
    assert report["wrong"] == [], detail
    assert report["lost"] == 0, detail
    assert report["left over"] == [], detail
    assert sum(report["kills"].values()) > 0 and report["checked"]["correct"] > 0, detail
    assert run.returncode == 0, detail
