"""Placement: where a remote statement or function may run.

A placement is the inside of the bracket of ``remote[...]`` at the prompt, or the ``on=`` and
``resources=`` of ``@sperse.remote``. Grammar (whitespace, including newlines, is allowed
between tokens)::

    placement := [item (',' item)*]
    item      := tags | '@' SERVER | NAME '=' NUMBER
    tags      := or
    or        := and ('|' and)*
    and       := not ('&' not)*
    not       := '!' not | atom
    atom      := TAG | '(' or ')'
    TAG, NAME := [A-Za-z_][A-Za-z0-9_.-]*
    SERVER    := [A-Za-z0-9_.-]+
    NUMBER    := a positive int or float literal: 16, 0.5, 1e3

``!`` binds tighter than ``&``, and ``&`` tighter than ``|``; both binary operators are left
associative. A placement holds at most one tag expression and at most one ``@server`` pin; each
resource name appears once. Example: ``gpu & !slow, @db-1, gpu_mem=16``.

Invariants:

- Values are immutable and hashable (frozen slotted dataclasses; resources are a
  :class:`Resources`, a read-only mapping).
- ``str`` gives the canonical text, with minimal parentheses and canonical spacing, and parsing
  it gives back an equal value: ``parse_tags(str(e)) == e``, ``parse_placement(str(p)) == p``.
- Syntax errors are :class:`TagSyntaxError`, whose ``offset`` is the 0-based index in the parsed
  text where something else was expected, so a caller can put a caret under it.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final

from sperse.errors import SperseError

__all__ = [
    "And",
    "Not",
    "Or",
    "Placement",
    "Resources",
    "Tag",
    "TagExpr",
    "TagSyntaxError",
    "parse_placement",
    "parse_tags",
    "placement_from_options",
]

_TAG_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_SERVER_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_WORD_RE: Final = re.compile(r"[A-Za-z0-9_.-]+")
_NUMBER_RE: Final = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_RE: Final = re.compile(r"[0-9]+")
_WHITESPACE: Final = " \t\n\r\f\v"

# Binding strength, for printing with minimal parentheses.
_OR: Final = 1
_AND: Final = 2
_NOT: Final = 3
_ATOM: Final = 4


class TagSyntaxError(SperseError, ValueError):
    """A tag expression or placement text is malformed.

    ``offset`` is the 0-based index in the parsed text where the problem is.
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset

    def __reduce__(self) -> tuple[type[TagSyntaxError], tuple[str, int]]:
        return (type(self), (str(self), self.offset))


# --- tag expressions -----------------------------------------------------------------------


class TagExpr(ABC):
    """An immutable constraint on a server's tags: a :class:`Tag`, :class:`Not`, :class:`And`
    or :class:`Or`."""

    __slots__ = ()
    _precedence: ClassVar[int]

    @abstractmethod
    def matches(self, tags: Collection[str]) -> bool:
        """Whether a server with these tags satisfies the expression."""

    @abstractmethod
    def tag_names(self) -> frozenset[str]:
        """Every tag the expression mentions (to say which tags no server has)."""

    def __str__(self) -> str:
        return _format(self, 0)


@dataclass(frozen=True, slots=True)
class Tag(TagExpr):
    """True for servers that have the tag ``name``."""

    name: str
    _precedence: ClassVar[int] = _ATOM

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or _TAG_RE.fullmatch(self.name) is None:
            raise ValueError(
                f"invalid tag name {self.name!r}: a tag is a letter or '_' followed by "
                "letters, digits, '_', '.' or '-'"
            )

    def matches(self, tags: Collection[str]) -> bool:
        return self.name in tags

    def tag_names(self) -> frozenset[str]:
        return frozenset((self.name,))


@dataclass(frozen=True, slots=True)
class Not(TagExpr):
    """True for servers that do not satisfy ``operand``."""

    operand: TagExpr
    _precedence: ClassVar[int] = _NOT

    def matches(self, tags: Collection[str]) -> bool:
        return not self.operand.matches(tags)

    def tag_names(self) -> frozenset[str]:
        return self.operand.tag_names()


@dataclass(frozen=True, slots=True)
class And(TagExpr):
    """True for servers that satisfy both ``left`` and ``right``."""

    left: TagExpr
    right: TagExpr
    _precedence: ClassVar[int] = _AND

    def matches(self, tags: Collection[str]) -> bool:
        return self.left.matches(tags) and self.right.matches(tags)

    def tag_names(self) -> frozenset[str]:
        return self.left.tag_names() | self.right.tag_names()


@dataclass(frozen=True, slots=True)
class Or(TagExpr):
    """True for servers that satisfy ``left`` or ``right``."""

    left: TagExpr
    right: TagExpr
    _precedence: ClassVar[int] = _OR

    def matches(self, tags: Collection[str]) -> bool:
        return self.left.matches(tags) or self.right.matches(tags)

    def tag_names(self) -> frozenset[str]:
        return self.left.tag_names() | self.right.tag_names()


