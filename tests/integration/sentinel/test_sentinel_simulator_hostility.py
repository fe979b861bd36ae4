"""The Sentinel simulator's hostile corners over loopback HTTPS, as a SentinelClient meets them."""

from __future__ import annotations

from typing import Any

import pytest

from include.microsoft.sentinel import SentinelClient
from tests.integration.sentinel.sentinel_stack import SOURCE, SentinelStack

pytestmark = pytest.mark.integration

# KB 208427: 2,083 characters is the longest URL Microsoft supports.
LONGEST_URL = "https://bad.example/" + "a" * (2083 - len("https://bad.example/"))


def _indicator(n: int, url: str = "https://bad.example/x") -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--00000000-0000-4000-8000-{n:012d}",
        "created": "2026-03-01T00:00:00.000Z",
        "modified": "2026-03-02T09:15:00.000Z",
        "name": f"url {n}",
        "pattern": f"[url:value = '{url}']",
        "pattern_type": "stix",
        "valid_from": "2026-03-01T00:00:00.000Z",
    }


def test_an_overlong_url_value_is_a_per_record_pattern_error(stack: SentinelStack, client: SentinelClient) -> None:
    objects = [_indicator(1, LONGEST_URL), _indicator(2, LONGEST_URL + "b")]
    errors = client.upload(SOURCE, objects)
    assert [e["recordIndex"] for e in errors] == [1]
    assert errors[0]["errorMessages"][0].startswith("Error for Property=pattern: ")
    assert set(client.query([o["id"] for o in objects], SOURCE)) == {objects[0]["id"]}


def test_an_acknowledged_but_dropped_object_is_absent_from_the_query(
    stack: SentinelStack, client: SentinelClient
) -> None:
    objects = [_indicator(1), _indicator(2)]
    stack.sentinel.drop_acknowledged(lambda obj: obj["id"] == objects[1]["id"])
    assert client.upload(SOURCE, objects) == []
    assert set(client.query([o["id"] for o in objects], SOURCE)) == {objects[0]["id"]}


def test_an_object_removed_behind_the_clients_back_is_absent_from_the_query(
    stack: SentinelStack, client: SentinelClient
) -> None:
    objects = [_indicator(1), _indicator(2)]
    client.upload(SOURCE, objects)
    assert stack.sentinel.remove(lambda obj: obj["id"] == objects[0]["id"]) == 1
    assert set(client.query([o["id"] for o in objects], SOURCE)) == {objects[1]["id"]}
