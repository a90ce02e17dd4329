"""A keyed service: a per-user counter answering requests from concurrent client threads.

    python examples/flows/service.py [--clients C] [--requests R] [--users U] [--reshape]
        [--servers N | --connect URL] [--json]

The service ``counter`` reads requests ``{"user": u, "tag": t}``, keys them by user, counts
each user's requests in a ``scan`` (keyed state across requests, one replica per server),
and answers ``{"user": u, "tag": t, "n": n}``: the request's own tag back, and how many
requests of that user it has seen so far. C client threads each send R requests (users in
turn over U users) and check every answer against the tag its request carries. Prints a
summary, or with ``--json``: ``{"requests": ..., "answered": ..., "wrong": [...],
"counts": {user: last n}, "expected": {user: requests sent}, "seconds": ...}``; the run
fails (exit code 1) if an answer is wrong or a count is not the number of requests sent. With ``--reshape``, while the clients send, the counting operator is scaled
to 3 replicas, then to 1, then moved to the last server by name (``Service.scale`` and
``Service.move``: its keyed state goes with it; ``"reshaped"`` lists what was done).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any

import flowcli

import sperse


def count(seen: int, request: dict[str, Any]) -> tuple[int, tuple[dict[str, Any], int]]:
    """A user's state is how many requests it has sent: one more, passed on with the
    request."""
    return seen + 1, (request, seen + 1)


def answer(pair: tuple[str, tuple[dict[str, Any], int]]) -> dict[str, Any]:
    user, (request, n) = pair
    return {"user": user, "tag": request["tag"], "n": n}


def serve(client: sperse.Cluster) -> sperse.Service:
    flow = sperse.Flow("counter", cluster=client)
    (
        flow.requests()
        .key_by(lambda r: r["user"], name="by_user")
        .scan(0, count, name="count")
        .on(replicas="per_server")
        .map(answer, name="answer")
        .respond()
    )
    return flow.serve("counter")


def reshape(client: sperse.Cluster, svc: sperse.Service, done: list[str]) -> None:
    """Scale the counter to 3 replicas and back to 1, then move it to the last server."""
    svc.scale("count", replicas=3)
    done.append("scale count to 3")
    svc.scale("count", replicas=1)
    done.append("scale count to 1")
    servers = sorted(s.name for s in client.servers())
    if servers:
        svc.move("count", on=f"@{servers[-1]}")
        done.append(f"move count to @{servers[-1]}")


def run(
    client: sperse.Cluster, clients: int, requests: int, users: int, reshaping: bool = False
) -> dict[str, Any]:
    svc = serve(client)
    flowcli.progress(f"service 'counter' is up; {clients} clients x {requests} requests")
    wrong: list[str] = []
    counts: dict[str, int] = {}
    lock = threading.Lock()
    sent: Counter[str] = Counter()

    def one_client(c: int) -> None:
        pendings = []
        for i in range(requests):
            user = f"user-{(c + i) % users}"
            tag = f"{c}:{i}"
            pendings.append((user, tag, svc.request({"user": user, "tag": tag}, timeout=600)))
        with lock:
            sent.update(user for user, _, _ in pendings)
        for user, tag, pending in pendings:
            got = pending.result(flowcli.WAIT)
            with lock:
                if got["tag"] != tag or got["user"] != user:
                    wrong.append(f"request {tag} of {user} was answered {got}")
                counts[user] = max(counts.get(user, 0), got["n"])

    started = time.perf_counter()
    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
    reshaped: list[str] = []
    if reshaping:  # while the clients send
        threads.append(threading.Thread(target=reshape, args=(client, svc, reshaped)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    answered = svc.answered
    svc.stop()
    result = {
        "requests": clients * requests,
        "answered": answered,
        "wrong": wrong,
        "counts": dict(sorted(counts.items())),
        "expected": dict(sorted(sent.items())),
        "seconds": round(seconds, 3),
        **({"reshaped": reshaped} if reshaping else {}),
    }
    if reshaping and len(reshaped) < 2:
        raise flowcli.ExampleError(f"the reshape did not finish: {reshaped}")
    if wrong or result["counts"] != result["expected"] or answered != clients * requests:
        raise flowcli.ExampleError(f"wrong answers: {result}")
    return result


def show(result: dict[str, Any]) -> str:
    rate = result["answered"] / max(result["seconds"], 1e-9)
    return (
        f"{result['answered']} requests answered in {result['seconds']:.2f} s ({rate:,.0f}/s), "
        f"each checked against its own tag; per-user counts {result['counts']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = flowcli.parser(__doc__.splitlines()[0])
    p.add_argument("--clients", type=flowcli.positive_int, default=8, metavar="C")
    p.add_argument("--requests", type=flowcli.positive_int, default=200, metavar="R")
    p.add_argument("--users", type=flowcli.positive_int, default=5, metavar="U")
    p.add_argument("--reshape", action="store_true", help="scale and move the counter meanwhile")
    args = flowcli.parse(p, argv)
    return flowcli.main(
        args,
        lambda client: run(client, args.clients, args.requests, args.users, args.reshape),
        show,
    )


if __name__ == "__main__":
    sys.exit(main())
