"""The dedupe stage over snapshots: exactly the winners, in row order, whether it writes one file or two."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from include.pipeline import stages
from include.pipeline.dedupe import winners
from include.pipeline.schema import NORMALIZED_SCHEMA
from include.pipeline.snapshots import SnapshotStore

RUN = "manual__2026-03-01T00:00:00+00:00"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def normalized_partition(store: SnapshotStore, n: int) -> None:
    """``n`` rows (even), each id twice: at row ``k`` and at row ``k + n/2``.

    For an even ``k`` the second copy is newer, for an odd ``k`` the first: so the survivors are known here, by
    construction, without asking ``winners``; and every pair straddles the middle of the partition.
    """
    half = n // 2
    ids = [f"id-{i % half}" for i in range(n)]
    minutes = []
    for i in range(n):
        k, second = i % half, i >= half
        minutes.append(k + 5 if second else (k if k % 2 == 0 else k + 10))
    columns = {f.name: pa.nulls(n, f.type) for f in NORMALIZED_SCHEMA}
    columns["external_id"] = pa.array(ids, pa.string())
    columns["value"] = pa.array([str(i) for i in range(n)], pa.string())  # the row's position, to check order
    columns["tc_id"] = pa.array(range(n), pa.int64())
    columns["last_modified"] = pa.array(
        [T0 + timedelta(minutes=m) for m in minutes], NORMALIZED_SCHEMA.field("last_modified").type
    )
    columns["deleted"] = pa.array([False] * n)
    table = pa.Table.from_arrays([columns[f.name] for f in NORMALIZED_SCHEMA], schema=NORMALIZED_SCHEMA)
    with store.writer("normalized", "Host", RUN, NORMALIZED_SCHEMA) as writer:
        for start in range(0, n, 10_000):  # written in pages, as the normalize stage does
            writer.write(table.slice(start, 10_000))


def expected_positions(n: int) -> list[int]:
    half = n // 2
    return [k for k in range(half) if k % 2 == 1] + [k + half for k in range(half) if k % 2 == 0]


def deduped_files(store: SnapshotStore) -> list[str]:
    return [path.rsplit("/", 1)[-1] for path in store._files("deduped", "Host", RUN)]


@pytest.mark.parametrize("where", ["local", "fsspec"])
def test_a_large_partition_dedupes_into_two_files_holding_exactly_the_newest_rows_in_order(tmp_path, where) -> None:
    # on a local disk Arrow reads the files itself; elsewhere through fsspec (memory:// stands in for s3:// etc.)
    store = SnapshotStore(str(tmp_path) if where == "local" else f"memory://dedupe-{uuid.uuid4().hex}")
    n = 2 * stages.SPLIT_ROWS
    normalized_partition(store, n)
    report = stages.dedupe(store, RUN, "Host", winners)
    assert deduped_files(store) == ["part-00000.parquet", "part-00001.parquet"]
    kept = store.read("deduped", "Host", RUN)
    assert [int(v) for v in kept.column("value").to_pylist()] == expected_positions(n)
    assert (report["normalized"], report["deduplicated"], report["duplicates"]) == (n, n // 2, n // 2)
    streamed = [int(v) for b in store.iter_batches("deduped", "Host", RUN) for v in b.column("value").to_pylist()]
    assert streamed == expected_positions(n)
    if where == "fsspec":
        store.fs.rm(store.root, recursive=True)  # the memory filesystem lives as long as the test process


def test_a_small_partition_dedupes_into_one_file(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    normalized_partition(store, 2_000)
    report = stages.dedupe(store, RUN, "Host", winners)
    assert deduped_files(store) == ["part-00000.parquet"]
    assert [int(v) for v in store.read("deduped", "Host", RUN).column("value").to_pylist()] == expected_positions(2_000)
    assert report["deduplicated"] == 1_000


def test_rerunning_dedupe_of_a_large_partition_replaces_both_files(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    n = 2 * stages.SPLIT_ROWS
    normalized_partition(store, n)
    stages.dedupe(store, RUN, "Host", winners)
    before = store.stamp("deduped", "Host", RUN)
    stages.dedupe(store, RUN, "Host", winners)
    assert store.stamp("deduped", "Host", RUN) != before
    assert deduped_files(store) == ["part-00000.parquet", "part-00001.parquet"]
    assert store.read("deduped", "Host", RUN).num_rows == n // 2
