"""The ``graph`` load sink: upserts keyed on ``externalId`` with a look-up first, retracts, and reads back."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pandas as pd

from include.microsoft.graph.client import (
    CONTENT_STATUSES,
    DEFAULT_IN_FLIGHT,
    MAX_BATCH,
    MAX_PAGE,
    GraphClient,
    GraphError,
    is_graph_id,
    item_error,
    item_transient,
    result_info_error,
)
from include.microsoft.graph.payload import OBSERVABLE_FIELDS, build_payload, same_value, update_body
from include.pipeline import frames
from include.pipeline.errors import PermanentError
from include.pipeline.ports import OK, REJECTED, Listed, OwnListing, SinkResult, Traffic, WriteRate
from include.transport.batch import BatchRefused, ItemAnswer, send_in_batches

log = logging.getLogger(__name__)


def _known_ids(rows: pd.DataFrame, payloads: dict[str, Any]) -> dict[str, str]:
    """Graph ids the lifecycle remembered for rows it plans to update (only ids that look like Graph's)."""
    if "target_id" not in rows.columns or "action" not in rows.columns:
        return {}
    known = {}
    for external_id, action, target_id in zip(rows["external_id"], rows["action"], rows["target_id"], strict=True):
        if (
            action in ("update", "refresh")
            and isinstance(target_id, str)
            and is_graph_id(target_id)
            and (external_id in payloads)
        ):
            known[str(external_id)] = target_id
    return known


def _raise_unless_content(exc: GraphError) -> None:
    """Re-raise what a split cannot help (throttling, outages, credentials); turn a content refusal into
    :class:`~include.transport.batch.BatchRefused`."""
    if isinstance(exc, PermanentError) or exc.transient or exc.status not in CONTENT_STATUSES:
        raise exc
    raise BatchRefused(str(exc)) from exc


class GraphSink:
    """Load normalized rows into Graph ``tiIndicators`` (Sentinel's legacy TIP path), keyed on ``externalId``.

    Graph does not make ``externalId`` unique, so every upsert looks the ids up first: existing ones are updated,
    only missing ones are submitted.
    """

    name: ClassVar[str] = "graph"
    #: payload fields that change without a real change: left out of the lifecycle's content hash
    volatile_fields: ClassVar[tuple[str, ...]] = ("lastReportedDateTime",)
    verify_fields: ClassVar[tuple[str, ...]] = (
        "externalId",
        *OBSERVABLE_FIELDS,
        "fileHashType",
        "confidence",
        "severity",
        "tlpLevel",
        "threatType",
        "isActive",
        "expirationDateTime",
        "description",
    )

    #: Graph reads every indicator back by its external id
    read_back: ClassVar[bool] = True
    #: Graph does not key on externalId: a create is looked up first unless the ledger proves it was never sent
    guards_creates: ClassVar[bool] = True
    #: no documented cap on the indicators one source may hold
    capacity: ClassVar[int | None] = None
    refuses_expired: ClassVar[bool] = False

    def __init__(
        self,
        client: GraphClient,
        batch_size: int = MAX_BATCH,
        max_item_attempts: int = 3,
        in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        if not 0 < batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self.client = client
        self.batch_size = batch_size
        self.max_item_attempts = max(1, max_item_attempts)
        self.in_flight = in_flight  # writes waiting for their answers at once (the budget still paces them)

    # ----------------------------------------------------------------- payload and comparison
    def payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The tiIndicator sent for one normalized row (see :func:`~include.microsoft.graph.payload.build_payload`)."""
        return build_payload(row)

    same_value = staticmethod(same_value)

    def _payloads(self, rows: pd.DataFrame) -> tuple[dict[str, dict[str, Any]], dict[str, SinkResult]]:
        payloads: dict[str, dict[str, Any]] = {}
        bad: dict[str, SinkResult] = {}
        for row in frames.records(rows):
            external_id = str(row["external_id"])
            try:
                payloads[external_id] = self.payload(row)
            except (ValueError, TypeError, KeyError) as exc:
                bad[external_id] = SinkResult(external_id, "create", REJECTED, attempts=0, error=f"payload: {exc}")
        return payloads, bad

    # ----------------------------------------------------------------- upsert
    def write_rate(self) -> WriteRate:
        return WriteRate(self.batch_size, self.client.requests_per_minute)

    def traffic(self) -> Traffic:
        return Traffic(self.client.requests_sent, self.client.throttled)

    def upsert(self, rows: pd.DataFrame, never_sent: Collection[str] = frozenset()) -> list[SinkResult]:
        """Create missing indicators and update existing ones; one result per row, in row order.

        Ids in ``never_sent`` (the load's ledger proves this pipeline never sent them here) are created without a
        look-up; every other id without a remembered Graph id is looked up first.

        Raises:
            GraphError: Graph stayed unavailable (429/5xx/network) beyond the client's retries; the task should
                retry, and the lookup-first design makes the rerun safe.
        """
        if rows.empty:
            return []
        payloads, results = self._payloads(rows)
        known = _known_ids(rows, payloads)
        # Indicators the pipeline delivered before carry their Graph id: they skip the lookup. Everything else is
        # looked up first (by id, or by listing what this app owns when that is cheaper: an empty target costs one
        # request), because Graph would happily create a duplicate.
        unsure = [e for e in payloads if e not in known and e not in never_sent]
        existing = self.client.find_many(unsure) if unsure else {}
        creates = {e: p for e, p in payloads.items() if e not in existing and e not in known}
        updates = {e: update_body(known[e], payloads[e]) for e in known}
        duplicates: dict[str, str] = {}
        for external_id, payload in payloads.items():
            if external_id in existing:
                found = existing[external_id]
                updates[external_id] = update_body(found[0]["id"], payload)
                if len(found) > 1:
                    others = ", ".join(str(f.get("id")) for f in found[1:])
                    duplicates[external_id] = f"{len(found) - 1} duplicate(s) in Graph left untouched: {others}"
                    log.warning("externalId %s has %s duplicates in Graph", external_id, len(found) - 1)
        results.update(self._create(creates))
        updated = self._update(updates)
        stale = [e for e in known if updated[e].status != "ok"]
        if stale:  # a remembered id that no longer works (deleted in Graph by someone else): look it up again
            log.warning("%s remembered Graph ids failed to update; looking them up again", len(stale))
            found = self.client.find_by_external_ids(stale)
            updated.update(self._create({e: payloads[e] for e in stale if e not in found}))
            updated.update(self._update({e: update_body(found[e][0]["id"], payloads[e]) for e in stale if e in found}))
        for external_id, result in updated.items():
            if external_id in duplicates and result.status == "ok":
                result = SinkResult(
                    external_id, "update", "ok", result.target_id, result.attempts, duplicates[external_id]
                )
            results[external_id] = result
        return [results[str(e)] for e in rows["external_id"]]

    def _send(
        self,
        keys: list[str],
        action: str,
        send: Callable[[list[str]], list[ItemAnswer]],
        batch_size: int,
        failed_target: Callable[[str], str | None] = lambda _: None,
    ) -> dict[str, SinkResult]:
        """One result per key through the shared batch helper (per-item retries, splitting a refused batch)."""
        outcomes = send_in_batches(
            keys, send, batch_size, self.max_item_attempts, action=f"graph {action}", in_flight=self.in_flight
        )
        return {
            key: SinkResult(
                key, action, o.status, o.target_id if o.status == OK else failed_target(key), o.attempts, o.error
            )
            for key, o in outcomes.items()
        }

    def _create(self, creates: dict[str, dict[str, Any]]) -> dict[str, SinkResult]:
        def send(batch: list[str]) -> list[ItemAnswer]:
            try:
                answers = self.client.submit([creates[e] for e in batch])
            except GraphError as exc:
                if not exc.ambiguous:
                    _raise_unless_content(exc)
                # Some of the batch may exist now: adopt what Graph holds, resubmit only the rest.
                log.warning("submit of %s indicators was ambiguous (%s); reconciling", len(batch), exc)
                landed = self.client.find_by_external_ids(batch)
                return [ItemAnswer(landed[e][0]["id"]) if e in landed else ItemAnswer(error=str(exc)) for e in batch]
            return [
                ItemAnswer(answer["id"])
                if (error := item_error(answer)) is None
                else ItemAnswer(error=error, transient=item_transient(answer))
                for answer in answers
            ]

        return self._send(list(creates), "create", send, self.batch_size)

    def _update(self, updates: dict[str, dict[str, Any]]) -> dict[str, SinkResult]:
        def send(batch: list[str]) -> list[ItemAnswer]:
            try:
                answers = self.client.update([updates[e] for e in batch])
            except GraphError as exc:
                if not exc.ambiguous:
                    _raise_unless_content(exc)
                # Updates are idempotent: an unclear batch is simply tried again.
                return [ItemAnswer(error=str(exc))] * len(batch)
            return [
                ItemAnswer(updates[e]["id"])
                if (error := item_error(answer)) is None
                else ItemAnswer(error=error, transient=item_transient(answer))
                for e, answer in zip(batch, answers, strict=True)
            ]

        return self._send(list(updates), "update", send, self.batch_size, failed_target=lambda e: updates[e]["id"])

    # ----------------------------------------------------------------- retract and fetch
    def retract(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Delete these rows' indicators, but only those this app owns (``OwnedBy``: the only ones it can see).

        Ids Graph does not hold for this app are reported ``ok`` with zero attempts: there is nothing to withdraw.
        """
        if rows.empty:
            return []
        ids = list(dict.fromkeys(str(e) for e in rows["external_id"]))
        owned = self.client.find_many(ids)
        results = {e: SinkResult(e, "retract", "ok", attempts=0) for e in ids if e not in owned}

        def send(batch: list[str]) -> list[ItemAnswer]:
            try:
                answers = self.client.delete_by_external_ids(batch)
            except GraphError as exc:
                if isinstance(exc, PermanentError) or (exc.transient and not exc.ambiguous):
                    raise
                # An answer that does not say, id by id, what it deleted (too few results, none, an error body
                # under a 2xx): what Graph still holds decides. Those are sent again; the others are gone.
                log.warning("delete of %s indicators was unclear (%s); looking them up", len(batch), exc)
                left = self.client.find_by_external_ids(batch)
                return [ItemAnswer(error=str(exc)) if e in left else ItemAnswer(owned[e][0]["id"]) for e in batch]
            return [
                ItemAnswer(owned[e][0]["id"])
                if (error := result_info_error(answer)) is None
                else ItemAnswer(error=error)
                for e, answer in zip(batch, answers, strict=True)
            ]

        results.update(
            self._send(
                [e for e in ids if e in owned], "retract", send, MAX_BATCH, failed_target=lambda e: owned[e][0]["id"]
            )
        )
        return [results[str(e)] for e in rows["external_id"]]

    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What Graph holds for these ids (the oldest row per id), shaped like ``payload``: its keys, nulls dropped."""
        found = self.client.find_many(list(external_ids))
        return {external_id: shaped(items[0]) for external_id, items in found.items()}

    def lookup_requests(self, external_ids: Sequence[str]) -> int:
        """Look-up requests for these ids: one per ``$filter`` URL (about 20 ids under the URL cap)."""
        return self.client.lookup_requests(external_ids)

    @property
    def listing(self) -> OwnListing | None:
        """Everything this app owns, 1,000 a request (Graph shows an app only its own indicators)."""
        return _GraphListing(self.client)


#: the tiIndicator properties a payload has: what ``fetch`` and the listing keep of what Graph holds
SHAPED_KEYS = frozenset(
    {
        "externalId",
        "action",
        "targetProduct",
        "threatType",
        "tlpLevel",
        "description",
        "expirationDateTime",
        "tags",
        "isActive",
        "confidence",
        "severity",
        "fileHashType",
        "additionalInformation",
        "lastReportedDateTime",
        *OBSERVABLE_FIELDS,
    }
)


def shaped(item: Mapping[str, Any]) -> dict[str, Any]:
    """A stored tiIndicator shaped like ``payload``: its keys, nulls dropped."""
    return {k: v for k, v in item.items() if k in SHAPED_KEYS and v is not None}


class _GraphListing:
    """:class:`~include.pipeline.ports.OwnListing` over ``GET tiIndicators?$top=1000`` and its nextLinks."""

    page_size = MAX_PAGE

    def __init__(self, client: GraphClient) -> None:
        self.client = client

    def pages(self) -> Iterator[list[Listed]]:
        for page in self.client.list_pages():
            yield [
                Listed(item["externalId"], str(item.get("ingestedDateTime") or ""), shaped(item))
                for item in page
                if isinstance(item.get("externalId"), str)
            ]
