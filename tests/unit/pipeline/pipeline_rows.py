"""Builders of raw ThreatConnect rows (RAW_SCHEMA) for the pipeline tests (a uniquely named helper module)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from include.pipeline.schema import RAW_SCHEMA

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_DEFAULTS: dict[str, Any] = {
    "tc_id": 1,
    "owner": "Example Org",
    "indicator_type": "Address",
    "summary": "192.0.2.1",
    "md5": None,
    "sha1": None,
    "sha256": None,
    "date_added": T0 - timedelta(days=10),
    "last_modified": T0,
    "rating": None,
    "confidence": None,
    "threat_assess_score": None,
    "active": True,
    "false_positive_count": 0,
    "tags": [],
    "security_labels": [],
    "description": None,
    "web_link": "https://app.threatconnect.example/auth/indicators/details/address.xhtml?address=192.0.2.1",
    "external_date_expires": None,
    "page": 0,
}


def raw_row(**overrides: Any) -> dict[str, Any]:
    """One raw row: sensible defaults, overridden by keyword (unknown keys are a test bug)."""
    unknown = set(overrides) - set(_DEFAULTS)
    assert not unknown, f"not RAW_SCHEMA columns: {unknown}"
    return {**_DEFAULTS, **overrides}


def raw_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Raw rows as a RAW_SCHEMA table."""
    return pa.Table.from_pylist(rows, schema=RAW_SCHEMA)


def mixed_rows(n: int, seed: int = 7, bad_every: int = 50) -> list[dict[str, Any]]:
    """A realistic mix of every supported type, with one malformed value every ``bad_every`` rows."""
    rng = random.Random(seed)
    tags_pool = ["APT28", "apt28", "Phishing", " botnet ", "C2", "Emotet", "TA505", "ransomware"]
    labels_pool = [[], [], ["TLP:GREEN"], ["TLP:AMBER"], ["TLP:RED", "TLP:GREEN"], ["Customer Confidential"]]
    rows = []
    for i in range(n):
        kind = i % 5
        md5 = sha1 = sha256 = None
        if kind == 0:
            t, s = "Address", f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            if i % 10 == 5:
                s = f"2001:db8:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"
        elif kind == 1:
            t, s = "Host", f"Host{rng.randint(0, 10**9)}.Example{rng.randint(0, 99)}.com"
        elif kind == 2:
            t, s = "URL", f"HTTP://bad{rng.randint(0, 10**6)}.example.net:80/path/{rng.randint(0, 10**9)}?q=Ab"
        elif kind == 3:
            t, s = "EmailAddress", f"Sender{rng.randint(0, 10**9)}@Mail.Example.org"
        else:
            t = "File"
            md5 = f"{rng.getrandbits(128):032X}"
            sha1 = f"{rng.getrandbits(160):040x}" if i % 2 else None
            sha256 = f"{rng.getrandbits(256):064x}" if i % 3 else None
            s = " : ".join(h for h in (md5, sha1, sha256) if h)
        if bad_every and i % bad_every == bad_every - 1:
            s = {"Address": "999.1.1.1", "Host": "bad_host", "URL": "example.com/x", "EmailAddress": "no-at"}.get(t, s)
            if t == "File":
                md5 = "zz"
        lm = T0 - timedelta(seconds=rng.randint(0, 86400 * 30))
        rows.append(
            raw_row(
                tc_id=i + 1,
                indicator_type=t,
                summary=s,
                md5=md5,
                sha1=sha1,
                sha256=sha256,
                date_added=lm - timedelta(days=1),
                last_modified=lm,
                rating=rng.choice([None, 0.0, 1.0, 2.5, 3.0, 4.49, 5.0]),
                confidence=rng.choice([None, 0, 25, 50, 90, 100]),
                tags=rng.sample(tags_pool, rng.randint(0, 3)),
                security_labels=rng.choice(labels_pool),
                description=rng.choice([None, "", "Seen in campaign X", "multi\nline   text"]),
                page=i // 1000,
            )
        )
    return rows
