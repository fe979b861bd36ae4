"""The generator's recorded intent: one per record, consistent with the record it describes, and made without the
pipeline (the whole-DAG tests judge the pipeline with it)."""

from __future__ import annotations

import ast
import datetime as dt
import ipaddress
from pathlib import Path

import pytest

import simulators.dataset as dataset_module
from simulators.dataset import LOADED, NOT_LIVE, REASON_CLASSES, REJECTED, Dataset, generate, generate_dataset

START = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
END = dt.datetime(2024, 3, 8, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return generate_dataset(42, 20_000, "Example Org", START, END)


def test_the_records_are_generates_records(dataset) -> None:
    assert dataset.records == generate(42, 20_000, "Example Org", START, END)


def test_there_is_one_intent_per_record_of_the_same_type_and_time(dataset) -> None:
    assert list(dataset.intents) == [r["id"] for r in dataset.records]
    for record in dataset.records:
        intent = dataset.intents[record["id"]]
        assert (intent.indicator_type, intent.last_modified) == (record["type"], record["lastModified"])


def test_the_outcome_follows_the_ground_truth_and_the_status(dataset) -> None:
    for record in dataset.records:
        intent = dataset.intents[record["id"]]
        if record["_invalid"]:
            assert (intent.outcome, intent.observables) == (REJECTED, ())
            assert intent.reason in REASON_CLASSES
        elif not record["active"]:
            assert (intent.outcome, intent.reason) == (NOT_LIVE, "inactive")
        elif record["falsePositives"]:
            assert (intent.outcome, intent.reason) == (NOT_LIVE, "false positive")
        else:
            assert (intent.outcome, intent.reason) == (LOADED, None)
        assert intent.duplicate_of == record["_duplicate_of"]


def test_every_reason_class_is_used(dataset) -> None:
    assert {i.reason for i in dataset.intents.values() if i.outcome == REJECTED} == set(REASON_CLASSES)


def test_a_respelling_means_exactly_what_its_original_means(dataset) -> None:
    respelled = [i for i in dataset.intents.values() if i.duplicate_of is not None]
    assert respelled
    for intent in respelled:
        assert intent.observables == dataset.intents[intent.duplicate_of].observables


def test_the_clean_values_are_clean(dataset) -> None:
    for intent in dataset.intents.values():
        for observable in intent.observables:
            value, variant = observable.value, observable.variant
            assert value == value.strip(), observable
            assert value.isascii(), observable
            if variant in ("ipv4", "ipv6"):
                assert str(ipaddress.ip_address(value)) == value
                assert f"ip{'v6' if ':' in value else 'v4'}" == variant
            elif variant == "domain":
                assert value == value.lower()
                assert not value.endswith(".")
                assert ".." not in value
            elif variant == "email":
                assert value == value.lower()
                assert value.count("@") == 1
            elif variant == "url":
                scheme, _, rest = value.partition("://")
                assert scheme in ("http", "https")
                assert rest.split("/")[0] == rest.split("/")[0].lower()
            else:
                assert len(value) == {"md5": 32, "sha1": 40, "sha256": 64}[variant]
                assert value == value.lower()


def test_idn_hosts_mean_their_punycode_a_labels(dataset) -> None:
    idn = {
        r["hostName"]: dataset.intents[r["id"]].observables[0].value
        for r in dataset.records
        if r["type"] == "Host" and not r["hostName"].isascii() and r["_duplicate_of"] is None
    }
    assert idn
    for raw, clean in idn.items():
        for label, ace in zip(raw.split("."), clean.split("."), strict=True):
            assert ace == label if label.isascii() else ace.startswith("xn--") and ace.isascii()
    assert any(c.endswith(".xn--p1ai") for c in idn.values())


@pytest.mark.parametrize(
    ("label", "ace"),
    # A-labels published with the IDNA examples (the corpus, RFC 3492 samples): not computed here.
    [
        ("bücher", "xn--bcher-kva"),
        ("пример", "xn--e1afmkfd"),
        ("рф", "xn--p1ai"),
        ("例え", "xn--r8jz45g"),
        ("faß", "xn--fa-hia"),
        ("example", "example"),
    ],
)
def test_the_generators_a_label_rule_gives_the_published_a_labels(label, ace) -> None:
    assert dataset_module._ace(label) == ace


def test_the_generator_imports_nothing_of_the_pipeline() -> None:
    tree = ast.parse(Path(dataset_module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("include", "plugins", "dags")}
