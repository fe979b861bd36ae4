"""Derived fields of normalized rows: TLP, tags, description (rendered once per distinct input), deletion flag."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline.mappings import DESCRIPTION_MAX, TLP_LEVELS, Mapping
from include.pipeline.schema import NORMALIZED_SCHEMA

#: ThreatConnect's threat-rating labels (threatconnect_api.md §5), by rating rounded half up.
RATING_LABELS: tuple[str, ...] = ("Unknown", "Suspicious", "Low", "Moderate", "High", "Very High")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ELLIPSIS = "…"
_KEY_LIMIT = 1 << 62  # mixed-radix keys of the description inputs must fit in int64


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False)


def deleted(t: pa.Table) -> pa.ChunkedArray | pa.Array:
    """Rows from ThreatConnect's deleted-indicators listing; batches without the column are live listings."""
    if "deleted" not in t.column_names:
        return pa.array([False] * t.num_rows, pa.bool_())
    return pc.fill_null(t.column("deleted"), False)


def tlp_rank(labels: pa.ChunkedArray | pa.Array, m: Mapping) -> np.ndarray:
    """Index into ``TLP_LEVELS`` per row: the most restrictive TLP among its security labels, else the default."""
    if isinstance(labels, pa.ChunkedArray):
        labels = labels.combine_chunks()
    n = len(labels)
    default = TLP_LEVELS.index(m.tlp_default)
    rank = np.full(n, -1, dtype=np.int64)
    flat = pc.list_flatten(labels)
    if len(flat):
        # A handful of distinct labels: each is looked up once, and the rows take their distinct label's rank.
        encoded = pc.dictionary_encode(flat)
        keys = pc.utf8_upper(pc.replace_substring_regex(encoded.dictionary, r"\s+", ""))
        known = pa.array([k for k, _ in m.tlp_labels], pa.string())
        level_rank = np.array([TLP_LEVELS.index(level) for _, level in m.tlp_labels] + [-1], dtype=np.int64)
        found = _numpy(pc.fill_null(pc.index_in(keys, value_set=known), len(m.tlp_labels)))
        distinct_rank = np.append(level_rank[found], -1)  # a null label ranks -1 too
        codes = _numpy(pc.fill_null(encoded.indices.cast(pa.int64()), len(found)))
        parents = _numpy(pc.list_parent_indices(labels))
        np.maximum.at(rank, parents, distinct_rank[codes])  # custom (non-TLP) labels rank -1: ignored
    rank[rank < 0] = default
    return rank


def tlp(rank: np.ndarray) -> pa.Array:
    """The TLP names of :func:`tlp_rank`."""
    return pa.array(TLP_LEVELS, pa.string()).take(pa.array(rank, pa.int64()))


