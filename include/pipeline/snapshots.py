"""Hive-partitioned Parquet snapshots per stage, one partition per (indicator type, run), written atomically.

Layout: ``<root>/<stage>/indicator_type=<type>/run_id=<url-quoted run id>/part-00000.parquet``. The partition
columns live in the directory names only (pyarrow and pandas add them back when reading the dataset with
``partitioning="hive"``), because a column both in the file and in the path makes pandas refuse the dataset.
``root`` is a local path or any fsspec URL (``s3://``, ``abfs://``, ``memory://``...).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

log = logging.getLogger(__name__)

STAGES = ("raw", "normalized", "rejected", "deduped", "plan", "loaded", "verified", "inventory", "held", "intent")
PARTITION_COLUMNS = ("indicator_type", "run_id")


def _safe_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def quote_partition_value(value: str) -> str:
    """URL-quote a partition value the way pyarrow's hive partitioning (``segment_encoding="uri"``) decodes it."""
    return quote(value, safe="")


#: Columns whose values differ from row to row (ids, values, hashes, links, timestamps). Parquet's dictionary
#: encoding would store each value a second time (in the dictionary page) and cost a hash lookup per row, only to
#: fall back to plain; they are written plain. Every other column keeps the dictionary (owners, kinds, tags...).
PLAIN_COLUMNS = frozenset(
    {
        "tc_id",
        "summary",
        "md5",
        "sha1",
        "sha256",
        "external_id",
        "value",
        "raw_value",
        "web_link",
        "date_added",
        "last_modified",
        "valid_from",
        "expiration",
        "content_hash",
        "stix_modified",
        "target_id",
    }
)
#: Columns written in an encoding other than plain or dictionary. External ids are 36 hex digits and dashes each:
#: with their lengths apart (DELTA_LENGTH_BYTE_ARRAY) instead of a 4-byte length before every one (PLAIN), zstd
#: compresses the column in two thirds of the time and 6 % smaller. ThreatConnect ids of a page lie close
#: together: DELTA_BINARY_PACKED stores them in a third of the time (and no slower for scattered ids).
COLUMN_ENCODINGS = {"external_id": "DELTA_LENGTH_BYTE_ARRAY", "tc_id": "DELTA_BINARY_PACKED"}
#: Text columns readers filter on with row-group statistics (readback's lookup of held ids by ``external_id``).
FILTERED_TEXT_COLUMNS = frozenset({"external_id"})
#: Rows per Parquet row group (at least; the writes of a stage are gathered until this many).
ROW_GROUP_ROWS = 32_768


def _leaves(name: str, type_: pa.DataType) -> list[str]:
    """The Parquet column paths of one Arrow field (a list's values are ``<name>.list.element``)."""
    return [leaf for leaf, _ in _typed_leaves(name, type_)]


def _statistics_leaves(schema: pa.Schema) -> list[str]:
    """The column paths written with min/max statistics: fixed-width ones and ``FILTERED_TEXT_COLUMNS``.

    Statistics of a fixed-width column (times, ids, counts, flags: what a reader prunes row groups by) cost next
    to nothing. Those of text and list columns (values, descriptions, tags) cost about a tenth of writing a
    normalized file, and no reader filters on them: a filter on such a column still works, it only reads every
    row group.
    """
    leaves = []
    for f in schema:
        for leaf, type_ in _typed_leaves(f.name, f.type):
            if f.name in FILTERED_TEXT_COLUMNS or not _is_text(type_):
                leaves.append(leaf)
    return leaves


def _typed_leaves(name: str, type_: pa.DataType) -> list[tuple[str, pa.DataType]]:
    """The Parquet column paths of one Arrow field, each with its Arrow type."""
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return _typed_leaves(f"{name}.list.element", type_.value_type)
    if pa.types.is_struct(type_):
        return [leaf for child in type_ for leaf in _typed_leaves(f"{name}.{child.name}", child.type)]
    return [(name, type_)]


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_binary(type_)


def _column_encodings(schema: pa.Schema) -> dict[str, str]:
    """``COLUMN_ENCODINGS`` of the columns present with a type the encoding takes (text, or 32/64-bit integers)."""
    fits = {"DELTA_LENGTH_BYTE_ARRAY": _is_text, "DELTA_BINARY_PACKED": lambda t: t in (pa.int32(), pa.int64())}
    return {
        name: encoding
        for name, encoding in COLUMN_ENCODINGS.items()
        if name in schema.names and fits[encoding](schema.field(name).type)
    }


