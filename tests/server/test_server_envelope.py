"""A worker's failure crosses to the server as the ErrorInfo it was made from."""

from __future__ import annotations

import pickle
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sperse._core import ErrorInfo
from sperse._core.events import ErrorKind
from sperse._server.envelope import pack_failure, unpack_result

errors = st.builds(
    ErrorInfo,
    st.sampled_from(get_args(ErrorKind)),
    st.text(),
    st.text(),
    st.text(),
)


@given(errors)
def test_a_failure_round_trips_as_the_same_error(error: ErrorInfo) -> None:
    assert unpack_result(pack_failure(error)) == error


def test_a_kind_this_version_does_not_know_is_internal() -> None:
    payload = pickle.dumps(("failed", "from_the_future", "E", "m", "tb"), protocol=5)
    assert unpack_result(payload) == ErrorInfo("internal", "E", "m", "tb")


@pytest.mark.parametrize(
    "result",
    [("failed", "raised", "E", "m"), ("failed",), ("nope", "raised", "E", "m", "")],
)
def test_a_malformed_failure_is_refused(result: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="malformed task result"):
        unpack_result(pickle.dumps(result, protocol=5))