def tags(column: pa.ChunkedArray | pa.Array, extra: tuple[str, ...]) -> pa.Array:
    """Tags per row: ThreatConnect's plus the mapping's, trimmed, without blanks or case-insensitive repeats, sorted.

    Sorted (case-insensitively, then by spelling) because ThreatConnect does not promise an order: a reordering
    alone must not change the content hash and trigger an update of every indicator.

    A feed uses a few dozen tags in a few hundred combinations: each distinct list is tidied once (by
    :func:`tidy_tags`, from its first row) and the rows take their list's answer.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    distinct = _distinct_lists(column)
    if distinct is None:
        return tidy_tags(column, extra)
    codes, firsts = distinct
    return tidy_tags(column.take(firsts), extra).take(codes)


def _distinct_lists(column: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """``(code per row, first row of each code)`` of a list-of-strings column: rows with equal lists share a code.

    A list's key is the bijective base-``b`` numeral of its element codes (each code + 1, with ``b`` one more than
    the largest), so lists of different lengths or orders never share a key; a null list and an empty one share
    key 0 (both have no tags). None when a key could exceed int64 (long lists of many distinct tags).
    """
    n = len(column)
    flat = pc.list_flatten(column)
    if not len(flat):
        return None
    encoded = pc.dictionary_encode(flat)
    base = len(encoded.dictionary) + 2  # element codes 1..len+1 (a null tag is the last), never 0
    parents = _numpy(pc.list_parent_indices(column))
    lengths = np.bincount(parents, minlength=n)
    if int(lengths.max()) * math.log2(base) >= 62:
        return None
    digits = _numpy(pc.fill_null(encoded.indices.cast(pa.int64()), base - 2)) + 1
    starts = np.cumsum(lengths) - lengths
    place = np.arange(len(flat), dtype=np.int64) - starts[parents]
    # The running sum wraps around in int64 for a long column, but each row's difference is its key exactly
    # (keys stay below 2**62, and wrap-around arithmetic is exact modulo 2**64).
    running = np.zeros(len(flat) + 1, dtype=np.int64)
    with np.errstate(over="ignore"):
        np.cumsum(digits * base**place, out=running[1:])
        keys = running[starts + lengths] - running[starts]
    groups = pc.dictionary_encode(pa.array(keys, pa.int64()))
    codes = _numpy(groups.indices)
    firsts = np.empty(len(groups.dictionary), dtype=np.int64)
    firsts[codes[::-1]] = np.arange(n - 1, -1, -1, dtype=np.int64)  # each code's first row
    return groups.indices, pa.array(firsts, pa.int64())


def tidy_tags(column: pa.Array, extra: tuple[str, ...]) -> pa.Array:
    """:func:`tags` row by row (the definition): every row's list is trimmed, deduplicated and sorted."""
    n = len(column)
    values = pc.list_flatten(column)
    parents = _numpy(pc.list_parent_indices(column)) if len(values) else np.empty(0, dtype=np.int64)
    if extra:
        each_row = pa.array(list(extra), pa.string()).take(pa.array(np.tile(np.arange(len(extra)), n), pa.int64()))
        values = pa.concat_arrays([values.cast(pa.string()), each_row])
        parents = np.concatenate([parents, np.repeat(np.arange(n, dtype=np.int64), len(extra))])
    if not len(values):
        return pa.array([[] for _ in range(n)], NORMALIZED_SCHEMA.field("tags").type)
    # Tags repeat: trim, lower-case and order the distinct spellings once, then sort the rows' integer ranks.
    encoded = pc.dictionary_encode(values)
    spelling = pc.utf8_trim_whitespace(encoded.dictionary)
    lower_rank = _numpy(pc.rank(pc.utf8_lower(spelling), tiebreaker="dense")).astype(np.int64)
    tag_rank = _numpy(pc.rank(spelling, tiebreaker="dense")).astype(np.int64)
    blank = np.append(_numpy(pc.equal(spelling, "")), True)  # a null tag (the last code) is dropped like a blank
    codes = _numpy(pc.fill_null(encoded.indices.cast(pa.int64()), len(spelling)))
    keep = ~blank[codes]
    parent, codes = parents[keep], codes[keep]
    lower = lower_rank[codes]
    # one int64 key (row, lower-cased tag, tag) when it fits, else a three-key sort; both stable
    lowers, spellings = int(lower_rank.max(initial=0)) + 1, int(tag_rank.max(initial=0)) + 1
    if (n + 1) * lowers * spellings < _KEY_LIMIT:
        order = np.argsort((parent * lowers + lower) * spellings + tag_rank[codes], kind="stable")
    else:
        order = np.lexsort((tag_rank[codes], lower, parent))
    parent, lower, codes = parent[order], lower[order], codes[order]
    first = np.ones(len(parent), dtype=bool)
    first[1:] = (parent[1:] != parent[:-1]) | (lower[1:] != lower[:-1])  # a case-insensitive repeat is dropped
    parent = parent[first]
    kept = spelling.take(pa.array(codes[first], pa.int64()))
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(parent, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), kept, type=NORMALIZED_SCHEMA.field("tags").type)


def _compile(template: str) -> tuple[str, list[str]]:
    """A template with named fields as a positional format string (faster per row) and its field order."""
    names: list[str] = []
    out: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            names.append(name)
            conv = f"!{conversion}" if conversion else ""
            out.append(f"{{{len(names) - 1}{conv}{':' + spec if spec else ''}}}")
    return "".join(out), names


