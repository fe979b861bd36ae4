"""How one snapshot file is written: its encodings, statistics and row groups, and the thread that writes them.

``SnapshotStore`` (``include.pipeline.snapshots``) decides where files go and makes partitions atomic; this module
only turns record batches into one Parquet file, fast and in a shape readers can prune.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

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
