"""Normalized-snapshot rows (``NORMALIZED_SCHEMA``) for Graph sink tests, built the way the pipeline reads them."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pandas as pd
import pyarrow as pa

from include.pipeline.schema import NORMALIZED_SCHEMA

NAMESPACE = uuid.UUID("6f1c1c52-7d0e-4a57-9d49-3c1f0a1b2c3d")
BASE_TIME = dt.datetime(2026, 1, 10, 8, 30, tzinfo=dt.UTC)

# indicator_type -> (kind, observable, threat type, value, hash type)
SAMPLES: dict[str, tuple[str, str, str, str, str | None]] = {
    "ipv4": ("ip", "networkIPv4", "C2", "198.51.100.7", None),
    "ipv6": ("ip", "networkIPv6", "C2", "2001:db8::7", None),
    "host": ("host", "domainName", "MaliciousUrl", "bad.example.com", None),
    "url": ("url", "url", "MaliciousUrl", "https://bad.example.com/login?x=1", None),
    "email": ("email", "emailSenderAddress", "Phishing", "phish@bad.example.com", None),
    "md5": ("hash", "fileHashValue", "Malware", "d41d8cd98f00b204e9800998ecf8427e", "md5"),
    "sha1": ("hash", "fileHashValue", "Malware", "da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha1"),
    "sha256": (
        "hash",
        "fileHashValue",
        "Malware",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sha256",
    ),
}
TC_TYPES = {"ip": "Address", "host": "Host", "url": "URL", "email": "EmailAddress", "hash": "File"}


def normalized_row(sample: str = "ipv4", index: int = 0, **overrides: Any) -> dict[str, Any]:
    """One normalized row for ``sample`` (a key of ``SAMPLES``); ``index`` varies the value and the ids."""
    kind, observable, threat_type, value, hash_type = SAMPLES[sample]
    if index and sample == "ipv4":
        value = f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
    elif index:
        value = f"{index}.{value}" if kind in ("host", "email") else f"{value}{index}" if kind == "url" else value
    indicator_type = TC_TYPES[kind]
    row: dict[str, Any] = {
        "external_id": str(uuid.uuid5(NAMESPACE, f"Example Org|{indicator_type}|{value}|{index}")),
        "indicator_type": indicator_type,
        "kind": kind,
        "value": value,
        "raw_value": value,
        "observable": observable,
        "hash_type": hash_type,
        "tc_id": 1000 + index,
        "owner": "Example Org",
        "date_added": BASE_TIME - dt.timedelta(days=30),
        "last_modified": BASE_TIME + dt.timedelta(minutes=index),
        "confidence": 80,
        "severity": 4,
        "tlp": "amber",
        "threat_type": threat_type,
        "tags": ["apt-x", "phishing-wave"],
        "description": f"{indicator_type} from ThreatConnect Example Org",
        "valid_from": BASE_TIME,
        "expiration": BASE_TIME + dt.timedelta(days=90),
        "active": True,
        "false_positive": False,
        "web_link": f"https://app.threatconnect.com/auth/indicators/details/address.xhtml?address={value}",
    }
    row.update(overrides)
    return row


def rows_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A DataFrame with exactly the ``NORMALIZED_SCHEMA`` columns, as read back from a Parquet snapshot."""
    return pa.Table.from_pylist(rows, schema=NORMALIZED_SCHEMA).to_pandas()


def ip_rows(count: int, **overrides: Any) -> pd.DataFrame:
    """``count`` distinct IPv4 rows."""
    return rows_frame([normalized_row("ipv4", i + 1, **overrides) for i in range(count)])
