"""What the core needs from its adapters: the source's listings, the load-target interface every sink implements
(so a new target is one new module, not a new DAG), its result type and statuses. Adapters import this; the core
imports no adapter."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pandas as pd
import pyarrow as pa

# Statuses of one write (SinkResult.status, the ``loaded`` snapshot's ``status`` column).
OK, REJECTED, FAILED = "ok", "rejected", "failed"


class PageSource(Protocol):
    """Where extract reads indicators from (the ThreatConnect client)."""

    def iter_pages(
        self, indicator_type: str, modified_from: dt.datetime, modified_to: dt.datetime
    ) -> Iterable[pa.RecordBatch]:
        """The type's indicators modified in ``[modified_from, modified_to)`` as ``RAW_SCHEMA`` batches."""
        ...


#: The source's deleted-indicators listing: ``(indicator_type, deleted_since, stamp)`` -> ``RAW_SCHEMA`` batches of
#: inactive rows flagged ``deleted``, each versioned ``stamp`` (the ThreatConnect client's
#: ``iter_deleted_batches``). Optional: extract lists no deletions without it.
DeletedListing = Callable[[str, dt.datetime, dt.datetime], Iterable[pa.RecordBatch]]


@dataclass(frozen=True)
class WriteRate:
    """What a write costs a target: rows per write request, and its request budget (None when unlimited)."""

    batch_size: int
    requests_per_minute: float | None


@dataclass(frozen=True)
class Traffic:
    """What a client has sent so far: HTTP requests (retries included) and the 429 answers among them."""

    requests: int
    throttled: int


def usage(service: str, traffic: Traffic | None, seconds: float) -> dict[str, Any]:
    """A stage report's cost: ``requests`` / ``throttled`` per service and ``seconds`` (read by the runs dataset)."""
    cost: dict[str, Any] = {"seconds": round(seconds, 3)}
    if traffic is not None:
        cost.update(requests={service: traffic.requests}, throttled={service: traffic.throttled})
    return cost


@dataclass(frozen=True)
class SinkResult:
    """What happened to one indicator in the target.

    Attributes:
        external_id: the deterministic id of the indicator (the normalized ``external_id``).
        action: ``create``, ``update`` or ``retract``.
        status: ``ok``; ``rejected`` when the target refused the item for its content (a per-item 4xx, a record
            error, a payload the target's documented limits do not allow): no retry can change that, so the item
            is quarantined until its content changes; or ``failed`` when it still failed after the retries for a
            reason that may pass (throttling, an outage, a timeout), which holds the watermark back.
        target_id: the target's id for the indicator (Graph id, STIX id), when known.
        attempts: how many requests carried this indicator.
        error: the target's error message when ``status`` is not ``ok``.
    """

    external_id: str
    action: str
    status: str
    target_id: str | None = None
    attempts: int = 1
    error: str | None = None


@dataclass(frozen=True)
class Listed:
    """One object of ours a target listed: its external id, the key that orders duplicates of one id (the oldest
    counts, as in :meth:`Sink.fetch`) and the object shaped like the sink's payload."""

    external_id: str
    order: str
    payload: dict[str, Any]


class OwnListing(Protocol):
    """Listing everything this application owns in a target, page by page: what makes a bulk read cheaper than
    look-ups by id when many ids are wanted (Graph lists 1,000 a page but looks up about 20 ids a request)."""

    #: objects per listing request
    page_size: int

    def pages(self) -> Iterable[list[Listed]]:
        """Every object of ours, one list per request sent."""
        ...


class Sink(Protocol):
    """A load target. Rows are normalized-snapshot rows (``include.pipeline.schema.NORMALIZED_SCHEMA``)."""

    name: ClassVar[str]
    #: payload fields verify compares between what was sent and what the target holds
    verify_fields: ClassVar[tuple[str, ...]]
    #: payload fields that change without a real change (a send time): left out of the lifecycle's content hash
    volatile_fields: ClassVar[tuple[str, ...]]

    #: how many live indicators of ours the target may hold across every type (None: no limit)
    capacity: int | None
    #: whether the target refuses an indicator whose expiration has already passed (Defender does)
    refuses_expired: bool

    #: how to list everything of ours in bulk (None: :meth:`fetch` is the only way to read back)
    listing: OwnListing | None
    #: whether :meth:`upsert` looks ids up before creating them (the target does not key on our id, so a second
    #: create would duplicate): the load then keeps the intent ledger that lets it skip ids never sent
    guards_creates: bool

    def lookup_requests(self, external_ids: Sequence[str]) -> int:
        """How many requests :meth:`fetch` spends on these ids (what a listing is weighed against)."""
        ...

    @property
    def read_back(self) -> bool:
        """Whether :meth:`fetch` can read objects back; when False, verify relies on the per-item acknowledgements."""
        ...

    def payload(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The exact object this sink sends for one normalized row (deterministic: no clock reads)."""
        ...

    def write_rate(self) -> WriteRate:
        """Rows per write request and the budget they are sent under: what the load's plan-cost line reports."""
        ...

    def traffic(self) -> Traffic:
        """Requests sent to the target so far by this sink, and the 429 answers among them."""
        ...

    def upsert(self, rows: pd.DataFrame, never_sent: Collection[str] = frozenset()) -> list[SinkResult]:
        """Create or update every row (keyed on ``external_id``), batching and retrying inside; one result per row.

        ``never_sent``: ids the load's ledger proves were never sent to this target (so the target cannot hold
        them from us): a sink that looks ids up before creating may skip them. Others ignore it.
        """
        ...

    def retract(self, rows: pd.DataFrame) -> list[SinkResult]:
        """Withdraw every row from the target (only indicators this pipeline created); one result per row."""
        ...

    def same_value(self, field: str, sent: Any, stored: Any) -> bool:
        """Whether the target holds what was sent for one of :attr:`verify_fields` (targets reformat some values:
        timestamps, list order); a target that stores values as sent compares with ``==``."""
        ...

    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What the target holds now for these ids, as payload-shaped dicts keyed by ``external_id``.

        Ids the target does not hold are absent from the answer.
        """
        ...


def content_hash(payload: Mapping[str, Any], volatile: Sequence[str] = ()) -> str:
    """SHA-256 over the canonical JSON of a payload, leaving out fields that change without a real change."""
    stable = {k: v for k, v in payload.items() if k not in volatile}
    encoded = json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(encoded.encode()).hexdigest()
