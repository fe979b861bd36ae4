"""One benchmark session: its sizes (full or smoke), scratch directory and the snapshots prepared so far."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import run_worker

FULL: dict[str, Any] = {
    "transform": 1_000_000,
    # The one-process transform is measured this many times (fresh processes) and its median reported: the first
    # run after the extract that wrote its input is often 10 % slower than the next ones, whatever the code.
    "transform_rounds": 3,
    "scaling": (100_000, 1_000_000),
    "profile": 100_000,
    "parse": 100_000,  # 10 pages of 10,000 (2 per type)
    "client": 100_000,
    "page_size": 10_000,
    # Load: the simulators enforce `limit` requests per `window` seconds; the client limiter gets `client_limit`.
    "load": {
        "window": 10.0,
        "limit": 60,
        "client_limit": 57,
        "sentinel_rows": 16_000,
        "graph_rows": 16_000,
        "deadline": 120.0,
        # How long each request takes to answer in the "answers taking" variants: longer than the budget's
        # spacing (two loaders share 6 a second), as a real Graph's second per write of 100 is against 950 a minute.
        "slow": 1.0,
        # Defender's import budget (30 a minute) scaled like the others: a shorter window, smaller batches.
        "defender": {"window": 2.0, "limit": 20, "client_limit": 19, "rows": 7_000, "batch": 20},
    },
    "delta": 20_000,
    # Whole DAG: 20,000 per type with limits off; against Graph's budget / 10, enough for two minutes of it.
    "dag": {"free": 100_000, "limited": 16_000},
}
SMOKE: dict[str, Any] = {
    "transform": 10_000,
    "transform_rounds": 1,
    "scaling": (1_000, 10_000),
    "profile": 1_000,
    "parse": 2_000,
    "client": 2_000,
    "page_size": 500,
    "load": {
        "window": 0.5,
        "limit": 10,
        "client_limit": 9,
        "sentinel_rows": 1_000,
        "graph_rows": 200,
        "deadline": 30.0,
        "slow": 0.2,
        "defender": {"window": 0.5, "limit": 10, "client_limit": 9, "rows": 250, "batch": 10},
    },
    "delta": 1_000,
    "dag": {"free": 1_000, "limited": 500},
}


@dataclass
class Context:
    """What every benchmark of one session shares."""

    smoke: bool
    workdir: Path
    seed: int = 20240601
    raw_stores: dict[int, tuple[Path, str]] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, Any]:
        return SMOKE if self.smoke else FULL

    def store_dir(self, count: int) -> Path:
        return self.workdir / f"store-{count}"

    def raw_store(self, count: int) -> tuple[Path, str]:
        """A snapshot root whose ``raw`` stage holds ``count`` extracted indicators (made once per session)."""
        if count not in self.raw_stores:
            root, run_id = self.store_dir(count), "bench"
            run_worker(
                "pipeline",
                {"root": str(root), "run_id": run_id, "seed": self.seed, "count": count, "phases": ["extract"]},
                self.workdir,
            )
            self.raw_stores[count] = (root, run_id)
        return self.raw_stores[count]
