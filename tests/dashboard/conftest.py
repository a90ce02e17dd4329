"""Fixtures for the dashboard's tests in a real browser: the system's Chromium (Debian's
``chromium`` package: ``make test`` installs it where missing), driven headless by
Playwright at its ``executable_path``; never a browser build Playwright would download.

Every page records its console errors and failed requests (a test asserts there are none)
and leaves a screenshot under ``test-artifacts/dashboard/`` (gitignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dashboard_helpers import Watched

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str:
    for name in (os.environ.get("SPERSE_CHROMIUM", ""), *CHROMIUM_NAMES):
        found = shutil.which(name) if name else None
        if found:
            return found
    pytest.fail(
        "no Chromium on this machine: `make test` installs Debian's package "
        "(apt-get install -y chromium), or set SPERSE_CHROMIUM to a Chromium binary"
    )


# Per module, not per session: Playwright's sync API keeps an event loop running on this
# thread while it is open, and later tests call asyncio.run() here (nbclient does).
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[], Watched]]:
    contexts: list[Any] = []

    def new() -> Watched:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        contexts.append(context)
        context.set_default_timeout(15_000)
        return Watched(context.new_page())

    try:
        yield new
    finally:
        for context in contexts:
            context.close()
