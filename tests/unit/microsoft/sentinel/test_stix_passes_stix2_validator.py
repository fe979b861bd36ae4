"""Every STIX object we upload to Sentinel, judged by OASIS's ``stix2-validator`` (the TC's reference validator for
STIX 2.1): schemas, the MUST rules, the pattern grammar, and the SHOULD rules as errors.

Strictness: ``strict=True`` turns every SHOULD warning into an error, ``strict_types``/``strict_properties`` refuse
custom object types and properties. Two SHOULD checks are switched off, each a deliberate, documented choice:

- ``uuid-check`` (103): STIX 2.1 §2.9 recommends UUIDv4 for SDO ids. Ours are UUIDv5 of ``owner|type|value`` on
  purpose: the id is the idempotency key Sentinel upserts on (a re-upload must replace, not duplicate), and §2.9
  allows other UUID versions when the producer guarantees uniqueness (our namespace does).
- ``extref-hashes`` (302): an external reference with a ``url`` SHOULD carry ``hashes`` of the referenced content.
  Ours points at ThreatConnect's live indicator page, whose bytes change with every view: no hash could hold.
Everything else the validator reports, warning or error, fails the test.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests
from requests.structures import CaseInsensitiveDict
from stix2validator import ValidationOptions, validate_instance

from include.microsoft.sentinel import SentinelClient, SentinelSink
from include.microsoft.sentinel.stix import build_indicator
from tests.unit.microsoft.conftest import FakeTokenProvider
from tests.unit.microsoft.graph_rows import normalized_row, rows_frame
from tests.unit.microsoft.oracle_rows import all_rows

OPTIONS = ValidationOptions(
    version="2.1", strict=True, strict_types=True, strict_properties=True, disabled=["uuid-check", "extref-hashes"]
)
_dumps = json.dumps  # RecordingSentinel.request takes a `json` argument, as requests does


def findings(instance: dict[str, Any]) -> list[str]:
    """Every error and warning the validator reports for one object (or bundle)."""
    try:
        result = validate_instance(json.loads(json.dumps(instance)), OPTIONS)
    except Exception as exc:  # some checks (the pattern grammar in the SHOULD rules) raise instead of reporting
        return [f"{type(exc).__name__}: {exc}"]
    reported = [str(e) for e in result.errors] + [str(w) for w in result.warnings]
    return reported if result.is_valid or reported else ["invalid, without a message"]


ROWS = all_rows()  # rows as normalize leaves them: always with a description


# ------------------------------------------------------------------------------------------- the judge can fail
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"pattern": "[ipv4-addr:value = '198.51.100.7'"}, "expecting ']'"),
        ({"valid_until": "2000-01-01T00:00:00.000Z"}, "valid_until"),
        ({"confidence": 101}, "confidence"),
        ({"x_threatconnect_rating": 3}, "x_threatconnect_rating"),
        ({"object_marking_refs": ["tlp-amber"]}, "object_marking_refs"),
        ({"id": "indicator--not-a-uuid"}, "id"),
        ({"revoked": "yes"}, "revoked"),
    ],
)
def test_the_validator_refuses_a_broken_indicator_so_it_can_judge(change: dict[str, Any], expected: str) -> None:
    broken = {**build_indicator(rows_frame([normalized_row("ipv4")]).to_dict("records")[0]), **change}
    reported = findings(broken)
    assert any(expected in message for message in reported), reported


def test_the_two_disabled_checks_are_the_only_ones_our_objects_would_trip() -> None:
    """Proof the exemptions are needed (and no more): with them on, exactly those two checks speak."""
    row = rows_frame([normalized_row("url")]).to_dict("records")[0]
    result = validate_instance(build_indicator(row), ValidationOptions(version="2.1", strict=True))
    codes = {str(e).split("{", 1)[1].split("}", 1)[0] for e in result.errors}
    assert codes == {"103", "302"}, [str(e) for e in result.errors]


def test_a_row_without_a_description_trips_only_the_name_and_description_should() -> None:
    """Normalize always renders a description (the mapping's fallback), so this never reaches Sentinel; if a row
    ever came without one, STIX's SHOULD (303) is all the validator would hold against the object."""
    row = rows_frame([normalized_row("host", description=None)]).to_dict("records")[0]
    reported = findings(build_indicator(row))
    assert len(reported) == 1
    assert "{303} Both the name and description properties SHOULD be present" in reported[0]


# ------------------------------------------------------------------------------------------- every object we build
@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[name for name, _ in ROWS])
def test_every_indicator_we_build_passes_the_strict_validator(row: dict[str, Any]) -> None:
    assert findings(build_indicator(row)) == []


@pytest.mark.parametrize("row", [r for _, r in ROWS[:80]], ids=[name for name, _ in ROWS[:80]])
def test_every_revocation_we_send_passes_the_strict_validator(row: dict[str, Any]) -> None:
    sink = SentinelSink(
        SentinelClient("https://sentinel.invalid", "ws", FakeTokenProvider()),  # type: ignore[arg-type]
        sourcesystem="ThreatConnect-Example Org",
    )
    revoked = sink.retract_payload(row)
    assert revoked["revoked"] is True
    assert findings(revoked) == []


# ------------------------------------------------------------------------------------------- the upload on the wire
class RecordingSentinel:
    """A requests session for SentinelClient: records each upload body and accepts every object."""

    def __init__(self) -> None:
        self.uploads: list[Any] = []

    def request(self, method: str, url: str, json: Any = None, **_: Any) -> requests.Response:
        self.uploads.append(json)
        response = requests.Response()
        response.status_code = 200
        response._content = _dumps({"errors": []}).encode()
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json"})
        return response


def test_every_object_the_sink_uploads_and_revokes_passes_the_validator_in_a_bundle() -> None:
    rows = [
        normalized_row(sample, index)
        for index, sample in enumerate(["ipv4", "ipv6", "host", "url", "email", "md5", "sha1", "sha256"])
    ]
    session = RecordingSentinel()
    sink = SentinelSink(
        SentinelClient(
            "https://sentinel.example",
            "ws",
            FakeTokenProvider(),  # type: ignore[arg-type]
            session=session,
            max_retries=0,
            sleep=lambda _: None,
        ),
        sourcesystem="ThreatConnect-Example Org",
    )
    assert {r.status for r in sink.upsert(rows_frame(rows))} == {"ok"}
    assert {r.status for r in sink.retract(rows_frame(rows[:3]))} == {"ok"}
    objects = [obj for body in session.uploads for obj in body["stixobjects"]]
    assert len(objects) == len(rows) + 3
    # The upload envelope is Microsoft's, not STIX: its objects are what the validator judges, as one bundle.
    assert all(set(body) == {"sourcesystem", "stixobjects"} for body in session.uploads)
    bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
    assert findings(bundle) == []
