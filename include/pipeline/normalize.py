"""Turn raw ThreatConnect rows into normalized indicator rows and rejected rows, column-wise and deterministic."""

from __future__ import annotations

import logging
from collections.abc import Mapping as AbcMapping
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline import expiry, fields
from include.pipeline.canonical import canonical_hash
from include.pipeline.canonical_columns import canonicalize_array, canonicalize_hashes
from include.pipeline.dedupe import external_ids
from include.pipeline.fields import RATING_LABELS as RATING_LABELS  # re-exported: part of the module's API
from include.pipeline.fields import fit as fit
from include.pipeline.mappings import Mapping, load_all
from include.pipeline.schema import NORMALIZED_SCHEMA, RAW_SCHEMA, REJECTED_SCHEMA

log = logging.getLogger(__name__)

_HASH_COLUMNS: tuple[str, ...] = ("md5", "sha1", "sha256")

MappingArg = Mapping | AbcMapping[str, Mapping] | None


def normalize(batch: pa.RecordBatch | pa.Table, mapping: MappingArg = None) -> tuple[pa.Table, pa.Table]:
    """Canonicalise, validate and map raw ThreatConnect rows.

    Every input row ends up in at least one of the outputs: a File row becomes one normalized row per valid hash
    and one rejected row per invalid hash (a File row without any hash is rejected once); any other row becomes
    exactly one normalized or one rejected row. Outputs list the types in order of first appearance and keep the
    input order within a type (a File's hashes in md5, sha1, sha256 order). Nothing reads the clock:
    ``expiration`` derives from ThreatConnect's timestamps, so a rerun produces identical tables.

    Args:
        batch: rows in ``RAW_SCHEMA`` (extra columns are ignored; compatible types are cast).
        mapping: one ``Mapping`` (rows of any other type are rejected), a dict of mappings keyed by
            ThreatConnect type, or None for every shipped mapping (``load_all()``).

    Returns:
        ``(normalized rows in NORMALIZED_SCHEMA, rejected rows in REJECTED_SCHEMA)``.

    Raises:
        ValueError: the input lacks a ``RAW_SCHEMA`` column (a programming error, not bad data).
    """
    table = _as_raw_table(batch)
    if isinstance(mapping, Mapping):
        mappings: AbcMapping[str, Mapping] = {mapping.indicator_type: mapping}
        only: str | None = mapping.indicator_type
    else:
        mappings = load_all() if mapping is None else mapping
        only = None

    norm_parts: list[pa.Table] = []
    rej_parts: list[pa.Table] = []
    for type_name, positions in _groups(table.column("indicator_type")):
        sub = table if len(positions) == table.num_rows else table.take(pa.array(positions))
        m = mappings.get(type_name) if type_name is not None else None
        if m is None:
            if type_name is None:
                reason = "missing indicator type"
            elif only is not None:
                reason = f"indicator type {type_name!r} does not match the {only!r} mapping"
            else:
                reason = f"unsupported indicator type {type_name!r}"
            rows = np.arange(sub.num_rows)
            raw = sub.column("summary").to_pylist()
            rej_parts.append(_rejected(sub, rows, raw, [reason] * len(rows)))
            continue
        norm, rej = _normalize_type(sub, m)
        norm_parts.append(norm)
        rej_parts.append(rej)

    normalized = _concat(norm_parts, NORMALIZED_SCHEMA)
    rejected = _concat(rej_parts, REJECTED_SCHEMA)
    log.info(
        "normalized %s raw rows: %s indicators, %s rejected", table.num_rows, normalized.num_rows, rejected.num_rows
    )
    return normalized, rejected


# --- plumbing ---------------------------------------------------------------------------------------------------


