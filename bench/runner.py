"""Run the benchmarks, print the table and write ``build/bench/results.json``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, Figure, environment, load_average
from bench.context import Context

DEFAULT_OUT = REPO / "build" / "bench" / "results.json"


def _benchmarks() -> dict[str, Callable[[Context], list[Figure]]]:
    # Memory scaling first: its 1M-indicator raw snapshot is the transform benchmark's input.
    from bench.dag import dag
    from bench.delta import delta
    from bench.extract import extract
    from bench.load import load
    from bench.transform import memory_scaling, transform

    return {
        "memory_scaling": memory_scaling,
        "transform": transform,
        "extract": extract,
        "load": load,
        "delta": delta,
        "dag": dag,
    }


def table(figures: list[dict[str, Any]]) -> str:
    """The figures as a Markdown table: benchmark, figure, value, target, met?, cores."""
    lines = ["| benchmark | figure | value | target | met? | cores |", "|---|---|---|---|---|---|"]
    for f in figures:
        value = f["value"]
        if isinstance(value, float):
            value = f"{value:,.2f}".rstrip("0").rstrip(".") if value < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        elif value is None:
            value = "n/a"
        met = {True: "yes", False: "**no**", None: ""}[f["met"]]
        lines.append(
            f"| {f['benchmark']} | {f['figure'].strip()} | {value} {f['unit']} | {f['target']} | {met} | {f['cores']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    names = list(_benchmarks())
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (about a minute): checks the harness")
    parser.add_argument("--only", nargs="+", choices=names, help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (snapshots, logs)")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The synthetic feed is deliberately dirty: the stages' warnings about rejected values are expected here.
    logging.getLogger("include.pipeline").setLevel(logging.ERROR)

    env = environment()
    workdir = Path(tempfile.mkdtemp(prefix="tc-sentinel-bench-"))
    ctx = Context(smoke=options.smoke, workdir=workdir)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "mode": "smoke" if options.smoke else "full",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": env,
        "load_average_at_start": load_average(),
        "benchmarks": {},
    }
    failures = 0
    try:
        for name, run in _benchmarks().items():
            if options.only and name not in options.only:
                continue
            print(f"[bench] {name} ...", flush=True)
            began = time.perf_counter()
            try:
                figures = run(ctx)
                entry: dict[str, Any] = {"figures": [f.as_dict(env) for f in figures]}
            except Exception as exc:  # one broken benchmark must not hide the others' figures
                failures += 1
                entry = {
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-4000:],
                    "figures": [],
                }
                print(f"[bench] {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            entry["seconds"] = round(time.perf_counter() - began, 2)
            results["benchmarks"][name] = entry
    finally:
        if options.keep:
            print(f"[bench] scratch kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - started, 2)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2, default=str))
    all_figures = [f for entry in results["benchmarks"].values() for f in entry["figures"]]
    print()
    print(table(all_figures))
    print(
        f"\n{env['cores']} cores, Python {env['python']}, pyarrow {env['pyarrow']}, pandas {env['pandas']}; "
        f"load average at start {results['load_average_at_start']}; {results['seconds']:.0f} s; "
        f"results in {options.out}"
    )
    return 1 if failures else 0
