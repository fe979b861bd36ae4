"""ThreatConnect's REST indicator API (v2 and v3, HMAC-signed), faithful to the contract notes, for tests."""

from simulators.threatconnect.app import ThreatConnectService, start_threatconnect
from simulators.threatconnect.contract import (
    DEFAULT_RESULT_LIMIT,
    DELETED_DATE_ADDED,
    MAX_RESULT_LIMIT,
    MAX_SKEW_SECONDS,
    TYPES,
    WEB_ORIGIN,
)
from simulators.threatconnect.store import IndicatorStore

__all__ = [
    "DEFAULT_RESULT_LIMIT",
    "DELETED_DATE_ADDED",
    "MAX_RESULT_LIMIT",
    "MAX_SKEW_SECONDS",
    "TYPES",
    "WEB_ORIGIN",
    "IndicatorStore",
    "ThreatConnectService",
    "start_threatconnect",
]