def _as_raw_table(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    missing = [name for name in RAW_SCHEMA.names if name not in table.column_names]
    if missing:
        raise ValueError(f"raw rows lack columns: {', '.join(missing)}")
    table = table.select(RAW_SCHEMA.names)
    if not table.schema.equals(RAW_SCHEMA):
        table = table.cast(RAW_SCHEMA)
    return table.combine_chunks()


def _groups(types: pa.ChunkedArray) -> list[tuple[str | None, np.ndarray]]:
    """Row positions per indicator type (None for a null type), in order of first appearance."""
    n = len(types)
    if n == 0:
        return []
    encoded = pc.dictionary_encode(types).combine_chunks()
    names = encoded.dictionary.to_pylist()
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    if len(names) == 1 and encoded.null_count == 0:
        return [(names[0], np.arange(n))]  # the usual case: the DAG maps one task per type
    out: list[tuple[str | None, np.ndarray]] = []
    for code in dict.fromkeys(codes.tolist()):
        out.append((names[code] if code >= 0 else None, np.flatnonzero(codes == code)))
    return out


def _concat(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    parts = [t for t in parts if t.num_rows]
    if not parts:
        return schema.empty_table()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def _rejected(sub: pa.Table, rows: np.ndarray | Sequence[int], raw: list[str | None], reasons: list[str]) -> pa.Table:
    idx = pa.array(rows, pa.int64())
    return pa.Table.from_arrays(
        [
            sub.column("tc_id").take(idx),
            sub.column("owner").take(idx),
            sub.column("indicator_type").take(idx),
            pa.array(raw, pa.string()),
            sub.column("last_modified").take(idx),
            pa.array(reasons, pa.string()),
        ],
        schema=REJECTED_SCHEMA,
    )


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False)


# --- one type ---------------------------------------------------------------------------------------------------


def _row_problems(sub: pa.Table) -> dict[int, str]:
    """Row-level reasons that stop a row before its value is looked at, by row position (usually none)."""
    owner_bad = _numpy(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(sub.column("owner")), ""), True))
    no_time = _numpy(pc.and_(pc.is_null(sub.column("date_added")), pc.is_null(sub.column("last_modified"))))
    problems: dict[int, str] = {}
    for i in np.flatnonzero(no_time).tolist():
        problems[i] = "missing dateAdded and lastModified"
    for i in np.flatnonzero(owner_bad).tolist():
        problems[i] = "missing owner"  # the external id is keyed on it
    return problems


class Candidates(NamedTuple):
    """Values to canonicalise with their canonical answers (Arrow, aligned), and the rows rejected before that."""

    rows: np.ndarray  # the source row of each candidate (ascending; a File row once per hash)
    raws: pa.Array  # the value as ThreatConnect sent it
    values: pa.Array  # the canonical value; null for a rejected value
    variants: pa.Array  # the variant; for a rejected value the reason
    rej_rows: list[int]
    rej_raw: list[str | None]
    rej_reason: list[str]


def _candidates(sub: pa.Table, m: Mapping, problems: dict[int, str]) -> Candidates:
    """Values to canonicalise, their canonical answers, and the rows rejected before canonicalisation."""
    if m.kind == "hash":
        return _hash_candidates(sub, problems)
    summary = sub.column("summary").combine_chunks()
    proceed = _numpy(pc.is_valid(summary))
    proceed[list(problems)] = False
    if proceed.all():
        # the usual batch: no row-level problem, every value present (blank ones fail canonicalisation)
        return Candidates(np.arange(len(summary)), summary, *canonicalize_array(m.kind, summary), [], [], [])
    rows = np.flatnonzero(proceed)
    raws = summary.take(pa.array(rows, pa.int64()))
    rej_rows = np.flatnonzero(~proceed).tolist()
    rej_raw = summary.take(pa.array(rej_rows, pa.int64())).to_pylist()
    rej_reason = [problems.get(i) or f"missing {m.indicator_type} value" for i in rej_rows]
    return Candidates(rows, raws, *canonicalize_array(m.kind, raws), rej_rows, rej_raw, rej_reason)


