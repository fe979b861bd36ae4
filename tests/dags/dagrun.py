"""Whole-DAG test harness: seeded simulators plus a throwaway Airflow home, ``dags test`` runs, and their outcome."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import sqlite3
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from stix2patterns.pattern import Pattern

from devtools.airflow_env import AirflowEnv
from simulators.dataset import LOADED, REJECTED, Dataset, Intent, generate_dataset
from simulators.graph import OBSERVABLES
from simulators.stack import CLIENT_ID, OWNER, Stack, start_stack

DAG_ID = "threatconnect_to_sentinel"
TYPES = ("Address", "Host", "URL", "EmailAddress", "File")
SOURCE_SYSTEM = f"ThreatConnect-{OWNER}"

# The first run's logical date and data interval ``[FIRST_INTERVAL_START, FIRST_DATE)``: fixed, so runs never
# depend on today's date (nothing in the pipeline reads the clock for data).
FIRST_DATE = "2026-06-02"
NEXT_DATE = "2026-06-03"
DAY = dt.timedelta(days=1)
FIRST_INTERVAL_END = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
FIRST_INTERVAL_START = FIRST_INTERVAL_END - DAY
# Seeded changes stop two hours before the interval ends, so the first run's watermark is clearly earlier than the
# next run's interval start and a late change can land between the two.
SEED_END = FIRST_INTERVAL_END - dt.timedelta(hours=2)
SEED = 2026
COUNT = 500
# The one type the failure-threshold scenarios load (a single type keeps those runs short), and the message Graph
# answers for the indicator it always refuses there.
FAILING_TYPE = "Host"
PERMANENT_FAILURE = "Simulated permanent failure of one indicator"

_VALUE_FIELD = {"Address": "ip", "Host": "hostName", "URL": "text", "EmailAddress": "address"}
_HASHES = ("md5", "sha1", "sha256")
# A tiIndicator's value lives in exactly one observable property; fileHashType only qualifies a hash.
_VALUE_PROPERTIES = tuple(p for p in OBSERVABLES if p != "fileHashType")


# --------------------------------------------------------------------------------------------- seeded data
def seeded_dataset(seed: int = SEED, count: int = COUNT, types: Sequence[str] = TYPES) -> Dataset:
    """The ThreatConnect records every whole-DAG test starts from (all changed inside the first run's interval),
    with what the generator means each to become."""
    return generate_dataset(seed=seed, count=count, owner=OWNER, start=FIRST_INTERVAL_START, end=SEED_END, types=types)


def seeded_indicators(seed: int = SEED, count: int = COUNT, types: Sequence[str] = TYPES) -> list[dict[str, Any]]:
    """The seeded ThreatConnect records alone."""
    return seeded_dataset(seed, count, types).records


# The oracle: expectations come from the generator's recorded intent (``simulators.dataset.Intent``) and from the
# targets' and the project's documented contracts, never from the pipeline's own functions, so that a bug in
# canonicalisation or id derivation cannot agree with itself.

#: The project's uuid5 namespace as documented (README "dedupe", ``include/pipeline/dedupe.py``):
#: ``uuid5(NAMESPACE_URL, "https://github.com/tc-sentinel/indicator")``.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/tc-sentinel/indicator")


def documented_external_id(indicator_type: str, value: str, owner: str = OWNER) -> str:
    """The documented external id ``uuid5(NAMESPACE, "owner|type|value")``, with the standard library's uuid5."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{owner}|{indicator_type}|{value}"))


#: Which ThreatConnect type each kind of observable belongs to.
VARIANT_TYPE = {
    "ipv4": "Address",
    "ipv6": "Address",
    "domain": "Host",
    "url": "URL",
    "email": "EmailAddress",
    "md5": "File",
    "sha1": "File",
    "sha256": "File",
}

#: How ``rejected.reason`` reads for each of the generator's reason classes (``simulators.dataset.REASON_CLASSES``).
REASON_PATTERNS = {
    "ipv4-octet-out-of-range": r"invalid ipv4 address: .*out of range",
    "ipv4-octet-count": r"invalid ipv4 address: .*octets",
    "ipv6-syntax": r"invalid ipv6 address",
    "host-bad-character": r"invalid host: .*character",
    "host-empty-label": r"invalid host: .*empty label",
    "host-hyphen": r"invalid host: .*hyphen",
    "host-single-label": r"invalid host: .*single label",
    "url-no-scheme": r"invalid url: .*scheme",
    "url-no-host": r"invalid url: .*no host",
    "url-whitespace": r"invalid url: .*whitespace",
    "email-at-count": r"invalid email address: .*'@'",
    "email-empty-local-part": r"invalid email address: .*empty local part",
    "email-bad-domain": r"invalid email domain",
    "email-whitespace": r"invalid email address: .*whitespace",
    "hash-length": r"invalid hash: .*hex digits",
    "hash-not-hex": r"invalid hash: .*non-hexadecimal",
}


def reason_matches(reason_class: str, reason: str | None) -> bool:
    """Whether a ``rejected`` row's reason says what the generator's reason class means."""
    return reason is not None and re.match(REASON_PATTERNS[reason_class], reason, re.IGNORECASE) is not None


@dataclass(frozen=True)
class Expected:
    """One indicator the target should hold (live or not) for the seeded records: the newest record of its
    (type, canonical value), as the generator intends it."""

    external_id: str  # the documented id of (owner, type, value): for fault injection and snapshot look-ups
    indicator_type: str
    value: str  # canonical, as the generator made it before adding dirt
    variant: str  # ipv4, ipv6, domain, url, email, md5, sha1, sha256
    tc_id: int
    last_modified: dt.datetime
    active: bool  # the winning record is meant to be loaded (not inactive, not a false positive)

    @property
    def key(self) -> tuple[str, str, str]:
        """(type, variant, value): what the target's own observable fields say, see ``graph_observed``."""
        return self.indicator_type, self.variant, self.value


def expected_indicators(intents: Iterable[Intent]) -> dict[str, Expected]:
    """One entry per (type, canonical value) the records mean, keyed by its documented external id: rejects left
    out, respellings and repeats folded into the newest record (ties to the higher ThreatConnect id), as the
    pipeline promises (README "dedupe")."""
    winners: dict[tuple[str, str], Expected] = {}
    for intent in intents:
        if intent.outcome == REJECTED:
            continue
        for observable in intent.observables:
            candidate = Expected(
                documented_external_id(intent.indicator_type, observable.value),
                intent.indicator_type,
                observable.value,
                observable.variant,
                intent.tc_id,
                intent.last_modified,
                intent.outcome == LOADED,
            )
            group = (intent.indicator_type, observable.value)
            held = winners.get(group)
            if held is None or (candidate.last_modified, candidate.tc_id) > (held.last_modified, held.tc_id):
                winners[group] = candidate
    return {x.external_id: x for x in winners.values()}


def expected_live_keys(expected: Mapping[str, Expected]) -> Counter[tuple[str, str, str]]:
    """Each (type, variant, value) the target should hold live, once."""
    return Counter(x.key for x in expected.values() if x.active)


def expected_rejections(intents: Iterable[Intent]) -> dict[int, str]:
    """ThreatConnect id -> reason class of every record meant to be rejected at normalize."""
    return {i.tc_id: i.reason for i in intents if i.outcome == REJECTED and i.reason is not None}


def invalid_tc_ids(records: Iterable[dict[str, Any]]) -> set[int]:
    """ThreatConnect ids of the deliberately malformed seeded records."""
    return {r["id"] for r in records if r["_invalid"]}


def raw_values(record: Mapping[str, Any]) -> list[str]:
    """The value(s) of one seeded record as ThreatConnect holds them."""
    if record["type"] == "File":
        return [record[h] for h in _HASHES if record.get(h)]
    return [record[_VALUE_FIELD[record["type"]]]]


# --------------------------------------------------------------------------------------------- target state
def graph_items(stack: Stack) -> list[dict[str, Any]]:
    """Every Graph tiIndicator our app owns (duplicates included)."""
    return stack.graph.owned_by(CLIENT_ID)


def duplicate_external_ids(stack: Stack) -> dict[str, int]:
    """External ids Graph holds more than once, with their counts."""
    counts = Counter(i.get("externalId") for i in graph_items(stack))
    return {k: n for k, n in counts.items() if n > 1}


def observable_value(item: Mapping[str, Any]) -> str | None:
    """The value a tiIndicator observes (whichever observable property carries it)."""
    for prop in _VALUE_PROPERTIES:
        if item.get(prop) not in (None, ""):
            return str(item[prop])
    return None


#: The tiIndicator property that carries each kind of value (Microsoft Graph beta, tiIndicator resource type);
#: a hash's kind is in ``fileHashType``.
GRAPH_PROPERTY = {
    "ipv4": "networkIPv4",
    "ipv6": "networkIPv6",
    "domain": "domainName",
    "url": "url",
    "email": "emailSenderAddress",
    "md5": "fileHashValue",
    "sha1": "fileHashValue",
    "sha256": "fileHashValue",
}
_GRAPH_VARIANT = {p: v for v, p in GRAPH_PROPERTY.items() if p != "fileHashValue"}


def graph_observed(item: Mapping[str, Any]) -> tuple[str, str, str]:
    """(type, variant, value) a tiIndicator observes, read from its own observable properties only; a value in a
    property the oracle does not expect reads as type ``?`` and variant = the property's name."""
    for prop in _VALUE_PROPERTIES:
        value = item.get(prop)
        if value in (None, ""):
            continue
        if prop == "fileHashValue":
            variant = str(item.get("fileHashType"))
            return VARIANT_TYPE.get(variant, "?"), variant, str(value)
        variant = _GRAPH_VARIANT.get(prop, prop)
        return VARIANT_TYPE.get(variant, "?"), variant, str(value)
    return "?", "", ""


#: The STIX 2.1 object path each kind of value is compared on (STIX 2.1 cyber-observable objects).
STIX_PATH = {
    ("ipv4-addr", "value"): "ipv4",
    ("ipv6-addr", "value"): "ipv6",
    ("domain-name", "value"): "domain",
    ("url", "value"): "url",
    ("email-addr", "value"): "email",
    ("file", "hashes", "MD5"): "md5",
    ("file", "hashes", "SHA-1"): "sha1",
    ("file", "hashes", "SHA-256"): "sha256",
}


def stix_observed(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(type, variant, value) a STIX indicator's pattern compares, read from the pattern alone; anything but one
    comparison on a known path reads as type ``?``."""
    comparisons = Pattern(obj["pattern"]).inspect().comparisons
    if len(comparisons) != 1:
        return "?", obj["pattern"], ""
    ((object_type, found),) = comparisons.items()
    if len(found) != 1:
        return "?", obj["pattern"], ""
    path, _, literal = found[0]
    value = literal[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    variant = STIX_PATH.get((object_type, *path), ":".join((object_type, *map(str, path))))
    return VARIANT_TYPE.get(variant, "?"), variant, value


def graph_projection(stack: Stack) -> dict[str, tuple[Any, ...]]:
    """The canonical final Graph state: externalId -> (observable value, confidence, tlpLevel, isActive,
    expirationDateTime). Duplicates collapse here; check them with ``duplicate_external_ids``."""
    return {
        i["externalId"]: (
            observable_value(i),
            i.get("confidence"),
            i.get("tlpLevel"),
            i.get("isActive"),
            i.get("expirationDateTime"),
        )
        for i in graph_items(stack)
    }


def sentinel_keys(stack: Stack) -> list[tuple[str, str, str]]:
    """(workspace, sourcesystem, STIX id) of every stored object: one STIX id under two sources is a duplicate."""
    return list(stack.sentinel.objects)


# --------------------------------------------------------------------------------------------- Airflow runs
@dataclass(frozen=True)
class AssetEvent:
    """One asset event a run's task recorded in the metadata database (``asset_event`` joined to ``asset``)."""

    asset: str  # the asset's name
    uri: str
    task_id: str
    map_index: int
    extra: dict[str, Any]


@dataclass
class Run:
    """One finished ``airflow dags test`` and what it left in the metadata database (read before any rerun of the
    same logical date deletes it)."""

    date: str
    conf: dict[str, Any] | None
    process: subprocess.CompletedProcess[str]
    run_id: str
    state: str
    interval_start: dt.datetime
    interval_end: dt.datetime
    xcoms: dict[tuple[str, int, str], Any] = field(default_factory=dict)
    asset_events: list[AssetEvent] = field(default_factory=list)

    def events(self, asset: str) -> list[AssetEvent]:
        """The run's events on one asset (``tc_sentinel.normalized``...), by map index."""
        return sorted((e for e in self.asset_events if e.asset == asset), key=lambda e: e.map_index)

    @property
    def succeeded(self) -> bool:
        return self.process.returncode == 0 and self.state == "success"

    @property
    def output(self) -> str:
        return self.process.stdout + self.process.stderr

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        return self.xcoms[(task_id, map_index, key)]

    def explain(self) -> str:
        """The tail of the run's output, for assertion messages."""
        return f"run {self.run_id} ({self.state}, exit {self.process.returncode}):\n{self.output[-5000:]}"


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def migrated_database(directory: Path) -> Path:
    """Migrate one Airflow metadata database that every test home starts from as a copy (a migration costs ~8 s)."""
    env = AirflowEnv(directory)
    env.migrate()
    return directory / "airflow.db"


@dataclass
class Pipeline:
    """Running simulators seeded with ThreatConnect records, an Airflow home wired to them, and its runs."""

    workdir: Path
    sink: str
    stack: Stack
    airflow: AirflowEnv
    runs: list[Run] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        workdir: Path,
        sink: str,
        indicators: list[dict[str, Any]],
        database: Path,
        types: Sequence[str] = TYPES,
        env: Mapping[str, str] | None = None,
        **stack_options: Any,
    ) -> Pipeline:
        """Start the simulators and an Airflow home (a copy of the migrated ``database``) for ``sink``; ``env``
        adds environment variables to every Airflow command of this home (e.g. a log level)."""
        stack = start_stack(workdir, indicators, **stack_options)
        home = workdir / "airflow-home"
        home.mkdir(parents=True)
        shutil.copy(database, home / "airflow.db")
        airflow = AirflowEnv(home, extra={**stack.env(str(workdir / "data"), sink, list(types)), **(env or {})})
        return cls(workdir, sink, stack, airflow)

    @property
    def data_root(self) -> Path:
        return self.workdir / "data"

    def run(self, date: str, conf: dict[str, Any] | None = None) -> Run:
        """``airflow dags test`` for ``date`` (data interval ``[date - 1 day, date)``), recorded in ``runs``."""
        with self._db() as db:
            # Only the events recorded after this point can be this run's (whatever run id a rerun is given).
            (last_event,) = db.execute("SELECT coalesce(max(id), 0) FROM asset_event").fetchone()
        process = self.airflow.dags_test(DAG_ID, date, conf=conf)
        with self._db() as db:
            run_id, state, start, end = db.execute(
                "SELECT run_id, state, data_interval_start, data_interval_end FROM dag_run WHERE dag_id = ? "
                "ORDER BY id DESC LIMIT 1",
                (DAG_ID,),
            ).fetchone()
            xcoms = {
                (task, index, key): json.loads(value)
                for task, index, key, value in db.execute(
                    "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id)
                )
            }
            events = [
                AssetEvent(name, uri, task_id, map_index, json.loads(extra))
                for name, uri, task_id, map_index, extra in db.execute(
                    "SELECT a.name, a.uri, e.source_task_id, e.source_map_index, e.extra FROM asset_event e "
                    "JOIN asset a ON a.id = e.asset_id WHERE e.source_dag_id = ? AND e.source_run_id = ? AND e.id > ?",
                    (DAG_ID, run_id, last_event),
                )
            ]
        run = Run(date, conf, process, run_id, state, _utc(start), _utc(end), xcoms, events)
        self.runs.append(run)
        return run

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.airflow.home / "airflow.db")

    def xcom_texts(self) -> list[str]:
        """Every XCom value in the metadata database, as stored (JSON text in Airflow 3)."""
        with self._db() as db:
            return [str(v) for (v,) in db.execute("SELECT value FROM xcom")]

    def _dataset(self, stage: str) -> ds.Dataset:
        return ds.dataset(self.data_root / stage, format="parquet", partitioning="hive")

    def stage(self, stage: str, run: Run | None = None) -> pa.Table:
        """A whole stage read as the data team would (hive partitions), optionally only one run's rows."""
        table = self._dataset(stage).to_table()
        if run is not None:
            table = table.filter(ds.field("run_id") == run.run_id)
        return table

    def partitions(self, stage: str, run: Run) -> set[str]:
        """The indicator types that have a partition of ``stage`` for ``run`` (empty partitions included)."""
        keys = [ds.get_partition_keys(f.partition_expression) for f in self._dataset(stage).get_fragments()]
        return {k["indicator_type"] for k in keys if k.get("run_id") == run.run_id}

    def stop(self) -> None:
        self.stack.stop()
