"""The jobs the DAG's tasks hand each other: one immutable type per hand-off, small enough for XCom.

A job carries references only (paths, counts, watermarks), never data: the data stays in the snapshots. Each stage
turns the job it received into the next type (``TypeJob`` -> ``ExtractedJob`` -> ``NormalizedJob`` ->
``PreparedJob``; then one ``DeliveryJob`` per target -> ``LoadedJob`` -> ``VerifiedJob``), so what a task may read
is declared by its input's type instead of by whichever keys earlier tasks happened to add.

XCom carries a job as the plain JSON document of :meth:`TypeJob.to_xcom` (Airflow's serde refuses to rebuild
classes outside ``airflow.*`` unless every deployment allows them, and a JSON document stays readable in the UI
and by the tests); :meth:`TypeJob.from_xcom` rebuilds the typed job and fails on a missing key. The stage reports
are ``TypedDict``\\ s: the stage functions return them to callers outside Airflow too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, NotRequired, Self, TypedDict

from include.pipeline import watermarks
from include.pipeline.config import RunConfig

#: A job as XCom carries it: the JSON document of ``to_xcom``.
JobDocument = dict[str, Any]


# --------------------------------------------------------------------------------------------- stage reports
class InventoryReport(TypedDict):
    listed: int
    live: int
    path: str


class ExtractReport(TypedDict):
    indicator_type: str
    run_id: str
    window: dict[str, str]
    extracted: int
    deleted: int
    pages: int
    max_last_modified: str | None
    raw: str
    inventory: NotRequired[InventoryReport]


class NormalizeReport(TypedDict):
    indicator_type: str
    run_id: str
    raw: int
    normalized: int
    rejected: int
    normalized_path: str
    rejected_path: str


class DedupeReport(TypedDict):
    indicator_type: str
    run_id: str
    normalized: int
    deduplicated: int
    duplicates: int
    deduped_path: str


class LoadReport(TypedDict):
    """What ``load`` did; a dry run stops after the plan, so the write counts are absent then."""

    indicator_type: str
    run_id: str
    sink: str
    dry_run: bool
    planned: dict[str, int]
    plan_path: str
    reconciled: bool
    read_back_before_planning: int
    capacity: dict[str, Any] | None
    held_retractions: NotRequired[dict[str, Any] | None]  # the guard tripped: retractions wait for approval
    sent: NotRequired[int]
    created: NotRequired[int]
    updated: NotRequired[int]
    refreshed: NotRequired[int]
    retracted: NotRequired[int]
    unchanged: NotRequired[int]
    healed: NotRequired[int]
    rejected_before_sending: NotRequired[int]
    rejected_by_target: NotRequired[int]
    quarantined: NotRequired[int]
    failed: NotRequired[int]
    expiring_7d: NotRequired[int]
    loaded_path: NotRequired[str]


class VerifyReport(TypedDict):
    indicator_type: str
    run_id: str
    expected: int
    verified: int
    missing: int
    different: int
    watermark: str | None
    verified_by: str | None
    dry_run: NotRequired[bool]
    watermark_after_retractions: NotRequired[str | None]  # the mark once the held retractions are done


def label(indicator_type: str, target: str | None, targets: tuple[str, ...] | list[str]) -> str:
    """How a job is named in the UI and the summary: its type, and its target when the run has several."""
    return f"{indicator_type} → {target}" if target and len(targets) > 1 else indicator_type


def _carry(job: TypeJob) -> dict[str, Any]:
    """A job's fields, to build the next stage's job from (shallow: the values are immutable or small)."""
    return {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}


# --------------------------------------------------------------------------------------------- per type
@dataclasses.dataclass(frozen=True)
class TypeJob:
    """One indicator type's work in one run, as ``plan_run`` decides it: the input of the per-type task group.

    Attributes:
        indicator_type: the ThreatConnect type.
        run_id: the Airflow run (names the snapshot partitions).
        live: False for a backfill run (which reads exactly its interval and keeps its marks apart).
        config: the resolved run configuration.
        window: the ``lastModified`` range this run extracts for the type.
        interval_start: the run's data interval start.
        interval_end: the run's data interval end.
        reconcile: whether this run lists ThreatConnect's full set of the type to retract orphans.
        target_marks: each target's last committed watermark for the type (None: the target has none yet).
    """

    indicator_type: str
    run_id: str
    live: bool
    config: RunConfig
    window: watermarks.Window
    interval_start: dt.datetime
    interval_end: dt.datetime
    reconcile: bool
    target_marks: Mapping[str, str | None]

    @property
    def previous_watermark(self) -> str | None:
        """The mark the type's one extraction starts from: the earliest of its targets' marks."""
        return watermarks.joint_mark(self.target_marks)

    @property
    def label(self) -> str:
        return self.indicator_type

    def delivery_labels(self) -> list[str]:
        """The label of every (type, target) this job promises: what the summary must account for."""
        return [label(self.indicator_type, t, self.config.targets) for t in self.config.targets]

    def extracted(self, owner: str, report: ExtractReport) -> ExtractedJob:
        return ExtractedJob(**_carry(self), owner=owner, extract=report)

    def to_xcom(self) -> JobDocument:
        return {
            "indicator_type": self.indicator_type,
            "run_id": self.run_id,
            "live": self.live,
            "config": self.config.as_dict(),
            "window": self.window.as_dict(),
            "reconcile": self.reconcile,
            "interval": {"start": watermarks.iso(self.interval_start), "end": watermarks.iso(self.interval_end)},
            "previous_watermark": self.previous_watermark,
            "target_marks": dict(self.target_marks),
        }

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "indicator_type": data["indicator_type"],
            "run_id": data["run_id"],
            "live": bool(data["live"]),
            "config": RunConfig.from_dict(data["config"]),
            "window": watermarks.Window.from_dict(data["window"]),
            "interval_start": watermarks.parse_iso(data["interval"]["start"]),
            "interval_end": watermarks.parse_iso(data["interval"]["end"]),
            "reconcile": bool(data["reconcile"]),
            "target_marks": dict(data["target_marks"]),
        }

    @classmethod
    def from_xcom(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild the job from its XCom document; a missing key raises ``KeyError`` naming it."""
        return cls(**cls._fields(data))


