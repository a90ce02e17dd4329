"""What an open tasks page costs the browser in steady state, with no cluster: CPU of
headless Chromium while a dashboard's hub is fed a steady rate of trivial tasks.

``bench/dashboard.py`` measures an open page against a real cluster, whose throughput on a
shared 2-core machine varies run to run by more than the page costs. Here nothing competes
with the page but the feeder: a ``Hub`` served by ``DashboardThread`` in this process, fed
``--rate`` tasks a second (each queued, started on one of two workers and done, applied in
batches every 10 ms as a coordinator applies its servers' reports), and the tasks page open
in the system's Chromium (Playwright). Once the page is live and the feed has run for 2 s,
the browser's CPU (every Chromium process this script started, from ``/proc``) is read over
``--seconds``: the share of a core, and per task.

Run: ``.venv/bin/python bench/dashboard_page.py [--rate 8000] [--seconds 10] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dashboard import browser_cpu, browser_spent, chromium
from sperse._dashboard.hub import Hub
from sperse._dashboard.serve import DashboardConfig, DashboardThread

WARM_UP = 2.0  # seconds of feed before the measure: the page has started and caught up


def feed(hub: Hub, rate: int, stop: threading.Event) -> None:
    """``rate`` trivial tasks a second into ``hub`` until ``stop``."""
    sent = 0
    start = time.time()
    while not stop.wait(0.01):
        due = int((time.time() - start) * rate)
        now = time.time()
        with hub.task_batch() as tasks:
            for i in range(sent, due):
                task = f"s1/bench.s1/t{i}"
                tasks.submitted(task, "echo", now, server="s1", client="bench")
                tasks.started(task, "s1", now, 1000 + i % 2)
                tasks.ended(task, "s1", now)
        sent = due


def measure(rate: int, seconds: float) -> float:
    """The browser's CPU seconds per second while the page is open and fed ``rate``."""
    from playwright.sync_api import sync_playwright

    hub = Hub("bench")
    hub.has_tasks = True
    hub.servers([{"name": "s1", "workers": 2}])
    served = DashboardThread(hub, DashboardConfig(token="bench"))
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(hub, rate, stop), name="feeder")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium(), headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(served.url.replace("/?token=", "/tasks?token="))
                page.wait_for_selector("#live.on")
                feeder.start()
                time.sleep(WARM_UP)
                before, t0 = browser_cpu(), time.monotonic()
                time.sleep(seconds)
                spent = browser_spent(before, browser_cpu())
                return spent / (time.monotonic() - t0)
            finally:
                browser.close()
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join()
        served.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, action="append", help="tasks/s (repeatable)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores", flush=True)
    for _ in range(args.repeat):
        for rate in args.rate or [8000, 4000]:
            share = measure(rate, args.seconds)
            print(
                f"tasks page open, {rate:,} tasks/s: browser {100 * share:.1f} % of a core, "
                f"{1e6 * share / rate:.1f} µs per task",
                flush=True,
            )


if __name__ == "__main__":
    main()
