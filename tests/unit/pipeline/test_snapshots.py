"""Snapshots: hive-partitioned per stage, type and run; written atomically; readable by the data team."""

from __future__ import annotations

import itertools

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from include.pipeline.snapshots import ROW_GROUP_ROWS, SnapshotStore

RUN = "scheduled__2026-03-01T00:00:00+00:00"


def test_a_partition_is_readable_with_pyarrow_hive_partitioning_and_pandas(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    # tc_id and external_id are written in delta encodings (COLUMN_ENCODINGS): both readers still read them
    ids = ["6fa483d2-46d5-5e85-94df-89d7a8157f84", None]
    store.write_table(
        "raw", "Address", RUN, pa.table({"indicator_type": ["Address"] * 2, "tc_id": [1, 2], "external_id": ids})
    )
    store.write_table("raw", "Host", RUN, pa.table({"tc_id": [3], "external_id": ["x"]}))
    table = ds.dataset(str(tmp_path / "raw"), partitioning="hive").to_table()
    assert sorted(table.column("tc_id").to_pylist()) == [1, 2, 3]
    assert set(table.column("run_id").to_pylist()) == {RUN}
    frame = pd.read_parquet(tmp_path / "raw")
    assert sorted(frame["indicator_type"].astype(str)) == ["Address", "Address", "Host"]
    assert sorted(zip(frame["tc_id"], frame["external_id"].fillna(""), strict=True)) == [(1, ids[0]), (2, ""), (3, "x")]


def test_rewriting_a_partition_replaces_it_so_reruns_are_idempotent(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.write_table("raw", "Address", RUN, pa.table({"tc_id": [1, 2, 3]}))
    store.write_table("raw", "Address", RUN, pa.table({"tc_id": [9]}))
    assert store.read("raw", "Address", RUN).column("tc_id").to_pylist() == [9]
    assert store.runs("raw", "Address") == [RUN]


def test_a_failed_write_leaves_the_previous_partition_and_no_temporary_files(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.write_table("raw", "Address", RUN, pa.table({"tc_id": [1]}))
    schema = pa.schema([("tc_id", pa.int64())])

    def interrupted_write() -> None:
        with store.writer("raw", "Address", RUN, schema) as writer:
            writer.write(pa.table({"tc_id": [5, 6]}))
            raise RuntimeError("task killed half way")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert store.read("raw", "Address", RUN).column("tc_id").to_pylist() == [1]
    leftovers = [p.name for p in (tmp_path / "raw" / "indicator_type=Address").iterdir()]
    assert leftovers == ["run_id=scheduled__2026-03-01T00%3A00%3A00%2B00%3A00"]


def test_an_error_of_the_writing_thread_reaches_the_task_and_leaves_the_previous_partition(
    tmp_path, monkeypatch
) -> None:
    store = SnapshotStore(str(tmp_path))
    store.write_table("raw", "Address", RUN, pa.table({"tc_id": [1]}))

    def disk_full(self, table, row_group_size=None) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.write_table("raw", "Address", RUN, pa.table({"tc_id": [5, 6]}))
    monkeypatch.undo()
    assert store.read("raw", "Address", RUN).column("tc_id").to_pylist() == [1]
    leftovers = [p.name for p in (tmp_path / "raw" / "indicator_type=Address").iterdir()]
    assert leftovers == ["run_id=scheduled__2026-03-01T00%3A00%3A00%2B00%3A00"]


def test_small_writes_are_gathered_into_large_row_groups_in_order(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    schema = pa.schema([("n", pa.int64()), ("external_id", pa.string())])
    with store.writer("normalized", "Host", RUN, schema) as writer:
        for start in range(0, 150_000, 10_000):
            numbers = list(range(start, start + 10_000))
            writer.write(pa.table({"external_id": [str(n) for n in numbers], "n": numbers}))
    (path,) = store._files("normalized", "Host", RUN)
    metadata = pq.ParquetFile(path).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert all(ROW_GROUP_ROWS <= size < ROW_GROUP_ROWS + 10_000 for size in sizes[:-1])
    assert 1 < len(sizes) < 15
    table = store.read("normalized", "Host", RUN)
    assert table.column("n").to_pylist() == list(range(150_000))
    assert table.column("external_id").to_pylist() == [str(n) for n in range(150_000)]


def test_an_empty_partition_still_exists_with_its_schema(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    schema = pa.schema([("tc_id", pa.int64()), ("value", pa.string())])
    with store.writer("rejected", "URL", RUN, schema):
        pass
    table = store.read("rejected", "URL", RUN)
    assert table.num_rows == 0
    assert table.schema.names == ["tc_id", "value"]


def test_batches_stream_in_order(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.write_table("normalized", "File", RUN, pa.table({"n": list(range(1000))}))
    batches = list(store.iter_batches("normalized", "File", RUN, batch_size=300))
    assert [b.num_rows for b in batches][:3] == [300, 300, 300]
    assert [n for b in batches for n in b.column("n").to_pylist()] == list(range(1000))


def test_an_fsspec_url_root_works_like_a_path() -> None:
    store = SnapshotStore("memory://tc-sentinel-test")
    url = store.write_table("loaded", "Host", RUN, pa.table({"external_id": ["a", "b"]}))
    assert url.startswith("memory://")
    assert store.count("loaded", "Host", RUN) == 2
    assert store.dataset("loaded").to_table().column("indicator_type").to_pylist() == ["Host", "Host"]


def test_an_unknown_stage_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown snapshot stage"):
        SnapshotStore(str(tmp_path)).write_table("final", "Host", RUN, pa.table({"a": [1]}))


def test_statistics_are_kept_for_fixed_width_columns_and_external_id_only(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    table = pa.table(
        {
            "external_id": ["b", "a", "c"],
            "value": ["x.example", "y.example", "z.example"],
            "tags": [["t"], [], ["u", "v"]],
            "tc_id": [3, 1, 2],
            "active": [True, False, True],
        }
    )
    store.write_table("normalized", "Host", RUN, table)
    (path,) = store._files("normalized", "Host", RUN)
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    with_statistics = {
        row_group.column(i).path_in_schema for i in range(row_group.num_columns) if row_group.column(i).is_stats_set
    }
    assert with_statistics == {"external_id", "tc_id", "active"}
    assert store.read("normalized", "Host", RUN).equals(table)


def test_a_filter_on_a_column_without_statistics_still_finds_its_rows(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.write_table("held", "ALL", RUN, pa.table({"value": ["a", "b", "c"], "external_id": ["1", "2", "3"]}), "graph")
    by_value = store.read_part("held", "ALL", RUN, "graph", filters=ds.field("value") == "b")
    by_id = store.read_part("held", "ALL", RUN, "graph", filters=ds.field("external_id").isin(["3"]))
    assert by_value.column("external_id").to_pylist() == ["2"]
    assert by_id.column("value").to_pylist() == ["c"]


def test_a_local_partition_is_written_without_a_python_file_object(tmp_path, monkeypatch) -> None:
    # A Python file would make the writing thread wait for the GIL on every page while normalize runs Python.
    store = SnapshotStore(str(tmp_path))

    def python_file(*args, **kwargs):
        raise AssertionError("the local writer opened an fsspec (Python) file")

    monkeypatch.setattr(store.fs, "open", python_file)
    store.write_table("raw", "Address", RUN, pa.table({"tc_id": [1, 2]}))
    assert store.read("raw", "Address", RUN).column("tc_id").to_pylist() == [1, 2]


def test_streamed_batches_have_the_written_schema_and_values_whatever_the_encoding(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    table = pa.table(
        {
            "owner": ["Org A", None, "Org B", "Org A"] * 50,  # dictionary-encoded on disk
            "description": ["", "long " * 40, None, "x"] * 50,
            "value": ["a.example", "b.example", None, "é.example"] * 50,  # plain on disk
            "tc_id": [1, 2, 3, 4] * 50,
        }
    )
    store.write_table("normalized", "Host", RUN, table)
    batches = list(store.iter_batches("normalized", "Host", RUN, batch_size=64))
    assert all(batch.schema.equals(table.schema) for batch in batches)
    assert pa.Table.from_batches(batches).equals(table)
    picked = list(store.iter_batches("normalized", "Host", RUN, columns=["tc_id", "owner"]))
    assert pa.Table.from_batches(picked).equals(table.select(["tc_id", "owner"]))


def test_an_id_column_of_another_type_is_written_in_its_usual_encoding(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    table = pa.table({"tc_id": ["TC-1", "TC-2"], "external_id": [1, 2]})
    store.write_table("raw", "Address", RUN, table)
    assert store.read("raw", "Address", RUN).equals(table)


def test_a_partition_written_as_several_files_reads_back_in_file_order(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    schema = pa.schema([("n", pa.int64())])
    with store.writers("deduped", "URL", RUN, schema, files=3) as writers:
        for number, writer in reversed(list(enumerate(writers))):  # the order of the writes does not matter
            writer.write(pa.table({"n": list(range(number * 100, number * 100 + 100))}))
    names = [path.rsplit("/", 1)[-1] for path in store._files("deduped", "URL", RUN)]
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert store.read("deduped", "URL", RUN).column("n").to_pylist() == list(range(300))
    assert [n for b in store.iter_batches("deduped", "URL", RUN) for n in b.column("n").to_pylist()] == list(range(300))
    table = ds.dataset(str(tmp_path / "deduped"), partitioning="hive").to_table()
    assert sorted(table.column("n").to_pylist()) == list(range(300))
    assert store.count("deduped", "URL", RUN) == 300


def test_a_failed_write_of_several_files_leaves_the_previous_partition(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    store.write_table("deduped", "URL", RUN, pa.table({"n": [1]}))

    def interrupted_write() -> None:
        with store.writers("deduped", "URL", RUN, pa.schema([("n", pa.int64())]), 2) as writers:
            writers[0].write(pa.table({"n": [7, 8]}))
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted_write()
    assert store.read("deduped", "URL", RUN).column("n").to_pylist() == [1]
    assert [p.name for p in (tmp_path / "deduped" / "indicator_type=URL").iterdir()] == [
        "run_id=scheduled__2026-03-01T00%3A00%3A00%2B00%3A00"
    ]


def _partition_of_row_groups(store: SnapshotStore, groups: list[int]) -> None:
    """A partition whose row groups hold ``groups`` rows each (one file per group size list entry, in order)."""
    schema = pa.schema([("n", pa.int64())])
    start = 0
    with store.writers("normalized", "Host", RUN, schema, files=len(groups)) as writers:
        for writer, size in zip(writers, groups, strict=True):
            writer.write(pa.table({"n": list(range(start, start + size))}))
            start += size


@pytest.mark.parametrize("pieces", [1, 2, 3, 7])
def test_row_spans_cover_every_row_once_on_row_group_bounds_and_each_streams_alone(tmp_path, pieces) -> None:
    store = SnapshotStore(str(tmp_path))
    groups = [500, 40, 300, 300, 7, 250]
    _partition_of_row_groups(store, groups)
    spans = store.row_spans("normalized", "Host", RUN, pieces)
    assert 1 <= len(spans) <= pieces
    assert spans[0][0] == 0
    assert spans[-1][1] == sum(groups)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous, no overlap
    bounds = {sum(groups[:i]) for i in range(len(groups) + 1)}
    assert all(start in bounds and stop in bounds and start < stop for start, stop in spans)
    for start, stop in spans:
        streamed = [
            n for b in store.iter_batches("normalized", "Host", RUN, rows=(start, stop)) for n in b["n"].to_pylist()
        ]
        assert streamed == list(range(start, stop))
    if pieces == 2:  # about equal halves: the cut is the row-group bound nearest above the middle
        assert spans == [(0, 840), (840, 1397)]


def test_a_span_that_cuts_a_row_group_is_refused(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    _partition_of_row_groups(store, [100, 100])
    with pytest.raises(ValueError, match="row groups"):
        list(store.iter_batches("normalized", "Host", RUN, rows=(50, 200)))
    with pytest.raises(ValueError, match="beyond"):
        list(store.iter_batches("normalized", "Host", RUN, rows=(0, 300)))


def test_an_empty_partition_has_one_empty_span(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    with store.writer("normalized", "Host", RUN, pa.schema([("n", pa.int64())])):
        pass
    assert store.row_spans("normalized", "Host", RUN, 2) == [(0, 0)]
    assert list(store.iter_batches("normalized", "Host", RUN, rows=(0, 0))) == []


def test_the_partition_stamp_changes_when_any_of_its_files_is_rewritten(tmp_path) -> None:
    store = SnapshotStore(str(tmp_path))
    assert store.stamp("normalized", "Host", RUN) is None
    _partition_of_row_groups(store, [10, 10])
    first = store.stamp("normalized", "Host", RUN)
    assert "part-00000.parquet" in first
    assert "part-00001.parquet" in first
    _partition_of_row_groups(store, [10, 10])
    assert store.stamp("normalized", "Host", RUN) != first
