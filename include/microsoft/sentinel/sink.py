"""The ``sentinel`` load sink: STIX upserts keyed on a deterministic STIX id, revocation as retraction."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from include.microsoft.sentinel.client import (
    DEFAULT_IN_FLIGHT,
    DEFAULT_REQUESTS_PER_MINUTE,
    MAX_OBJECTS_PER_UPLOAD,
    MAX_QUERY_VALUES,
    ManagementTarget,
    SentinelClient,
    SentinelError,
)
from include.microsoft.sentinel.stix import (
    build_indicator,
    external_id_of,
    format_timestamp,
    parse_timestamp,
    source_system,
    stix_id,
)
from include.pipeline import frames
from include.pipeline.errors import PermanentError
from include.pipeline.ports import OK, REJECTED, OwnListing, SinkResult, Traffic, WriteRate
from include.transport.batch import BatchRefused, ItemAnswer, ItemOutcome, configured_in_flight, send_in_batches
from include.transport.http import RequestBudget
from include.transport.limiter import budget_for, configured_rate

log = logging.getLogger(__name__)

_TIMESTAMP_FIELDS = ("created", "modified", "valid_from", "valid_until")


class SentinelSink:
    """The :class:`include.pipeline.ports.Sink` for Sentinel's STIX objects upload API.

    Uploads are upserts keyed on the STIX id; a retract re-uploads the object with ``revoked: true`` (the upload
    API has no delete, and the management-plane DELETE cannot remove upload-API objects: misp2sentinel PR #162).

    Args:
        client: the Sentinel client.
        sourcesystem: one ``sourcesystem`` for every row; when None each row gets ``ThreatConnect-<owner>`` and
            rows of different owners go in different requests (and ``fetch`` matches on the id alone).
        batch_size: objects per request (at most 100).
        max_item_attempts: how many requests may carry one object that Sentinel rejects per record.
    """

    name: ClassVar[str] = "sentinel"
    #: no documented cap on the indicators one source may hold
    capacity: ClassVar[int | None] = None
    refuses_expired: ClassVar[bool] = False
    #: The management-plane query pages by ``maxPageSize`` (100 used; the largest accepted is undocumented): a
    #: listing of everything from our source would cost as much as the look-ups by id, so there is none.
    listing: ClassVar[OwnListing | None] = None
    #: STIX ids are the key, so an upload of an existing id updates it: no look-up before a create
    #: (``upsert``'s ``never_sent`` is unused)
    guards_creates: ClassVar[bool] = False
    #: payload fields that change without a real change: left out of the lifecycle's content hash
    volatile_fields: ClassVar[tuple[str, ...]] = ("modified",)
    #: what verify compares between the sent payload and what the query returns
    verify_fields: ClassVar[tuple[str, ...]] = (
        "pattern",
        "name",
        "revoked",
        "valid_from",
        "valid_until",
        "confidence",
        "object_marking_refs",
        "labels",
        "indicator_types",
        "modified",
    )

    @staticmethod
    def same_value(field: str, sent: Any, stored: Any) -> bool:
        """The query returns the STIX objects as uploaded: every verified field compares with ``==``."""
        return sent == stored

    def __init__(
        self,
        client: SentinelClient,
        sourcesystem: str | None = None,
        batch_size: int = MAX_OBJECTS_PER_UPLOAD,
        max_item_attempts: int = 2,
        in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        if not 1 <= batch_size <= MAX_OBJECTS_PER_UPLOAD:
            raise ValueError(f"batch_size must be between 1 and {MAX_OBJECTS_PER_UPLOAD}")
        if max_item_attempts < 1:
            raise ValueError("max_item_attempts must be >= 1")
        self.client = client
        self.sourcesystem = sourcesystem
        self.in_flight = in_flight  # uploads waiting for their answers at once (the budget still paces them)
        self.batch_size = batch_size
        self.max_item_attempts = max_item_attempts

    def payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The STIX indicator sent for one normalized row."""
        return build_indicator(row)

    def sourcesystem_for(self, row: Mapping[str, Any]) -> str:
        """The ``sourcesystem`` a row is uploaded with."""
        return self.sourcesystem or source_system(str(row["owner"]))

    def write_rate(self) -> WriteRate:
        return WriteRate(self.batch_size, self.client.requests_per_minute)

    def traffic(self) -> Traffic:
        return Traffic(self.client.requests_sent, self.client.throttled)

    def upsert(self, rows: pd.DataFrame, never_sent: Collection[str] = frozenset()) -> list[SinkResult]:
        """Upload every row; per-record rejections are retried, then reported ``failed`` with Sentinel's message.

        The action is the row's ``action`` column when it has one (``create``/``update``), otherwise ``create``
        for a first version (``modified == created``) and ``update`` after.
        """
        records = frames.records(rows)
        objects = _build_all(records, self.payload)
        actions = [_action(r, o) for r, o in zip(records, objects, strict=True)]
        return self._load(records, objects, actions)

    def retract(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Re-upload every row's object with ``revoked: true``.

        ``modified`` is the row's ``stix_modified`` (the lifecycle stage makes it newer than anything sent
        before); without that column it is ``last_modified`` plus one millisecond, so the revocation still
        outranks an upload built from the same row.
        """
        records = frames.records(rows)
        objects = _build_all(records, self.retract_payload)
        return self._load(records, objects, ["retract"] * len(records))

    def retract_payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The object :meth:`retract` sends for one row (what verify should expect after a retract)."""
        modified = None
        if not _has_value(_field(row, "stix_modified")):
            base = build_indicator(row)
            modified = parse_timestamp(base["modified"]) + dt.timedelta(milliseconds=1)
        return build_indicator(row, revoked=True, modified=modified)

    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What Sentinel holds now for these ids (payload-shaped, timestamps and labels normalized)."""
        if not external_ids:
            return {}
        found = self.client.query([stix_id(e) for e in external_ids], self.sourcesystem)
        return {external_id_of(object_id): _normalized(obj) for object_id, obj in found.items()}

    def lookup_requests(self, external_ids: Sequence[str]) -> int:
        """Management-plane queries for these ids: one per 100."""
        return math.ceil(len(external_ids) / MAX_QUERY_VALUES)

    @property
    def read_back(self) -> bool:
        """True when the connection names the workspace on the management plane (the only way to read back)."""
        return self.client.management is not None

    def _load(
        self, records: list[dict[str, Any]], objects: list[dict[str, Any] | str], actions: list[str]
    ) -> list[SinkResult]:
        """Upload in batches of one sourcesystem; one result per record.

        Through the shared batch helper: a record Sentinel rejects (an ``errors[]`` entry) is resent with the other
        rejections up to ``max_item_attempts`` times, then reported ``rejected`` with Sentinel's messages (a record
        error is about the object's content). A whole request answered 400 is split in halves until the refused
        objects stand alone. Throttling, outages and credentials raise: the task retry is the next layer.
        """
        # A row the builder refused (a string: why) never reaches Sentinel but still gets its result.
        outcomes: dict[int, ItemOutcome[int]] = {
            i: ItemOutcome(i, REJECTED, None, 0, o) for i, o in enumerate(objects) if isinstance(o, str)
        }
        by_source: dict[str, list[int]] = {}
        for index in range(len(records)):
            if index not in outcomes:
                by_source.setdefault(self.sourcesystem_for(records[index]), []).append(index)
        for sourcesystem, indexes in by_source.items():

            def send(batch: list[int], sourcesystem: str = sourcesystem) -> list[ItemAnswer]:
                try:
                    rejected = self.client.upload(sourcesystem, [_object(objects[i]) for i in batch])
                except SentinelError as exc:
                    if exc.status != 400 or isinstance(exc, PermanentError):
                        raise
                    raise BatchRefused(f"HTTP 400: {exc.body or exc}"[:1000]) from exc
                answers = [ItemAnswer(stix_id(str(records[i]["external_id"]))) for i in batch]
                for error in rejected:
                    position = error["recordIndex"]
                    if not 0 <= position < len(batch):
                        log.warning("upload reported an error for record %s of a %s-object batch", position, len(batch))
                        continue
                    message = "; ".join(error["errorMessages"]) or "rejected without a message"
                    answers[position] = ItemAnswer(error=message[:1000])
                return answers

            outcomes.update(
                send_in_batches(
                    indexes,
                    send,
                    self.batch_size,
                    self.max_item_attempts,
                    exhausted=REJECTED,
                    action="sentinel upload",
                    in_flight=self.in_flight,
                )
            )
        results = []
        for index, record in enumerate(records):
            outcome = outcomes[index]
            external_id = str(record["external_id"])
            results.append(
                SinkResult(
                    external_id=external_id,
                    action=actions[index],
                    status=OK if outcome.status == OK else REJECTED,
                    target_id=stix_id(external_id),
                    attempts=outcome.attempts,
                    error=outcome.error,
                )
            )
        rejected_count = sum(1 for r in results if r.status != OK)
        log.info(
            "sentinel %s: %s objects, %s rejected, %s requests so far",
            actions[0] if actions else "load",
            len(records),
            rejected_count,
            self.client.requests_sent,
        )
        return results


def _build_all(
    records: list[dict[str, Any]], build: Callable[[Mapping[str, Any]], dict[str, Any]]
) -> list[dict[str, Any] | str]:
    built: list[dict[str, Any] | str] = []
    for record in records:
        try:
            built.append(build(record))
        except (ValueError, TypeError) as exc:
            log.warning("row %s cannot become a STIX indicator: %s", record.get("external_id"), exc)
            built.append(f"not sent: {exc}")
    return built


def _object(built: dict[str, Any] | str) -> dict[str, Any]:
    assert not isinstance(built, str), "refused rows are never batched"
    return built


def _action(record: Mapping[str, Any], obj: Mapping[str, Any] | str) -> str:
    declared = _field(record, "action")
    if declared in ("create", "update"):
        return str(declared)
    if isinstance(obj, str):
        return "create"
    return "create" if obj["created"] == obj["modified"] else "update"


def _normalized(obj: Mapping[str, Any]) -> dict[str, Any]:
    # The query API may render timestamps and label order its own way (UNCONFIRMED); bring them to the form
    # the builder emits so verify compares meaning, not formatting.
    result = dict(obj)
    for field in _TIMESTAMP_FIELDS:
        value = result.get(field)
        if isinstance(value, str):
            try:
                result[field] = format_timestamp(parse_timestamp(value))
            except ValueError:
                pass
    if isinstance(result.get("labels"), list):
        result["labels"] = sorted(str(label) for label in result["labels"])
    return result


def _field(row: Mapping[str, Any], key: str) -> Any:
    try:
        return row[key]
    except KeyError:
        return None


def _has_value(value: object) -> bool:
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value))


def sink_from_settings(
    endpoint: str,
    client_id: str,
    client_secret: str,
    extra: Mapping[str, Any],
    owner: str,
    limiter_root: Path,
    scope: str | None = None,
    requests_per_minute: int = DEFAULT_REQUESTS_PER_MINUTE,
    on_new_token: Callable[[str], None] | None = None,
    budget: Callable[[str, int, float], RequestBudget] | None = None,
) -> SentinelSink:
    """Build the Sentinel sink from connection settings (what the Airflow hook reads), with the shared limiter.

    The limiter's state is keyed on the identity (client id + workspace): the API budget is per identity, so every
    load task of that identity on this machine draws from one budget. ``budget(identity, max_requests,
    per_seconds)``, when given, builds the limiter instead (the hook's choice: Redis across hosts, or this file).

    The token's scope and the management host default to the Azure Resource Manager of the cloud the
    ``authority_host`` belongs to (public, US Government or China).
    """
    from include.microsoft.auth import MICROSOFT_AUTHORITY_HOST, TokenProvider, arm_host

    authority_host = str(extra.get("authority_host") or MICROSOFT_AUTHORITY_HOST)
    tokens = TokenProvider(
        str(extra["tenant_id"]),
        client_id,
        client_secret,
        scope or f"{arm_host(authority_host)}/.default",
        authority_host=authority_host,
        on_new_token=on_new_token,
    )
    management = None
    if all(extra.get(k) for k in ("subscription_id", "resource_group", "workspace_name")):
        management = ManagementTarget(
            str(extra["subscription_id"]),
            str(extra["resource_group"]),
            str(extra["workspace_name"]),
            host=str(extra.get("management_host") or arm_host(authority_host)),
        )
    workspace_id = str(extra["workspace_id"])
    limiter = budget_for(
        f"{client_id}|{workspace_id}", configured_rate(extra, requests_per_minute), budget, limiter_root
    )
    client = SentinelClient(endpoint, workspace_id, tokens, limiter=limiter, management=management)
    return SentinelSink(
        client, sourcesystem=source_system(owner), in_flight=configured_in_flight(extra, DEFAULT_IN_FLIGHT)
    )
