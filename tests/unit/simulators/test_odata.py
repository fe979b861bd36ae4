"""The shared OData ``$filter`` parser, judged by the examples of OData v4.01 URL Conventions and Graph's docs.

Expected trees come from the spec's own reading of each example (section numbers are OData Version 4.01 Part 2:
URL Conventions; operator precedence is its table in 5.1.1.16), not from this parser's output.
"""

from __future__ import annotations

import datetime as dt
import uuid
from urllib.parse import parse_qsl, urlsplit

import pytest

from simulators.defender import DefenderRequestError
from simulators.defender import parse_filter as defender_filter
from simulators.graph import GraphValidationError
from simulators.graph import parse_filter as graph_filter
from simulators.odata import (
    Call,
    Compare,
    In,
    Logical,
    Not,
    ODataError,
    compile_filter,
    fields_of,
    next_link,
    paging_options,
    parse_filter,
)


# ----------------------------------------------------------------- comparison operators (5.1.1.1)
@pytest.mark.parametrize("op", ["eq", "ne", "gt", "ge", "lt", "le"])
def test_each_comparison_example_of_the_spec_is_one_comparison(op: str) -> None:
    # 5.1.1.1.1-6: "Name eq 'Milk'", "Name ne 'Milk'", "Name gt 'Milk'", ... all over Products.
    assert parse_filter(f"Name {op} 'Milk'") == Compare("Name", op, "Milk")


def test_the_in_example_lists_its_values() -> None:
    # 5.1.1.1.12: "Name in ('Milk', 'Cheese')"
    assert parse_filter("Name in ('Milk', 'Cheese')") == In("Name", ("Milk", "Cheese"))


def test_graph_docs_in_example_on_mail() -> None:
    # Graph "Use the $filter query parameter": mail in ('mail1@domain.com', 'mail2@domain.com')
    assert parse_filter("mail in ('mail1@domain.com', 'mail2@domain.com')") == In(
        "mail", ("mail1@domain.com", "mail2@domain.com")
    )


# ----------------------------------------------------------------- logical operators (5.1.1.2)
def test_and_example_of_the_spec() -> None:
    # 5.1.1.2.1: "Name eq 'Milk' and Price lt 2.55"
    assert parse_filter("Name eq 'Milk' and Price lt 2.55") == Logical(
        "and", (Compare("Name", "eq", "Milk"), Compare("Price", "lt", 2.55))
    )


def test_or_example_of_the_spec() -> None:
    # 5.1.1.2.2: "Name eq 'Milk' or Price lt 2.55"
    assert parse_filter("Name eq 'Milk' or Price lt 2.55") == Logical(
        "or", (Compare("Name", "eq", "Milk"), Compare("Price", "lt", 2.55))
    )


def test_not_example_of_the_spec_negates_a_function_call() -> None:
    # 5.1.1.2.3: "not endswith(Name,'ilk')"
    assert parse_filter("not endswith(Name,'ilk')") == Not(Call("endswith", "Name", "ilk"))


def test_and_binds_tighter_than_or() -> None:
    # 5.1.1.16: and has higher precedence than or, so "a or b and c" is "a or (b and c)".
    assert parse_filter("Name eq 'Milk' or Name eq 'Bread' and Price lt 2.55") == Logical(
        "or",
        (Compare("Name", "eq", "Milk"), Logical("and", (Compare("Name", "eq", "Bread"), Compare("Price", "lt", 2.55)))),
    )


def test_parentheses_override_precedence() -> None:
    # 5.1.1.15 grouping: "(a or b) and c".
    assert parse_filter("(Name eq 'Milk' or Name eq 'Bread') and Price lt 2.55") == Logical(
        "and",
        (Logical("or", (Compare("Name", "eq", "Milk"), Compare("Name", "eq", "Bread"))), Compare("Price", "lt", 2.55)),
    )


def test_a_chain_of_ands_is_one_node() -> None:
    # Graph's pipeline's own query shape: "externalId eq 'a' or externalId eq 'b' or ..."
    tree = parse_filter("externalId eq 'a' or externalId eq 'b' or externalId eq 'c'")
    assert tree == Logical("or", tuple(Compare("externalId", "eq", v) for v in "abc"))


# ----------------------------------------------------------------- string functions (5.1.1.5)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("contains(CompanyName,'freds')", Call("contains", "CompanyName", "freds")),  # 5.1.1.5.1
        ("endswith(CompanyName,'Futterkiste')", Call("endswith", "CompanyName", "Futterkiste")),  # 5.1.1.5.2
        ("startswith(CompanyName,'Futterkiste')", Call("startswith", "CompanyName", "Futterkiste")),  # 5.1.1.5.3
        ("startswith(givenName,'J')", Call("startswith", "givenName", "J")),  # Graph docs, users
    ],
)
def test_string_function_examples(text: str, expected: Call) -> None:
    assert parse_filter(text) == expected


# ----------------------------------------------------------------- literals (5.1.1.6 and the ABNF)
def test_a_doubled_quote_is_one_quote_in_a_string() -> None:
    # ABNF SQUOTE-in-string: "O''Neil" is the string O'Neil.
    assert parse_filter("LastName eq 'O''Neil'") == Compare("LastName", "eq", "O'Neil")


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("true", True),
        ("false", False),
        ("null", None),
        ("42", 42),
        ("-7", -7),
        ("2.55", 2.55),
        ("1e3", 1000.0),
        ("2012-12-03", dt.date(2012, 12, 3)),
        ("2012-12-03T07:16:23Z", dt.datetime(2012, 12, 3, 7, 16, 23, tzinfo=dt.UTC)),
        (
            "2012-12-03T07:16:23+02:00",
            dt.datetime(2012, 12, 3, 7, 16, 23, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        ),
        ("01234567-89ab-cdef-0123-456789abcdef", uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")),
    ],
)
def test_primitive_literals_become_python_values(literal: str, value: object) -> None:
    # Literal forms of the ABNF: booleans, null, integers, decimals, doubles, dates, DateTimeOffsets, GUIDs.
    parsed = parse_filter(f"Prop eq {literal}")
    assert parsed == Compare("Prop", "eq", value)
    assert type(parsed.value) is type(value)


