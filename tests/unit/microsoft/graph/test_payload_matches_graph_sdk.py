"""Every Graph body we send, judged by Microsoft's Graph beta SDK (``msgraph-beta-sdk``, pinned): the ``tiIndicator``
model's serializer names the wire properties and the kind each is written as, its enums give the allowed values,
its doc comments the required properties, the fixed vocabularies and the ranges. The SDK is read from its wheel
(``models/ti_indicator.py`` and friends), never installed or imported.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from include.microsoft.graph import GraphClient, GraphSink, build_payload
from include.microsoft.graph.payload import update_body
from tests.unit.microsoft.conftest import FakeTokenProvider
from tests.unit.microsoft.graph_rows import normalized_row, rows_frame
from tests.unit.microsoft.oracle_rows import all_rows
from tests.vendor_wheels import MSGRAPH_BETA, read_member, wheel

_MODELS = "msgraph_beta/generated/models"
_TI = "msgraph_beta/generated/security/ti_indicators"
_WRITE = re.compile(r"write_(\w+?)_values?$")
#: Kiota's placeholder for values a newer service may add; never a value a client sends.
_KIOTA_SENTINEL = "unknownFutureValue"
#: Edm.DateTimeOffset as Graph writes and reads it (ISO 8601, up to 7 fractional digits, Z or an offset).
_dumps = json.dumps  # RecordingGraph.request takes a `json` argument, as requests does
_EDM_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})$")


@dataclass
class Property:
    wire: str
    attribute: str
    kind: str  # the serializer's writer: str, int, bool, datetime, enum, collection_of_primitive
    comment: str = ""
    enum_values: frozenset[str] = frozenset()


@dataclass
class SdkModel:
    properties: dict[str, Property]
    entity_properties: dict[str, str]  # wire name -> writer kind, from the Entity base class (id, @odata.type)
    envelopes: dict[str, dict[str, str]] = field(default_factory=dict)  # action -> {wire key: writer kind}

    def required(self) -> set[str]:
        return {p.wire for p in self.properties.values() if "Required" in p.comment and not self.stamped(p.wire)}

    def stamped(self, wire: str) -> bool:
        return self.properties[wire].comment.startswith("Stamped by the system")

    def vocabulary(self, wire: str) -> set[str]:
        found = re.search(r"values are: ([^.]+)", self.properties[wire].comment)
        return {v.strip() for v in found.group(1).split(",")} if found else set()

    def int_range(self, wire: str) -> tuple[int, int] | None:
        found = re.search(r"values are (\d+)\s*\W\s*(\d+)", self.properties[wire].comment)
        return (int(found.group(1)), int(found.group(2))) if found else None

    def max_length(self, wire: str) -> int | None:
        found = re.search(r"\((\d+) characters or less\)", self.properties[wire].comment)
        return int(found.group(1)) if found else None


def _writes(function: ast.FunctionDef) -> list[tuple[str, str, str]]:
    """``(wire name, attribute, writer kind)`` of each ``writer.write_*_value("wire", self.attr)`` call."""
    found = []
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "writer"
            and len(node.args) == 2
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[1], ast.Attribute)
        ):
            match = _WRITE.match(node.func.attr)
            assert match, f"unexpected writer call {node.func.attr}"
            found.append((node.args[0].value, node.args[1].attr, match.group(1)))
    return found


def _enum_values(source: str) -> frozenset[str]:
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    values = set()
    for node in cls.body:
        if isinstance(node, ast.Assign):
            value = node.value.elts[0] if isinstance(node.value, ast.Tuple) else node.value  # `X = "x",` is a tuple
            assert isinstance(value, ast.Constant)
            values.add(value.value)
    return frozenset(values)


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _envelope(source: str, class_name: str) -> dict[str, str]:
    cls = _class(ast.parse(source), class_name)
    return {wire: kind for wire, _attr, kind in _writes(_method(cls, "serialize"))}


@pytest.fixture(scope="module")
def sdk() -> SdkModel:
    whl = wheel(*MSGRAPH_BETA)
    source = read_member(whl, f"{_MODELS}/ti_indicator.py")
    tree = ast.parse(source)
    cls = _class(tree, "TiIndicator")
    lines = source.splitlines()
    enum_modules = {
        alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
    }
    annotations: dict[str, tuple[str, str]] = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above = lines[node.lineno - 2].strip()
            annotations[node.target.id] = (ast.unparse(node.annotation), above[1:].strip() if above[0] == "#" else "")
    properties: dict[str, Property] = {}
    for wire, attribute, kind in _writes(_method(cls, "serialize")):
        annotation, comment = annotations[attribute]
        prop = Property(wire, attribute, kind, comment)
        if kind == "enum":
            enum_class = re.fullmatch(r"Optional\[(\w+)\]", annotation).group(1)  # type: ignore[union-attr]
            prop.enum_values = _enum_values(read_member(whl, f"{_MODELS}/{enum_modules[enum_class]}.py"))
        properties[wire] = prop
    # Entity is one 1 MB module of every model: read only its serializer's calls.
    entity_source = read_member(whl, f"{_MODELS}/entity.py")
    start = entity_source.index("def serialize", entity_source.index("\nclass Entity("))
    end = entity_source.find("\n    def ", start + 1)
    entity = {
        wire: kind
        for kind, wire in re.findall(r'writer\.write_(\w+?)_value\("([^"]+)", self\.\w+\)', entity_source[start:end])
    }
    envelopes = {
        action: _envelope(read_member(whl, f"{_TI}/{snake}/{snake}_post_request_body.py"), f"{camel}PostRequestBody")
        for action, snake, camel in (
            ("submitTiIndicators", "submit_ti_indicators", "SubmitTiIndicators"),
            ("updateTiIndicators", "update_ti_indicators", "UpdateTiIndicators"),
            ("deleteTiIndicatorsByExternalId", "delete_ti_indicators_by_external_id", "DeleteTiIndicatorsByExternalId"),
        )
    }
    return SdkModel(properties, entity, envelopes)


def _value_problem(sdk: SdkModel, wire: str, value: Any) -> str | None:
    """Why ``value`` is not what the SDK's serializer would write for ``wire``, or None."""
    prop = sdk.properties[wire]
    if prop.kind == "str":
        ok = isinstance(value, str)
    elif prop.kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif prop.kind == "bool":
        ok = isinstance(value, bool)
    elif prop.kind == "enum":
        ok = isinstance(value, str) and value in prop.enum_values - {_KIOTA_SENTINEL}
    elif prop.kind == "datetime":
        # The SDK's doc comments: "ISO 8601 format and is always in UTC time".
        ok = isinstance(value, str) and bool(_EDM_DATETIME.match(value))
        if ok:
            parsed = dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00")))
            ok = parsed.utcoffset() == dt.timedelta(0)
    elif prop.kind == "collection_of_primitive":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)  # annotated list[str]
    else:
        return f"{wire}: the SDK writes it as {prop.kind!r}, which this oracle does not know"
    return (
        None
        if ok
        else f"{wire}={value!r} is not a valid {prop.kind} value"
        + (f" (one of {sorted(prop.enum_values - {_KIOTA_SENTINEL})})" if prop.kind == "enum" else "")
    )


