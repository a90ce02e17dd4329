"""Messages a user reads: reprs, counts, hints (issue: what a new user hits in the first hour)."""

from __future__ import annotations

import pytest

from sperse._backends.multi import _count
from sperse._exec.runner import short_repr
from sperse.errors import did_you_mean


class AnUnusuallyLongTypeName:
    pass


@pytest.mark.parametrize("limit", [40, 60, 80])
def test_a_cut_repr_never_ends_inside_a_type_name(limit: int) -> None:
    value = [1, 2, 3.5, "abcdefghijkl", AnUnusuallyLongTypeName(), AnUnusuallyLongTypeName()]
    text = short_repr(value, limit)
    assert len(text) <= limit and text.endswith("…")
    name = f"{__name__}.AnUnusuallyLongTypeName"
    # Whatever part of the type's path is shown, it is shown whole up to a dot.
    shown = text.rstrip("…").rsplit("<", 1)[-1].split(" ")[0]
    assert not shown or (name.startswith(shown) and (shown == name or not shown[-1:].isalnum()))


def test_a_long_repr_without_names_is_cut_at_the_limit() -> None:
    assert short_repr("x" * 500) == short_repr("x" * 500)  # stable
    assert len(short_repr(list(range(1000)))) <= 80
    assert short_repr(7) == "7"


def test_counts_are_singular_and_plural() -> None:
    assert _count(1, "task") == "1 task"
    assert _count(0, "task") == "0 tasks"
    assert _count(3, "worker") == "3 workers"


def test_did_you_mean() -> None:
    assert did_you_mean("slwo", ["slow", "fast"]) == " Did you mean: 'slow'?"
    assert did_you_mean("zzz", ["slow", "fast"]) == ""
    assert did_you_mean("slow", ["slow"]) == ""  # the name itself is no suggestion


def test_tokens_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--token -xyz` is a missing value to argparse: one random token in 64 started so."""
    import secrets

    from sperse._tokens import new_token

    drawn = iter(["-first", "-second", "third"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda nbytes: next(drawn))
    assert new_token() == "third"
