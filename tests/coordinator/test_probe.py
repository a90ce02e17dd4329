"""``connect(url)`` asks what answers at ``url`` (``is_coordinator``) before it picks a
backend: a coordinator being restarted must not be taken for a server."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from coordinator_helpers import CoordinatorThread

from sperse._backends.multi import is_coordinator


def test_a_coordinator_that_starts_while_asked_is_taken_for_one(
    make_coordinator: Callable[..., CoordinatorThread],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    answers: list[bool] = []
    asked = threading.Thread(
        target=lambda: answers.append(is_coordinator(f"sperse://127.0.0.1:{port}", timeout=20))
    )
    asked.start()  # nothing answers yet: the first call fails at once
    make_coordinator(port=port)
    asked.join(30)
    assert answers == [True]


def test_nothing_answering_is_not_a_coordinator() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not is_coordinator(f"sperse://127.0.0.1:{port}", timeout=1)
