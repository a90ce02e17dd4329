"""``@value`` classes (``sperse._core.values``) behave as frozen dataclasses do: equal by
their fields (instances of one class only), hashed alike, shown alike, and ``replace``d."""

from __future__ import annotations

import dataclasses

from sperse._core.values import value


@value
class Point:
    x: int
    y: int = 0
    note: str = dataclasses.field(default="", compare=False, repr=False)


@value
class Other:
    x: int
    y: int = 0


@value
class Empty:
    pass


@value
class One:
    name: str

    def __repr__(self) -> str:  # a class's own is kept
        return f"<one {self.name}>"


def test_a_value_is_equal_to_another_of_its_class_with_the_same_compared_fields() -> None:
    assert Point(1, 2) == Point(1, 2, note="other")
    assert Point(1, 2) != Point(2, 1)
    assert Point(1, 2) != Other(1, 2)
    assert Point(1) != (1, 0)
    assert Empty() == Empty()
    assert One("a") == One("a") and One("a") != One("b")


def test_equal_values_hash_alike_and_serve_as_keys() -> None:
    assert hash(Point(1, 2)) == hash(Point(1, 2, note="other"))
    assert {Point(1, 2): "p"}[Point(1, 2)] == "p"
    assert len({Empty(), Empty()}) == 1
    assert {One("a"), One("a")} == {One("a")}


def test_a_value_shows_as_a_dataclass_does() -> None:
    assert repr(Point(1, 2, note="hidden")) == "Point(x=1, y=2)"
    assert repr(Empty()) == "Empty()"
    assert repr(One("a")) == "<one a>"


def test_a_value_is_a_slotted_dataclass() -> None:
    p = Point(1, 2)
    assert dataclasses.replace(p, y=5) == Point(1, 5)
    assert [f.name for f in dataclasses.fields(p)] == ["x", "y", "note"]
    assert not hasattr(p, "__dict__")
    match p:
        case Point(1, y):
            assert y == 2
        case _:
            raise AssertionError("no match")
