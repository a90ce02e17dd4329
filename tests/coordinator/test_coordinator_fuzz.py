"""The coordinator's protocol under random requests (issue 17: fuzz "the coordinator's
protocol"): a request without the token changes nothing and is ``UNAUTHENTICATED``; any
request with it is answered (accepted or refused with a status), and the coordinator keeps
serving. ``SPERSE_FUZZ_EXAMPLES`` sets how many each test tries (``make soak``: more).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import pytest
from coordinator_helpers import TOKEN, CoordinatorThread, member
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sperse._wire import pb

FUZZ = settings(
    max_examples=int(os.environ.get("SPERSE_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TIMEOUT = 20.0


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[CoordinatorThread]:
    thread = CoordinatorThread()
    try:
        yield thread
    finally:
        thread.close()


text = st.text(max_size=40)
numbers = st.floats(allow_nan=True, allow_infinity=True)
u64 = st.integers(0, 2**64 - 1)
members = st.builds(
    pb.Member,
    name=text,
    address=st.sampled_from(["127.0.0.1:1", "h:0", "::", ""]) | text,
    tags=st.lists(text, max_size=4),
    resources=st.dictionaries(text, numbers, max_size=3),
    workers=st.integers(0, 2**32 - 1),
    busy=st.integers(0, 2**32 - 1),
    queued=u64,
    objects=u64,
    joined=numbers,
    last_heartbeat=numbers,
)
notes = st.builds(
    pb.TaskNote,
    task=text,
    kind=st.sampled_from(["started", "done", "failed", "output"]) | text,
    at=numbers,
    label=text,
    client=text,
    worker=st.integers(0, 2**32 - 1),
    text=text,
)
tokens = st.sampled_from(["", "wrong", TOKEN[:-1]]) | text


def requests(token: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, object]]:
    return st.one_of(
        st.tuples(st.just("Join"), st.builds(pb.JoinRequest, token=token, member=members)),
        st.tuples(
            st.just("Heartbeat"), st.builds(pb.HeartbeatRequest, token=token, member=members)
        ),
        st.tuples(st.just("Leave"), st.builds(pb.LeaveRequest, token=token, name=text)),
        st.tuples(
            st.just("ReportTasks"),
            st.builds(
                pb.TaskReport,
                token=token,
                server=text,
                notes=st.lists(notes, max_size=5),
                dropped=u64,
            ),
        ),
    )


def still_serves(coordinator: CoordinatorThread, name: str = "canary") -> None:
    m = member(name, "127.0.0.1:1")
    assert coordinator.join(m).heartbeat_interval > 0
    assert coordinator.heartbeat(m).known
    coordinator.leave(name)


@FUZZ
@given(sent=st.lists(requests(tokens.filter(lambda t: t != TOKEN)), max_size=6))
def test_without_the_token_nothing_changes(
    fuzzed: CoordinatorThread, sent: list[tuple[str, object]]
) -> None:
    before = fuzzed.names()
    for rpc, request in sent:
        with pytest.raises(grpc.RpcError) as refused:
            getattr(fuzzed.stub, rpc)(request, timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fuzzed.names() == before
    still_serves(fuzzed)


@FUZZ
@given(sent=st.lists(requests(st.just(TOKEN)), max_size=6))
def test_whatever_a_token_holder_sends_the_coordinator_answers_and_serves_on(
    fuzzed: CoordinatorThread, sent: list[tuple[str, object]]
) -> None:
    for rpc, request in sent:
        try:
            getattr(fuzzed.stub, rpc)(request, timeout=TIMEOUT)
        except grpc.RpcError as exc:  # refused with a status, never hung or crashed
            assert exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), exc
    still_serves(fuzzed)
    for name in fuzzed.names():  # what the sequence registered goes, for the next one
        fuzzed.leave(name)
