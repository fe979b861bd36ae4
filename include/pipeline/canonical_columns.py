"""Canonicalise whole columns: RE2 fast paths inside pyarrow for the common shapes, per-value rules for the rest.

The per-value canonicalisers (``include.pipeline.canonical``) are the definition; everything here must give exactly
their answers (property tests hold both paths to it), only faster on the values that need no work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline.canonical import (
    CANONICALISERS,
    EMPTY_FILE_DIGESTS,
    HASH_TYPES,
    IPV4_PATTERN,
    URL_MAX,
    Result,
    canonical_hash,
)

# The common case, checked column-wise by RE2 inside pyarrow: plain ASCII LDH names whose last label starts with a
# letter (so never all digits), no punycode, no surrounding whitespace. Anything else takes the per-value path, so
# both paths give identical answers (a property test holds them to it).
_FAST_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FAST_TLD = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FAST_HOST = rf"(?:{_FAST_LABEL}\.)+{_FAST_TLD}"
_FAST_PATTERNS = {
    "host": rf"^{_FAST_HOST}\.?$",
    # a conservative dot-atom local part (a subset of _LOCAL_RE) at a fast host
    "email": rf"^[a-z0-9_%+-]+(?:\.[a-z0-9_%+-]+)*@{_FAST_HOST}\.?$",
    # a plain dotted quad: canonical as it is (0.0.0.0 is refused separately)
    "ip": rf"^{IPV4_PATTERN}$",
}
_FAST_VARIANT = {"host": "domain", "email": "email", "ip": "ipv4"}
# http(s)/ftp at a plain host (any case, no port, userinfo, trailing dot or brackets), then a path of characters
# that need no encoding and escapes already in upper case: only the scheme and host are lower-cased.
_URL_TAIL = r"(?:[A-Za-z0-9\-._~!#$&'()*+,/:;=?@\[\]]|%[0-9A-F]{2})*"
_FAST_URL_ANY_CASE = rf"^(?i:(?:https?|ftp)://{_FAST_HOST})/{_URL_TAIL}$"
_FAST_URL_LOWER = rf"^(?:https?|ftp)://{_FAST_HOST}/{_URL_TAIL}$"  # scheme and host already lower-case
_XN_IN_HOST = r"^[^/]*//[^/]*(?i:xn--)"  # punycode in the host: the per-value path checks it


def _fast_url(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``(fast, canonical)`` of URLs the column-wise path answers (canonical is meaningless elsewhere).

    Only plain matches (no capture groups: RE2's DFA) run over the whole column, and most URLs already have a
    lower-case scheme and host, so their canonical form is the URL itself; for the others the scheme and host
    (everything before the first '/' after "://") are lower-cased in place with numpy.

    A fast URL is all ASCII: RE2's case-insensitive match would also let a character that case-folds to an
    ASCII letter (the Kelvin sign, the long s) into the host, which the per-value rules map (UTS #46) and
    ``ascii_lower`` would not.
    """
    # The pattern guarantees an ASCII head without '/' or ':' after the scheme's "://": the first '/' after it
    # ends the host (the scheme's "://" is blanked out of the way to find that '/').
    host_end = pc.find_substring(pc.replace_substring(values, "://", "   ", max_replacements=1), "/")
    host_length = pc.subtract(host_end, pc.add(pc.find_substring(values, "://"), 3))
    fast = pc.and_(
        pc.and_(
            pc.and_(pc.string_is_ascii(values), pc.match_substring_regex(values, _FAST_URL_ANY_CASE)),
            pc.invert(pc.match_substring_regex(values, _XN_IN_HOST)),
        ),
        pc.and_(pc.less_equal(host_length, 253), pc.less_equal(pc.utf8_length(values), URL_MAX)),
    )
    mixed = pc.and_(fast, pc.invert(pc.match_substring_regex(values, _FAST_URL_LOWER)))
    if not pc.any(mixed).as_py():
        return fast, values
    lowered = _ascii_lower_prefix(values.filter(mixed), host_end.filter(mixed))
    return fast, pc.replace_with_mask(values, mixed, lowered)


def _ascii_lower_prefix(values: pa.Array, ends: pa.Array) -> pa.Array:
    """Each ASCII value with its first ``ends[i]`` characters ASCII-lower-cased (no nulls)."""
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=values.offset + n + 1)[values.offset :]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].copy()
    offsets = offsets - offsets[0]
    starts = offsets[:-1].astype(np.int64)
    # +1 where a head starts, -1 where it ends: the running sum is 1 inside the heads (ASCII: bytes are characters)
    edges = np.zeros(len(data) + 1, dtype=np.int32)
    edges[starts] += 1
    edges[starts + ends.to_numpy(zero_copy_only=False).astype(np.int64)] -= 1
    in_head = np.cumsum(edges[:-1]) > 0
    upper = in_head & (data >= ord("A")) & (data <= ord("Z"))
    data[upper] += ord("a") - ord("A")
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def canonicalize_many(kind: str, raws: list[str]) -> list[Result]:
    """``[CANONICALISERS[kind](raw) for raw in raws]``, with the common shapes done column-wise (see
    :func:`canonicalize_column`)."""
    values, variants = canonicalize_column(kind, raws)
    return list(zip(values, variants, strict=True))


