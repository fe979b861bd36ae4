"""Microsoft Graph beta ``security/tiIndicators``: client (operations), payload (the body), sink (the load).

Retired by Microsoft in 2026; kept because the design names it and tenants still migrate from it.
"""

from include.microsoft.graph.client import (
    CONTENT_STATUSES,
    DEFAULT_IN_FLIGHT,
    DEFAULT_REQUESTS_PER_MINUTE,
    MAX_BATCH,
    MAX_PAGE,
    PERMANENT_STATUSES,
    GraphClient,
    GraphError,
    GraphPermanentError,
    is_graph_id,
    item_error,
    item_transient,
    odata_quote,
    result_info_error,
)
from include.microsoft.graph.payload import (
    HASH_TYPES,
    MAX_DESCRIPTION,
    OBSERVABLE_FIELDS,
    TARGET_PRODUCT,
    UPDATE_FIELDS,
    build_payload,
    iso_utc,
    parse_datetime,
    same_value,
)
from include.microsoft.graph.sink import GraphSink

__all__ = [
    "CONTENT_STATUSES",
    "DEFAULT_IN_FLIGHT",
    "DEFAULT_REQUESTS_PER_MINUTE",
    "HASH_TYPES",
    "MAX_BATCH",
    "MAX_DESCRIPTION",
    "MAX_PAGE",
    "OBSERVABLE_FIELDS",
    "PERMANENT_STATUSES",
    "TARGET_PRODUCT",
    "UPDATE_FIELDS",
    "GraphClient",
    "GraphError",
    "GraphPermanentError",
    "GraphSink",
    "build_payload",
    "is_graph_id",
    "iso_utc",
    "item_error",
    "item_transient",
    "odata_quote",
    "parse_datetime",
    "result_info_error",
    "same_value",
]
