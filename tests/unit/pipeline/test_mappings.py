"""Mapping files: the shipped ones load with the agreed values, and broken ones fail with a clear message."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from include.pipeline.mappings import (
    DEFAULT_DIRECTORY,
    SUPPORTED_TYPES,
    ExpirationPolicy,
    MappingError,
    load_all,
    load_mapping,
    mapping_path,
    tlp_key,
)


@pytest.mark.parametrize(
    ("indicator_type", "branch", "entity", "kind", "observables", "threat_type"),
    [
        ("Address", "addresses", "address", "ip", {"ipv4": "networkIPv4", "ipv6": "networkIPv6"}, "C2"),
        ("Host", "hosts", "host", "host", {"domain": "domainName"}, "C2"),
        ("URL", "urls", "url", "url", {"url": "url"}, "MaliciousUrl"),
        ("EmailAddress", "emailAddresses", "emailAddress", "email", {"email": "emailSenderAddress"}, "Phishing"),
        (
            "File",
            "files",
            "file",
            "hash",
            {"md5": "fileHashValue", "sha1": "fileHashValue", "sha256": "fileHashValue"},
            "Malware",
        ),
    ],
)
def test_each_shipped_mapping_loads_with_its_branch_kind_observables_and_threat_type(
    indicator_type, branch, entity, kind, observables, threat_type
):
    m = load_mapping(indicator_type)
    assert (m.indicator_type, m.v2_branch, m.v2_entity, m.kind) == (indicator_type, branch, entity, kind)
    assert dict(m.observables) == observables
    assert m.threat_type == threat_type
    assert m.stix_indicator_types == ("malicious-activity",)
    assert m.tlp_default == "amber"
    assert 0 <= m.confidence_default <= 100
    assert m.severity_default == 3
    assert m.expiration.days > 0


def test_load_all_returns_every_supported_type_keyed_by_name():
    assert list(load_all()) == list(SUPPORTED_TYPES)


def test_a_mapping_is_immutable_and_hashable():
    m = load_mapping("Address")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.threat_type = "Botnet"  # type: ignore[misc]
    assert hash(m) == hash(load_mapping("Address"))


def test_the_standard_tlp_labels_are_always_known():
    labels = dict(load_mapping("Host").tlp_labels)
    assert labels["TLP:CLEAR"] == "white"
    assert labels["TLP:AMBER+STRICT"] == "amber"
    assert labels[tlp_key("tlp: Red")] == "red"


def test_expiration_overrides_apply_only_to_their_rating():
    policy = ExpirationPolicy(days=30, by_rating=((4, 60), (5, 90)))
    assert [policy.days_for(r) for r in (None, 0, 3, 4, 5)] == [30, 30, 30, 60, 90]


def test_an_observable_lookup_names_the_graph_property():
    assert load_mapping("Address").observable("ipv6") == "networkIPv6"
    with pytest.raises(KeyError):
        load_mapping("Host").observable("ipv4")


# --- broken files -----------------------------------------------------------------------------------------------


@pytest.fixture
def mapping_dir(tmp_path: Path) -> Path:
    """A copy of the shipped mapping files that a test may break."""
    for t in SUPPORTED_TYPES:
        shutil.copy(mapping_path(t), tmp_path)
    return tmp_path


def _rewrite(directory: Path, indicator_type: str, change) -> None:
    path = mapping_path(indicator_type, directory)
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_a_copied_directory_loads_like_the_shipped_one(mapping_dir):
    assert load_all(mapping_dir) == load_all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["graph"].update(threattype="C2"), "unknown key graph.threattype"),
        (lambda d: d.update(colour="red"), "unknown key colour"),
        (lambda d: d["tlp"].update(default="orange"), "tlp.default is 'orange', expected one of: amber, green"),
        (lambda d: d["graph"].update(threat_type="WatchList"), "graph.threat_type is 'WatchList'"),
        (lambda d: d["graph"].update(threat_type="c2"), "graph.threat_type is 'c2'"),
        (lambda d: d.update(kind="cidr"), "kind is 'cidr'"),
        (lambda d: d["graph"]["observables"].update(ipv4="networkIP"), "graph.observables.ipv4 is 'networkIP'"),
        (lambda d: d["graph"]["observables"].pop("ipv6"), "graph.observables must name exactly the variants"),
        (lambda d: d["stix"].update(indicator_types=["malicious"]), "stix.indicator_types[0] is 'malicious'"),
        (lambda d: d["stix"].update(indicator_types=[]), "stix.indicator_types must not be empty"),
        (lambda d: d.pop("description"), "missing required key description"),
        (lambda d: d["expiration"].pop("days"), "missing required key expiration.days"),
        (lambda d: d["expiration"].update(days=0), "expiration.days must be positive"),
        (lambda d: d["expiration"].update(days="30"), "expiration.days must be an integer"),
        (lambda d: d["expiration"].update(by_rating={6: 10}), "by_rating keys must be ratings 0-5"),
        (lambda d: d["expiration"].update(by_rating={4: -1}), "by_rating.4 must be a positive integer"),
        (lambda d: d["confidence"].update(default=True), "confidence.default must be an integer"),
        (lambda d: d["confidence"].update(default=101), "confidence.default must be within 0-100"),
        (lambda d: d["severity"].update(default=6), "severity.default must be within 0-5"),
        (lambda d: d["tlp"].update(labels={"PAP:RED": "crimson"}), "tlp.labels.PAP:RED is 'crimson'"),
        (lambda d: d["description"].update(template="{summary}"), "uses unknown field {summary}"),
        (lambda d: d["description"].update(fallback="{owner"), "description.fallback is not a valid template"),
        (lambda d: d["tags"].update(extra=["ok", ""]), "tags.extra[1] must be a non-empty string"),
        (lambda d: d["threatconnect"].update(type="Host"), "threatconnect.type is 'Host', expected 'Address'"),
        (lambda d: d.update(graph=["C2"]), "graph must be a mapping"),
    ],
)
def test_a_broken_mapping_file_is_refused_with_the_key_named(mapping_dir, change, message):
    _rewrite(mapping_dir, "Address", change)
    with pytest.raises(MappingError) as caught:
        load_mapping("Address", mapping_dir)
    assert "address.yaml" in str(caught.value)
    assert message in str(caught.value)


def test_optional_keys_may_be_left_out(mapping_dir):
    def strip(d):
        d.pop("tags")
        d["expiration"].pop("by_rating")
        d["expiration"].pop("use_threatconnect_expiry")
        d["severity"].pop("zero_rating_is_unset")

    _rewrite(mapping_dir, "Address", strip)
    m = load_mapping("Address", mapping_dir)
    assert m.extra_tags == ()
    assert m.expiration == ExpirationPolicy(days=30, by_rating=(), use_threatconnect_expiry=True)


def test_a_custom_security_label_can_map_to_a_tlp_level(mapping_dir):
    _rewrite(mapping_dir, "Host", lambda d: d["tlp"].update(labels={"Partner Only": "red"}))
    assert dict(load_mapping("Host", mapping_dir).tlp_labels)["PARTNERONLY"] == "red"


def test_a_file_that_is_not_yaml_is_refused(mapping_dir):
    mapping_path("URL", mapping_dir).write_text("kind: [unclosed\n")
    with pytest.raises(MappingError, match=r"url\.yaml: not valid YAML"):
        load_mapping("URL", mapping_dir)


def test_a_missing_file_is_refused(mapping_dir):
    mapping_path("File", mapping_dir).unlink()
    with pytest.raises(MappingError, match=r"file\.yaml: cannot read mapping file"):
        load_all(mapping_dir)


def test_an_unsupported_type_is_refused_before_any_file_is_read():
    with pytest.raises(MappingError, match="unsupported indicator type 'CIDR'"):
        load_mapping("CIDR")


def test_the_shipped_directory_holds_exactly_the_supported_types():
    assert sorted(p.name for p in DEFAULT_DIRECTORY.glob("*.yaml")) == sorted(
        f"{t.lower()}.yaml" for t in SUPPORTED_TYPES
    )