def tiindicator_problems(sdk: SdkModel, body: Mapping[str, Any], allow: frozenset[str] = frozenset()) -> list[str]:
    """Everything in ``body`` the SDK's tiIndicator model would not write: unknown properties, wrong kinds,
    values outside the vocabularies, ranges and lengths its doc comments give."""
    problems = []
    for wire, value in body.items():
        if wire in allow:
            continue
        if wire not in sdk.properties:
            problems.append(f"{wire!r} is not a tiIndicator property")
            continue
        if sdk.stamped(wire):
            problems.append(f"{wire!r} is stamped by the system, a client does not send it")
        problem = _value_problem(sdk, wire, value)
        if problem:
            problems.append(problem)
            continue
        vocabulary = sdk.vocabulary(wire) if sdk.properties[wire].kind == "str" else set()
        if vocabulary and value not in vocabulary:
            problems.append(f"{wire}={value!r} is not one of the SDK's values {sorted(vocabulary)}")
        bounds = sdk.int_range(wire) if sdk.properties[wire].kind == "int" else None
        if bounds and not bounds[0] <= value <= bounds[1]:
            problems.append(f"{wire}={value} is outside {bounds}")
        limit = sdk.max_length(wire)
        if limit is not None and len(value) > limit:
            problems.append(f"{wire} has {len(value)} characters, more than {limit}")
    return problems


