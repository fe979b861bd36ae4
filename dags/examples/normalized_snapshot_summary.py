"""
### Example: a data team's DAG on new normalized snapshots

Scheduled on the asset **`tc_sentinel.normalized`** (`x-tc-sentinel://snapshots/normalized`), which every
`normalize` instance of `threatconnect_to_sentinel` updates once per indicator type and run: no polling, no sensor.
Each event's `extra` names the partition it wrote (`partition`: a path or an fsspec URL), the run (`run_id`), the
type (`indicator_type`) and its counts (`rows`, `raw`). This DAG reads exactly the partitions its triggering events
name (several events can trigger one run when they land close together), logs the rows per observable kind and
writes a small JSON summary per (run, type) under `<data_root>/examples/normalized_summary/`.

Copy it as a starting point: subscribing needs only the asset (here imported from `tc_sentinel.assets`; from
another repository, `Asset.ref(name="tc_sentinel.normalized")` or the same name and URI).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any
from urllib.parse import quote

from airflow.sdk import dag, task

from tc_sentinel.assets import NORMALIZED

log = logging.getLogger(__name__)

DAG_ID = "tc_sentinel_normalized_summary"
SUMMARY_DIR = "examples/normalized_summary"


@dag(
    dag_id=DAG_ID,
    schedule=[NORMALIZED],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    doc_md=__doc__,
    tags=["threat-intel", "example"],
    default_args={"retries": 2, "execution_timeout": dt.timedelta(minutes=30)},
)
def tc_sentinel_normalized_summary() -> None:
    @task
    def summarize(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        """Read each partition a triggering event names; log and write its counts; return them (small)."""
        import fsspec
        import pandas as pd

        summaries = []
        for event in triggering_asset_events[NORMALIZED]:
            extra = event.extra
            frame = pd.read_parquet(extra["partition"], columns=["kind", "active"])
            summary = {
                "run_id": extra["run_id"],
                "indicator_type": extra["indicator_type"],
                "partition": extra["partition"],
                "rows": len(frame),
                "announced_rows": extra["rows"],
                "active": int(frame["active"].fillna(False).sum()),
                "by_kind": {str(k): int(n) for k, n in frame["kind"].value_counts().sort_index().items()},
            }
            if summary["rows"] != summary["announced_rows"]:
                raise ValueError(f"{extra['partition']} holds {len(frame)} rows, the event announced {extra['rows']}")
            log.info("%s %s: %s rows %s", summary["run_id"], summary["indicator_type"], len(frame), summary["by_kind"])
            name = f"{quote(extra['run_id'], safe='')}/{quote(extra['indicator_type'], safe='')}.json"
            with fsspec.open(f"{extra['data_root'].rstrip('/')}/{SUMMARY_DIR}/{name}", "w", auto_mkdir=True) as out:
                json.dump(summary, out, indent=2, sort_keys=True)
            summaries.append(summary)
        return summaries

    summarize()


tc_sentinel_normalized_summary()
