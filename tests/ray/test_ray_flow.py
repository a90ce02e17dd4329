"""A flow on Ray: its replicas are Ray actors (one per stage replica) that pass batches to
each other directly, and the result is word count's (docs/flows.md, "On servers")."""

from __future__ import annotations

import collections

import pytest

import sperse
from sperse._flow.api import OnServers

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.ray

WAIT = 120.0  # a deadline, never a delay


def test_word_count_on_ray_actors(ray_cluster: sperse.Cluster) -> None:
    lines = [f"a b {i % 7} c" for i in range(3000)]
    f = sperse.Flow("wc", cluster=ray_cluster)
    out = (
        f.source(lines)
        .flat_map(str.split)
        .on(replicas=2)
        .key_by(lambda w: w)
        .fold(0, lambda n, w: n + 1)
        .on(replicas=2)
        .collect()
    )
    run = f.run()
    assert isinstance(run._handle._config, OnServers)  # type: ignore[attr-defined]
    assert out.result(WAIT) == dict(collections.Counter(w for line in lines for w in line.split()))
    assert run.result(WAIT).state == "done"
    assert len(run.hosts()) == 6