ROWS = all_rows(description=False)  # Graph's builder has its own fallback: exercise it too


# ------------------------------------------------------------------------------------------- the oracle itself
def test_the_sdk_model_was_read_completely(sdk: SdkModel) -> None:
    assert len(sdk.properties) >= 50
    assert sdk.properties["tlpLevel"].enum_values >= {"white", "green", "amber", "red"}
    assert sdk.properties["fileHashType"].enum_values >= {"md5", "sha1", "sha256"}
    assert sdk.properties["action"].enum_values >= {"alert", "block", "allow"}
    assert sdk.properties["expirationDateTime"].kind == "datetime"
    assert sdk.required() >= {"action", "description", "expirationDateTime", "targetProduct", "threatType", "tlpLevel"}
    assert {"Azure Sentinel", "Microsoft Defender ATP"} <= sdk.vocabulary("targetProduct")
    assert {"C2", "Malware", "Phishing", "MaliciousUrl"} <= sdk.vocabulary("threatType")
    assert sdk.int_range("confidence") == (0, 100)
    assert sdk.int_range("severity") == (0, 5)
    assert sdk.max_length("description") == 100
    assert sdk.stamped("azureTenantId")
    assert sdk.stamped("ingestedDateTime")
    assert sdk.entity_properties.get("id") == "str"
    assert sdk.envelopes["submitTiIndicators"] == {"value": "collection_of_object"}
    assert sdk.envelopes["deleteTiIndicatorsByExternalId"] == {"value": "collection_of_primitive"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"tlp": "amber"}, "'tlp' is not a tiIndicator property"),
        ({"tlpLevel": "Amber"}, "tlpLevel='Amber' is not a valid enum value"),
        ({"fileHashType": "sha512"}, "fileHashType='sha512' is not a valid enum value"),
        ({"confidence": "80"}, "confidence='80' is not a valid int value"),
        ({"severity": 6}, "severity=6 is outside (0, 5)"),
        ({"isActive": "true"}, "isActive='true' is not a valid bool value"),
        ({"expirationDateTime": "2026-04-10 08:30:00"}, "expirationDateTime='2026-04-10 08:30:00' is not a valid"),
        ({"expirationDateTime": "2026-04-10T08:30:00+02:00"}, "expirationDateTime='2026-04-10T08:30:00+02:00' is not"),
        ({"targetProduct": "Microsoft Sentinel"}, "targetProduct='Microsoft Sentinel' is not one of"),
        ({"threatType": "Spam"}, "threatType='Spam' is not one of"),
        ({"description": "x" * 101}, "description has 101 characters, more than 100"),
        ({"tags": "apt"}, "tags='apt' is not a valid collection_of_primitive value"),
        ({"azureTenantId": "t"}, "'azureTenantId' is stamped by the system"),
    ],
)
def test_the_oracle_refuses_what_the_sdk_would_not_write(sdk: SdkModel, body: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in tiindicator_problems(sdk, body)), tiindicator_problems(sdk, body)


# ------------------------------------------------------------------------------------------- create bodies
@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[name for name, _ in ROWS])
def test_every_create_body_uses_only_sdk_properties_with_the_sdk_value_kinds(
    sdk: SdkModel, row: dict[str, Any]
) -> None:
    body = build_payload(row)
    assert tiindicator_problems(sdk, body) == []
    assert sdk.required() <= body.keys(), f"missing required {sorted(sdk.required() - body.keys())}"
    assert "id" not in body  # Graph assigns the id on create
    assert json.loads(json.dumps(body)) == body  # plain JSON: what the SDK's JSON writer would produce