def _hash_candidates(sub: pa.Table, problems: dict[int, str]) -> Candidates:
    """File rows: one candidate per hash present, in md5, sha1, sha256 order within a row.

    Rows whose hash fields are all absent or printable ASCII without spaces (nearly all) are gathered column-wise;
    the rest (row problems, blanks, odd characters, no hash field at all) row by row.
    """
    columns = [sub.column(c).combine_chunks() for c in _HASH_COLUMNS]
    simple = [pc.match_substring_regex(c, r"^[!-~]+$") for c in columns]
    present = [_numpy(pc.fill_null(f, False)) for f in simple]
    odd = [_numpy(pc.is_valid(c)) & ~has for c, has in zip(columns, present, strict=True)]
    fast = ~(odd[0] | odd[1] | odd[2]) & (present[0] | present[1] | present[2])
    fast[list(problems)] = False

    src: list[np.ndarray] = []
    order: list[np.ndarray] = []
    raws: list[pa.Array] = []
    values: list[pa.Array] = []
    variants: list[pa.Array] = []
    for position, (name, column, has) in enumerate(zip(_HASH_COLUMNS, columns, present, strict=True)):
        rows = np.flatnonzero(fast & has)
        taken = column.take(pa.array(rows, pa.int64()))
        answers = canonicalize_hashes(taken, name)
        src.append(rows)
        order.append(np.full(len(rows), position, dtype=np.int64))
        raws.append(taken)
        values.append(answers[0])
        variants.append(answers[1])

    slow = np.flatnonzero(~fast)
    rows_slow, raws_slow, rej_rows, rej_raw, rej_reason = _hash_rows_one_by_one(sub, problems, slow)
    src.append(np.asarray(rows_slow, dtype=np.int64))
    order.append(np.arange(len(rows_slow), dtype=np.int64))  # rows are ascending: keeps each row's order
    answers_slow = [canonical_hash(raw, expected) for raw, expected in raws_slow]
    raws.append(pa.array([raw for raw, _ in raws_slow], pa.string()))
    values.append(pa.array([value for value, _ in answers_slow], pa.string()))
    variants.append(pa.array([variant for _, variant in answers_slow], pa.string()))
    rows_all = np.concatenate(src)
    perm = pa.array(np.lexsort((np.concatenate(order), rows_all)), pa.int64())
    return Candidates(
        rows_all[perm.to_numpy()],
        pa.concat_arrays(raws).take(perm),
        pa.concat_arrays(values).take(perm),
        pa.concat_arrays(variants).take(perm),
        rej_rows,
        rej_raw,
        rej_reason,
    )


def _hash_rows_one_by_one(
    sub: pa.Table, problems: dict[int, str], positions: np.ndarray
) -> tuple[list[int], list[tuple[str, str | None]], list[int], list[str | None], list[str]]:
    """The File rules row by row: ``(candidate rows, (raw, expected type), rejected rows, raw values, reasons)``."""
    idx = pa.array(positions, pa.int64())
    summary = sub.column("summary").take(idx).to_pylist()
    columns = [sub.column(c).take(idx).to_pylist() for c in _HASH_COLUMNS]
    rows: list[int] = []
    raws: list[tuple[str, str | None]] = []
    rej_rows: list[int] = []
    rej_raw: list[str | None] = []
    rej_reason: list[str] = []
    for i, summ, *hashes in zip(positions.tolist(), summary, *columns, strict=True):
        if i in problems:
            rej_rows.append(i)
            rej_raw.append(summ)
            rej_reason.append(problems[i])
            continue
        found = False
        for name, raw in zip(_HASH_COLUMNS, hashes, strict=True):
            if raw is not None and raw.strip():
                rows.append(i)
                raws.append((raw, name))
                found = True
        if not found and summ:
            # The all-types v2 listing has no hash fields, only the summary "MD5 : SHA1 : SHA256"
            # (threatconnect_api.md §2.3); the length of each part says which hash it is.
            for part in summ.split(":"):
                if part.strip():
                    rows.append(i)
                    raws.append((part.strip(), None))
                    found = True
        if not found:
            rej_rows.append(i)
            rej_raw.append(summ)
            rej_reason.append("File has no hash")
    return rows, raws, rej_rows, rej_raw, rej_reason


def _normalize_type(sub: pa.Table, m: Mapping) -> tuple[pa.Table, pa.Table]:
    """Normalize rows that all have the mapping's type: ``(normalized, rejected)``, each in row order."""
    rows, raws, values, variants, rej_rows, rej_raw, rej_reason = _candidates(sub, m, _row_problems(sub))

    bad = _numpy(pc.is_null(values))
    if bad.any():
        refused = pa.array(np.flatnonzero(bad), pa.int64())
        rej_rows.extend(rows[bad].tolist())
        rej_raw.extend(raws.take(refused).to_pylist())
        rej_reason.extend(variants.take(refused).to_pylist())
        good = pa.array(~bad)
        rows, raws, values, variants = rows[~bad], raws.filter(good), values.filter(good), variants.filter(good)

    rej_src = np.asarray(rej_rows, dtype=np.int64)
    if len(rej_src) > 1:
        # value rejects were appended after the row-level ones: restore row order
        order = np.argsort(rej_src, kind="stable")
        rej_src = rej_src[order]
        rej_raw = [rej_raw[i] for i in order.tolist()]
        rej_reason = [rej_reason[i] for i in order.tolist()]
    rejected = _rejected(sub, rej_src, rej_raw, rej_reason)

    if m.kind == "hash":  # a File row once per hash: rows repeat
        source = sub.select(_BUILD_COLUMNS).take(pa.array(rows, pa.int64()))
    elif len(rows) == sub.num_rows:
        source = sub
    else:  # ascending, distinct rows: a mask (a filter copies about half as fast again as a take)
        keep = np.zeros(sub.num_rows, dtype=bool)
        keep[rows] = True
        source = sub.select(_BUILD_COLUMNS).filter(pa.array(keep))
    normalized = _build(source, m, raws, values, variants)
    return normalized, rejected


