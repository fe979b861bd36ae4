"""Column contracts between stages: the Arrow schemas of the raw, normalized, rejected and loaded snapshots."""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
STR_LIST = pa.list_(pa.string())

# One row per ThreatConnect indicator as extracted, whatever the API version (v2 or v3).
RAW_SCHEMA = pa.schema(
    [
        pa.field("tc_id", pa.int64()),
        pa.field("owner", pa.string()),
        pa.field("indicator_type", pa.string()),  # ThreatConnect type name: Address, Host, URL, EmailAddress, File
        pa.field("summary", pa.string()),  # the value as ThreatConnect shows it (File: "MD5 : SHA1 : SHA256")
        pa.field("md5", pa.string()),  # File only
        pa.field("sha1", pa.string()),  # File only
        pa.field("sha256", pa.string()),  # File only
        pa.field("date_added", TS),
        pa.field("last_modified", TS),
        pa.field("rating", pa.float64()),  # threat rating 0-5, null when unset
        pa.field("confidence", pa.int32()),  # 0-100, null when unset
        pa.field("threat_assess_score", pa.int32()),  # 0-1000, null when not requested or unset
        pa.field("active", pa.bool_()),
        pa.field("false_positive_count", pa.int32()),
        pa.field("tags", STR_LIST),
        pa.field("security_labels", STR_LIST),
        pa.field("description", pa.string()),
        pa.field("web_link", pa.string()),
        pa.field("external_date_expires", TS),
        pa.field("page", pa.int32()),  # 0-based page the row came from, for audit
        pa.field("deleted", pa.bool_()),  # from ThreatConnect's deleted-indicators listing (a retraction signal)
    ]
)

# One row per (indicator type, canonical value) candidate; File indicators become one row per hash.
NORMALIZED_SCHEMA = pa.schema(
    [
        pa.field("external_id", pa.string()),  # uuid5(owner|type|value): stable across runs and machines
        pa.field("indicator_type", pa.string()),
        pa.field("kind", pa.string()),  # ip, host, url, email, hash
        pa.field("value", pa.string()),  # canonical value
        pa.field("raw_value", pa.string()),  # the value as ThreatConnect sent it
        pa.field("observable", pa.string()),  # Graph property that carries the value (networkIPv4, domainName, ...)
        pa.field("hash_type", pa.string()),  # md5, sha1, sha256 for File; null otherwise
        pa.field("tc_id", pa.int64()),
        pa.field("owner", pa.string()),
        pa.field("date_added", TS),
        pa.field("last_modified", TS),
        pa.field("confidence", pa.int32()),  # 0-100
        pa.field("severity", pa.int32()),  # 0-5
        pa.field("tlp", pa.string()),  # white, green, amber, red
        pa.field("threat_type", pa.string()),  # Graph threatType, fixed per ThreatConnect type
        pa.field("tags", STR_LIST),
        pa.field("description", pa.string()),  # at most 100 characters (Graph's limit)
        pa.field("valid_from", TS),
        pa.field("expiration", TS),
        pa.field("active", pa.bool_()),
        pa.field("false_positive", pa.bool_()),
        pa.field("web_link", pa.string()),
        pa.field("deleted", pa.bool_()),
    ]
)

# Rows that failed canonicalisation or validation, with the reason; never sent to a target.
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("tc_id", pa.int64()),
        pa.field("owner", pa.string()),
        pa.field("indicator_type", pa.string()),
        pa.field("raw_value", pa.string()),
        pa.field("last_modified", TS),
        pa.field("reason", pa.string()),
    ]
)

# What the lifecycle decided for each indicator of a run (written every run; the whole output of a dry run).
PLAN_FIELDS = [
    pa.field("action", pa.string()),  # create, update, refresh, retract, skip
    pa.field("reason", pa.string()),  # why: new, changed, unchanged, inactive, deleted, false positive, orphan, ...
    pa.field("content_hash", pa.string()),  # over the payload fields that reach the target (volatile ones left out)
    pa.field("stix_modified", TS),  # the version sent: strictly increases on every write of the same indicator
    pa.field("sink", pa.string()),  # graph or sentinel
    pa.field("target_id", pa.string()),  # the target's id (Graph id, STIX id) once known; spares a lookup
]
PLAN_SCHEMA = pa.schema(list(NORMALIZED_SCHEMA) + PLAN_FIELDS)

# One row per indicator the load stage wrote (never the skipped ones), with what the target answered. Together the
# loaded partitions of every run are the delivered state the next run's delta is computed against.
LOADED_SCHEMA = pa.schema(
    [
        *PLAN_SCHEMA,
        pa.field("status", pa.string()),  # ok or failed
        pa.field("attempts", pa.int32()),
        pa.field("error", pa.string()),
    ]
)
