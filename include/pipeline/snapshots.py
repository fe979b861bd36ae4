"""Hive-partitioned Parquet snapshots per stage, one partition per (indicator type, run), written atomically.

Layout: ``<root>/<stage>/indicator_type=<type>/run_id=<url-quoted run id>/part-00000.parquet`` (a large partition
may be split into ``part-00000``, ``part-00001``...: its rows are the files' rows in name order). The partition
columns live in the directory names only (pyarrow and pandas add them back when reading the dataset with
``partitioning="hive"``), because a column both in the file and in the path makes pandas refuse the dataset.
``root`` is a local path or any fsspec URL (``s3://``, ``abfs://``, ``memory://``...).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

from include.pipeline.snapshot_writer import PLAIN_COLUMNS, PartitionWriter
from include.pipeline.snapshot_writer import ROW_GROUP_ROWS as ROW_GROUP_ROWS  # part of this module's API

log = logging.getLogger(__name__)

STAGES = ("raw", "normalized", "rejected", "deduped", "plan", "loaded", "verified", "inventory", "held", "intent")
PARTITION_COLUMNS = ("indicator_type", "run_id")


def _file_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a partition's files hold: without the partition columns (their values are in the path)."""
    return pa.schema([f for f in schema if f.name not in PARTITION_COLUMNS], metadata=schema.metadata)


def _safe_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def quote_partition_value(value: str) -> str:
    """URL-quote a partition value the way pyarrow's hive partitioning (``segment_encoding="uri"``) decodes it."""
    return quote(value, safe="")


def _row_group_fragments(dataset: ds.Dataset) -> list[ds.Fragment]:
    """One fragment per row group of every file of ``dataset``, in row order (files in the dataset's order)."""
    return [piece for fragment in dataset.get_fragments() for piece in fragment.split_by_row_group()]


