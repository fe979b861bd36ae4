"""The ``defender`` load sink: normalized rows -> Defender for Endpoint indicators, and back for verify."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import pandas as pd

from include.microsoft.defender import payload as mapping
from include.microsoft.defender.client import (
    DEFAULT_IN_FLIGHT,
    MAX_BATCH_DELETE,
    MAX_IMPORT,
    MAX_TOP,
    DefenderClient,
    DefenderError,
)
from include.pipeline import frames
from include.pipeline.errors import PermanentError
from include.pipeline.ports import FAILED, OK, REJECTED, Listed, OwnListing, SinkResult, Traffic, WriteRate
from include.transport.batch import BatchRefused, ItemAnswer, send_in_batches

log = logging.getLogger(__name__)

#: Indicators one tenant holds at most, every source together (Defender's documented limit).
TENANT_CAPACITY = 15_000

#: Words of a ``failureReason`` that refuse the item's content (or the tenant's capacity): a resend in the same run
#: cannot pass. The real texts are UNCONFIRMED, so anything else counts as transient: resent, then ``failed``, which
#: is loud, rather than quarantined until the indicator changes, which would be silent.
CONTENT_REASONS = (
    "invalid",
    "not supported",
    "unsupported",
    "not valid",
    "required",
    "not allowed",
    "must",
    "too long",
    "longer than",
    "exceed",
    "limit",
    "maximum",
    "quota",
    "already exists",
    "internal ip",
)


def is_content_refusal(reason: Any) -> bool:
    """Whether a failed import item was refused for what it says (``rejected``) rather than for a passing reason."""
    text = str(reason or "").lower()
    return any(word in text for word in CONTENT_REASONS)


class DefenderSink:
    """The :class:`include.pipeline.ports.Sink` for Defender for Endpoint's indicators (``name = "defender"``).

    Defender keys an indicator on (``indicatorType``, ``indicatorValue``) and has no field for our external id, so the
    mapping between the two is kept twice: in memory, from every ``upsert``/``retract`` of this process, and in
    Defender itself, as the ``[tc:<external_id>]`` tag at the end of ``description`` (see ``payload.build_payload``).
    ``fetch`` lists this app's own indicators (``createdBy`` = client id, at most 15,000 per tenant, so one or two
    pages of 10,000) and matches on the tag first, then on the remembered key.

    Args:
        client: the Defender client (it must know its client id).
        action: the action of every indicator (``Alert`` by default; ``Audit`` implies ``generateAlert``).
        generate_alert: sent as ``generateAlert`` when not None.
        rbac_group_names: device groups the indicators apply to (all devices when None).
        batch_size: indicators per import call (at most 500).
        max_item_attempts: how many requests may carry an item that fails for a transient reason.
        capacity: the most live indicators of ours Defender may hold, every type together (default 15,000, the
            documented per-tenant cap).
    """

    name: ClassVar[str] = "defender"
    #: Defender refuses an expirationTime in the past (and deletes an indicator when its time passes)
    refuses_expired: ClassVar[bool] = True
    #: Defender keys imports on type and value, so a second import updates: no look-up before a create
    #: (``upsert``'s ``never_sent`` is unused)
    guards_creates: ClassVar[bool] = False
    #: payload fields that change without a real change (none: the payload holds no clock-derived value)
    volatile_fields: ClassVar[tuple[str, ...]] = ()
    #: what verify compares between the sent payload and what Defender holds (``application`` is left out: Defender
    #: keeps the creator's value when another source made the indicator first)
    verify_fields: ClassVar[tuple[str, ...]] = (
        "indicatorType",
        "indicatorValue",
        "action",
        "severity",
        "title",
        "description",
        "expirationTime",
    )

    def __init__(
        self,
        client: DefenderClient,
        action: str = "Alert",
        generate_alert: bool | None = None,
        rbac_group_names: Sequence[str] | None = None,
        batch_size: int = MAX_IMPORT,
        max_item_attempts: int = 3,
        capacity: int = TENANT_CAPACITY,
        in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        if not client.client_id:
            raise ValueError("the Defender client needs the app's client id (fetch and retract list our own)")
        if action not in mapping.ACTIONS:
            raise ValueError(f"unknown Defender action {action!r}; one of {', '.join(mapping.ACTIONS)}")
        if action == "Audit" and generate_alert is False:
            raise ValueError("Defender requires generateAlert=true with action Audit")
        if not 0 < batch_size <= MAX_IMPORT:
            raise ValueError(f"batch_size must be between 1 and {MAX_IMPORT}")
        self.client = client
        self.action = action
        self.generate_alert = generate_alert
        self.rbac_group_names = list(rbac_group_names or [])
        self.batch_size = batch_size
        self.max_item_attempts = max(1, max_item_attempts)
        self.in_flight = in_flight  # imports waiting for their answers at once (the budget still paces them)
        self.keys: dict[str, tuple[str, str]] = {}  # external id -> (indicatorType, lower-cased indicatorValue)
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        #: the most live indicators of ours the plan lets Defender hold (the tenant cap is 15,000 for every source
        #: together: an operator sets it lower to leave room for others)
        self.capacity: int | None = capacity

    def lookup_requests(self, external_ids: Sequence[str]) -> int:
        """``fetch`` lists our own (one request per 10,000) whatever the ids: two for the tenant's cap of 15,000.

        Counted at the cap, not at one: a look-up costs what a listing does, so the read-back lists once, keeps the
        listing and lets the run's other types read it (counted at one, each type listed again)."""
        return math.ceil(TENANT_CAPACITY / MAX_TOP) if external_ids else 0

    @property
    def listing(self) -> OwnListing | None:
        """Everything this app created, as ``fetch`` lists it (so one listing serves every type of a run)."""
        return _DefenderListing(self.client)

    @property
    def read_back(self) -> bool:
        """Defender lists an app's own indicators, so verify reads every write back."""
        return True

    def payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The indicator sent for one normalized row (see ``payload.build_payload`` for the mapping).

        Raises:
            ValueError: ``not supported by defender: ...`` (email, an internal address, ...).
        """
        return mapping.build_payload(row, self.action, self.generate_alert, self.rbac_group_names)

    same_value = staticmethod(mapping.same_value)

    def remember(self, rows: pd.DataFrame) -> None:
        """Record the Defender key of each row, so ``fetch`` finds them even if a description loses its tag."""
        for row in frames.records(rows):
            try:
                kind, value = mapping.indicator_key(row)
            except (ValueError, TypeError, KeyError):
                continue
            self.keys[str(row["external_id"])] = (kind, value.lower())

    # ----------------------------------------------------------------- upsert
    def write_rate(self) -> WriteRate:
        return WriteRate(self.batch_size, self.client.requests_per_minute)

    def traffic(self) -> Traffic:
        return Traffic(self.client.requests_sent, self.client.throttled)

    def upsert(self, rows: pd.DataFrame, never_sent: Collection[str] = frozenset()) -> list[SinkResult]:
        """Import every row (create or update: Defender upserts on type and value); one result per row, in order.

        An item Defender refuses for its content is ``rejected`` at once; one that fails for another reason is resent
        up to ``max_item_attempts`` times, then ``failed``. A whole import answered 400 is split in halves until the
        refused items stand alone. Throttling and outages beyond the client's retries raise :class:`DefenderError`.
        """
        if rows.empty:
            return []
        self.remember(rows)
        records = frames.records(rows)
        payloads: dict[str, dict[str, Any]] = {}
        actions: dict[str, str] = {}
        results: dict[str, SinkResult] = {}
        for row in records:
            external_id = str(row["external_id"])
            declared = row.get("action")
            actions[external_id] = "update" if declared in ("update", "refresh") else "create"
            try:
                payloads[external_id] = self.payload(row)
            except (ValueError, TypeError, KeyError) as exc:
                results[external_id] = SinkResult(
                    external_id, actions[external_id], REJECTED, attempts=0, error=f"payload: {exc}"
                )
        results.update(self._import(payloads, actions))
        log.info(
            "defender upsert: %s rows, %s rejected, %s failed, %s requests so far",
            len(records),
            sum(r.status == REJECTED for r in results.values()),
            sum(r.status == FAILED for r in results.values()),
            self.client.requests_sent,
        )
        return [results[str(e)] for e in rows["external_id"]]

    def _import(self, payloads: dict[str, dict[str, Any]], actions: dict[str, str]) -> dict[str, SinkResult]:
        def send(batch: list[str]) -> list[ItemAnswer]:
            try:
                answers = self.client.import_indicators([payloads[k] for k in batch])
            except DefenderError as exc:
                if exc.status != 400 or isinstance(exc, PermanentError):
                    raise
                raise BatchRefused(str(exc)) from exc  # one bad item can refuse the request: find it
            results = []
            for answer in answers:
                if not answer.get("isFailed") and answer.get("id") not in (None, ""):
                    results.append(ItemAnswer(str(answer["id"])))
                    continue
                reason = str(answer.get("failureReason") or "failed without a reason")[:1000]
                results.append(ItemAnswer(error=reason, transient=not is_content_refusal(reason)))
            return results

        outcomes = send_in_batches(
            list(payloads),
            send,
            self.batch_size,
            self.max_item_attempts,
            action="defender import",
            in_flight=self.in_flight,
        )
        return {
            key: SinkResult(key, actions[key], o.status, o.target_id, o.attempts, o.error)
            for key, o in outcomes.items()
        }

    # ----------------------------------------------------------------- retract
    def retract(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Delete these rows' indicators with BatchDelete, but only ones this app created (our own listing).

        A row Defender holds nothing of ours for is ``ok`` with zero attempts: there is nothing to withdraw; so is
        a row whose indicator carries another external id's tag (another row of ours owns that type and value now).
        A 404 (some id already gone: expired, or deleted by an analyst) is followed by a fresh listing and one more
        BatchDelete of what is still there, at most ``max_item_attempts`` rounds.
        """
        if rows.empty:
            return []
        self.remember(rows)
        ids = list(dict.fromkeys(str(e) for e in rows["external_id"]))
        owned = self._own_by_external_id(ids, self.client.list_own())
        results = {e: SinkResult(e, "retract", OK, attempts=0) for e in ids if e not in owned}
        chunk: dict[str, list[str]] = {}
        for external_id in (e for e in ids if e in owned):
            defender_ids = [str(item["id"]) for item in owned[external_id]][:MAX_BATCH_DELETE]
            if sum(map(len, chunk.values())) + len(defender_ids) > MAX_BATCH_DELETE:
                results.update(self._delete_chunk(chunk))
                chunk = {}
            chunk[external_id] = defender_ids
        if chunk:
            results.update(self._delete_chunk(chunk))
        return [results[str(e)] for e in rows["external_id"]]

    def _delete_chunk(self, targets: dict[str, list[str]]) -> dict[str, SinkResult]:
        remaining = {e: list(v) for e, v in targets.items()}
        attempts = dict.fromkeys(targets, 0)
        for _ in range(self.max_item_attempts):
            wanted = list(dict.fromkeys(i for ids in remaining.values() for i in ids))
            for key in remaining:
                attempts[key] += 1
            if self.client.batch_delete(wanted):
                remaining = {}
                break
            # 404: some id was already gone, and maybe nothing else was deleted: see what is still there.
            present = {str(item.get("id")) for item in self.client.list_own()}
            remaining = {e: [i for i in v if i in present] for e, v in remaining.items()}
            remaining = {e: v for e, v in remaining.items() if v}
            if not remaining:
                break
        return {
            e: SinkResult(
                e,
                "retract",
                FAILED if e in remaining else OK,
                targets[e][0],
                attempts[e],
                "still present after BatchDelete answered 404" if e in remaining else None,
            )
            for e in targets
        }

    # ----------------------------------------------------------------- fetch
    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What Defender holds now for these ids, shaped like ``payload`` (its keys, nulls dropped)."""
        if not external_ids:
            return {}
        owned = self._own_by_external_id(list(external_ids), self.client.list_own())
        return {
            e: {k: items[0][k] for k in mapping.PAYLOAD_FIELDS if items[0].get(k) is not None}
            for e, items in owned.items()
        }

    def _own_by_external_id(
        self, external_ids: list[str], listed: list[dict[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Our listed indicators per external id: those whose description tag names it, else the one under its
        remembered key (unless that one's tag names another id)."""
        by_tag: dict[str, list[dict[str, Any]]] = {}
        by_key: dict[tuple[str, str], dict[str, Any]] = {}
        for item in listed:
            tagged = mapping.tagged_id(item.get("description"))
            if tagged is not None:
                by_tag.setdefault(tagged, []).append(item)
            by_key[(str(item.get("indicatorType")), str(item.get("indicatorValue", "")).lower())] = item
        found: dict[str, list[dict[str, Any]]] = {}
        for external_id in external_ids:
            items = list(by_tag.get(external_id, []))
            remembered = by_key.get(self.keys.get(external_id, ("", "")))
            if (
                remembered is not None
                and mapping.tagged_id(remembered.get("description")) in (None, external_id)
                and all(remembered is not i for i in items)
            ):
                items.append(remembered)
            if items:
                found[external_id] = items
        return found


class _DefenderListing:
    """:class:`~include.pipeline.ports.OwnListing` over ``list_own``: our indicators by their ``[tc:<id>]`` tag
    (what ``fetch`` matches on in a process that did not send them), in the order Defender lists them."""

    page_size = MAX_TOP

    def __init__(self, client: DefenderClient) -> None:
        self.client = client

    def pages(self) -> Iterator[list[Listed]]:
        listed = []
        for item in self.client.list_own():
            tagged = mapping.tagged_id(item.get("description"))
            if tagged is not None:
                shaped = {k: item[k] for k in mapping.PAYLOAD_FIELDS if item.get(k) is not None}
                listed.append(Listed(tagged, "", shaped))
        yield listed
