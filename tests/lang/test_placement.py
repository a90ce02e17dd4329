"""Tag expressions and placements: parsing, printing, matching, errors."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import pickle
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sperse._lang.placement import (
    And,
    Not,
    Or,
    Placement,
    Resources,
    Tag,
    TagExpr,
    TagSyntaxError,
    parse_placement,
    parse_tags,
    placement_from_options,
)
from sperse.errors import SperseError

a, b, c, d = Tag("a"), Tag("b"), Tag("c"), Tag("d")

# --- parse_tags ----------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, TagExpr]] = [
    ("a", a),
    ("!a", Not(a)),
    ("!!a", Not(Not(a))),
    ("a & b", And(a, b)),
    ("a | b", Or(a, b)),
    ("a | b & !c", Or(a, And(b, Not(c)))),
    ("a & b | c", Or(And(a, b), c)),
    ("!a & b", And(Not(a), b)),
    ("!a | !b", Or(Not(a), Not(b))),
    ("a & b & c", And(And(a, b), c)),
    ("a | b | c", Or(Or(a, b), c)),
    ("a & (b & c)", And(a, And(b, c))),
    ("(a | b) & c", And(Or(a, b), c)),
    ("!(a & b)", Not(And(a, b))),
    ("!(a | b) | c & d", Or(Not(Or(a, b)), And(c, d))),
    ("((a))", a),
    ("(a) & (b)", And(a, b)),
    ("a&b|c", Or(And(a, b), c)),
    ("  a  &\tb\n|\nc  ", Or(And(a, b), c)),
    ("! a", Not(a)),
    ("gpu-a100.x & _private", And(Tag("gpu-a100.x"), Tag("_private"))),
    ("not", Tag("not")),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_tags(text: str, expected: TagExpr) -> None:
    assert parse_tags(text) == expected


FORMAT_CASES: list[tuple[TagExpr, str]] = [
    (a, "a"),
    (Not(a), "!a"),
    (Not(Not(a)), "!!a"),
    (And(a, b), "a & b"),
    (Or(a, b), "a | b"),
    (And(And(a, b), c), "a & b & c"),
    (And(a, And(b, c)), "a & (b & c)"),
    (Or(a, Or(b, c)), "a | (b | c)"),
    (Or(And(a, b), c), "a & b | c"),
    (Or(a, And(b, c)), "a | b & c"),
    (And(Or(a, b), c), "(a | b) & c"),
    (And(a, Or(b, c)), "a & (b | c)"),
    (Not(And(a, b)), "!(a & b)"),
    (Not(Or(a, b)), "!(a | b)"),
    (Or(Not(a), And(Not(b), c)), "!a | !b & c"),
]


@pytest.mark.parametrize(("expr", "text"), FORMAT_CASES)
def test_str_is_canonical(expr: TagExpr, text: str) -> None:
    assert str(expr) == text
    assert parse_tags(text) == expr


TAGS_ERRORS: list[tuple[str, int, str]] = [
    ("", 0, "expected a tag name"),
    ("   ", 3, "expected a tag name"),
    ("a &", 3, "expected a tag name after '&'"),
    ("a & ", 4, "expected a tag name after '&'"),
    ("a | ", 4, "expected a tag name after '|'"),
    ("a && b", 3, "expected a tag name after '&', got '&'"),
    ("!", 1, "expected a tag name after '!'"),
    ("(", 1, "expected a tag name after '('"),
    ("a & ()", 5, "expected a tag name after '(', got ')'"),
    ("(a", 2, "to close the '('"),
    ("(a b)", 3, "expected '&', '|' or ')' to close the '(', got 'b'"),
    ("a)", 1, "got ')'"),
    ("a b", 2, "expected '&', '|' or end of the expression, got 'b'"),
    ("a & 1b", 4, "got '1b'"),
    ("gpu and cpu", 4, "write '&' for 'and'"),
    ("a, b", 1, "got ','"),
    ("@db", 0, "expected a tag name, got '@'"),
]


@pytest.mark.parametrize(("text", "offset", "message"), TAGS_ERRORS)
def test_parse_tags_errors(text: str, offset: int, message: str) -> None:
    with pytest.raises(TagSyntaxError) as info:
        parse_tags(text)
    assert info.value.offset == offset
    assert message in str(info.value)


MATCH_CASES: list[tuple[str, frozenset[str], bool]] = [
    ("gpu", frozenset({"gpu"}), True),
    ("gpu", frozenset(), False),
    ("!slow", frozenset(), True),
    ("!slow", frozenset({"slow"}), False),
    ("gpu & !slow", frozenset({"gpu"}), True),
    ("gpu & !slow", frozenset({"gpu", "slow"}), False),
    ("gpu | big", frozenset({"big"}), True),
    ("gpu | big", frozenset({"small"}), False),
    ("(gpu | tpu) & eu", frozenset({"tpu", "eu"}), True),
    ("(gpu | tpu) & eu", frozenset({"tpu"}), False),
    ("gpu | tpu & eu", frozenset({"gpu"}), True),
]


@pytest.mark.parametrize(("text", "tags", "expected"), MATCH_CASES)
def test_matches(text: str, tags: frozenset[str], expected: bool) -> None:
    assert parse_tags(text).matches(tags) is expected
    assert parse_tags(text).matches(sorted(tags)) is expected  # any collection


@pytest.mark.parametrize(
    ("text", "truth"),
    [
        ("a & b", lambda a, b: a and b),
        ("a | b", lambda a, b: a or b),
        ("!a | b", lambda a, b: (not a) or b),
        ("!(a & b)", lambda a, b: not (a and b)),
        ("a & !b | !a & b", lambda a, b: a != b),
    ],
)
def test_truth_tables(text: str, truth: object) -> None:
    expr = parse_tags(text)
    for has_a, has_b in itertools.product([False, True], repeat=2):
        tags = {name for name, has in (("a", has_a), ("b", has_b)) if has}
        assert expr.matches(tags) == truth(has_a, has_b)  # type: ignore[operator]


def test_tag_names() -> None:
    assert parse_tags("gpu & !(slow | old) & gpu").tag_names() == {"gpu", "slow", "old"}


def test_tag_expressions_are_frozen_and_hashable() -> None:
    expr = parse_tags("a & !b")
    assert isinstance(expr, And)
    assert hash(expr) == hash(parse_tags("a&!b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        expr.left = b  # type: ignore[misc]
    assert not hasattr(expr, "__dict__")


def test_invalid_tag_name() -> None:
    with pytest.raises(ValueError, match="invalid tag name"):
        Tag("1gpu")


# --- properties ----------------------------------------------------------------------------

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,6}", fullmatch=True)


def expressions(names: st.SearchStrategy[str] = NAMES) -> st.SearchStrategy[TagExpr]:
    return st.recursive(
        st.builds(Tag, names),
        lambda children: st.one_of(
            st.builds(Not, children),
            st.builds(And, children, children),
            st.builds(Or, children, children),
        ),
        max_leaves=16,
    )


@given(expressions())
def test_round_trip(expr: TagExpr) -> None:
    assert parse_tags(str(expr)) == expr


@given(expressions())
def test_parentheses_are_minimal(expr: TagExpr) -> None:
    text = str(expr)
    for opening in (i for i, char in enumerate(text) if char == "("):
        depth = 0
        for closing in range(opening, len(text)):
            depth += {"(": 1, ")": -1}.get(text[closing], 0)
            if depth == 0:
                break
        without = text[:opening] + text[opening + 1 : closing] + text[closing + 1 :]
        with contextlib.suppress(TagSyntaxError):
            assert parse_tags(without) != expr, f"parentheses not needed in {text!r}"


@given(expressions(st.sampled_from("abcde")), st.sets(st.sampled_from("abcde")))
def test_precedence_agrees_with_python(expr: TagExpr, tags: set[str]) -> None:
    # Python's `not` > `and` > `or` is the same precedence as `!` > `&` > `|`.
    python = str(expr).replace("&", " and ").replace("|", " or ").replace("!", " not ")
    names = {name: name in tags for name in "abcde"}
    assert expr.matches(tags) == eval(python, {}, names)


# --- placement -----------------------------------------------------------------------------

PLACEMENT_CASES: list[tuple[str, Placement, str]] = [
    ("", Placement(), ""),
    ("   \n ", Placement(), ""),
    ("gpu", Placement(tags=Tag("gpu")), "gpu"),
    ("@db-1", Placement(pin="db-1"), "@db-1"),
    ("gpu_mem=16", Placement(resources={"gpu_mem": 16}), "gpu_mem=16"),
    ("cpu=0.5", Placement(resources={"cpu": 0.5}), "cpu=0.5"),
    ("n=1e3", Placement(resources={"n": 1000.0}), "n=1000.0"),
    ("n=.25", Placement(resources={"n": 0.25}), "n=0.25"),
    ("n=2.", Placement(resources={"n": 2.0}), "n=2.0"),
    (
        "gpu & !slow, @db-1, gpu_mem=16",
        Placement(And(Tag("gpu"), Not(Tag("slow"))), "db-1", {"gpu_mem": 16}),
        "gpu & !slow, @db-1, gpu_mem=16",
    ),
    (
        "gpu_mem = 16 , @db-1,gpu&!slow",
        Placement(And(Tag("gpu"), Not(Tag("slow"))), "db-1", {"gpu_mem": 16}),
        "gpu & !slow, @db-1, gpu_mem=16",
    ),
    ("db, @s1, cpu=2", Placement(Tag("db"), "s1", {"cpu": 2}), "db, @s1, cpu=2"),
    ("a=1, b=2", Placement(resources={"a": 1, "b": 2}), "a=1, b=2"),
    ("b=2, a=1", Placement(resources={"a": 1, "b": 2}), "b=2, a=1"),
    ("\n  (a | b) & c ,\n  @s.example-1\n", Placement(And(Or(a, b), c), "s.example-1"), ""),
    ("@1", Placement(pin="1"), "@1"),
]


@pytest.mark.parametrize(("text", "expected", "canonical"), PLACEMENT_CASES)
def test_parse_placement(text: str, expected: Placement, canonical: str) -> None:
    placement = parse_placement(text)
    assert placement == expected
    if canonical or not text.strip():
        assert str(placement) == canonical
    assert parse_placement(str(placement)) == placement


PLACEMENT_ERRORS: list[tuple[str, int, str]] = [
    ("gpu,", 4, "empty item"),
    (",gpu", 0, "empty item"),
    ("a, ,b", 3, "empty item"),
    ("@", 1, "expected a server name after '@'"),
    ("@ db", 1, "expected a server name after '@', got ' '"),
    ("@a b", 2, "unexpected ' ' in server name"),
    ("@a, @b", 4, "only one '@server' pin"),
    ("a, b", 3, "only one tag expression"),
    ("gpu &, @s", 5, "expected a tag name after '&'"),
    ("a b", 2, "expected '&', '|' or ',', got 'b'"),
    ("(a, b)", 2, "to close the '('"),
    ("x=", 2, "expected a number after 'x='"),
    ("x= ", 3, "expected a number after 'x='"),
    ("x=abc", 2, "expected a positive number after 'x=', got 'abc'"),
    ("x = abc", 4, "expected a positive number after 'x=', got 'abc'"),
    ("x=-1", 2, "expected a positive number"),
    ("x=0", 2, "must be a positive number, got 0"),
    ("x=0.0", 2, "must be a positive number"),
    ("x=1e999", 2, "must be a positive number"),
    ("x=nan", 2, "expected a positive number"),
    ("x=1_000", 2, "expected a positive number"),
    ("=1", 0, "expected a resource name before '='"),
    ("1x=1", 0, "invalid resource name '1x'"),
    ("gpu & x=1", 0, "invalid resource name 'gpu & x'"),
    ("x=1, x=2", 5, "resource 'x' is given twice"),
]


@pytest.mark.parametrize(("text", "offset", "message"), PLACEMENT_ERRORS)
def test_parse_placement_errors(text: str, offset: int, message: str) -> None:
    with pytest.raises(TagSyntaxError) as info:
        parse_placement(text)
    assert info.value.offset == offset
    assert message in str(info.value)


def test_placement_is_frozen_and_hashable() -> None:
    one = parse_placement("gpu, @s, a=1, b=2")
    two = parse_placement("b=2, a=1, @s, gpu")
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.pin = "t"  # type: ignore[misc]
    with pytest.raises(TypeError):
        one.resources["a"] = 5  # type: ignore[index]
    assert isinstance(one.resources, Resources)
    assert dict(one.resources) == {"a": 1, "b": 2}
    assert one.resources == {"b": 2, "a": 1}


def test_resources_cannot_be_changed() -> None:
    needs = {"gpu_mem": 16}
    placement = Placement(resources=needs)
    needs["gpu_mem"] = 1
    assert placement.resources["gpu_mem"] == 16
    assert isinstance(placement.resources, Resources)
    with pytest.raises(AttributeError):
        placement.resources._items = ()
    with pytest.raises(KeyError):
        placement.resources["cpu"]
    assert repr(placement.resources) == "Resources({'gpu_mem': 16})"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pin": "a b"}, "invalid server name"),
        ({"resources": {"x": 0}}, "positive"),
        ({"resources": {"x": -1.5}}, "positive"),
        ({"resources": {"x": True}}, "positive"),
        ({"resources": {"x": float("inf")}}, "positive"),
        ({"resources": {"x y": 1}}, "invalid resource name"),
    ],
)
def test_placement_validates(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Placement(**kwargs)  # type: ignore[arg-type]


def test_placement_rejects_non_expression_tags() -> None:
    with pytest.raises(TypeError):
        Placement(tags="gpu")  # type: ignore[arg-type]


def test_placement_from_options() -> None:
    assert placement_from_options() == Placement()
    assert placement_from_options(on="") == Placement()
    assert placement_from_options(on="gpu & !slow") == Placement(And(Tag("gpu"), Not(Tag("slow"))))
    assert placement_from_options(on="@db-1") == Placement(pin="db-1")
    assert placement_from_options(on="gpu, @db-1") == Placement(Tag("gpu"), "db-1")
    assert placement_from_options(resources={"gpu_mem": 16}) == Placement(resources={"gpu_mem": 16})
    both = placement_from_options(on="gpu", resources={"gpu_mem": 16})
    assert str(both) == "gpu, gpu_mem=16"


def test_placement_from_options_errors() -> None:
    with pytest.raises(TagSyntaxError) as info:
        placement_from_options(on="gpu & ")
    assert info.value.offset == 6
    with pytest.raises(ValueError, match="both in on= and in resources="):
        placement_from_options(on="x=1", resources={"x": 2})
    with pytest.raises(ValueError, match="positive"):
        placement_from_options(resources={"x": 0})


def test_tag_syntax_error() -> None:
    error = TagSyntaxError("expected a tag name", 3)
    assert isinstance(error, SperseError)
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.offset) == ("expected a tag name", 3)


SERVERS = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True)
AMOUNTS = st.one_of(
    st.integers(min_value=1, max_value=10**12),
    st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False),
)
PLACEMENTS = st.builds(
    Placement,
    st.none() | expressions(),
    st.none() | SERVERS,
    st.dictionaries(NAMES, AMOUNTS, max_size=4),
)


@given(PLACEMENTS)
def test_placement_round_trip(placement: Placement) -> None:
    text = str(placement)
    parsed = parse_placement(text)
    assert parsed == placement
    assert str(parsed) == text
