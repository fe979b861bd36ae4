"""``make demo``: run the DAG once, with ``airflow dags test``, against freshly started simulators."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path

import pyarrow.compute as pc

from devtools.airflow_env import REPO_ROOT, AirflowEnv
from devtools.airflow_services import create_pool
from include.pipeline.config import DEFAULT_INDICATOR_TYPES
from include.pipeline.snapshots import SnapshotStore
from simulators.dataset import generate
from simulators.stack import OWNER, start_stack

DAG_ID = "threatconnect_to_sentinel"


def _renumber(indicators: list[dict]) -> list[dict]:
    """Give the merged seed sets distinct ThreatConnect ids (each generator numbers from 1)."""
    for number, record in enumerate(indicators, start=1):
        record["id"] = number
    return indicators


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sink",
        default="graph",
        help="graph, sentinel or defender, or several separated by commas (sentinel,defender)",
    )
    parser.add_argument("--count", type=int, default=4000, help="indicators in the seeded data set")
    parser.add_argument("--api-version", choices=("v2", "v3"), default="v3")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "build" / "demo")
    args = parser.parse_args(argv)
    sinks = [s.strip() for s in args.sink.split(",") if s.strip()]
    if not sinks or any(s not in ("graph", "sentinel", "defender") for s in sinks):
        parser.error(f"--sink must name graph, sentinel or defender (comma-separated for several), got {args.sink!r}")

    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    interval_start = today - dt.timedelta(days=1)
    shutil.rmtree(args.workdir, ignore_errors=True)
    data_root = args.workdir / "data"
    print(
        f"seeding {args.count} ThreatConnect indicators; the run covers [{interval_start:%Y-%m-%d}, {today:%Y-%m-%d})"
    )
    # Most changes fall inside the data interval; some are older, so the window visibly bounds the read.
    recent = generate(seed=2026, count=args.count * 3 // 4, owner=OWNER, start=interval_start, end=today)
    older = generate(
        seed=2027,
        count=args.count - len(recent),
        owner=OWNER,
        start=interval_start - dt.timedelta(days=5),
        end=interval_start,
    )
    indicators = _renumber(recent + older)
    stack = start_stack(args.workdir, indicators, api_version=args.api_version)
    airflow = AirflowEnv(
        args.workdir / "airflow-home", extra=stack.env(str(data_root), args.sink, list(DEFAULT_INDICATOR_TYPES))
    )
    try:
        print("preparing Airflow's metadata database ...")
        airflow.migrate()
        create_pool(airflow)
        print(f"airflow dags test {DAG_ID} {today:%Y-%m-%d} (sink: {args.sink}) ...")
        result = airflow.dags_test(DAG_ID, today.strftime("%Y-%m-%d"))
        (args.workdir / "dags-test.log").write_text(result.stdout + result.stderr)
        held = {sink: stack.target_external_ids(sink, include_retracted=False) for sink in sinks}
    finally:
        stack.stop()

    store = SnapshotStore(str(data_root))
    ok = result.returncode == 0
    print(
        f"\n{'type → target':<24}{'extracted':>10}{'rejected':>10}{'deduped':>10}{'not sent':>10}{'loaded':>10}"
        f"{'failed':>8}{'in target':>10}"
    )
    for indicator_type in DEFAULT_INDICATOR_TYPES:
        runs = store.runs("loaded", indicator_type)
        if not runs:
            print(f"{indicator_type:<24}{'(did not reach load)':>30}")
            ok = False
            continue
        run_id = runs[-1]
        everything = store.read("loaded", indicator_type, run_id)
        counts = [store.count(stage, indicator_type, run_id) for stage in ("raw", "rejected", "deduped")]
        for sink in sinks:
            loaded = everything.filter(pc.equal(everything["sink"], sink))
            good = loaded.filter(pc.equal(loaded["status"], "ok"))
            live = good.filter(pc.invert(pc.equal(good["action"], "retract")))
            ids = set(live["external_id"].to_pylist())
            verified = len(ids & held[sink])
            failed = loaded.num_rows - good.num_rows
            ok = ok and verified == len(ids)
            # not sent: the plan's skips (inactive or false positive and never delivered, unchanged, not supported)
            print(
                f"{indicator_type + ' → ' + sink:<24}{counts[0]:>10}{counts[1]:>10}{counts[2]:>10}"
                f"{counts[2] - loaded.num_rows:>10}{good.num_rows:>10}{failed:>8}{verified:>10}"
            )
    print(
        f"\nParquet snapshots: {data_root}/<stage>/indicator_type=<type>/run_id=<run>/  "
        "(stages: raw, normalized, rejected, deduped, plan, loaded, verified)"
    )
    print(f"Airflow output: {args.workdir / 'dags-test.log'}")
    if not ok:
        print("\nDEMO FAILED: the DAG run did not succeed or the target does not hold every loaded indicator.")
        print(result.stdout[-4000:] + result.stderr[-4000:])
        return 1
    print("\ndemo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
