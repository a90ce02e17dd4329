"""Which pool a submit goes to: consecutive submits to one pool are handed over together."""

from __future__ import annotations

import pytest

from sperse._server.actions import Action, Cancel, Submit, SubmitToObject, Sweep, pool_of


@pytest.mark.parametrize(
    ("action", "pool"),
    [
        (Submit("s/1", b""), ("tasks",)),
        (Submit("s/2", b"", ("numpy==2.0",)), ("tasks", "numpy==2.0")),
        (SubmitToObject("o1", "s/3", b""), ("object", "o1", "")),
        (SubmitToObject("o1", "s/4", b"", front=True), ("object", "o1", "front")),
        (SubmitToObject("o2", "s/5", b""), ("object", "o2", "")),
        (Cancel("s/1"), None),
        (Sweep("x-"), None),
    ],
)
def test_pool_of(action: Action, pool: tuple[str, ...] | None) -> None:
    assert pool_of(action) == pool