def _open_output(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """A file to write ``path`` to: Arrow's own stream on a local disk, the fsspec file elsewhere.

    Through a Python file object every page the writing thread emits needs the GIL, and while the caller runs
    Python (per-value rules, hashing) each one waits for it: beside a pure-Python loop, writing the normalized
    rows of a 1M-indicator run took 8-15 s instead of 2.4-3.5 s. Arrow's local stream writes without the GIL.
    """
    if isinstance(fs, LocalFileSystem):
        return pa.fs.LocalFileSystem().open_output_stream(path, buffer_size=1 << 20)
    return fs.open(path, "wb")


class PartitionWriter:
    """Streams record batches into one partition's temporary directory; ``SnapshotStore.writer`` commits it.

    Writes are gathered into row groups of at least ``ROW_GROUP_ROWS`` rows (a page of the source is a third of
    that): fewer, larger row groups cost less to encode and to read. A background thread encodes, compresses and
    writes each row group (pyarrow releases the GIL meanwhile), so the caller prepares the next rows on the other
    core; at most one row group is being written while the next is gathered. An error of the
    thread is raised by the next ``write`` or by ``close``.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._file = _open_output(fs, path)
        # zstd level 1: most of the size win of zstd at a fraction of its CPU (snapshots are written every run).
        self._writer = pq.ParquetWriter(
            self._file,
            schema,
            compression="zstd",
            compression_level=1,
            use_dictionary=[leaf for f in schema if f.name not in PLAIN_COLUMNS for leaf in _leaves(f.name, f.type)],
            write_statistics=_statistics_leaves(schema),
            column_encoding=_column_encodings(schema),
        )
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_row_groups, name="snapshot-writer", daemon=True)
        self._thread.start()

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Append rows (columns in any order; extra partition columns are dropped)."""
        if data.num_rows == 0:
            return
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        table = table.select(self.schema.names).cast(self.schema)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Hand the gathered rows to the writing thread as one row group."""
        if self._error is not None:
            raise self._error
        if self._pending:
            self._queue.join()  # the previous row group is written: one in flight, one gathered
            self._queue.put(pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0

    def _write_row_groups(self) -> None:
        """The writing thread: write row groups until None arrives (after an error, only drain the queue)."""
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write_table(table)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc
            self._queue.task_done()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Write what is gathered and close the file (``SnapshotStore.writer`` calls it)."""
        self._flush()
        self._stop()
        if self._error is not None:
            raise self._error
        self._writer.close()
        self._file.close()

    def abandon(self) -> None:
        """Close the file without writing what is gathered (the partition is being thrown away)."""
        self._pending, self._pending_rows = [], 0
        self._stop()
        self._writer.close()
        self._file.close()


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
        schema = pa.schema([f for f in schema if f.name not in PARTITION_COLUMNS], metadata=schema.metadata)
        type_dir = self._type_dir(stage, indicator_type)
        tmp_dir = f"{type_dir}/_tmp-{uuid.uuid4().hex}"
        self.fs.makedirs(tmp_dir, exist_ok=True)
        name = "part-00000.parquet" if part is None else f"part-{_safe_part(part)}.parquet"
        writer = PartitionWriter(self.fs, f"{tmp_dir}/{name}", schema)
        try:
            yield writer
            writer.close()
            final_dir = self.partition_dir(stage, indicator_type, run_id)
            if part is None:
                self._replace(tmp_dir, final_dir)
            else:
                self.fs.makedirs(final_dir, exist_ok=True)
                self.fs.mv(f"{tmp_dir}/{name}", f"{final_dir}/{name}")  # a rename: replaces that file at once
                self.fs.rm(tmp_dir, recursive=True)
        except BaseException:
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
        """Where one target's file of a partition is (``writer(..., part=...)``), or the partition's only file."""
        name = "part-00000.parquet" if part is None else f"part-{_safe_part(part)}.parquet"
        return f"{self.partition_dir(stage, indicator_type, run_id)}/{name}"

    def stamp(self, stage: str, indicator_type: str, run_id: str, part: str | None = None) -> str | None:
        """An identity of one target's file that changes whenever the file is written again (None: no such file).

        Built from what the filesystem reports (size, modification time, inode, ETag): a rewrite replaces the file
        with a new one, so the stamp differs. No clock is read here.
        """
        try:
            info = self.fs.info(self.part_path(stage, indicator_type, run_id, part))
        except FileNotFoundError:
            return None
        keys = ("size", "mtime", "ino", "created", "LastModified", "last_modified", "ETag", "etag")
        return "|".join(f"{k}={info[k]}" for k in keys if k in info)

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
    ) -> Iterator[pa.RecordBatch]:
        """Stream one partition in record batches, so memory is bounded by a batch, not by the partition.

        Text columns the writer dictionary-encodes (owners, kinds, descriptions...) are read as Arrow dictionaries
        and expanded with one take each, because the Parquet reader's dense path appends them value by value; the
        batches have the file's schema all the same.
        """
        files = self._files(stage, indicator_type, run_id)
        schema = ds.dataset(files, format=self._format(), filesystem=self._pa_filesystem()).schema
        if columns is not None:
            schema = pa.schema([schema.field(name) for name in columns], metadata=schema.metadata)
        coded = [f.name for f in schema if f.name not in PLAIN_COLUMNS and pa.types.is_string(f.type)]
        dataset = ds.dataset(files, format=self._format(coded), filesystem=self._pa_filesystem())
        # Small read-ahead: the default (16 batches) would hold a large share of a big partition in memory.
        batches = dataset.to_batches(columns=columns, batch_size=batch_size, batch_readahead=2, fragment_readahead=1)
        for batch in batches:
            yield batch.cast(schema) if coded else batch

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
