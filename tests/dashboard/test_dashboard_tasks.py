"""The Tasks page of a client's dashboard (``sperse.connect(workers=1, dashboard=True)``) in
headless Chromium: a hidden tab closes its live feed (its host then works for no page) and
catches up when it shows again."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from dashboard_helpers import Watched

import sperse

pytestmark = pytest.mark.slow
DEADLINE = 30.0

_SHOWN = """hidden => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    document.dispatchEvent(new Event("visibilitychange"));
}"""


def _square(x: int) -> int:
    return x * x


def _until(cluster: sperse.Cluster, done: Callable[[], bool]) -> None:
    """Until ``done()``, with a deadline (the hub's count changes on the dashboard's thread)."""
    deadline = time.monotonic() + DEADLINE
    while not done():
        assert time.monotonic() < deadline, "not within the deadline"
        cluster.run_until(done, 0.2)


def test_a_hidden_tasks_page_closes_its_feed_and_catches_up_when_shown(
    open_page: Callable[[], Watched],
) -> None:
    from playwright.sync_api import expect

    cluster = sperse.connect(workers=1, dashboard=True)
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.close)
        assert cluster.dashboard is not None
        hub: Any = cluster.dashboard.hub
        watched = open_page()
        page = watched.page
        page.goto(cluster.dashboard.url.replace("/?token=", "/tasks?token="))
        expect(page.locator("#live")).to_have_text("live")
        _until(cluster, lambda: hub.viewers == 1)

        page.evaluate(_SHOWN, True)
        expect(page.locator("#live")).to_have_text("paused")
        _until(cluster, lambda: hub.viewers == 0)  # the host serves no feed now
        assert sperse.remote(_square)(7).result(DEADLINE) == 49
        expect(page.locator('.count[data-state="done"] b')).to_have_text("0")  # drew nothing

        page.evaluate(_SHOWN, False)
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator('.count[data-state="done"] b')).to_have_text("1")
        expect(page.locator("#tasks tr[data-task] .state")).to_have_text(["done"])
        page.locator("#tasks tr[data-task]").click()
        expect(page.locator("#detail")).to_contain_text("_square")
        assert watched.errors == []
