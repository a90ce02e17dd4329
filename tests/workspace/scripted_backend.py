"""``Scripted``: a backend whose events the test reports (from any thread), for the
workspace and cluster tests that drive ``sperse.Cluster`` event by event."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sperse._core import (
    BackendEvent,
    Done,
    EventSink,
    Failed,
    ObjectInfo,
    ServerInfo,
    TaskSpec,
)


class Scripted:
    """A backend whose events the test reports. ``busy``: tasks sent and not reported ended
    (or, with ``frees_at_cancel``, cancelled: as MemoryBackend, which replaces the thread)."""

    name = "scripted"

    def __init__(self, *, frees_at_cancel: bool = False) -> None:
        self.sent: list[TaskSpec] = []
        self.busy = 0
        self._frees_at_cancel = frees_at_cancel
        self._sink: EventSink | None = None

    def start(self, sink: EventSink) -> None:
        self._sink = sink

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        self.sent.extend(specs)
        self.busy += len(specs)

    def report(self, event: BackendEvent) -> None:
        """What the backend's I/O thread does: its own state first, then the event."""
        assert self._sink is not None
        if isinstance(event, Done | Failed):
            self.busy -= 1
        self._sink(event)

    def cancel(self, task_id: str) -> None:
        if self._frees_at_cancel:
            self.busy -= 1

    def release(self, object_ids: Iterable[str]) -> None:
        pass

    def servers(self) -> list[ServerInfo]:
        return [ServerInfo(self.name, workers=1, busy=self.busy)]

    def stats(self) -> dict[str, int]:
        return {}

    def objects(self, name: str = "") -> list[ObjectInfo]:
        return []

    def close(self) -> None:
        pass