class SnapshotStore:
    """Read and write the pipeline's snapshots under one root."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self._base = fsspec.core.url_to_fs(self.root)
        self._local = isinstance(self.fs, LocalFileSystem)

    def _stage_dir(self, stage: str) -> str:
        if stage not in STAGES:
            raise ValueError(f"unknown snapshot stage {stage!r}; expected one of {STAGES}")
        return f"{self._base}/{stage}"

    def _type_dir(self, stage: str, indicator_type: str) -> str:
        return f"{self._stage_dir(stage)}/indicator_type={quote_partition_value(indicator_type)}"

    def partition_dir(self, stage: str, indicator_type: str, run_id: str) -> str:
        """Directory (filesystem path, without protocol) of one partition."""
        return f"{self._type_dir(stage, indicator_type)}/run_id={quote_partition_value(run_id)}"

    def partition_url(self, stage: str, indicator_type: str, run_id: str) -> str:
        """Where a partition lives, as the user would type it (path or URL): what XCom carries."""
        path = self.partition_dir(stage, indicator_type, run_id)
        return path if self._local else self.fs.unstrip_protocol(path)

    @contextlib.contextmanager
    def writer(
        self, stage: str, indicator_type: str, run_id: str, schema: pa.Schema, part: str | None = None
    ) -> Iterator[PartitionWriter]:
        """Write one partition atomically: readers see the old partition or the new one, never half of one.

        The data goes to a hidden ``_tmp-*`` directory (pyarrow's dataset discovery skips ``_``-prefixed names) and
        is renamed into place only when the block exits without an exception. A rewrite of the same (type, run)
        replaces the earlier partition, which is what makes re-running a task idempotent.

        With ``part`` (a load target's name), only that target's file of the partition is written and replaced
        (``part-<target>.parquet``): the targets of one run share a partition, each row says its target in the
        ``sink`` column, and a rerun of one target's task leaves the others' files alone.
        """
        if part is None:
            with self.writers(stage, indicator_type, run_id, schema, files=1) as (writer,):
                yield writer
            return
        name = f"part-{_safe_part(part)}.parquet"
        final_dir = self.partition_dir(stage, indicator_type, run_id)

        def commit(tmp_dir: str) -> None:
            self.fs.makedirs(final_dir, exist_ok=True)
            self.fs.mv(f"{tmp_dir}/{name}", f"{final_dir}/{name}")  # a rename: replaces that file at once
            self.fs.rm(tmp_dir, recursive=True)

        with self._staged(stage, indicator_type, schema, [name], commit) as (writer,):
            yield writer

    @contextlib.contextmanager
    def writers(
        self, stage: str, indicator_type: str, run_id: str, schema: pa.Schema, files: int
    ) -> Iterator[list[PartitionWriter]]:
        """Write one partition atomically as ``files`` files (``part-00000``, ``part-00001``... in row order).

        Each file has its own writing thread, so a caller that feeds them side by side has the partition encoded
        on as many cores (one Parquet file is encoded by one thread). Readers see the files' rows in name order:
        the first file must receive the partition's first rows. Atomic and idempotent as ``writer``.
        """
        if files < 1:
            raise ValueError(f"a partition needs at least one file, not {files}")
        names = [f"part-{number:05d}.parquet" for number in range(files)]
        final_dir = self.partition_dir(stage, indicator_type, run_id)

        def commit(tmp_dir: str) -> None:
            self._replace(tmp_dir, final_dir)

        with self._staged(stage, indicator_type, schema, names, commit) as opened:
            yield opened

    @contextlib.contextmanager
    def _staged(
        self, stage: str, indicator_type: str, schema: pa.Schema, names: list[str], commit: Callable[[str], None]
    ) -> Iterator[list[PartitionWriter]]:
        """Writers of the files ``names`` in a hidden ``_tmp-*`` directory beside the stage's partitions.

        When the block exits without an exception they are closed and ``commit(tmp_dir)`` puts them in place; on
        any error (the block's, a writing thread's, the commit's) they are abandoned and the directory removed.
        """
        schema = _file_schema(schema)
        tmp_dir = f"{self._type_dir(stage, indicator_type)}/_tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(tmp_dir, exist_ok=True)
        opened: list[PartitionWriter] = []
        try:
            for name in names:
                opened.append(PartitionWriter(self.fs, f"{tmp_dir}/{name}", schema))
            yield opened
            for writer in opened:
                writer.close()
            commit(tmp_dir)
        except BaseException:
            for writer in opened:
                with contextlib.suppress(Exception):
                    writer.abandon()
            with contextlib.suppress(Exception):
                self.fs.rm(tmp_dir, recursive=True)
            raise

    def _replace(self, tmp_dir: str, final_dir: str) -> None:
        old_dir = None
        if self.fs.exists(final_dir):
            old_dir = f"{final_dir.rsplit('/', 1)[0]}/_old-{uuid.uuid4().hex}"
            self.fs.mv(final_dir, old_dir, recursive=True)
        self.fs.mv(tmp_dir, final_dir, recursive=True)
        if old_dir is not None:
            self.fs.rm(old_dir, recursive=True)

    def write_table(
        self, stage: str, indicator_type: str, run_id: str, table: pa.Table, part: str | None = None
    ) -> str:
        """Write a whole table as one partition (or one target's part of it); returns the partition's location."""
        with self.writer(stage, indicator_type, run_id, table.schema, part) as writer:
            writer.write(table)
        return self.partition_url(stage, indicator_type, run_id)

    def part_path(self, stage: str, indicator_type: str, run_id: str, part: str | None = None) -> str:
        """Where one target's file of a partition is (``writer(..., part=...)``), or the partition's first file."""
        name = "part-00000.parquet" if part is None else f"part-{_safe_part(part)}.parquet"
        return f"{self.partition_dir(stage, indicator_type, run_id)}/{name}"

    def stamp(self, stage: str, indicator_type: str, run_id: str, part: str | None = None) -> str | None:
        """An identity of one target's file (or, without ``part``, of the partition's files) that changes whenever
        it is written again (None: no such file).

        Built from what the filesystem reports (size, modification time, inode, ETag): a rewrite replaces the file
        with a new one, so the stamp differs. No clock is read here.
        """
        keys = ("size", "mtime", "ino", "created", "LastModified", "last_modified", "ETag", "etag")
        try:
            if part is not None:
                paths = [self.part_path(stage, indicator_type, run_id, part)]
            else:  # the whole partition: every file of it
                paths = self._files(stage, indicator_type, run_id)
            infos = [self.fs.info(path) for path in paths]
        except FileNotFoundError:
            return None
        if not infos:
            return None
        stamps = ["|".join(f"{k}={info[k]}" for k in keys if k in info) for info in infos]
        if len(stamps) == 1:
            return stamps[0]
        return ";".join(f"{path.rsplit('/', 1)[-1]}:{stamp}" for path, stamp in zip(paths, stamps, strict=True))

    def read_part(
        self, stage: str, indicator_type: str, run_id: str, part: str, filters: Any = None
    ) -> pa.Table | None:
        """One target's file of a partition (with its schema metadata), or None when there is none."""
        path = self.part_path(stage, indicator_type, run_id, part)
        if not self.fs.exists(path):
            return None
        return pq.read_table(path, filesystem=self._pa_filesystem(), filters=filters)

    def part_schema(self, stage: str, indicator_type: str, run_id: str, part: str) -> pa.Schema | None:
        """The schema (and metadata) of one target's file of a partition, without reading its rows."""
        path = self.part_path(stage, indicator_type, run_id, part)
        if not self.fs.exists(path):
            return None
        return pq.read_schema(path, filesystem=self._pa_filesystem())

    def exists(self, stage: str, indicator_type: str, run_id: str) -> bool:
        return self.fs.exists(self.partition_dir(stage, indicator_type, run_id))

    def _files(self, stage: str, indicator_type: str, run_id: str) -> list[str]:
        directory = self.partition_dir(stage, indicator_type, run_id)
        if not self.fs.exists(directory):
            raise FileNotFoundError(f"no {stage} snapshot for {indicator_type} in run {run_id} under {self.root}")
        return sorted(p for p in self.fs.ls(directory, detail=False) if p.endswith(".parquet"))

    def _pa_filesystem(self) -> pa.fs.FileSystem:
        return pa.fs.LocalFileSystem() if self._local else PyFileSystem(FSSpecHandler(self.fs))

    def _format(self, dictionary_columns: list[str] | None = None) -> ds.ParquetFileFormat:
        """How partitions are read: pre-buffering (coalesced reads of the column chunks ahead) only when remote.

        On a local disk it saves nothing and holds the raw column chunks of every row group read ahead: with
        row groups of ``ROW_GROUP_ROWS`` rows, most of what streaming a large partition held in memory.
        ``dictionary_columns`` are read as Arrow dictionaries (see ``iter_batches``).
        """
        options = ds.ParquetFragmentScanOptions(pre_buffer=not self._local)
        read_options = ds.ParquetReadOptions(dictionary_columns=dictionary_columns or [])
        return ds.ParquetFileFormat(read_options=read_options, default_fragment_scan_options=options)

    def read(self, stage: str, indicator_type: str, run_id: str, columns: list[str] | None = None) -> pa.Table:
        """One partition as a table (without the partition columns)."""
        files = self._files(stage, indicator_type, run_id)
        return ds.dataset(files, format=self._format(), filesystem=self._pa_filesystem()).to_table(columns=columns)

    def iter_batches(
        self,
        stage: str,
        indicator_type: str,
        run_id: str,
        columns: list[str] | None = None,
        batch_size: int = 65_536,
        rows: tuple[int, int] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream one partition in record batches, so memory is bounded by a batch, not by the partition.

        Text columns the writer dictionary-encodes (owners, kinds, descriptions...) are read as Arrow dictionaries
        and expanded with one take each, because the Parquet reader's dense path appends them value by value; the
        batches have the file's schema all the same.

        Args:
            rows: only the rows ``[start, stop)`` of the partition, a span ``row_spans`` gave (whole row groups).
        """
        files = self._files(stage, indicator_type, run_id)
        schema = ds.dataset(files, format=self._format(), filesystem=self._pa_filesystem()).schema
        if columns is not None:
            schema = pa.schema([schema.field(name) for name in columns], metadata=schema.metadata)
        coded = [f.name for f in schema if f.name not in PLAIN_COLUMNS and pa.types.is_string(f.type)]
        dataset = ds.dataset(files, format=self._format(coded), filesystem=self._pa_filesystem())
        if rows is not None:
            dataset = ds.FileSystemDataset(
                self._span_fragments(dataset, rows), dataset.schema, dataset.format, dataset.filesystem
            )
        # Small read-ahead: the default (16 batches) would hold a large share of a big partition in memory.
        batches = dataset.to_batches(columns=columns, batch_size=batch_size, batch_readahead=2, fragment_readahead=1)
        for batch in batches:
            yield batch.cast(schema) if coded else batch

    def row_spans(self, stage: str, indicator_type: str, run_id: str, pieces: int) -> list[tuple[int, int]]:
        """The partition's rows cut into at most ``pieces`` spans ``(start, stop)`` of whole row groups, in order.

        The spans are about equal in rows, cover every row once, and each can be streamed on its own with
        ``iter_batches(rows=span)`` (a partition without rows has the one span ``(0, 0)``).
        """
        files = self._files(stage, indicator_type, run_id)
        dataset = ds.dataset(files, format=self._format(), filesystem=self._pa_filesystem())
        sizes = [fragment.row_groups[0].num_rows for fragment in _row_group_fragments(dataset)]
        total = sum(sizes)
        spans: list[tuple[int, int]] = []
        start = stop = 0
        for size in sizes:
            stop += size
            if len(spans) < pieces - 1 and stop * pieces >= total * (len(spans) + 1):
                spans.append((start, stop))
                start = stop
        if stop > start or not spans:
            spans.append((start, stop))
        return spans

    @staticmethod
    def _span_fragments(dataset: ds.Dataset, rows: tuple[int, int]) -> list[ds.Fragment]:
        """The row-group fragments holding exactly the rows ``[start, stop)`` of ``dataset``."""
        start, stop = rows
        chosen: list[ds.Fragment] = []
        offset = 0
        for fragment in _row_group_fragments(dataset):
            size = fragment.row_groups[0].num_rows
            if start <= offset and offset + size <= stop:
                chosen.append(fragment)
            elif offset < stop and start < offset + size:
                raise ValueError(f"rows {start}-{stop} do not fall on row groups (one holds {offset}-{offset + size})")
            offset += size
        if start > offset or stop > offset:
            raise ValueError(f"rows {start}-{stop} lie beyond the partition's {offset} rows")
        return chosen

    def count(self, stage: str, indicator_type: str, run_id: str) -> int:
        files = self._files(stage, indicator_type, run_id)
        return ds.dataset(files, format="parquet", filesystem=self._pa_filesystem()).count_rows()

    def dataset(self, stage: str) -> ds.Dataset:
        """The whole stage as a hive-partitioned dataset (what the data team reads)."""
        return ds.dataset(
            self._stage_dir(stage), format="parquet", partitioning="hive", filesystem=self._pa_filesystem()
        )

    def runs(self, stage: str, indicator_type: str) -> list[str]:
        """Run ids that have a partition for this stage and type."""
        from urllib.parse import unquote

        type_dir = self._type_dir(stage, indicator_type)
        if not self.fs.exists(type_dir):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(type_dir, detail=False)]
        return sorted(unquote(n.split("=", 1)[1]) for n in names if n.startswith("run_id="))