def _distinct(column: pa.ChunkedArray | pa.Array, fn: Callable[[Any], Any]) -> tuple[np.ndarray, list[Any]]:
    """``(code per row, fn of each distinct value)``: ``fn`` runs once per distinct value (null included)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    distinct = encoded.dictionary.to_pylist()
    codes = _numpy(pc.fill_null(encoded.indices.cast(pa.int64()), len(distinct))).astype(np.int64, copy=False)
    return codes, [fn(v) for v in distinct] + [fn(None)]


def distinct(values: pa.Array) -> tuple[pa.Array, list[Any]]:
    """``(index per value, the distinct values)`` of a column without nulls (a few variants, say)."""
    encoded = pc.dictionary_encode(values)
    return encoded.indices, encoded.dictionary.to_pylist()


def descriptions(
    t: pa.Table,
    m: Mapping,
    values: pa.Array,
    variants: pa.Array,
    rating: np.ndarray,
    rated: np.ndarray,
    confidence: np.ndarray,
    tlp_ranks: np.ndarray,
) -> pa.Array:
    """The description per row: the mapping's template when ThreatConnect has a description, else its fallback.

    Every input of a template but the value comes from a small set (owners, cleaned descriptions, labels...):
    each distinct combination of a row's inputs is rendered once and the texts are spread back to the rows.
    """
    n = t.num_rows
    with_fmt, with_fields = _compile(m.description_template)
    without_fmt, without_fields = _compile(m.description_fallback)
    desc_codes, desc_texts = _distinct(t.column("description"), _clean)
    zeros = np.zeros(n, dtype=np.int64)
    coded: dict[str, Callable[[], tuple[np.ndarray, list[Any]]]] = {
        "indicator_type": lambda: (zeros, [m.indicator_type]),
        "kind": lambda: (zeros, [m.kind]),
        "owner": lambda: _distinct(t.column("owner"), lambda owner: owner),
        "description": lambda: (desc_codes, desc_texts),
        "rating_label": lambda: (np.where(rated, rating, 0).astype(np.int64), list(RATING_LABELS)),
        "confidence": lambda: _unique(confidence.astype(np.int64)),
        "tlp": lambda: (tlp_ranks.astype(np.int64), list(TLP_LEVELS)),
        "hash_type": lambda: _distinct(variants, lambda v: v) if m.kind == "hash" else (zeros, [""]),
    }
    has = np.fromiter((bool(text) for text in desc_texts), dtype=bool, count=len(desc_texts))[desc_codes]
    names = sorted(set(with_fields) | set(without_fields))
    if "value" in names or not set(names) <= coded.keys():
        return _per_row(n, m, values, variants, has, desc_codes, desc_texts, coded)
    inputs = {name: coded[name]() for name in names}
    key = has.astype(np.int64)
    size = 2
    for name in names:
        codes, distinct = inputs[name]
        size *= len(distinct)
        if size >= _KEY_LIMIT:
            return _per_row(n, m, values, variants, has, desc_codes, desc_texts, coded)
        used = np.where(has, codes if name in with_fields else 0, codes if name in without_fields else 0)
        key = key * len(distinct) + used
    # Rows with one key have one text: a hash encoding of the keys (cheaper than np.unique's sort), each distinct
    # key rendered from its first row.
    groups = pc.dictionary_encode(pa.array(key, pa.int64()))
    codes = _numpy(groups.indices)
    first = np.empty(len(groups.dictionary), dtype=np.int64)
    first[codes[::-1]] = np.arange(n - 1, -1, -1, dtype=np.int64)
    texts = []
    for row in first.tolist():
        fmt, fields = (with_fmt, with_fields) if has[row] else (without_fmt, without_fields)
        texts.append(fit(fmt.format(*(inputs[f][1][inputs[f][0][row]] for f in fields))))
    return pa.array(texts, pa.string()).take(groups.indices)


def _unique(codes: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    distinct, inverse = np.unique(codes, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), distinct.tolist()


def _per_row(
    n: int,
    m: Mapping,
    values: pa.Array,
    variants: pa.Array,
    has: np.ndarray,
    desc_codes: np.ndarray,
    desc_texts: list[str],
    coded: dict[str, Callable[[], tuple[np.ndarray, list[Any]]]],
) -> pa.Array:
    """Descriptions rendered row by row (a template with the indicator's value in it)."""
    with_fmt, with_fields = _compile(m.description_template)
    without_fmt, without_fields = _compile(m.description_fallback)
    cache: dict[str, list[Any]] = {"value": values.to_pylist()}

    def column(name: str) -> list[Any]:
        if name not in cache:
            codes, distinct = coded[name]()
            cache[name] = [distinct[c] for c in codes.tolist()]
        return cache[name]

    out: list[str] = []
    for row, with_description in enumerate(has.tolist()):
        fmt, fields = (with_fmt, with_fields) if with_description else (without_fmt, without_fields)
        out.append(fit(fmt.format(*(column(f)[row] for f in fields))))
    return pa.array(out, pa.string())


def _clean(text: str | None) -> str:
    """A ThreatConnect description on one line: whitespace runs collapsed, control characters dropped."""
    if not text:
        return ""
    text = " ".join(text.split())
    if not text.isprintable():
        text = _CONTROL.sub("", text)
    return text


def fit(text: str, limit: int = DESCRIPTION_MAX) -> str:
    """Shorten text to ``limit`` UTF-16 code units (how Graph, a .NET service, counts), ending with an ellipsis.

    The cut falls between code points, so a surrogate pair (an emoji, say) is never split in half.
    """
    if len(text) * 2 <= limit:
        return text  # even all-astral text fits
    if text.isascii():
        return text if len(text) <= limit else text[: limit - 1].rstrip() + _ELLIPSIS
    units = len(text.encode("utf-16-le")) // 2
    if units <= limit:
        return text
    budget = limit - 1  # the ellipsis is one unit
    used = 0
    cut = 0
    for ch in text:
        width = 2 if ord(ch) > 0xFFFF else 1
        if used + width > budget:
            break
        used += width
        cut += 1
    return text[:cut].rstrip() + _ELLIPSIS
