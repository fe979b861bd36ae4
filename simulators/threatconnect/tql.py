"""TQL, ThreatConnect's query language: the subset the client and tests use, parsed and compiled to predicates."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulators.threatconnect.contract import HttpError, parse_date

_TOKEN = re.compile(
    r'\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<op>>=|<=|!=|=|>|<)'
    r"|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_WORD_OPS = {"EQ": "=", "NE": "!=", "GT": ">", "LT": "<", "GEQ": ">=", "LEQ": "<="}
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
}
# TQL field -> (record key, kind)
TQL_FIELDS = {
    "typename": ("type", "str"),
    "ownername": ("owner", "str"),
    "summary": ("summary", "str"),
    "lastmodified": ("lastModified", "date"),
    "dateadded": ("dateAdded", "date"),
    "indicatoractive": ("active", "bool"),
    "id": ("id", "num"),
    "rating": ("rating", "num"),
    "confidence": ("confidence", "num"),
    "threatassessscore": ("threatAssessScore", "num"),
    "falsepositivecount": ("falsePositives", "num"),
}


@dataclass
class Cmp:
    key: str
    op: str  # = != > < >= <= in notin
    value: Any


@dataclass
class Bool:
    op: str  # and / or
    children: list[Any]


class TqlParser:
    """Recursive descent over the small TQL subset the client and tests use."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = text.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                raise HttpError(400, f"Invalid TQL near position {position}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            position = match.end()
        self.position = 0

    def parse(self) -> Any:
        node = self._or()
        if self.position != len(self.tokens):
            raise HttpError(400, f"Invalid TQL: unexpected {self.tokens[self.position][1]!r}")
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _take(self, kind: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None or (kind is not None and token[0] != kind):
            raise HttpError(
                400,
                "Invalid TQL: unexpected end of query" if token is None else f"Invalid TQL: unexpected {token[1]!r}",
            )
        self.position += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "word" and token[1].upper() == word:
            self.position += 1
            return True
        return False

    def _or(self) -> Any:
        children = [self._and()]
        while self._keyword("OR"):
            children.append(self._and())
        return children[0] if len(children) == 1 else Bool("or", children)

    def _and(self) -> Any:
        children = [self._atom()]
        while self._keyword("AND"):
            children.append(self._atom())
        return children[0] if len(children) == 1 else Bool("and", children)

    def _atom(self) -> Any:
        if self._peek() == ("lp", "("):
            self._take()
            node = self._or()
            self._take("rp")
            return node
        name = self._take("word")[1]
        field = TQL_FIELDS.get(name.lower())
        if field is None:
            raise HttpError(400, f"Invalid TQL: unknown field {name!r}")
        key, kind = field
        negate = self._keyword("NOT")
        if self._keyword("IN"):
            self._take("lp")
            values = [self._value(kind)]
            while self._peek() == ("comma", ","):
                self._take()
                values.append(self._value(kind))
            self._take("rp")
            return Cmp(key, "notin" if negate else "in", set(values))
        if negate:
            raise HttpError(400, "Invalid TQL: NOT must precede IN")
        token = self._take()
        op = token[1] if token[0] == "op" else _WORD_OPS.get(token[1].upper(), "")
        if not op:
            raise HttpError(400, f"Invalid TQL: unknown operator {token[1]!r}")
        if kind in ("str", "bool") and op not in ("=", "!="):
            raise HttpError(400, f"Invalid TQL: operator {token[1]!r} not valid for {name}")
        return Cmp(key, op, self._value(kind))

    def _value(self, kind: str) -> Any:
        token_kind, text = self._take()
        if token_kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "date":
            try:
                return parse_date(text)
            except ValueError:
                raise HttpError(400, f"Invalid TQL: bad date {text!r}") from None
        if kind == "bool":
            if text.lower() not in ("true", "false"):
                raise HttpError(400, f"Invalid TQL: bad boolean {text!r}")
            return text.lower() == "true"
        if kind == "num":
            try:
                return float(text)
            except ValueError:
                raise HttpError(400, f"Invalid TQL: bad number {text!r}") from None
        return text


def compile_tql(node: Any) -> Callable[[dict[str, Any]], bool]:
    """A parsed TQL tree as a predicate over records."""
    if isinstance(node, Bool):
        parts = [compile_tql(child) for child in node.children]
        if node.op == "and":
            return lambda record: all(part(record) for part in parts)
        return lambda record: any(part(record) for part in parts)
    key, op, value = node.key, node.op, node.value
    if op == "in":
        return lambda record: record.get(key) in value
    if op == "notin":
        return lambda record: record.get(key) not in value
    compare = COMPARE[op]

    def predicate(record: dict[str, Any]) -> bool:
        field = record.get(key)
        return field is not None and compare(field, value)

    return predicate


def mentions(node: Any, key: str) -> bool:
    """Whether the TQL tree reads the record key ``key`` anywhere."""
    if isinstance(node, Bool):
        return any(mentions(child, key) for child in node.children)
    return node.key == key


def conjuncts(node: Any) -> list[Any]:
    """The top-level AND clauses of a TQL tree (the tree itself when it is not an AND)."""
    return node.children if isinstance(node, Bool) and node.op == "and" else [node]
