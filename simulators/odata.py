"""OData v4 ``$filter`` expressions and ``$top``/``$skip`` options: one parser for the Graph and Defender simulators."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

#: Comparison operators (OData v4 URL conventions §5.1.1.1); ``has`` and arithmetic are not parsed.
COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
#: The boolean string functions of §5.1.1.5, each ``name(property,'text')``.
FUNCTIONS = ("contains", "endswith", "startswith")

Predicate = Callable[[dict[str, Any]], bool]


class ODataError(ValueError):
    """The text is not a ``$filter`` (or ``$top``/``$skip``) this parser reads."""


@dataclass(frozen=True)
class Compare:
    """``field op value``, e.g. ``Name eq 'Milk'``."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class In:
    """``field in (v1, v2, ...)`` (OData 4.01)."""

    field: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Call:
    """``function(field,value)``, e.g. ``startswith(givenName,'J')``."""

    function: str
    field: str
    value: Any


@dataclass(frozen=True)
class Not:
    """``not operand``."""

    operand: Any


@dataclass(frozen=True)
class Logical:
    """``and``/``or`` over two or more terms, flattened (``a and b and c`` is one node)."""

    op: str
    terms: tuple[Any, ...]


Node = Compare | In | Call | Not | Logical

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<punct>[(),])|'(?P<str>(?:[^']|'')*)'"
    r"|(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))"
    r"|(?P<date>\d{4}-\d{2}-\d{2})(?![\w-])"
    r"|(?P<guid>[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})(?![\w-])"
    r"|(?P<num>-?\d+(?P<frac>\.\d+)?(?P<exp>[eE][+-]?\d+)?)(?![\w.])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_KEYWORDS = {"true": True, "false": False, "null": None}


def parse_filter(text: str) -> Node:
    """Parse a ``$filter`` expression into its tree, with OData's precedence: ``not``, comparisons, ``and``, ``or``.

    Literals become Python values: strings (``''`` is an escaped quote), integers, floats (decimal or exponent),
    ``true``/``false``/``null``, ``datetime.datetime`` (DateTimeOffset, always aware), ``datetime.date`` and
    ``uuid.UUID``. Operators and keywords are lower case, as the spec spells them.

    Raises:
        ODataError: the text is empty, malformed, or uses anything beyond this subset (lambda operators, arithmetic,
            property paths, other functions).
    """
    parser = _Parser(_tokens(text))
    if not parser.tokens:
        raise ODataError("Invalid $filter: the expression is empty.")
    node = parser.expression()
    if parser.position != len(parser.tokens):
        raise ODataError("Invalid $filter: unexpected trailing tokens.")
    return node


