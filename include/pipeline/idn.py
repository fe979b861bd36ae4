"""The common internationalised host name punycoded without idna's general machinery (same answers, faster).

``canonical_host`` asks :func:`plain_idna` first and idna itself when it says None; a differential test holds the
two to the same answers.
"""

from __future__ import annotations

import functools
import unicodedata

import idna
from idna import idnadata
from idna.intranges import intranges_contain

_LDH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@functools.lru_cache(maxsize=4096)
def _plain_idn_char(c: str) -> bool:
    """Whether idna (UTS #46 mapping, then IDNA 2008) keeps ``c`` as it is in a label, whatever its neighbours.

    True for lower-case LDH characters and for non-ASCII characters that UTS #46 leaves alone, that IDNA 2008
    lists as PVALID (so no contextual rule applies), that are left-to-right (so the Bidi Rule does not apply)
    and that are not marks (no combining rules). Each character is asked of idna's own tables once.
    """
    if c.isascii():
        return c in _LDH_CHARS
    try:
        if idna.uts46_remap(c, std3_rules=False) != c:
            return False
    except idna.IDNAError:
        return False
    return (
        intranges_contain(ord(c), idnadata.codepoint_classes["PVALID"])
        and unicodedata.bidirectional(c) == "L"
        and unicodedata.category(c)[0] != "M"
    )


@functools.lru_cache(maxsize=1 << 14)
def _a_label(label: str) -> str:
    """``xn--`` and the punycode of a label (the same top-level labels, ``рф`` say, come again and again)."""
    return "xn--" + label.encode("punycode").decode("ascii")


def plain_idna(s: str) -> str | None:
    """``idna.encode(s, uts46=True)`` of a name idna would pass through unchanged but for the punycode, else None.

    The common IDN (lower-case letters of one script, digits, hyphens, NFC) needs none of idna's mapping and
    checks: each label is its punycode (or itself when ASCII). Anything else (upper case, other dots, marks,
    right-to-left text, joiners, bad hyphens, empty labels, a trailing dot, overlong labels or names) returns
    None, and idna itself answers (a differential test holds the two to the same answers).
    """
    if len(s) > 253 or not unicodedata.is_normalized("NFC", s):
        return None
    out = []
    for label in s.split("."):
        if not label or label[0] == "-" or label[-1] == "-" or label[2:4] == "--":
            return None
        if not all(map(_plain_idn_char, label)):
            return None
        encoded = label if label.isascii() else _a_label(label)
        if len(encoded) > 63:
            return None
        out.append(encoded)
    name = ".".join(out)
    return name if len(name) <= 253 else None
