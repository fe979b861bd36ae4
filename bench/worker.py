"""``python -m bench.worker TASK ARGS.json OUT.json``: one measurement in a fresh interpreter (its own peak RSS)."""

from __future__ import annotations

import cProfile
import gc
import io
import json
import logging
import os
import pstats
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.common import self_peak_rss_mb
from bench.data import SyntheticPages, extract_all, transform_all
from include.pipeline.mappings import SUPPORTED_TYPES
from include.pipeline.snapshots import SnapshotStore
from include.threatconnect.parse import parse_page


def pipeline(args: dict[str, Any]) -> dict[str, Any]:
    """Run the requested phases (``extract``: synthetic pages -> raw; ``transform``: normalize -> dedupe)."""
    store = SnapshotStore(args["root"])
    run_id = args["run_id"]
    result: dict[str, Any] = {"phases": {}}
    baseline = self_peak_rss_mb()
    result["baseline_rss_mb"] = baseline
    for phase in args["phases"]:
        started = time.perf_counter()
        cpu_started = time.process_time()
        if phase == "extract":
            source = SyntheticPages(args["seed"], args["count"], args.get("page_size", 10_000))
            counts = extract_all(source, store, run_id)
        elif phase == "transform" and args.get("claim_dir"):
            counts = {"types": [], **transform_all(store, run_id, [])}
            for kind in claimed(Path(args["claim_dir"])):
                part = transform_all(store, run_id, [kind])
                counts["types"].append(kind)
                for key in ("raw", "normalized", "rejected", "deduplicated"):
                    counts[key] += part[key]
        elif phase == "transform":
            counts = transform_all(store, run_id)
        else:
            raise ValueError(f"unknown phase {phase!r}")
        result["phases"][phase] = {
            "seconds": round(time.perf_counter() - started, 3),
            "peak_rss_mb_after": self_peak_rss_mb(),
            # CPU time does not grow when other work shares the cores: the figure to compare across machines' loads.
            "cpu_seconds": round(time.process_time() - cpu_started, 3),
            "ended_at": time.time(),
            "started_at": time.time() - (time.perf_counter() - started),
            **counts,
        }
    return result


# Heaviest first, so two workers pulling types finish close together (File rows become one row per hash).
CLAIM_ORDER = ("File", "URL", "Host", "EmailAddress", "Address")


def claimed(claim_dir: Path) -> Iterator[str]:
    """Types this worker wins, one at a time, like mapped tasks pulled by free worker slots."""
    claim_dir.mkdir(parents=True, exist_ok=True)
    for kind in CLAIM_ORDER:
        try:
            os.close(os.open(claim_dir / kind, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        yield kind


def floor(args: dict[str, Any]) -> dict[str, Any]:
    """The floor a streaming stage cannot beat: read the raw rows and write them back with plain pyarrow (zstd)."""
    store = SnapshotStore(args["root"])
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    started = time.perf_counter()
    for kind in SUPPORTED_TYPES:
        writer = None
        for batch in store.iter_batches("raw", kind, args["run_id"]):
            if writer is None:
                writer = pq.ParquetWriter(out / f"{kind}.parquet", batch.schema, compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
        if writer is not None:
            writer.close()
    return {"seconds": round(time.perf_counter() - started, 3), "rows": rows}


def profile_transform(args: dict[str, Any]) -> dict[str, Any]:
    """Profile normalize -> dedupe with cProfile; the top functions by own time and by cumulative time."""
    store = SnapshotStore(args["root"])
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    counts = transform_all(store, args["run_id"])
    profiler.disable()
    seconds = time.perf_counter() - started
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]

    def top(key: int, limit: int) -> list[dict[str, Any]]:
        entries = sorted(stats.stats.items(), key=lambda item: item[1][key], reverse=True)  # type: ignore[attr-defined]
        return [
            {
                "function": f"{Path(file).name}:{line} {name}",
                "calls": calls,
                "own_s": round(own, 3),
                "cumulative_s": round(cum, 3),
                "own_share": round(own / total, 3) if total else None,
            }
            for (file, line, name), (_, calls, own, cum, _) in entries[:limit]
        ]

    return {
        "profiled_seconds": round(seconds, 3),
        "rows": counts["raw"],
        "own_time_total_s": round(total, 3),
        "by_own_time": top(2, 15),
        "by_cumulative_time": top(3, 25),
    }


def parse(args: dict[str, Any]) -> dict[str, Any]:
    """Parse throughput of ``parse_page`` over pre-rendered pages (rendering is not timed)."""
    source = SyntheticPages(args["seed"], args["count"], args["page_size"])
    parse_page(next(source.pages(source.types[0]))[:100], source.types[0])  # first-call costs are not throughput
    per_type: dict[str, dict[str, float]] = {}
    total_rows, total_seconds, total_cpu, pages = 0, 0.0, 0.0, 0
    # One page alive at a time, as in the client: a hundred thousand rendered items held at once would make the
    # cyclic GC's full passes (triggered by parse_page's allocations) part of the figure.
    for kind, items in ((t, page) for t in source.types for page in source.pages(t)):
        pages += 1
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        batch = parse_page(items, kind)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        entry = per_type.setdefault(kind, {"rows": 0, "seconds": 0.0, "cpu_seconds": 0.0})
        entry["rows"] += batch.num_rows
        entry["seconds"] += seconds
        entry["cpu_seconds"] += cpu
        total_rows += batch.num_rows
        total_seconds += seconds
        total_cpu += cpu
    for entry in per_type.values():
        entry["cpu_rate"] = round(entry["rows"] / entry["cpu_seconds"]) if entry["cpu_seconds"] else None
        entry["seconds"] = round(entry["seconds"], 4)
        entry["cpu_seconds"] = round(entry["cpu_seconds"], 4)
    return {
        "rows": total_rows,
        "pages": pages,
        "seconds": round(total_seconds, 4),
        "cpu_seconds": round(total_cpu, 4),
        "rate": round(total_rows / total_seconds) if total_seconds else None,
        "cpu_rate": round(total_rows / total_cpu) if total_cpu else None,
        "per_type": per_type,
    }


def tc_client(args: dict[str, Any]) -> dict[str, Any]:
    """Page every type out of the ThreatConnect simulator with the real client (HTTPS, HMAC, JSON, parse)."""
    import requests

    from bench.data import END, START
    from include.threatconnect.client import ThreatConnectClient

    session = requests.Session()
    session.verify = args["ca_file"]
    client = ThreatConnectClient(
        args["base_url"],
        args["access_id"],
        args["secret"],
        args["owner"],
        api_version=args.get("api_version", "v3"),
        page_size=args["page_size"],
        session=session,
    )
    rows: dict[str, int] = {}
    started = time.perf_counter()
    for kind in args["types"]:
        rows[kind] = sum(batch.num_rows for batch in client.iter_pages(kind, START, END))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "rows": rows, "requests": client.requests_sent}


def loader(args: dict[str, Any]) -> dict[str, Any]:
    """One load task process: ``stages.load`` of every type of one run into Graph or Sentinel."""
    from bench.load import run_loader

    return run_loader(args)


def delta(args: dict[str, Any]) -> dict[str, Any]:
    """One delta measurement (see ``bench.delta``)."""
    from bench.delta import run_delta

    return run_delta(args)


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": pipeline,
    "floor": floor,
    "profile_transform": profile_transform,
    "parse": parse,
    "tc_client": tc_client,
    "loader": loader,
    "delta": delta,
}


def main(argv: list[str]) -> int:
    task, args_path, out_path = argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = json.loads(Path(args_path).read_text())
    result = TASKS[task](args)
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