def _tokens(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    position = 0
    while text[position:].strip():
        match = _TOKEN_RE.match(text, position)
        if match is None:
            raise ODataError(f"Invalid $filter near '{text[position : position + 20]}'.")
        position = match.end()
        if match["punct"]:
            tokens.append((match["punct"], None))
        elif match["str"] is not None:
            tokens.append(("lit", match["str"].replace("''", "'")))
        elif match["datetime"]:
            tokens.append(("lit", _datetime(match["datetime"])))
        elif match["date"]:
            tokens.append(("lit", _date(match["date"])))
        elif match["guid"]:
            tokens.append(("lit", uuid.UUID(match["guid"])))
        elif match["num"]:
            number = match["num"]
            tokens.append(("lit", float(number) if match["frac"] or match["exp"] else int(number)))
        else:
            word = match["word"]
            tokens.append(("lit", _KEYWORDS[word]) if word in _KEYWORDS else ("word", word))
    return tokens


def _datetime(text: str) -> dt.datetime:
    text = text[:-1] + "+00:00" if text.endswith("Z") else text
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # ticks: Python reads at most 6 fractional digits
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ODataError(f"Invalid $filter: '{text}' is not a date-time.") from None


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ODataError(f"Invalid $filter: '{text}' is not a date.") from None


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _next(self) -> tuple[str, Any]:
        token = self._peek()
        if token is None:
            raise ODataError("Invalid $filter: unexpected end of expression.")
        self.position += 1
        return token

    def _expect(self, kind: str) -> None:
        if self._next()[0] != kind:
            raise ODataError(f"Invalid $filter: missing '{kind}'.")

    def _keyword(self, word: str) -> bool:
        if self._peek() == ("word", word):
            self.position += 1
            return True
        return False

    def expression(self) -> Node:
        terms = [self._conjunction()]
        while self._keyword("or"):
            terms.append(self._conjunction())
        return terms[0] if len(terms) == 1 else Logical("or", tuple(terms))

    def _conjunction(self) -> Node:
        terms = [self._unary()]
        while self._keyword("and"):
            terms.append(self._unary())
        return terms[0] if len(terms) == 1 else Logical("and", tuple(terms))

    def _unary(self) -> Node:
        if self._keyword("not"):
            return Not(self._unary())
        return self._primary()

    def _primary(self) -> Node:
        kind, value = self._next()
        if kind == "(":
            inner = self.expression()
            self._expect(")")
            return inner
        if kind != "word":
            raise ODataError(f"Invalid $filter: expected a property name, not {value!r}.")
        if self._peek() == ("(", None):
            return self._call(value)
        op_kind, op = self._next()
        if op_kind == "word" and op == "in":
            return In(value, self._list())
        if op_kind != "word" or op not in COMPARISONS:
            raise ODataError(f"Invalid $filter: operator '{op}' is not supported.")
        return Compare(value, op, self._literal())

    def _call(self, function: str) -> Node:
        if function not in FUNCTIONS:
            raise ODataError(f"Invalid $filter: function '{function}' is not supported.")
        self._expect("(")
        kind, field = self._next()
        if kind != "word":
            raise ODataError(f"Invalid $filter: {function} expects a property name first.")
        self._expect(",")
        value = self._literal()
        self._expect(")")
        return Call(function, field, value)

    def _list(self) -> tuple[Any, ...]:
        self._expect("(")
        values = [self._literal()]
        while self._peek() == (",", None):
            self.position += 1
            values.append(self._literal())
        self._expect(")")
        return tuple(values)

    def _literal(self) -> Any:
        kind, value = self._next()
        if kind != "lit":
            raise ODataError("Invalid $filter: expected a literal.")
        return value


def compile_filter(node: Node, leaf: Callable[[Node], Predicate]) -> Predicate:
    """Turn a tree into a predicate: ``and``/``or`` combine here, every other node is ``leaf``'s to accept or refuse.

    Each service decides what it supports (fields, operators, how values compare) in ``leaf``, raising its own
    error for the rest; ``not`` is passed to ``leaf`` too, so a service that never supported it keeps refusing it.
    """
    if isinstance(node, Logical):
        parts = [compile_filter(term, leaf) for term in node.terms]
        if node.op == "and":
            return lambda item: all(part(item) for part in parts)
        return lambda item: any(part(item) for part in parts)
    return leaf(node)


def fields_of(node: Node) -> Iterable[str]:
    """Every property name the expression reads, in order of appearance."""
    if isinstance(node, Logical):
        for term in node.terms:
            yield from fields_of(term)
    elif isinstance(node, Not):
        yield from fields_of(node.operand)
    else:
        yield node.field


def paging_options(top: str | None, skip: str | None) -> tuple[int | None, int | None]:
    """``$top`` and ``$skip`` as integers (None when absent); each service checks its own bounds.

    Raises:
        ODataError: either is not an integer.
    """
    try:
        return (int(top) if top is not None else None, int(skip) if skip is not None else None)
    except ValueError:
        raise ODataError("Invalid $top or $skip value.") from None


def next_link(host: str, path: str, query: Iterable[tuple[str, str]], drop: Iterable[str], add: dict[str, str]) -> str:
    """The absolute ``@odata.nextLink``: this request's query without ``drop``, plus ``add`` (e.g. ``$skiptoken``)."""
    dropped = set(drop)
    params = {key: value for key, value in query if key not in dropped}
    params.update(add)
    return f"https://{host}{path}?{urlencode(params)}"
