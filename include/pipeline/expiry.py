"""The one expiry rule: when an indicator stops being valid in the target, at normalize and again at refresh.

The rule (a mapping's ``expiration``): ThreatConnect's own ``externalDateExpires`` when it has one and the mapping
says ``use_threatconnect_expiry``; otherwise a base moment plus the mapping's days for the indicator's rounded
threat rating (``by_rating`` overrides, else ``days``). Normalize takes ``lastModified`` as the base; a refresh of
a still-live indicator takes the run's end, so a ThreatConnect expiry stands (it is not pushed out) exactly as it
did when the indicator was normalized.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.pipeline.mappings import ExpirationPolicy
from include.pipeline.schema import TS

DAY_US = 86_400_000_000
_DAY = pd.Timedelta(days=1)


def days(policy: ExpirationPolicy, rating: np.ndarray, rated: np.ndarray) -> np.ndarray:
    """Days of validity per row: ``policy.days_for`` of each row's rounded rating (None where not ``rated``)."""
    out = np.full(len(rating), policy.days, dtype=np.int64)
    for rounded, override in policy.by_rating:
        out[rated & (rating == rounded)] = override
    return out


def expirations(
    policy: ExpirationPolicy,
    base: pa.Array | pa.ChunkedArray,
    rating: np.ndarray,
    rated: np.ndarray,
    threatconnect: pa.Array | pa.ChunkedArray,
) -> pa.Array | pa.ChunkedArray:
    """The expiration column of normalized rows.

    Args:
        policy: the mapping's expiration policy.
        base: the rows' ``last_modified`` (``TS``).
        rating: the rounded threat rating per row (any value where not ``rated``).
        rated: which rows have a rating the policy may look at.
        threatconnect: ThreatConnect's ``externalDateExpires`` per row (null when it has none).
    """
    start = base.cast(pa.int64())
    if isinstance(start, pa.ChunkedArray):
        start = start.combine_chunks()
    start = start.to_numpy(zero_copy_only=False)
    computed = pa.array(start + days(policy, rating, rated) * DAY_US, pa.int64()).cast(TS)
    if policy.use_threatconnect_expiry:
        return pc.coalesce(threatconnect, computed)
    return computed


def granted_days(policy: ExpirationPolicy, held: Mapping[str, Any]) -> int | None:
    """The days :func:`expirations` granted a delivered row, or None when its expiration is not the policy's own.

    A row normalized under the policy expires a whole number of the policy's days after its ``last_modified``;
    any other distance (and a refresh, which counts from its run's end) is not recognised here.
    """
    if held.get("action") == "refresh":
        return None
    expiration, last_modified = held.get("expiration"), held.get("last_modified")
    if expiration is None or last_modified is None or pd.isna(expiration) or pd.isna(last_modified):
        return None
    granted = pd.Timestamp(expiration) - pd.Timestamp(last_modified)
    whole, rest = divmod(granted, _DAY)
    allowed = {policy.days, *(d for _, d in policy.by_rating)}
    return int(whole) if rest == pd.Timedelta(0) and int(whole) in allowed else None


def refreshed(
    held: Mapping[str, Any],
    now: Any,
    policy: ExpirationPolicy | None,
    fallback_days: Callable[[int | None], int],
) -> pd.Timestamp | None:
    """The new expiration of a delivered live row that is about to expire, or None when it must stand.

    With ``use_threatconnect_expiry`` an expiration ThreatConnect set stands, as it did at normalize: a refresh
    gives it no new date (None). Otherwise the row gets ``now`` plus the days the policy granted it at normalize
    (the same rating rule), or, when those cannot be told from the row, ``fallback_days(severity)``.

    Args:
        held: the delivered row (``NORMALIZED_SCHEMA`` columns and the plan's ``action``).
        now: the base moment (the run's data interval end).
        policy: the mapping's expiration policy; None when unknown (then every row is refreshed by
            ``fallback_days``).
        fallback_days: days of validity by severity.
    """
    severity = held.get("severity")
    severity = None if severity is None or pd.isna(severity) else int(severity)
    if policy is None:
        return pd.Timestamp(now) + pd.Timedelta(days=fallback_days(severity))
    granted = granted_days(policy, held)
    if granted is None:
        if policy.use_threatconnect_expiry and held.get("action") != "refresh":
            return None  # ThreatConnect's own expiry: it stands, exactly as at normalize
        granted = fallback_days(severity)
    return pd.Timestamp(now) + pd.Timedelta(days=granted)