def canonicalize_column(kind: str, raws: list[str]) -> tuple[list[str | None], list[str]]:
    """The canonical values (None for a reject) and the variants (for a reject: the reason) of many values.

    The list form of :func:`canonicalize_array` (same answers); short lists and kinds without a fast path are
    canonicalised value by value.
    """
    canon = CANONICALISERS[kind]
    if (kind not in _FAST_PATTERNS and kind != "url") or len(raws) < 64:
        results = [canon(raw) for raw in raws]
        return [value for value, _ in results], [variant for _, variant in results]
    values, variants = canonicalize_array(kind, pa.array(raws, pa.string()))
    return values.to_pylist(), variants.to_pylist()


def canonicalize_array(kind: str, raws: pa.Array) -> tuple[pa.Array, pa.Array]:
    """:func:`canonicalize_column` of an Arrow string array without nulls, answered as two Arrow string arrays.

    Most of a feed is plain ASCII in a canonical or nearly canonical spelling: dotted-quad IPv4, LDH host names,
    simple email addresses, http(s) URLs with plain paths. Their rules (lower-casing, the trailing root dot, label
    and length limits) are checked for the whole column at once by RE2 inside pyarrow, and only the unusual values
    (IDN, punycode, IPv6, whitespace, escapes to fix, anything a fast pattern does not accept) go through the
    per-value canonicaliser; the common values never become Python strings. Both paths give identical answers
    (property tests hold them to it).

    Returns:
        ``(canonical values, null for a reject; variants, for a reject the reason)``, aligned with ``raws``.
    """
    canon = CANONICALISERS[kind]
    if (kind not in _FAST_PATTERNS and kind != "url") or len(raws) < 64:
        results = [canon(raw) for raw in raws.to_pylist()]
        return (
            pa.array([value for value, _ in results], pa.string()),
            pa.array([variant for _, variant in results], pa.string()),
        )
    values = raws
    if kind == "url":
        fast, fast_values = _fast_url(values)
        variant = "url"
    elif kind == "ip":
        fast = pc.and_(pc.match_substring_regex(values, _FAST_PATTERNS["ip"]), pc.not_equal(values, "0.0.0.0"))  # noqa: S104
        fast_values, variant = values, "ipv4"
    else:
        lowered = pc.ascii_lower(values)
        # the fast patterns allow one trailing dot at most, so where they match this drops just the root dot
        fast_values = pc.utf8_rtrim(lowered, characters=".")
        fast = pc.and_(
            pc.and_(pc.string_is_ascii(values), pc.match_substring_regex(lowered, _FAST_PATTERNS[kind])),
            pc.and_(pc.invert(pc.match_substring(lowered, "xn--")), pc.less_equal(pc.utf8_length(fast_values), 253)),
        )
        if kind == "email":
            # local part at most 64 characters; the domain's own 253 limit is checked on the part after the '@'
            at = pc.find_substring(lowered, "@")
            domain_length = pc.subtract(pc.utf8_length(fast_values), pc.add(at, 1))
            fast = pc.and_(fast, pc.and_(pc.less_equal(at, 64), pc.less_equal(domain_length, 253)))
        variant = _FAST_VARIANT[kind]
    return _patch(raws, fast, fast_values, variant, canon)


def _patch(
    raws: pa.Array, fast: pa.Array, fast_values: pa.Array, variant: str, canon: Callable[[str], Result]
) -> tuple[pa.Array, pa.Array]:
    """The fast answers where ``fast``, the per-value canonicaliser's everywhere else (only those become Python)."""
    fast = pc.fill_null(fast, False)
    n = len(raws)
    values = pc.if_else(fast, fast_values, pa.nulls(n, pa.string()))
    variants = pa.repeat(pa.scalar(variant, pa.string()), n)
    slow = pc.invert(fast)
    if not pc.any(slow).as_py():
        return values, variants
    answers = [canon(raw) for raw in raws.filter(slow).to_pylist()]
    values = pc.replace_with_mask(values, slow, pa.array([value for value, _ in answers], pa.string()))
    variants = pc.replace_with_mask(variants, slow, pa.array([variant for _, variant in answers], pa.string()))
    return values, variants


def canonicalize_hashes(raws: pa.Array, expected: str) -> tuple[pa.Array, pa.Array]:
    """``canonical_hash(raw, expected)`` of each value of one hash column (no nulls), column-wise when plain.

    Returns:
        ``(hashes, null for a reject; variants, for a reject the reason)`` as Arrow string arrays.
    """
    length = {kind: n for n, kind in HASH_TYPES.items()}[expected]
    lowered = pc.ascii_lower(raws)
    # hex digits only (so ASCII: bytes are characters) and the expected number of them, not all zeros
    fast = pc.and_(
        pc.and_(
            pc.and_(pc.match_substring_regex(raws, "^[0-9A-Fa-f]+$"), pc.equal(pc.binary_length(raws), length)),
            pc.not_equal(raws, "0" * length),
        ),
        pc.invert(pc.is_in(lowered, value_set=pa.array(sorted(EMPTY_FILE_DIGESTS), pa.string()))),
    )
    return _patch(raws, fast, lowered, expected, lambda raw: canonical_hash(raw, expected))