def _format(expr: TagExpr, min_precedence: int) -> str:
    """Canonical text of ``expr``, parenthesised if it binds looser than ``min_precedence``.

    Operators are left associative, so a right operand of the same strength needs parentheses:
    ``And(a, And(b, c))`` prints as ``a & (b & c)``.
    """
    if isinstance(expr, Tag):
        text = expr.name
    elif isinstance(expr, Not):
        text = "!" + _format(expr.operand, _NOT)
    elif isinstance(expr, And):
        text = f"{_format(expr.left, _AND)} & {_format(expr.right, _AND + 1)}"
    elif isinstance(expr, Or):
        text = f"{_format(expr.left, _OR)} | {_format(expr.right, _OR + 1)}"
    else:
        raise TypeError(f"not a tag expression: {expr!r}")
    return f"({text})" if expr._precedence < min_precedence else text


class _TagParser:
    """Recursive descent over ``text[start:end]``; offsets in errors index ``text``."""

    __slots__ = ("end", "follow", "pos", "text")

    def __init__(self, text: str, start: int, end: int, follow: str) -> None:
        self.text = text
        self.pos = start
        self.end = end
        self.follow = follow  # what may come after the whole expression, for messages

    def parse(self) -> TagExpr:
        expr = self._or("")
        if self._peek():
            raise self._unexpected(f"expected '&', '|' or {self.follow}")
        return expr

    def _peek(self) -> str:
        while self.pos < self.end and self.text[self.pos] in _WHITESPACE:
            self.pos += 1
        return self.text[self.pos] if self.pos < self.end else ""

    def _or(self, after: str) -> TagExpr:
        expr = self._and(after)
        while self._peek() == "|":
            self.pos += 1
            expr = Or(expr, self._and(" after '|'"))
        return expr

    def _and(self, after: str) -> TagExpr:
        expr = self._not(after)
        while self._peek() == "&":
            self.pos += 1
            expr = And(expr, self._not(" after '&'"))
        return expr

    def _not(self, after: str) -> TagExpr:
        negations = 0  # a loop, not recursion: `!!!!a` must not hit the recursion limit
        while self._peek() == "!":
            self.pos += 1
            negations += 1
            after = " after '!'"
        expr = self._atom(after)
        for _ in range(negations):
            expr = Not(expr)
        return expr

    def _atom(self, after: str) -> TagExpr:
        char = self._peek()
        if char == "(":
            self.pos += 1
            expr = self._or(" after '('")
            if self._peek() != ")":
                raise self._unexpected("expected '&', '|' or ')' to close the '('")
            self.pos += 1
            return expr
        match = _TAG_RE.match(self.text, self.pos, self.end)
        if match is None:
            raise self._unexpected(f"expected a tag name{after}")
        self.pos = match.end()
        return Tag(match.group())

    def _unexpected(self, expected: str) -> TagSyntaxError:
        if self.pos >= self.end:
            return TagSyntaxError(expected, self.pos)
        word = _WORD_RE.match(self.text, self.pos, self.end)
        got = word.group() if word else self.text[self.pos]
        hint = ""
        if got in ("and", "or", "not"):
            hint = " (write '&' for 'and', '|' for 'or', '!' for 'not')"
        return TagSyntaxError(f"{expected}, got {got!r}{hint}", self.pos)


def parse_tags(text: str) -> TagExpr:
    """Parse a tag expression such as ``gpu & !slow | (cpu & big)``."""
    return _TagParser(text, 0, len(text), "end of the expression").parse()


# --- placement -----------------------------------------------------------------------------


def _check_resource(name: object, value: object) -> None:
    if not isinstance(name, str) or _TAG_RE.fullmatch(name) is None:
        raise ValueError(
            f"invalid resource name {name!r}: a letter or '_' followed by letters, digits, "
            "'_', '.' or '-'"
        )
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"resource {name!r} must be a positive number, got {value!r}")


class Resources(Mapping[str, float]):
    """A read-only, hashable mapping of resource needs, such as ``{"gpu_mem": 16}``.

    Like a dict: iteration keeps the order the needs were given in (which ``str`` of a
    placement follows), equality and hashing ignore it.
    """

    __slots__ = ("_items",)
    _items: tuple[tuple[str, float], ...]

    def __init__(self, needs: Mapping[str, float] | Iterable[tuple[str, float]] = ()) -> None:
        pairs = tuple(needs.items() if isinstance(needs, Mapping) else needs)
        seen: set[str] = set()
        for name, value in pairs:
            _check_resource(name, value)
            if name in seen:
                raise ValueError(f"resource {name!r} is given twice")
            seen.add(name)
        object.__setattr__(self, "_items", pairs)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __reduce__(self) -> tuple[type[Resources], tuple[tuple[tuple[str, float], ...]]]:
        return (Resources, (self._items,))  # pickle's default would set _items: refused

    def __getitem__(self, key: str) -> float:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __repr__(self) -> str:
        return f"Resources({dict(self._items)!r})"


_NO_RESOURCES: Final = Resources()


