"""Microsoft Sentinel: client (upload and query planes), stix (the payload), sink (the load)."""

from include.microsoft.sentinel.client import (
    DEFAULT_ENDPOINT,
    DEFAULT_MANAGEMENT_HOST,
    DEFAULT_REQUESTS_PER_MINUTE,
    MAX_OBJECTS_PER_UPLOAD,
    PERMANENT_STATUSES,
    ManagementTarget,
    SentinelClient,
    SentinelError,
    SentinelPermanentError,
)
from include.microsoft.sentinel.sink import SentinelSink, sink_from_settings

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_MANAGEMENT_HOST",
    "DEFAULT_REQUESTS_PER_MINUTE",
    "MAX_OBJECTS_PER_UPLOAD",
    "PERMANENT_STATUSES",
    "ManagementTarget",
    "SentinelClient",
    "SentinelError",
    "SentinelPermanentError",
    "SentinelSink",
    "sink_from_settings",
]
