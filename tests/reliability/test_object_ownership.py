"""Issue 17, item 10: an unnamed remote object's id is a capability, and its client owns it.

Client B listed, called and closed client A's unnamed object. Now a listing shows a client
the named objects and its own; B can call A's object only with its id (which A must have
given it), and cannot close it. A named object is shared by its name: any client lists it,
calls it and may close it. The server's counts still count every object.
"""

from __future__ import annotations

import pytest

import sperse

WAIT = 60.0  # a deadline, never a delay


class Counter:
    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count


def listed(cluster: sperse.Cluster) -> set[str]:
    return {o.object_id for o in cluster.backend.objects()}


@pytest.mark.parametrize("cluster", ["server"], indirect=True)
def test_another_client_neither_lists_nor_closes_an_unnamed_object(
    cluster: sperse.Cluster, second_client: sperse.Cluster
) -> None:
    mine = sperse.remote(Counter)().ready(WAIT)  # client A's (the current cluster)
    shared = sperse.remote(Counter)(name="shared").ready(WAIT)
    assert {mine.object_id, shared.object_id} <= listed(cluster)
    assert shared.object_id in listed(second_client)
    assert mine.object_id not in listed(second_client), "B lists A's unnamed object"
    assert second_client.backend.objects("shared")[0].object_id == shared.object_id
    assert second_client.stats()["remote_objects"] >= 2  # the server's count: every object

    # B, given the id by A, may call the object, but not close it.
    theirs = sperse.ObjectProxy(mine.object_id, "Counter", ("incr",), cluster=second_client)
    assert theirs.incr().result(WAIT) == 1
    with pytest.raises(sperse.RemoteError, match="only that client may close it") as refused:
        theirs.close().result(WAIT)
    assert refused.value.type_name == "PermissionError"
    assert mine.incr().result(WAIT) == 2  # it lives on
    assert mine.object_id in listed(cluster)

    # A named object: B finds it by name, calls it, and may close it.
    with second_client:
        found = sperse.get_object("shared")
        assert found.incr().result(WAIT) == 1
        assert found.close().result(WAIT) is None
    with pytest.raises(sperse.ObjectLost, match="closed"):
        shared.incr().result(WAIT)

    # A closes its own.
    assert mine.close().result(WAIT) is None
    assert mine.object_id not in listed(cluster)