def _format_number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where work may run: a tag constraint, a pinned server, and resource needs.

    ``Placement()`` (no constraint) means any server.
    """

    tags: TagExpr | None = None
    pin: str | None = None
    resources: Mapping[str, float] = _NO_RESOURCES
    _text: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tags is not None and not isinstance(self.tags, TagExpr):
            raise TypeError(f"tags must be a TagExpr or None, got {self.tags!r}")
        if self.pin is not None and (
            not isinstance(self.pin, str) or _SERVER_RE.fullmatch(self.pin) is None
        ):
            raise ValueError(f"invalid server name {self.pin!r}: letters, digits, '_', '.' or '-'")
        if not isinstance(self.resources, Resources):
            object.__setattr__(self, "resources", Resources(self.resources))
        object.__setattr__(self, "_text", self._format())  # asked for on every submit

    def __str__(self) -> str:
        return self._text

    def _format(self) -> str:
        parts: list[str] = []
        if self.tags is not None:
            parts.append(str(self.tags))
        if self.pin is not None:
            parts.append("@" + self.pin)
        parts.extend(f"{name}={_format_number(v)}" for name, v in self.resources.items())
        return ", ".join(parts)


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start] in _WHITESPACE:
        start += 1
    while end > start and text[end - 1] in _WHITESPACE:
        end -= 1
    return start, end


def _parse_pin(text: str, start: int, end: int) -> str:
    match = _SERVER_RE.match(text, start + 1, end)
    if match is None:
        got = f", got {text[start + 1]!r}" if start + 1 < end else ""
        raise TagSyntaxError(f"expected a server name after '@'{got}", start + 1)
    if match.end() != end:
        raise TagSyntaxError(
            f"unexpected {text[match.end()]!r} in server name; a pin is '@' followed by "
            "letters, digits, '_', '.' or '-'",
            match.end(),
        )
    return match.group()


def _parse_resource(text: str, start: int, end: int, limit: int) -> tuple[str, float, int]:
    """``text[start:end]`` is the stripped item, ``limit`` the end of the item unstripped."""
    equals = text.index("=", start, end)
    name_start, name_end = _strip(text, start, equals)
    name = text[name_start:name_end]
    if not name:
        raise TagSyntaxError("expected a resource name before '='", start)
    if _TAG_RE.fullmatch(name) is None:
        raise TagSyntaxError(
            f"invalid resource name {name!r}; expected name=number, such as gpu_mem=16", start
        )
    value_start, value_end = _strip(text, equals + 1, end)
    literal = text[value_start:value_end]
    if not literal:
        raise TagSyntaxError(
            f"expected a number after '{name}='", _strip(text, value_start, limit)[0]
        )
    if _NUMBER_RE.fullmatch(literal) is None:
        raise TagSyntaxError(
            f"expected a positive number after '{name}=', got {literal!r}", value_start
        )
    value: float = int(literal) if _INT_RE.fullmatch(literal) else float(literal)
    if value <= 0 or not math.isfinite(value):
        raise TagSyntaxError(
            f"resource {name!r} must be a positive number, got {literal}", value_start
        )
    return name, value, name_start


def parse_placement(text: str) -> Placement:
    """Parse the inside of ``remote[...]``, such as ``gpu & !slow, @db-1, gpu_mem=16``."""
    tags: TagExpr | None = None
    pin: str | None = None
    resources: dict[str, float] = {}
    if not text.strip(_WHITESPACE):
        return Placement()
    item_start = 0
    while item_start <= len(text):
        comma = text.find(",", item_start)
        item_end = len(text) if comma < 0 else comma
        start, end = _strip(text, item_start, item_end)
        if start == end:
            raise TagSyntaxError(
                "empty item; expected a tag expression, '@server' or 'name=number'", start
            )
        if text[start] == "@":
            if pin is not None:
                raise TagSyntaxError("only one '@server' pin is allowed", start)
            pin = _parse_pin(text, start, end)
        elif "=" in text[start:end]:
            name, value, name_start = _parse_resource(text, start, end, item_end)
            if name in resources:
                raise TagSyntaxError(f"resource {name!r} is given twice", name_start)
            resources[name] = value
        else:
            if tags is not None:
                raise TagSyntaxError(
                    "only one tag expression is allowed; combine them with '&' or '|'", start
                )
            # Up to the unstripped end, so "expected a tag name" points at the ',' or the end.
            tags = _TagParser(text, start, item_end, "','").parse()
        item_start = item_end + 1
    return Placement(tags, pin, Resources(resources))


def placement_from_options(
    on: str | None = None, resources: Mapping[str, float] | None = None
) -> Placement:
    """The placement of the decorator form: ``@sperse.remote(on="gpu & !slow",
    resources={"gpu_mem": 16})``; ``on`` may also pin, ``on="@db-1"``, or hold both,
    ``on="gpu, @db-1"``.

    Raises :class:`TagSyntaxError` (offsets into ``on``) for bad text and ``ValueError`` for
    bad resource needs.
    """
    placement = parse_placement(on) if on else Placement()
    if not resources:
        return placement
    merged = dict(placement.resources)
    for name, value in resources.items():
        if name in merged:
            raise ValueError(f"resource {name!r} is given both in on= and in resources=")
        merged[name] = value
    return Placement(placement.tags, placement.pin, Resources(merged))
