"""The one map of gRPC's errors (``sperse._wire.errors``): every status code, one kind."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from sperse._wire.errors import GrpcErrorKind, GrpcFailure, classify

SRC = Path(__file__).resolve().parents[2] / "src" / "sperse"


@dataclass(frozen=True, slots=True)
class Case:
    code: grpc.StatusCode
    kind: GrpcErrorKind


CASES = [
    Case(grpc.StatusCode.UNAVAILABLE, GrpcErrorKind.UNREACHABLE),
    Case(grpc.StatusCode.DEADLINE_EXCEEDED, GrpcErrorKind.UNREACHABLE),
    Case(grpc.StatusCode.UNAUTHENTICATED, GrpcErrorKind.REFUSED_TOKEN),
    Case(grpc.StatusCode.UNIMPLEMENTED, GrpcErrorKind.WRONG_SERVICE),
    Case(grpc.StatusCode.RESOURCE_EXHAUSTED, GrpcErrorKind.TOO_LARGE),
    Case(grpc.StatusCode.ALREADY_EXISTS, GrpcErrorKind.EXISTS),
    Case(grpc.StatusCode.CANCELLED, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.UNKNOWN, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.INVALID_ARGUMENT, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.NOT_FOUND, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.PERMISSION_DENIED, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.FAILED_PRECONDITION, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.ABORTED, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.OUT_OF_RANGE, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.INTERNAL, GrpcErrorKind.OTHER),
    Case(grpc.StatusCode.DATA_LOSS, GrpcErrorKind.OTHER),
]


class SyncRpcError(grpc.RpcError):
    """What a sync call raises: a ``grpc.RpcError`` that is also a ``grpc.Call``."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


def test_every_error_code_is_in_the_table() -> None:
    assert {case.code for case in CASES} == set(grpc.StatusCode) - {grpc.StatusCode.OK}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.code.name)
def test_an_async_error_is_classified(case: Case) -> None:
    exc = grpc.aio.AioRpcError(case.code, details="what the peer said")
    assert classify(exc) == GrpcFailure(case.kind, case.code.name, "what the peer said")


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.code.name)
def test_a_sync_error_is_classified(case: Case) -> None:
    exc = SyncRpcError(case.code, "what the peer said")
    assert classify(exc) == GrpcFailure(case.kind, case.code.name, "what the peer said")


def test_no_details_are_empty() -> None:
    failure = classify(grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details=None))
    assert failure.details == ""
    assert str(failure) == "UNAVAILABLE: "


def test_a_failure_is_quoted_as_code_and_details() -> None:
    failure = classify(SyncRpcError(grpc.StatusCode.INTERNAL, "boom"))
    assert str(failure) == "INTERNAL: boom"


# The services set status codes on their replies: that is not translating an error.
SETS_STATUS = {"_server/service.py", "_coordinator/service.py"}


def test_only_the_map_compares_status_codes() -> None:
    """No module outside ``_wire`` reads a gRPC error's status code: they classify it."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC).as_posix()
        if where.startswith("_wire/"):
            continue
        text = path.read_text()
        if re.search(r"\.code\(\)", text) or (where not in SETS_STATUS and "StatusCode" in text):
            offenders.append(where)
    assert offenders == []
