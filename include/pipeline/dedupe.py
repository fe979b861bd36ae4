"""Deterministic indicator ids and de-duplication of normalized rows (newest ThreatConnect version wins)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: The project's uuid5 namespace. Never change it: every id already sent to a target derives from it.
#: (It is uuid5(NAMESPACE_URL, "https://github.com/tc-sentinel/indicator"), written out so that it is a constant.)
NAMESPACE = uuid.UUID("6fa483d2-46d5-5e85-94df-89d7a8157f84")

_NAMESPACE_BYTES = NAMESPACE.bytes
# uuid5 sets the variant bits (10xx) in the high nibble of byte 8: hex digit 16 keeps its low two bits only.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
# the two hex digits of each byte value, as one uint16 (in memory order)
_HEX_PAIRS = np.frombuffer("".join(f"{i:02x}" for i in range(256)).encode(), dtype=np.uint16)
# (text columns, hex-digit columns) of the five dash-separated uuid groups 8-4-4-4-12
_UUID_GROUPS = (((0, 8), (0, 8)), ((9, 13), (8, 12)), ((14, 18), (12, 16)), ((19, 23), (16, 20)), ((24, 36), (20, 32)))

#: Columns ``winners`` reads; the only ones a streaming caller has to load in the first pass.
KEY_COLUMNS: tuple[str, ...] = ("external_id", "last_modified", "tc_id", "deleted")


def external_id(owner: str, indicator_type: str, value: str) -> str:
    """The stable id of one indicator: ``uuid5(NAMESPACE, "owner|type|value")`` as a string.

    Equal to ``str(uuid.uuid5(NAMESPACE, name))`` (a test checks it), computed directly from SHA-1 because this
    runs once per normalized row and the ``uuid.UUID`` round trip costs twice as much. It depends on nothing
    but its arguments, so it is the same in every run, process and machine (never Python's salted ``hash()``).

    Args:
        owner: ThreatConnect owner name, as ThreatConnect spells it.
        indicator_type: ThreatConnect type name (``Address``, ``File``, ...).
        value: the canonical value (``include.pipeline.canonical``).
    """
    h = hashlib.sha1(_NAMESPACE_BYTES + f"{owner}|{indicator_type}|{value}".encode()).hexdigest()  # noqa: S324
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def external_ids(
    owners: Sequence[str] | pa.Array | pa.ChunkedArray,
    indicator_type: str,
    values: Sequence[str] | pa.Array | pa.ChunkedArray,
) -> pa.StringArray:
    """``external_id`` of many indicators of one type at once, as an Arrow string array (same values).

    Only the SHA-1 runs per row, and without Python bytecode per row: the names ``namespace + "owner|type|value"``
    are joined by Arrow (for Arrow input without nulls; in Python otherwise) and hashed by ``map`` over
    ``hashlib.sha1``; the uuid formatting is done on the whole digest matrix with numpy. Normalize calls it for
    every row.
    """
    n = len(values)
    joined = b"".join(map(_DIGEST, map(hashlib.sha1, _names(owners, indicator_type, values))))
    digest = np.frombuffer(joined, dtype=np.uint8).reshape(n, 20)[:, :16].copy()
    digest[:, 6] = (digest[:, 6] & 0x0F) | 0x50  # version 5
    digest[:, 8] = (digest[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = _HEX_PAIRS[digest].view(np.uint8)  # (n, 32): two hex digits per byte, by table
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for (start, end), (h_start, h_end) in _UUID_GROUPS:
        text[:, start:end] = hexed[:, h_start:h_end]
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


_DIGEST = type(hashlib.sha1()).digest  # noqa: S324 - the method, to map over hash objects


def _names(
    owners: Sequence[str] | pa.Array | pa.ChunkedArray,
    indicator_type: str,
    values: Sequence[str] | pa.Array | pa.ChunkedArray,
) -> list[bytes]:
    """The uuid5 names ``namespace bytes + "owner|type|value"`` (UTF-8) that ``external_ids`` hashes."""
    arrow = (pa.Array, pa.ChunkedArray)
    if isinstance(owners, arrow) and isinstance(values, arrow) and not owners.null_count and not values.null_count:
        if len(owners) != len(values):
            raise ValueError(f"{len(owners)} owners for {len(values)} values")
        names = pc.binary_join_element_wise(
            pa.scalar(_NAMESPACE_BYTES, pa.binary()),
            owners.cast(pa.binary()),
            pa.scalar(f"|{indicator_type}|".encode(), pa.binary()),
            values.cast(pa.binary()),
            pa.scalar(b"", pa.binary()),  # the separator
        )
        return names.to_pylist()
    owners = owners.to_pylist() if isinstance(owners, arrow) else owners
    values = values.to_pylist() if isinstance(values, arrow) else values
    prefix = _NAMESPACE_BYTES
    return [prefix + f"{o}|{indicator_type}|{v}".encode() for o, v in zip(owners, values, strict=True)]


def winners(keys: pa.Table) -> pa.BooleanArray:
    """Which rows survive de-duplication: one per ``external_id``: a live row over a deletion, then the newest.

    A row from ThreatConnect's deleted listing (``deleted`` true) loses to any row of the active listings for
    the same id: the active listings show only what exists now, so such a row means the value was re-created
    after the deletion. A table without a ``deleted`` column has no deletions.

    Ties on ``last_modified`` go to the highest ``tc_id``, then to the first row, so the answer never depends on
    hash order or the clock. A null ``last_modified`` or ``tc_id`` loses to any value; a null ``external_id`` is
    never a duplicate of anything (kept: only duplicates are dropped).

    Intended use over a whole run without loading every column (two passes): read only ``KEY_COLUMNS`` of all
    the run's normalized files, in a fixed order, concatenated; call ``winners`` once; then stream the files again
    in the same order and keep ``batch.filter(mask.slice(offset, batch.num_rows))``, advancing ``offset`` by each
    batch's row count. Memory is three columns of the whole run plus one batch.

    Args:
        keys: a table with at least ``external_id``, ``last_modified`` and ``tc_id``, optionally ``deleted``
            (other columns ignored).

    Returns:
        A boolean mask aligned with ``keys``'s rows: True for rows to keep. O(n log n): a hash encoding of
        the ids, then one sort on integer keys.
    """
    n = keys.num_rows
    if n == 0:
        return pa.array([], pa.bool_())
    # Hash-encode the string key to integers once so the sort compares int64s, not 36-character strings.
    ids = keys.column("external_id")
    # one dictionary for the whole column (per-chunk dictionaries would have to be unified afterwards)
    encoded = pc.dictionary_encode(ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = np.flatnonzero(codes < 0)
    codes[nulls] = len(encoded.dictionary) + np.arange(len(nulls))  # each null external_id is its own group
    # Nearly every id occurs once: those rows win outright, and only the rows of repeated ids are sorted.
    mask = np.ones(n, dtype=bool)
    contested = np.flatnonzero(np.bincount(codes)[codes] > 1)
    if not len(contested):
        return pa.array(mask)
    rows = pa.array(contested, pa.int64())
    lowest = np.iinfo(np.int64).min
    modified = _int64(keys.column("last_modified").take(rows), lowest)
    tc_id = _int64(keys.column("tc_id").take(rows), lowest)
    if "deleted" in keys.column_names:
        deleted = pc.fill_null(keys.column("deleted").take(rows), False).cast(pa.int8())
        deleted = deleted.combine_chunks() if isinstance(deleted, pa.ChunkedArray) else deleted
    else:
        deleted = pa.array(np.zeros(len(contested), dtype=np.int8))
    codes = codes[contested]
    # Arrow's sort is stable (full ties keep input order, so the first occurrence wins) and, on integer keys,
    # about three times faster than numpy's lexsort.
    order = pc.sort_indices(
        pa.table({"id": codes, "deleted": deleted, "modified": modified, "tc_id": tc_id}),
        [("id", "ascending"), ("deleted", "ascending"), ("modified", "descending"), ("tc_id", "descending")],
    ).to_numpy()
    sorted_codes = codes[order]
    first = np.empty(len(order), dtype=bool)
    first[0] = True
    np.not_equal(sorted_codes[1:], sorted_codes[:-1], out=first[1:])
    mask[contested[order[~first]]] = False
    return pa.array(mask)


def _int64(column: pa.ChunkedArray | pa.Array, fill: int) -> np.ndarray:
    """A timestamp or integer column as int64 numpy, nulls replaced by ``fill``."""
    ints = pc.fill_null(column.cast(pa.int64()), fill)
    if isinstance(ints, pa.ChunkedArray):
        ints = ints.combine_chunks()
    return ints.to_numpy(zero_copy_only=False)


def dedupe(table: pa.Table) -> tuple[pa.Table, int]:
    """Keep one row per ``external_id`` (the newest, see ``winners``), preserving the input order.

    Args:
        table: normalized rows (``NORMALIZED_SCHEMA`` or any table with the ``KEY_COLUMNS``).

    Returns:
        ``(deduplicated table, number of rows dropped)``.
    """
    mask = winners(table.select([c for c in KEY_COLUMNS if c in table.column_names]))
    kept = table.filter(mask)
    return kept, table.num_rows - kept.num_rows
