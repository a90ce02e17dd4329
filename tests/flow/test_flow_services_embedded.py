"""A service on the embedded server (``sperse.connect(workers=2)``), in a module of its own:
``connect`` replaces (and closes) the default cluster, which other modules' fixtures hold."""

from __future__ import annotations

from test_flow_services_servers import WAIT, counter

import sperse


def test_a_service_on_the_embedded_server() -> None:
    cluster = sperse.connect(workers=2)
    try:
        with cluster:
            svc = counter(cluster, "embedded", replicas=1)
            pendings = [svc.request({"user": "a", "x": i}) for i in range(50)]
            assert [p.result(WAIT)["n"] for p in pendings] == list(range(1, 51))
            assert sperse.service("embedded") is svc
            svc.stop()
    finally:
        cluster.close()