#: The raw columns ``_build`` reads; the others (the value fields, audit columns) are not copied per candidate.
_BUILD_COLUMNS: tuple[str, ...] = (
    "tc_id",
    "owner",
    "date_added",
    "last_modified",
    "rating",
    "confidence",
    "active",
    "false_positive_count",
    "tags",
    "security_labels",
    "description",
    "web_link",
    "external_date_expires",
    "deleted",
)


def _build(t: pa.Table, m: Mapping, raws: pa.Array, values: pa.Array, variants: pa.Array) -> pa.Table:
    """The NORMALIZED_SCHEMA columns for accepted values (aligned Arrow arrays); ``t`` holds each value's source row."""
    n = t.num_rows
    type_name = m.indicator_type
    ids = external_ids(t.column("owner"), type_name, values)

    date_added = pc.coalesce(t.column("date_added"), t.column("last_modified"))
    last_modified = pc.coalesce(t.column("last_modified"), t.column("date_added"))

    confidence = _numpy(t.column("confidence").cast(pa.float64()))  # NaN for null
    confidence = np.where(np.isnan(confidence), m.confidence_default, np.clip(confidence, 0, 100))

    # Severity: ThreatConnect's 0-5 rating (decimals allowed) rounded half up (2.5 -> 3; Python's round() would
    # give 2), clamped to Graph's 0-5; unset (and 0 "Unknown" when the mapping says so) -> the default.
    rating = np.floor(_numpy(t.column("rating")) + 0.5)
    rated = ~np.isnan(rating)
    rating = np.clip(np.where(rated, rating, 0), 0, 5).astype(np.int64)
    if m.zero_rating_is_unset:
        rated &= rating != 0
    severity = np.where(rated, rating, m.severity_default)

    expiration = expiry.expirations(m.expiration, last_modified, rating, rated, t.column("external_date_expires"))

    tlp_ranks = fields.tlp_rank(t.column("security_labels"), m)
    descriptions = fields.descriptions(t, m, values, variants, rating, rated, confidence, tlp_ranks)

    is_hash = m.kind == "hash"
    variant_codes, variant_names = fields.distinct(variants)
    observable = dict(m.observables)
    columns = {
        "external_id": ids,
        "indicator_type": pa.repeat(pa.scalar(type_name, pa.string()), n),
        "kind": pa.repeat(pa.scalar(m.kind, pa.string()), n),
        "value": values,
        "raw_value": raws,
        "observable": pa.array([observable[v] for v in variant_names], pa.string()).take(variant_codes),
        "hash_type": pa.array(variant_names, pa.string()).take(variant_codes) if is_hash else pa.nulls(n, pa.string()),
        "tc_id": t.column("tc_id"),
        "owner": t.column("owner"),
        "date_added": date_added,
        "last_modified": last_modified,
        "confidence": pa.array(confidence.astype(np.int32)),
        "severity": pa.array(severity.astype(np.int32)),
        "tlp": fields.tlp(tlp_ranks),
        "threat_type": pa.repeat(pa.scalar(m.threat_type, pa.string()), n),
        "tags": fields.tags(t.column("tags"), m.extra_tags),
        "description": descriptions,
        "valid_from": date_added,
        "expiration": expiration,
        # v2 listings leave `active` out unless includeAdditional=true, and they return active indicators only
        "active": pc.fill_null(t.column("active"), True),
        "false_positive": pc.fill_null(pc.greater(t.column("false_positive_count"), 0), False),
        "web_link": t.column("web_link"),
        "deleted": fields.deleted(t),
    }
    return pa.Table.from_arrays([columns[f.name] for f in NORMALIZED_SCHEMA], schema=NORMALIZED_SCHEMA)
