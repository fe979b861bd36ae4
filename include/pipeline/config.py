"""Run configuration: Airflow Variables (``tc_sentinel_*``) overridden per run by DAG params of the same name."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from include.pipeline.errors import PermanentError

DEFAULT_INDICATOR_TYPES = ("Address", "Host", "URL", "EmailAddress", "File")
SINKS = ("graph", "sentinel", "defender")
VARIABLE_PREFIX = "tc_sentinel_"
DEFAULT_DATA_ROOT = "/opt/airflow/data/tc-sentinel"

#: What a setting is when neither the run's param nor its ``tc_sentinel_*`` Variable gives it (README: Variables).
VARIABLE_DEFAULTS: dict[str, Any] = {
    "data_root": DEFAULT_DATA_ROOT,
    "sink": "graph",
    "indicator_types": list(DEFAULT_INDICATOR_TYPES),
    "failure_threshold": 0.0,
    "rejection_threshold": 0.01,
    "retraction_guard": 0.2,
    "reconcile_every_days": 7,
    "refresh_within_days": 3,
    "approval_timeout_hours": 24,
}
#: Run params without a Variable (README: "Run params without a Variable"), with their defaults.
RUN_ONLY_DEFAULTS: dict[str, bool] = {"dry_run": False, "allow_mass_retraction": False, "reconcile": False}


class ConfigError(ValueError, PermanentError):
    """A setting has a value the pipeline cannot run with."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs to know besides connections; small enough for XCom.

    ``targets`` are the load targets, each ``kind`` (its default Connection, e.g. ``defender_default``) or
    ``kind@conn_id`` (another Connection of that kind: a second Sentinel workspace); ``sink`` is the first, kept
    for code that speaks of one target.
    """

    data_root: str
    sink: str
    indicator_types: tuple[str, ...]
    targets: tuple[str, ...] = ()
    failure_threshold: float = 0.0
    rejection_threshold: float = 0.01  # share of a type's writes the target may refuse before the run fails
    dry_run: bool = False
    allow_mass_retraction: bool = False
    retraction_guard: float = 0.2
    reconcile_every_days: int = 7
    reconcile: bool = False  # force a reconciliation this run, whatever the calendar says
    refresh_within_days: int = 3
    approval_timeout_hours: float = 24.0  # how long the gate waits for a person before it rejects

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["indicator_types"] = list(self.indicator_types)
        data["targets"] = list(self.targets or (self.sink,))
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """The inverse of :meth:`as_dict` (how a job carries its configuration through XCom)."""
        values = dict(data)
        values["indicator_types"] = tuple(values["indicator_types"])
        values["targets"] = tuple(values.get("targets") or (values["sink"],))
        return cls(**values)


def target_kind(target: str) -> str:
    """``sentinel`` for ``sentinel@sentinel_emea``."""
    return target.split("@", 1)[0]


def target_connection(target: str) -> str | None:
    """``sentinel_emea`` for ``sentinel@sentinel_emea``; None for the kind's default Connection."""
    return target.split("@", 1)[1] if "@" in target else None


def _as_targets(value: Any) -> tuple[str, ...]:
    """``graph``, ``["sentinel", "defender"]`` (a list or its JSON), or ``sentinel,defender``: validated names."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"sink must be a target or a JSON list of targets, got {value!r}") from exc
        else:
            value = [part for part in text.split(",")]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(f"sink must name at least one target, got {value!r}")
    targets: list[str] = []
    for item in value:
        name = str(item).strip()
        kind, _, conn = name.partition("@")
        kind = kind.lower()
        if kind not in SINKS:
            raise ConfigError(f"unknown target {name!r}: the kind must be one of {SINKS} (optionally kind@conn_id)")
        if "@" in name and not conn.strip():
            raise ConfigError(f"target {name!r} names no Connection after '@'")
        name = f"{kind}@{conn.strip()}" if conn.strip() else kind
        if name in targets:
            raise ConfigError(f"target {name!r} is listed twice")
        targets.append(name)
    return tuple(targets)


def _as_types(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"indicator_types must be a JSON list of type names, got {value!r}") from exc
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"indicator_types must be a non-empty list of type names, got {value!r}")
    seen: list[str] = []
    for item in value:
        if item not in seen:
            seen.append(item)
    return tuple(seen)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _as_fraction(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number between 0 and 1, got {value!r}") from exc
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, got {number}")
    return number


def _as_days(name: str, value: Any) -> int:
    try:
        days = int(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a whole number of days, got {value!r}") from exc
    if days < 0:
        raise ConfigError(f"{name} must be >= 0, got {days} (0 switches it off)")
    return days


def _as_hours(name: str, value: Any) -> float:
    try:
        hours = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number of hours, got {value!r}") from exc
    if not hours > 0:
        raise ConfigError(f"{name} must be more than 0 hours, got {hours}")
    return hours


def reconcile_due(cfg: RunConfig, interval_end_ordinal: int, live: bool) -> bool:
    """Whether this run lists the full active set: on request, or every ``reconcile_every_days`` by the calendar.

    The calendar rule uses the interval's end day, not the wall clock, so re-running a run decides the same way.
    Backfills never reconcile (they replay the past; orphans are a question about the present).
    """
    if not live:
        return False
    if cfg.reconcile:
        return True
    return cfg.reconcile_every_days > 0 and interval_end_ordinal % cfg.reconcile_every_days == 0


def resolve(
    params: Mapping[str, Any],
    variable: Callable[[str], str | None],
    supported_types: tuple[str, ...],
) -> RunConfig:
    """Merge run params over Variables over defaults, and validate.

    Args:
        params: the run's params; a value of None means "not given": the Variable applies, else the default.
        variable: looks up an Airflow Variable by its full name, returning None when it is not set.
        supported_types: the ThreatConnect types that have a mapping file.
    """

    def pick(name: str) -> Any:
        value = params.get(name)
        if value is None and name in VARIABLE_DEFAULTS:
            value = variable(VARIABLE_PREFIX + name)
        default = VARIABLE_DEFAULTS[name] if name in VARIABLE_DEFAULTS else RUN_ONLY_DEFAULTS[name]
        return default if value is None or value == "" else value

    targets = _as_targets(pick("sink"))
    types = _as_types(pick("indicator_types"))
    unknown = [t for t in types if t not in supported_types]
    if unknown:
        raise ConfigError(f"no mapping for indicator types {unknown}; supported: {list(supported_types)}")
    return RunConfig(
        data_root=str(pick("data_root")),
        sink=targets[0],
        indicator_types=types,
        targets=targets,
        failure_threshold=_as_fraction("failure_threshold", pick("failure_threshold")),
        rejection_threshold=_as_fraction("rejection_threshold", pick("rejection_threshold")),
        dry_run=_as_bool("dry_run", pick("dry_run")),
        allow_mass_retraction=_as_bool("allow_mass_retraction", pick("allow_mass_retraction")),
        retraction_guard=_as_fraction("retraction_guard", pick("retraction_guard")),
        reconcile_every_days=_as_days("reconcile_every_days", pick("reconcile_every_days")),
        reconcile=_as_bool("reconcile", pick("reconcile")),
        refresh_within_days=_as_days("refresh_within_days", pick("refresh_within_days")),
        approval_timeout_hours=_as_hours("approval_timeout_hours", pick("approval_timeout_hours")),
    )
