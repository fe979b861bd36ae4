"""Run configuration: params over Variables over defaults, validated."""

from __future__ import annotations

import pytest

from include.pipeline.config import DEFAULT_INDICATOR_TYPES, ConfigError, resolve

SUPPORTED = DEFAULT_INDICATOR_TYPES


def variables(**values: str):
    return lambda key: values.get(key)


def test_defaults_apply_when_nothing_is_set() -> None:
    cfg = resolve({}, variables(), SUPPORTED)
    assert cfg.sink == "graph"
    assert cfg.indicator_types == DEFAULT_INDICATOR_TYPES
    assert cfg.dry_run is False


def test_variables_are_read_with_the_tc_sentinel_prefix() -> None:
    cfg = resolve(
        {},
        variables(
            tc_sentinel_sink="sentinel",
            tc_sentinel_data_root="s3://bucket/tc",
            tc_sentinel_indicator_types='["Host", "URL"]',
        ),
        SUPPORTED,
    )
    assert (cfg.sink, cfg.data_root, cfg.indicator_types) == ("sentinel", "s3://bucket/tc", ("Host", "URL"))


def test_a_run_param_overrides_the_variable_of_the_same_name() -> None:
    cfg = resolve(
        {"sink": "graph", "indicator_types": ["File"], "data_root": None},
        variables(tc_sentinel_sink="sentinel", tc_sentinel_data_root="/data"),
        SUPPORTED,
    )
    assert (cfg.sink, cfg.indicator_types, cfg.data_root) == ("graph", ("File",), "/data")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sink": "splunk"}, "unknown target"),
        ({"indicator_types": ["Mutex"]}, "no mapping for indicator types"),
        ({"indicator_types": []}, "non-empty list"),
        ({"indicator_types": "Host"}, "JSON list"),
        ({"failure_threshold": 3}, "between 0 and 1"),
        ({"dry_run": "maybe"}, "true or false"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(params, variables(), SUPPORTED)


def test_duplicate_types_are_listed_once() -> None:
    assert resolve({"indicator_types": ["Host", "Host", "URL"]}, variables(), SUPPORTED).indicator_types == (
        "Host",
        "URL",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("graph", ("graph",)),
        ('["sentinel", "defender"]', ("sentinel", "defender")),
        (["sentinel", "Sentinel@sentinel_emea"], ("sentinel", "sentinel@sentinel_emea")),
        ("sentinel, defender", ("sentinel", "defender")),
    ],
)
def test_the_sink_setting_names_one_or_several_targets(value, expected) -> None:
    cfg = resolve({"sink": value}, variables(), SUPPORTED)
    assert cfg.targets == expected
    assert cfg.sink == expected[0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["graph", "graph"]', "listed twice"),
        ("sentinel@", "names no Connection"),
        ("[", "JSON list"),
        ("[]", "at least one"),
    ],
)
def test_a_target_list_that_cannot_work_is_refused_with_the_reason(value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve({"sink": value}, variables(), SUPPORTED)