def test_seven_fractional_digits_of_a_date_time_are_read() -> None:
    # Graph writes DateTimeOffsets with ticks (7 digits); the literal must still parse.
    parsed = parse_filter("ingestedDateTime ge 2021-05-01T10:20:30.1234567Z")
    assert parsed == Compare("ingestedDateTime", "ge", dt.datetime(2021, 5, 1, 10, 20, 30, 123456, tzinfo=dt.UTC))


# ----------------------------------------------------------------- what is refused
@pytest.mark.parametrize(
    "text",
    [
        "",  # nothing to filter on
        "Name eq",  # a comparison without its right operand
        "Name eq 'Milk' or",  # a dangling logical operator
        "Name eq 'Milk')",  # an unbalanced parenthesis
        "(Name eq 'Milk'",  # an unclosed group
        "Name eq 'Milk",  # an unterminated string
        "Name EQ 'Milk'",  # operators are lower case
        "Name has 'Milk'",  # has is not parsed
        "(Price sub 5) gt 10",  # 5.1.1.3 arithmetic is not parsed
        "Address/City eq 'Redmond'",  # property paths are not parsed
        "tags/any(t:t eq 'x')",  # lambda operators are not parsed
        "tolower(Name) eq 'milk'",  # other functions are not parsed
        "'Milk' eq Name",  # the property comes first
        "Name eq Price",  # the right operand is a literal
    ],
)
def test_anything_outside_the_subset_is_an_odata_error(text: str) -> None:
    with pytest.raises(ODataError):
        parse_filter(text)


# ----------------------------------------------------------------- compiling and the query options
def test_compile_combines_and_or_and_leaves_terms_to_the_caller() -> None:
    seen: list[object] = []

    def leaf(node: object) -> object:
        seen.append(node)
        assert isinstance(node, Compare)
        return lambda item: item.get(node.field) == node.value

    predicate = compile_filter(parse_filter("a eq 1 or b eq 2 and c eq 3"), leaf)
    assert predicate({"a": 1})
    assert predicate({"b": 2, "c": 3})
    assert not predicate({"b": 2, "c": 4})
    assert [node.field for node in seen] == ["a", "b", "c"]


def test_not_is_the_callers_to_refuse() -> None:
    def leaf(node: object) -> object:
        raise ValueError(type(node).__name__)

    with pytest.raises(ValueError, match="Not"):
        compile_filter(parse_filter("not (a eq 1)"), leaf)


def test_fields_of_lists_every_property_read() -> None:
    assert list(fields_of(parse_filter("a eq 1 and (not startswith(b,'x') or c in (1, 2))"))) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("top", "skip", "expected"),
    [(None, None, (None, None)), ("10", None, (10, None)), ("5", "20", (5, 20))],
)
def test_paging_options_are_integers(top: str | None, skip: str | None, expected: tuple[int | None, ...]) -> None:
    assert paging_options(top, skip) == expected


@pytest.mark.parametrize(("top", "skip"), [("ten", None), (None, "1.5"), ("", None)])
def test_paging_options_that_are_not_integers_are_refused(top: str | None, skip: str | None) -> None:
    with pytest.raises(ODataError):
        paging_options(top, skip)


def test_a_next_link_keeps_the_query_and_replaces_paging() -> None:
    query = [("$filter", "threatType eq 'C2'"), ("$top", "2"), ("$skip", "4")]
    link = next_link("graph.example", "/beta/x", query, ("$skip",), {"$skiptoken": "abc"})
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "graph.example", "/beta/x")
    assert parse_qsl(parts.query) == [("$filter", "threatType eq 'C2'"), ("$top", "2"), ("$skiptoken", "abc")]


# ----------------------------------------------------------------- the two services on top of it
@pytest.mark.parametrize(
    "text",
    [
        "externalId gt 'a'",
        "externalId in ('a', 'b')",
        "startswith(externalId,'a')",
        "not (externalId eq 'a')",
        "confidence eq 1.5",
        "expirationDateTime eq 2030-01-01T00:00:00Z",
    ],
)
def test_graph_still_refuses_all_but_eq_and_ne_on_literals(text: str) -> None:
    with pytest.raises(GraphValidationError):
        graph_filter(text)


@pytest.mark.parametrize(
    "text",
    [
        "title gt 'a'",
        "title in ('a', 'b')",
        "startswith(title,'a')",
        "not (title eq 'a')",
        "expirationTime eq 2030-01-01T00:00:00Z",
        "color eq 'red'",
    ],
)
def test_defender_still_refuses_all_but_eq_and_ne_on_its_filter_fields(text: str) -> None:
    with pytest.raises(DefenderRequestError):
        defender_filter(text)


def test_graph_compares_strings_exactly_and_defender_ignoring_case() -> None:
    assert not graph_filter("externalId eq 'ABC'")({"externalId": "abc"})
    assert defender_filter("title eq 'ABC'")({"title": "abc"})
    assert defender_filter("title ne 'ABC'")({"title": "abd"})
    assert graph_filter("isActive eq true and severity ne 3")({"isActive": True, "severity": 2})
