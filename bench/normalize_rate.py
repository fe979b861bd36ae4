"""``python -m bench.normalize_rate ROOT [RUN_ID] [REPEATS]``: ``normalize`` alone over an extracted raw snapshot.

The transform benchmark (``bench.transform``) times normalize, dedupe and every snapshot read and write together;
this isolates the per-batch normalize the DAG's normalize task runs, with the raw batches already in memory, and
prints the best wall and CPU seconds of a few repeats (the machine is shared: compare runs made minutes apart).
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa

from include.pipeline.mappings import SUPPORTED_TYPES, load_mapping
from include.pipeline.normalize import normalize
from include.pipeline.snapshots import SnapshotStore


def main(argv: list[str]) -> int:
    root, run_id, repeats = argv[0], argv[1] if len(argv) > 1 else "bench", int(argv[2]) if len(argv) > 2 else 3
    store = SnapshotStore(root)
    batches = {
        kind: [
            b.append_column("indicator_type", pa.array([kind] * b.num_rows, pa.string()))
            for b in store.iter_batches("raw", kind, run_id)
        ]
        for kind in SUPPORTED_TYPES
    }
    rows = sum(b.num_rows for parts in batches.values() for b in parts)
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for kind, parts in batches.items():
            mapping = load_mapping(kind)
            for batch in parts:
                normalize(batch, mapping)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    print(
        f"{rows:,} rows: best wall {best_wall:.3f} s ({rows / best_wall:,.0f}/s), "
        f"best CPU {best_cpu:.3f} s ({rows / best_cpu:,.0f}/s) of {repeats}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