@dataclasses.dataclass(frozen=True)
class ExtractedJob(TypeJob):
    """After ``extract``: the type's changes are in the ``raw`` snapshot."""

    owner: str
    extract: ExtractReport

    def normalized(self, report: NormalizeReport) -> NormalizedJob:
        return NormalizedJob(**_carry(self), normalize=report)

    def to_xcom(self) -> JobDocument:
        return {**super().to_xcom(), "owner": self.owner, "extract": dict(self.extract)}

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(data), "owner": data["owner"], "extract": data["extract"]}


@dataclasses.dataclass(frozen=True)
class NormalizedJob(ExtractedJob):
    """After ``normalize``: valid rows in ``normalized``, the others in ``rejected``."""

    normalize: NormalizeReport

    def deduped(self, report: DedupeReport) -> PreparedJob:
        return PreparedJob(**_carry(self), dedupe=report)

    def to_xcom(self) -> JobDocument:
        return {**super().to_xcom(), "normalize": dict(self.normalize)}

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(data), "normalize": data["normalize"]}


@dataclasses.dataclass(frozen=True)
class PreparedJob(NormalizedJob):
    """After ``dedupe``: one row per (type, value) in ``deduped``, ready for every target. The per-type task
    group's result."""

    dedupe: DedupeReport

    def deliveries(self) -> list[DeliveryJob]:
        """One delivery per target: each keeps its own delivered state, quarantine and watermark."""
        return [DeliveryJob(**_carry(self), target=target) for target in self.config.targets]

    def to_xcom(self) -> JobDocument:
        return {**super().to_xcom(), "dedupe": dict(self.dedupe)}

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(data), "dedupe": data["dedupe"]}


# --------------------------------------------------------------------------------------------- per (type, target)
@dataclasses.dataclass(frozen=True)
class DeliveryJob(PreparedJob):
    """One (type, target): the input of the per-target task group."""

    target: str

    @property
    def previous_watermark(self) -> str | None:
        """This target's own last committed mark for the type."""
        return self.target_marks.get(self.target)

    @property
    def label(self) -> str:
        return label(self.indicator_type, self.target, self.config.targets)

    @property
    def watermark_key(self) -> str:
        return watermarks.key(self.indicator_type, self.target, self.config.targets)

    def loaded(self, report: LoadReport) -> LoadedJob:
        return LoadedJob(**_carry(self), load=report)

    def to_xcom(self) -> JobDocument:
        return {**super().to_xcom(), "target": self.target}

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(data), "target": data["target"]}


@dataclasses.dataclass(frozen=True)
class LoadedJob(DeliveryJob):
    """After ``load``: the plan in ``plan``, every write in ``loaded``."""

    load: LoadReport

    def verified(self, report: VerifyReport) -> VerifiedJob:
        return VerifiedJob(**_carry(self), verify=report)

    def to_xcom(self) -> JobDocument:
        return {**super().to_xcom(), "load": dict(self.load)}

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(data), "load": data["load"]}


@dataclasses.dataclass(frozen=True)
class VerifiedJob(LoadedJob):
    """After ``verify``: the per-target task group's result, with the watermark this delivery earned."""

    verify: VerifyReport

    def to_xcom(self) -> JobDocument:
        return {**super().to_xcom(), "verify": dict(self.verify)}

    @classmethod
    def _fields(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return {**super()._fields(data), "verify": data["verify"]}
