"""Whole-DAG test harness: seeded simulators plus a throwaway Airflow home, ``dags test`` runs, and their outcome."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from devtools.airflow_env import AirflowEnv
from include.pipeline.canonical import canonical_hash, canonicalize
from include.pipeline.dedupe import external_id
from include.pipeline.mappings import load_mapping
from simulators.dataset import generate
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
def seeded_indicators(seed: int = SEED, count: int = COUNT, types: Sequence[str] = TYPES) -> list[dict[str, Any]]:
    """The ThreatConnect records every whole-DAG test starts from: all changed inside the first run's interval."""
    return generate(seed=seed, count=count, owner=OWNER, start=FIRST_INTERVAL_START, end=SEED_END, types=types)


@dataclass(frozen=True)
class Expected:
    """What one target indicator should be, worked out from the seeded records without running the pipeline."""

    external_id: str
    indicator_type: str
    value: str
    tc_id: int
    last_modified: dt.datetime
    active: bool  # active in ThreatConnect and not reported as a false positive


def _canonical_values(record: Mapping[str, Any]) -> list[str | None]:
    if record["type"] == "File":
        return [canonical_hash(record[h], h)[0] for h in _HASHES if record.get(h)]
    return [canonicalize(load_mapping(record["type"]).kind, record[_VALUE_FIELD[record["type"]]])[0]]


def expected_indicators(records: Iterable[dict[str, Any]]) -> dict[str, Expected]:
    """One entry per external id the target should hold for these records: valid values only, canonicalised,
    duplicates folded into the newest version (ties to the higher ThreatConnect id), as the pipeline promises."""
    winners: dict[str, Expected] = {}
    for record in records:
        if record["_invalid"]:
            continue
        for value in _canonical_values(record):
            if value is None:  # the ground truth says valid: a canonicaliser refusing it is a finding
                raise AssertionError(f"canonicalisation refused a valid seeded value: {record}")
            candidate = Expected(
                external_id(OWNER, record["type"], value), record["type"], value, record["id"],
                record["lastModified"], bool(record["active"]) and not record["falsePositives"],
            )
            held = winners.get(candidate.external_id)
            if held is None or (candidate.last_modified, candidate.tc_id) > (held.last_modified, held.tc_id):
                winners[candidate.external_id] = candidate
    return winners


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


def graph_projection(stack: Stack) -> dict[str, tuple[Any, ...]]:
    """The canonical final Graph state: externalId -> (observable value, confidence, tlpLevel, isActive,
    expirationDateTime). Duplicates collapse here; check them with ``duplicate_external_ids``."""
    return {
        i["externalId"]: (observable_value(i), i.get("confidence"), i.get("tlpLevel"), i.get("isActive"),
                          i.get("expirationDateTime"))
        for i in graph_items(stack)
    }


def sentinel_keys(stack: Stack) -> list[tuple[str, str, str]]:
    """(workspace, sourcesystem, STIX id) of every stored object: one STIX id under two sources is a duplicate."""
    return list(stack.sentinel.objects)


# --------------------------------------------------------------------------------------------- Airflow runs
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
    def start(cls, workdir: Path, sink: str, indicators: list[dict[str, Any]], database: Path,
              types: Sequence[str] = TYPES, env: Mapping[str, str] | None = None,
              **stack_options: Any) -> Pipeline:
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
        process = self.airflow.dags_test(DAG_ID, date, conf=conf)
        with self._db() as db:
            run_id, state, start, end = db.execute(
                "SELECT run_id, state, data_interval_start, data_interval_end FROM dag_run WHERE dag_id = ? "
                "ORDER BY id DESC LIMIT 1", (DAG_ID,)).fetchone()
            xcoms = {(task, index, key): json.loads(value) for task, index, key, value in db.execute(
                "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND run_id = ?", (DAG_ID, run_id))}
        run = Run(date, conf, process, run_id, state, _utc(start), _utc(end), xcoms)
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
