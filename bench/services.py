"""Services: a request's round trip and requests/s through a 3-operator keyed service, side by
side with Ray Serve (a chain of 3 deployments, called through handles) and a chain of 3 Ray
actors, on this machine.

The work is the same everywhere: key a request by its user, count that user's requests (the
state, one counter per user), and answer ``(user, tag, n)``. Sperse: ``f.requests()
.key_by(user).scan(count).map(answer).respond()`` served on a local cluster of 2 servers (a
coordinator and 2 ``sperse server`` processes, 2 workers each). Ray: a local Ray of 4 CPUs
on 127.0.0.1; Serve's ingress deployment keys, calls the counter deployment, then the
answer deployment; the actor chain passes each request's ObjectRef from actor to actor.

- round trip: ``--calls`` (1000) sequential requests after a warm-up: p50 and p99 in ms;
- throughput: ``--clients`` (100) threads, each sending ``--per-client`` (50) requests one
  after another: requests/s.

Targets (issue 15): round trip p50 <= 0.3x Ray Serve's, throughput >= 3x Ray Serve's.

Then (Sperse only; ``--no-reconfigure`` skips it) the same service reconfigured under load,
on a new cluster of 2 servers: ``--load-clients`` (8) threads each send requests one after
another (users ``u0``..``u15``); after a warm-up, the quiet p50/p99 over 3 s (1 s with
``--quick``), then ``svc.scale("count", replicas=3)``, back to 1, ``svc.move("count",
on="@<the other server>")`` and ``svc.update("answer", fn)``, one after the other with 200
answers between: for each, the time it took to return and the p50/p99 of the requests in
flight at any time while it ran. It checks every answer against its request, that each
user's answers counted 1..n once each (none lost or counted twice), that each user's
counter then ends at the requests sent, that every request was answered once, and that
requests sent after ``update`` returned get the new function; it prints what failed.

Run: ``.venv/bin/python bench/services.py [--quick] [--no-ray] [--no-reconfigure]``. Ray Serve needs
``pip install 'ray[serve]'`` (``--no-ray`` or its absence skips it). Prints a table; never
fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

perf = time.perf_counter
Asks = tuple[Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], Any] | None]


def answer_of(pair: tuple[str, tuple[dict[str, Any], int]]) -> tuple[str, str, int]:
    user, (request, n) = pair
    return (user, request["tag"], n)


def count(seen: int, request: dict[str, Any]) -> tuple[int, tuple[dict[str, Any], int]]:
    return seen + 1, (request, seen + 1)


def request_of(i: int) -> dict[str, Any]:
    return {"user": f"u{i % 16}", "tag": str(i)}


def measure(
    ask: Callable[[dict[str, Any]], Any],
    calls: int,
    clients: int,
    per: int,
    ask_async: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, float]:
    """Round trips with ``ask``; throughput with ``clients`` threads calling ``ask``, or
    (``ask_async``, a coroutine function: Ray Serve's handles are meant to be awaited)
    ``clients`` coroutines on one event loop."""
    for i in range(min(100, calls)):  # warm-up
        ask(request_of(i))
    times = []
    for i in range(calls):
        started = perf()
        got = ask(request_of(i))
        times.append(perf() - started)
        assert got[1] == str(i), got
    times.sort()
    errors: list[BaseException] = []

    def client(c: int) -> None:
        try:
            for i in range(per):
                n = c * per + i
                assert ask(request_of(n))[1] == str(n)
        except BaseException as exc:
            errors.append(exc)

    started = perf()
    if ask_async is not None:

        async def async_client(c: int) -> None:
            for i in range(per):
                n = c * per + i
                assert (await ask_async(request_of(n)))[1] == str(n)

        async def all_clients() -> None:
            await asyncio.gather(*(async_client(c) for c in range(clients)))

        asyncio.run(all_clients())
    else:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = perf() - started
    if errors:
        raise errors[0]
    return {
        "p50": 1e3 * times[len(times) // 2],
        "p99": 1e3 * times[min(len(times) - 1, int(len(times) * 0.99))],
        "rps": clients * per / elapsed,
    }


# ---- the systems ---------------------------------------------------------------------------


@contextlib.contextmanager
def keyed_service(name: str) -> Iterator[Any]:
    """The 3-operator keyed service, served as ``name`` on a new cluster of 2 servers."""
    import sperse
    from sperse._up import LocalCluster

    with LocalCluster(2) as up:
        client = sperse.connect(up.url, token=up.token)
        try:
            flow = sperse.Flow(name, cluster=client)
            (
                flow.requests()
                .key_by(lambda r: r["user"], name="by_user")
                .scan(0, count, name="count")
                .map(answer_of, name="answer")
                .respond()
            )
            svc = flow.serve(name)
            try:
                yield svc
            finally:
                svc.stop()
        finally:
            client.close()


@contextlib.contextmanager
def sperse_service() -> Iterator[Asks]:
    with keyed_service("bench") as svc:
        yield (lambda r: svc.request(r).result(60)), None


@contextlib.contextmanager
def ray_started() -> Iterator[Any]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="ERROR"
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_serve_chain() -> Iterator[Asks]:
    with ray_started():
        from ray import serve

        @serve.deployment(max_ongoing_requests=1000)  # never queued at the router
        class Counter:
            def __init__(self) -> None:
                self.seen: dict[str, int] = {}

            def __call__(self, user: str, request: dict[str, Any]) -> Any:
                n = self.seen.get(user, 0) + 1
                self.seen[user] = n
                return user, (request, n)

        @serve.deployment(max_ongoing_requests=1000)  # never queued at the router
        class Answer:
            def __call__(self, pair: Any) -> Any:
                return answer_of(pair)

        @serve.deployment(max_ongoing_requests=1000)  # never queued at the router
        class Ingress:
            def __init__(self, counter: Any, answer: Any) -> None:
                self.counter, self.answer = counter, answer

            async def __call__(self, request: dict[str, Any]) -> Any:
                pair = await self.counter.remote(request["user"], request)
                return await self.answer.remote(pair)

        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        handle = serve.run(Ingress.bind(Counter.bind(), Answer.bind()), name="bench")
        try:

            async def ask_async(r: dict[str, Any]) -> Any:
                return await handle.remote(r)

            yield (lambda r: handle.remote(r).result()), ask_async
        finally:
            serve.shutdown()


@contextlib.contextmanager
def ray_actor_chain() -> Iterator[Asks]:
    with ray_started() as ray:

        @ray.remote
        class By:
            def key(self, request: dict[str, Any]) -> Any:
                return request["user"], request

        @ray.remote
        class Count:
            def __init__(self) -> None:
                self.seen: dict[str, int] = {}

            def count(self, keyed: Any) -> Any:
                user, request = keyed
                n = self.seen.get(user, 0) + 1
                self.seen[user] = n
                return user, (request, n)

        @ray.remote
        class Answer:
            def answer(self, pair: Any) -> Any:
                return answer_of(pair)

        by, counter, answer = By.remote(), Count.remote(), Answer.remote()
        yield (
            (lambda r: ray.get(answer.answer.remote(counter.count.remote(by.key.remote(r))))),
            None,
        )


# ---- reconfiguring under load --------------------------------------------------------------


def answer_v2(pair: tuple[str, tuple[dict[str, Any], int]]) -> tuple[str, str, int, int]:
    user, (request, n) = pair
    return (user, request["tag"], n, 2)


class Load:
    """``clients`` threads, each sending requests one after another (its own tags, users
    ``u0``..``u15`` in turn) and checking every answer against the request it carries,
    until stopped. Keeps each request's start and end (for the p50/p99 of a window) and
    every ``n`` each user was answered with (a per-user counter answers 1, 2, ... once
    each: a request lost or counted twice shows as a gap or a repeat)."""

    def __init__(self, svc: Any, clients: int) -> None:
        self.svc = svc
        self.times: list[tuple[float, float]] = []
        self.wrong: list[str] = []
        self.sent: dict[str, int] = {}
        self.seen: dict[str, list[int]] = {}
        self.v2_after: float | None = None  # update returned: later requests get answer_v2
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,)) for c in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _client(self, c: int) -> None:
        i = 0
        while not self._stop.is_set() and len(self.wrong) < 10:
            request = {"user": f"u{i % 16}", "tag": f"{c}:{i}"}
            started = perf()
            try:
                got = self.svc.request(request).result(60)
            except Exception as exc:
                with self._lock:
                    self.wrong.append(f"request {request} failed: {exc!r}")
                return
            ended = perf()
            with self._lock:
                self.times.append((started, ended))
                self.sent[request["user"]] = self.sent.get(request["user"], 0) + 1
                self.seen.setdefault(got[0], []).append(got[2])
                if got[0] != request["user"] or got[1] != request["tag"]:
                    self.wrong.append(f"request {request} was answered {got}")
                v2 = self.v2_after
                if v2 is not None and started > v2 and len(got) != 4:
                    self.wrong.append(f"request {request}, sent after update, got {got}")
            i += 1

    def window(self, start: float, end: float) -> dict[str, float]:
        """Requests in flight at any time in [start, end]: how many, p50 and p99 in ms."""
        with self._lock:
            took = sorted(e - s for s, e in self.times if s < end and e > start)
        if not took:
            return {"n": 0, "p50": float("nan"), "p99": float("nan")}
        return {
            "n": len(took),
            "p50": 1e3 * took[len(took) // 2],
            "p99": 1e3 * took[min(len(took) - 1, int(len(took) * 0.99))],
        }

    def answered(self) -> int:
        with self._lock:
            return len(self.times)

    def settle(self, more: int) -> None:
        """Until ``more`` further requests were answered (or 60 s, or a client failed)."""
        goal, deadline = self.answered() + more, perf() + 60
        while self.answered() < goal and perf() < deadline and not self.wrong:
            self._stop.wait(0.05)


def reconfigure(clients: int, quiet: float) -> None:
    """The 3-operator keyed service on 2 servers under ``clients`` clients' load: the quiet
    p50/p99 over ``quiet`` seconds, then ``scale`` of the counting operator to 3 replicas and
    back to 1, ``move`` to the other server and ``update`` of the answering one, each timed,
    with the p50/p99 of the requests in flight meanwhile; then the checks."""
    print(
        f"\nreconfiguring under load: {clients} clients sending one request at a time "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    with keyed_service("bench-reshape") as svc:
        rows = _reconfigure(svc, clients, quiet)
    print(f"{'':<24}{'took ms':>10}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, took, r in rows:
        took_s = "" if took is None else f"{1e3 * took:.0f}"
        print(f"{name:<24}{took_s:>10}{r['n']:>10}{r['p50']:>10.2f}{r['p99']:>10.2f}")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")


def _reconfigure(svc: Any, clients: int, quiet: float) -> list[tuple[str, Any, dict[str, float]]]:
    def servers_of(name: str) -> list[str]:
        hosts = svc._run.hosts()
        return sorted(h["server"] for h in hosts if name in h["operators"].split(" -> "))

    spans: list[tuple[str, float, float]] = []  # what was done, from when to when
    with Load(svc, clients) as load:
        load.settle(200)  # warm
        started = perf()
        load._stop.wait(quiet)
        spans.append(("quiet", started, perf()))
        steps: list[tuple[str, Callable[[], None]]] = [
            ("scale count 1 -> 3", lambda: svc.scale("count", replicas=3)),
            ("scale count 3 -> 1", lambda: svc.scale("count", replicas=1)),
        ]
        for name, step in steps:
            t0 = perf()
            step()
            spans.append((name, t0, perf()))
            load.settle(200)
        [was] = servers_of("count")
        other = next(s for s in ("server-1", "server-2") if s != was)
        t0 = perf()
        svc.move("count", on=f"@{other}")
        spans.append((f"move count -> {other}", t0, perf()))
        moved = servers_of("count")
        load.settle(200)
        t0 = perf()
        svc.update("answer", answer_v2)
        load.v2_after = t1 = perf()
        spans.append(("update answer", t0, t1))
        load.settle(200)  # and the requests in flight at the end of each span are answered
    rows = [
        (name, None if name == "quiet" else t1 - t0, load.window(t0, t1)) for name, t0, t1 in spans
    ]
    # every user's counter, once more: it ends at the requests sent with that user
    finals = {u: svc.request({"user": u, "tag": "last"}).result(60)[2] for u in load.sent}
    lost = {
        u: (finals[u], n + 1)
        for u, n in load.sent.items()
        if finals[u] != n + 1 or sorted(load.seen.get(u, [])) != list(range(1, n + 1))
    }
    total = sum(load.sent.values())
    print(
        f"  {total:,} requests from {clients} clients; answered {svc.answered - len(finals):,}; "
        f"count moved to {moved}"
    )
    if load.wrong or lost or svc.answered != svc.sent or moved != [other]:
        print(
            f"  WRONG: {load.wrong[:5]} counters (got, want) {lost} sent {svc.sent} answered "
            f"{svc.answered}"
        )
    else:
        print(
            "  checked: every answer matches its request; none lost or answered twice (each "
            "user's answers counted 1..n once, its counter ends at n); after update, the new "
            "function's answers"
        )
    return rows


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-client", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="small numbers, a smoke run")
    parser.add_argument("--no-ray", action="store_true", help="Sperse only")
    parser.add_argument(
        "--load-clients", type=int, default=8, help="clients sending while it is reconfigured"
    )
    parser.add_argument(
        "--no-reconfigure", action="store_true", help="skip scale/move/update under load"
    )
    args = parser.parse_args()
    quiet = 3.0
    if args.quick:
        args.calls, args.clients, args.per_client, quiet = 200, 20, 10, 1.0
    systems: list[tuple[str, Callable[[], Any]]] = [("Sperse service", sperse_service)]
    if not args.no_ray:
        systems += [("Ray Serve chain", ray_serve_chain), ("Ray actor chain", ray_actor_chain)]
    results: dict[str, dict[str, float] | str] = {}
    for name, system in systems:
        print(f"{name}...", flush=True)
        try:
            with system() as (ask, ask_async):
                results[name] = measure(ask, args.calls, args.clients, args.per_client, ask_async)
        except ImportError as exc:
            results[name] = f"absent ({exc.name or exc})"
        print(f"  {results[name]}", flush=True)
    print()
    print(f"{'system':<18}{'p50 ms':>10}{'p99 ms':>10}{'requests/s':>14}")
    for name, r in results.items():
        if isinstance(r, str):
            print(f"{name:<18}{r}")
        else:
            print(f"{name:<18}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['rps']:>14,.0f}")
    ours, serve_ = results.get("Sperse service"), results.get("Ray Serve chain")
    if isinstance(ours, dict) and isinstance(serve_, dict):
        p50 = ours["p50"] / serve_["p50"]
        rps = ours["rps"] / serve_["rps"]
        print(
            f"\nround trip p50 <= 0.3x Ray Serve's: {p50:.2f}x  {'meets' if p50 <= 0.3 else 'misses'}"
        )
        print(
            f"throughput >= 3x Ray Serve's:       {rps:.2f}x  {'meets' if rps >= 3 else 'misses'}"
        )
    actors = results.get("Ray actor chain")
    if isinstance(ours, dict) and isinstance(actors, dict):
        print(
            f"against the Ray actor chain: p50 {ours['p50'] / actors['p50']:.2f}x, "
            f"throughput {ours['rps'] / actors['rps']:.2f}x"
        )
    if not args.no_reconfigure:
        reconfigure(args.load_clients, quiet)


if __name__ == "__main__":
    main()