# ------------------------------------------------------------------------------------------- what goes on the wire
class RecordingGraph:
    """A requests session for GraphClient: holds some indicators, records every JSON body posted, answers like
    Graph (submit/update echo ids, delete answers a resultInfo per id)."""

    def __init__(self, held: dict[str, str]) -> None:
        self.held = held  # external id -> Graph id
        self.posted: list[tuple[str, Any]] = []

    def request(self, method: str, url: str, json: Any = None, **_: Any) -> requests.Response:
        action = url.rsplit("/", 1)[-1].split("?")[0]
        if method == "GET":
            wanted = re.findall(r"externalId eq '([^']*)'", unquote(url)) or list(self.held)
            body: Any = {"value": [{"id": self.held[e], "externalId": e} for e in wanted if e in self.held]}
        else:
            self.posted.append((action, json))
            if action == "submitTiIndicators":
                body = {"value": [{**item, "id": str(uuid.uuid4())} for item in json["value"]]}
            elif action == "updateTiIndicators":
                body = {"value": [{"id": item["id"]} for item in json["value"]]}
            else:
                body = {"value": [{"code": 204} for _ in json["value"]]}
        response = requests.Response()
        response.status_code = 200
        response._content = _dumps(body).encode()
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        return response


@pytest.fixture
def wire_bodies() -> list[tuple[str, Any]]:
    """What the Graph sink posts for a create, an update of a held indicator and a retract, by action."""
    rows = [
        normalized_row(sample, index)
        for index, sample in enumerate(["ipv4", "ipv6", "host", "url", "email", "md5", "sha1", "sha256"])
    ]
    held = {rows[i]["external_id"]: str(uuid.uuid4()) for i in (1, 3, 5, 7)}
    session = RecordingGraph(held)
    sink = GraphSink(
        GraphClient(
            "https://graph.example",
            FakeTokenProvider(),
            session=session,  # type: ignore[arg-type]
            max_retries=0,
            sleep=lambda _: None,
        )
    )
    results = sink.upsert(rows_frame(rows))
    assert {r.status for r in results} == {"ok"}
    assert sink.retract(rows_frame([rows[1], rows[3]]))[0].status == "ok"
    return session.posted


def test_the_sink_posts_creates_updates_and_deletes(wire_bodies: list[tuple[str, Any]]) -> None:
    assert {action for action, _ in wire_bodies} == {
        "submitTiIndicators",
        "updateTiIndicators",
        "deleteTiIndicatorsByExternalId",
    }


def test_every_batch_envelope_has_only_the_keys_the_sdk_request_body_serializes(
    sdk: SdkModel, wire_bodies: list[tuple[str, Any]]
) -> None:
    for action, body in wire_bodies:
        assert set(body) == set(sdk.envelopes[action]), action
        assert isinstance(body["value"], list)
        assert body["value"]


def test_every_submitted_indicator_is_a_valid_sdk_tiindicator_with_its_required_properties(
    sdk: SdkModel, wire_bodies: list[tuple[str, Any]]
) -> None:
    items = [item for action, body in wire_bodies if action == "submitTiIndicators" for item in body["value"]]
    assert len(items) == 4
    for item in items:
        assert tiindicator_problems(sdk, item) == []
        assert sdk.required() <= item.keys()


def test_every_updated_indicator_is_an_sdk_tiindicator_carrying_its_entity_id(
    sdk: SdkModel, wire_bodies: list[tuple[str, Any]]
) -> None:
    items = [item for action, body in wire_bodies if action == "updateTiIndicators" for item in body["value"]]
    assert len(items) == 4
    for item in items:
        assert tiindicator_problems(sdk, item, allow=frozenset(sdk.entity_properties)) == []
        assert isinstance(item["id"], str)
        assert item["id"]


def test_a_delete_by_external_id_sends_the_sdk_list_of_strings(wire_bodies: list[tuple[str, Any]]) -> None:
    deletes = [body["value"] for action, body in wire_bodies if action == "deleteTiIndicatorsByExternalId"]
    assert deletes
    assert all(isinstance(v, str) for values in deletes for v in values)


@pytest.mark.parametrize("row", [r for _, r in ROWS[:60]], ids=[name for name, _ in ROWS[:60]])
def test_every_update_body_uses_only_sdk_properties_and_the_entity_id(sdk: SdkModel, row: dict[str, Any]) -> None:
    body = update_body("5f7a0c39-8d6e-4d4c-9a55-0c1e2f3a4b5c", build_payload(row))
    assert tiindicator_problems(sdk, body, allow=frozenset(sdk.entity_properties)) == []
