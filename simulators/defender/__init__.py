"""Microsoft Defender for Endpoint ``/api/indicators``: import, list, delete and BatchDelete over a dict.

Built from the public contract (reference notes, ``microsoft_api.md`` §8: MicrosoftDocs/defender-docs
``import-ti-indicators.md``, ``get-ti-indicators-collection.md``, ``batch-delete-ti-indicators.md``,
``ti-indicator.md``, ``common-errors.md``), not from our client. Where the docs are silent the simulator takes the
stricter reading, so a client that passes here also passes against the looser truth; every such choice is marked
UNCONFIRMED below:

- Schema errors (a missing required field, an enum spelled in another case, a wrong JSON type) refuse the whole
  request with 400 ``InvalidInput``/``MissingRequiredParameter``, as ``"alert"`` does (OpenCTI #4075). Whether one
  bad item refuses an import or only fails that item is UNCONFIRMED: ``schema_errors_per_item=True`` answers them as
  per-item ``isFailed`` instead, so the client can be tested against both.
- Value errors (a malformed or internal IP, CIDR, compressed IPv6, a bad hash, domain or URL, a long title or
  description, ``Audit`` without ``generateAlert``, a past ``expirationTime``, the tenant cap) fail only their item,
  with a ``failureReason`` of our own wording (the real texts are UNCONFIRMED).
- Title and description are capped at :data:`MAX_TITLE` / :data:`MAX_DESCRIPTION` characters: the docs give no
  limit (UNCONFIRMED); 100 is the strictest plausible one (Graph's description limit, which OpenCTI's Defender
  connector also applies).
- The upsert key is (``indicatorType``, ``indicatorValue``) per tenant. An app holding only ``Ti.ReadWrite`` cannot
  see another app's indicator, so importing the same pair fails that item (UNCONFIRMED); with ``Ti.ReadWrite.All``
  it updates the other app's indicator in place and ``createdBy`` stays the creator's.
- ``BatchDelete`` with an unknown id answers 404; whether it still deleted the others is UNCONFIRMED, so
  ``batch_delete_partial`` chooses (default: nothing is deleted).
- Unknown body properties are ignored (ASP.NET's default), except a documented name in the wrong case, which is
  refused like a wrong-case enum value.
"""

from simulators.defender.schema import (
    ACTIONS,
    CAPACITY,
    CONTEXT,
    DEFENDER_AUDIENCE,
    DEFENDER_SCOPES,
    DOCUMENTED_LIMITS,
    FILE_TYPES,
    FILTER_FIELDS,
    INDICATOR_TYPES,
    MAX_BATCH_DELETE,
    MAX_DESCRIPTION,
    MAX_IMPORT,
    MAX_TITLE,
    MAX_TOP,
    MAX_URL,
    PREFIX,
    READ_WRITE,
    READ_WRITE_ALL,
    REQUIRED,
    SEVERITIES,
    STRINGS,
    WRITABLE,
    DefenderRequestError,
    ItemError,
    check_value,
    register_audience,
    validate_schema,
)
from simulators.defender.service import DefenderService, LoggedRequest
from simulators.defender.wire import error, parse_filter

__all__ = [
    "ACTIONS",
    "CAPACITY",
    "CONTEXT",
    "DEFENDER_AUDIENCE",
    "DEFENDER_SCOPES",
    "DOCUMENTED_LIMITS",
    "FILE_TYPES",
    "FILTER_FIELDS",
    "INDICATOR_TYPES",
    "MAX_BATCH_DELETE",
    "MAX_DESCRIPTION",
    "MAX_IMPORT",
    "MAX_TITLE",
    "MAX_TOP",
    "MAX_URL",
    "PREFIX",
    "READ_WRITE",
    "READ_WRITE_ALL",
    "REQUIRED",
    "SEVERITIES",
    "STRINGS",
    "WRITABLE",
    "DefenderRequestError",
    "DefenderService",
    "ItemError",
    "LoggedRequest",
    "check_value",
    "error",
    "parse_filter",
    "register_audience",
    "validate_schema",
]
