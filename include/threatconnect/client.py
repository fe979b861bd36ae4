"""A paging ThreatConnect indicator client (REST v2 typed branches or v3 TQL) that yields Arrow batches."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import requests

from include.pipeline import times
from include.pipeline.errors import PermanentError
from include.pipeline.mappings import load_all
from include.pipeline.overlap import read_ahead
from include.threatconnect.auth import HmacAuth
from include.threatconnect.parse import parse_page, summary_of
from include.threatconnect.settle import ListingUnsettled, Pass, settled
from include.threatconnect.urls import iso_z, origin, query, shown_origin
from include.transport.http import RetryPolicy, TlsError, Transport, TransportClient, TransportError

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 10_000  # ThreatConnect's resultLimit cap for v2 and v3
# TC type name -> (v2 path branch, v2 JSON list key), from the mapping files (the one registry of types).
V2_BRANCHES: dict[str, tuple[str, str]] = {
    name: (mapping.v2_branch, mapping.v2_entity) for name, mapping in load_all().items()
}
V3_TYPE_NAMES: dict[str, str] = {name: mapping.v3_type for name, mapping in load_all().items()}
V3_FIELDS = ("tags", "securityLabels", "threatAssess", "falsePositives", "externalDates")


class ThreatConnectError(RuntimeError):
    """ThreatConnect refused or failed a request (the message is the server's, never a credential)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ThreatConnectAuthError(ThreatConnectError, PermanentError):
    """401/403: bad access id or signature, clock skew, or no access to the owner."""


class ThreatConnectLinkError(ThreatConnectError, PermanentError):
    """A ``next`` link points at another origin than the Connection's: a configuration to fix, not to retry."""


def _flag_deleted(batch: pa.RecordBatch) -> pa.RecordBatch:
    index = batch.schema.get_field_index("deleted")
    return batch.set_column(index, "deleted", pa.array([True] * batch.num_rows, pa.bool_()))


def _lenient_timestamp(value: Any) -> dt.datetime | None:
    # Informational only: an unreadable date must not cost the deletion it travels with.
    return times.parse_or_none(value)


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:300] or f"HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"HTTP {response.status_code}"


class ThreatConnectClient(TransportClient):
    """List one owner's indicators from ThreatConnect, one page at a time.

    The client is a base URL plus an HMAC auth class plus a paginator per API version: v2 pages by
    ``resultStart`` on typed branches, v3 follows the absolute ``next`` link of a TQL query.
    """

    def __init__(
        self,
        base_url: str,
        access_id: str,
        secret_key: str,
        owner: str,
        api_version: str = "v3",
        page_size: int = 10_000,
        session: requests.Session | None = None,
        max_retries: int = 4,
        backoff: float = 1.0,
        timeout: float = 60,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if api_version not in ("v2", "v3"):
            raise ValueError(f"api_version must be 'v2' or 'v3', not {api_version!r}")
        if not owner:
            raise ValueError("owner is required")
        self.base_url = base_url.rstrip("/")
        self.owner = owner
        self.api_version = api_version
        self.page_size = max(1, min(int(page_size), MAX_PAGE_SIZE))
        # 401/403 are final here: an HMAC signature has nothing to refresh.
        self.transport = Transport(
            session,
            HmacAuth(access_id, secret_key, clock=clock),
            None,
            RetryPolicy(max_retries=max_retries, backoff=backoff),
            timeout,
            sleep,
            "ThreatConnect",
        )
        self._origin = origin(self.base_url)

    def __repr__(self) -> str:
        return f"ThreatConnectClient({self.base_url!r}, owner={self.owner!r}, api_version={self.api_version!r})"

    # --- HTTP -------------------------------------------------------------------------------------------

    def _get(self, url: str) -> dict[str, Any]:
        """GET a signed URL through the transport; return the JSON body of a successful envelope."""
        shown = urlsplit(url)
        log.debug("ThreatConnect GET %s", shown.path)
        try:
            response = self.transport.send("GET", url)
        except TlsError as exc:
            raise ThreatConnectAuthError(f"{exc}: check the CA bundle (REQUESTS_CA_BUNDLE)") from None
        except TransportError as exc:
            raise ThreatConnectError(f"ThreatConnect unreachable: {exc}") from None
        status = response.status_code
        if status in (401, 403):
            raise ThreatConnectAuthError(f"ThreatConnect {status}: {_error_message(response)}", status)
        if status >= 400:
            retried = " after retries" if status in self.transport.policy.transient_statuses else ""
            raise ThreatConnectError(f"ThreatConnect answered {status} {_error_message(response)}{retried}", status)
        return self._envelope(response)

    @staticmethod
    def _envelope(response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise ThreatConnectError("ThreatConnect sent a body that is not JSON", response.status_code) from None
        if not isinstance(body, dict) or body.get("status") != "Success":
            message = body.get("message") if isinstance(body, dict) else None
            raise ThreatConnectError(message or "ThreatConnect response status is not Success", response.status_code)
        return body

    # --- public API -------------------------------------------------------------------------------------

    def iter_pages(
        self, indicator_type: str, modified_from: dt.datetime, modified_to: dt.datetime
    ) -> Iterator[pa.RecordBatch]:
        """Yield the owner's indicators of one type with ``modified_from <= lastModified < modified_to``.

        Active and inactive indicators both come back (an inactive one is a retraction), with tags,
        security labels, threat assessment and false positives. One page is held in memory at a time;
        pages left empty by the window filter are not yielded.

        Args:
            indicator_type: ThreatConnect type name (Address, EmailAddress, File, Host, URL).
            modified_from: Inclusive lower bound on lastModified (aware datetime).
            modified_to: Exclusive upper bound on lastModified (aware datetime).

        Yields:
            ``RAW_SCHEMA`` record batches, one per ThreatConnect page.

        Raises:
            ThreatConnectAuthError: The server refused the credentials or the owner.
            ThreatConnectError: Any other refusal, or retries exhausted.
        """
        if indicator_type not in V2_BRANCHES:
            raise ValueError(f"unsupported indicator type {indicator_type!r}")
        listing = (
            self._iter_v2(indicator_type, modified_from)
            if self.api_version == "v2"
            else (self._iter_v3(indicator_type, modified_from, modified_to))
        )
        low = pa.scalar(times.parse(modified_from), type=pa.timestamp("us", tz="UTC"))
        high = pa.scalar(times.parse(modified_to), type=pa.timestamp("us", tz="UTC"))
        # The next page is requested while this one is parsed and written: ThreatConnect's time to answer a page
        # overlaps with ours to handle the one before (one page ahead at most).
        for items, page in read_ahead(listing, name=f"threatconnect-{indicator_type}"):
            batch = parse_page(items, indicator_type, self.owner, page)
            # v2 has no upper bound on lastModified; v3's TQL does, but the same filter costs nothing there.
            lm = batch.column("last_modified")
            keep = pc.and_(pc.greater_equal(lm, low), pc.less(lm, high))
            if not pc.all(keep).as_py():
                batch = batch.filter(keep)
            if batch.num_rows:
                yield batch

    def ping(self) -> None:
        """One cheap signed request (a one-row listing of the owner's indicators): proves the host, the
        credentials, the clock skew the signature tolerates and the access to the owner.

        Raises:
            ThreatConnectAuthError: the server refused the credentials or the owner.
            ThreatConnectError: any other refusal, or the server stayed unreachable.
        """
        if self.api_version == "v2":
            params = [("owner", self.owner), ("resultStart", "0"), ("resultLimit", "1")]
            self._get(f"{self.base_url}/v2/indicators?{query(params)}")
        else:
            params = [("owner", self.owner), ("resultStart", "0"), ("resultLimit", "1")]
            self._get(f"{self.base_url}/v3/indicators?{query(params)}")

    def _iter_v2(self, indicator_type: str, modified_from: dt.datetime) -> Iterator[tuple[list[Any], int]]:
        """The v2 listing's pages as they came (items, page number), not yet parsed, read until one pass held."""
        return self._settled(lambda: self._v2_pass(indicator_type, modified_from), f"v2 {indicator_type} listing")

    def _v2_pass(self, indicator_type: str, modified_from: dt.datetime) -> Generator[list[Any], None, bool]:
        """One pass over the v2 listing; returns whether its ``resultCount`` changed while it was read."""
        branch, entity = V2_BRANCHES[indicator_type]

        def page_url(start: int, limit: int) -> str:
            # An SDK comment says modifiedSince "only works with the base url (/v2/indicators)": if a typed
            # branch ignores it, iter_pages' client-side window filter still keeps the result exact.
            params = [
                ("owner", self.owner),
                ("modifiedSince", iso_z(modified_from)),
                ("resultStart", str(start)),
                ("resultLimit", str(limit)),
                ("includeAdditional", "true"),
                ("includeTags", "true"),
                # Security labels exist only as ``includes=labels`` (TC >= 5.4); their JSON key is UNCONFIRMED.
                ("includes", "labels"),
                # Listings are active-only by default: ask for both states, OR-ed.
                ("filters", "active=true,active=false"),
                ("orParams", "true"),
            ]
            return f"{self.base_url}/v2/indicators/{branch}?{query(params)}"

        start, pages, expected, received = 0, 0, None, 0
        while True:
            data = self._get(page_url(start, self.page_size)).get("data") or {}
            if pages == 0 and isinstance(data.get("resultCount"), int):
                expected = data["resultCount"]
            items = data.get(entity) or data.get("indicator") or []
            if isinstance(items, dict):  # a single result may come back unwrapped
                items = [items]
            received += len(items)
            pages += 1
            if items:
                yield items
            start += self.page_size
            if len(items) < self.page_size or (expected is not None and start >= expected):
                break
        if expected is not None and received != expected:
            log.warning(
                "ThreatConnect v2 %s: resultCount was %s but %s indicators arrived", indicator_type, expected, received
            )
        if pages == 1 or expected is None:
            return False
        # resultCount comes only with resultStart=0: ask again with a one-row page.
        recount = (self._get(page_url(0, 1)).get("data") or {}).get("resultCount")
        return isinstance(recount, int) and recount != expected

    def _iter_v3(
        self, indicator_type: str, modified_from: dt.datetime, modified_to: dt.datetime
    ) -> Iterator[tuple[list[Any], int]]:
        """The v3 listing's pages as they came (items, page number), not yet parsed, read until one pass held."""
        return self._settled(
            lambda: self._v3_pass(indicator_type, modified_from, modified_to), f"v3 {indicator_type} listing"
        )

    def _v3_pass(
        self, indicator_type: str, modified_from: dt.datetime, modified_to: dt.datetime
    ) -> Generator[list[Any], None, bool]:
        """One pass over the v3 listing, following ``next``; returns whether its ``count`` changed meanwhile."""
        tql = (
            f'typeName EQ "{V3_TYPE_NAMES[indicator_type]}" AND lastModified GEQ "{iso_z(modified_from)}" '
            f'AND lastModified LT "{iso_z(modified_to)}" '
            # v3 is active-only unless the TQL names indicatorActive; this clause admits both states.
            "AND (indicatorActive EQ true OR indicatorActive EQ false)"
        )

        def first_url(limit: int, fields: bool) -> str:
            params = (
                [("tql", tql)]
                + ([("fields", name) for name in V3_FIELDS] if fields else [])
                + [
                    ("sorting", "lastModified ASC"),
                    ("owner", self.owner),
                    ("resultStart", "0"),
                    ("resultLimit", str(limit)),
                    # ``count`` comes only with resultStart=0 (the first page) and tells whether the listing moved.
                    ("count", "true"),
                ]
            )
            return f"{self.base_url}/v3/indicators?{query(params)}"

        url: str | None = first_url(self.page_size, fields=True)
        seen: set[str] = set()
        pages, expected = 0, None
        while url is not None:
            body = self._get(url)
            if pages == 0 and isinstance(body.get("count"), int):
                expected = body["count"]
            items = body.get("data") or []
            if isinstance(items, dict):
                items = [items]
            pages += 1
            if items:
                yield items
            url = self._next_link(body, seen)
        if pages == 1 or expected is None:
            return False
        recount = self._get(first_url(1, fields=False)).get("count")
        return isinstance(recount, int) and recount != expected

    def _settled(self, read_pass: Pass, what: str) -> Iterator[tuple[list[Any], int]]:
        try:
            yield from settled(read_pass, what)
        except ListingUnsettled as exc:
            raise ThreatConnectError(str(exc)) from None

    def _next_link(self, body: dict[str, Any], seen: set[str]) -> str | None:
        next_url = body.get("next")
        if not next_url:
            return None
        if next_url in seen:
            raise ThreatConnectError("ThreatConnect repeated a next link; refusing to loop")
        # A signed request is replayable for five minutes: never send one to an origin we were not given. The same
        # origin may be spelt differently (host case, the default port written out).
        if origin(next_url) != self._origin:
            raise ThreatConnectLinkError(
                f"ThreatConnect's next link leaves the Connection's origin {shown_origin(self._origin)} for "
                f"{shown_origin(origin(next_url))}: set the ThreatConnect Connection's host to the origin "
                "ThreatConnect links to (retrying cannot change this)"
            )
        seen.add(next_url)
        return next_url

    def iter_deleted(self, indicator_type: str, deleted_since: dt.datetime) -> Iterator[dict[str, Any]]:
        """Yield indicators of one type deleted from the owner since ``deleted_since``.

        ThreatConnect keeps deletions only ``indicatorDeleteRetentionTime`` days. A deleted item's ``dateAdded`` is
        when the indicator was first added, not when it was deleted: it says nothing about the deletion's order
        relative to later changes, so callers version a deletion by the listing that reported it.

        Args:
            indicator_type: ThreatConnect type name.
            deleted_since: Lower bound on the deletion time (aware datetime).

        Yields:
            ``{"indicator_type", "summary", "owner", "date_added"}`` dicts (``date_added`` an aware datetime or None).
        """
        if indicator_type not in V2_BRANCHES:
            raise ValueError(f"unsupported indicator type {indicator_type!r}")
        if self.api_version == "v2":
            items = self._deleted_v2(indicator_type, deleted_since)
        else:
            items = self._deleted_v3(indicator_type, deleted_since)
        for item in items:
            yield {
                "indicator_type": item.get("type") or indicator_type,
                "summary": summary_of(item, indicator_type),
                "owner": item.get("ownerName") or self.owner,
                "date_added": _lenient_timestamp(item.get("dateAdded")),
            }

    def iter_deleted_batches(
        self, indicator_type: str, deleted_since: dt.datetime, stamp: dt.datetime, batch_rows: int = 10_000
    ) -> Iterator[pa.RecordBatch]:
        """The deleted listing as ``RAW_SCHEMA`` rows (inactive, ``deleted``), every one versioned ``stamp``.

        The caller chooses the version (the window that reported the deletion): the listing's ``dateAdded`` is when
        the indicator was first added, which says nothing about the deletion. It travels as the row's ``date_added``
        (``stamp`` when the listing has none), which tells a deletion of an earlier incarnation of the value.
        """
        when = stamp.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        items: list[dict[str, Any]] = []
        for entry in self.iter_deleted(indicator_type, deleted_since):
            items.append(
                {
                    "type": indicator_type,
                    "summary": entry["summary"],
                    "ownerName": entry.get("owner"),
                    # kept as the listing gives it: a deletion of an earlier incarnation of a value (added before
                    # the one delivered, then created again) must not retract the one that lives now
                    "dateAdded": iso_z(entry["date_added"]) if entry["date_added"] is not None else when,
                    "lastModified": when,
                    "active": False,
                }
            )
            if len(items) == batch_rows:
                yield _flag_deleted(parse_page(items, indicator_type))
                items = []
        if items:
            yield _flag_deleted(parse_page(items, indicator_type))

    def _deleted_v2(self, indicator_type: str, deleted_since: dt.datetime) -> Iterator[dict[str, Any]]:
        branch, entity = V2_BRANCHES[indicator_type]
        start = 0
        while True:
            params = [
                ("owner", self.owner),
                ("deletedSince", iso_z(deleted_since)),
                ("resultStart", str(start)),
                ("resultLimit", str(self.page_size)),
            ]
            body = self._get(f"{self.base_url}/v2/indicators/{branch}/deleted?{query(params)}")
            data = body.get("data") or {}
            # The docs show the key ``indicator`` on /v2/indicators/deleted; the typed branch's key is UNCONFIRMED.
            items = data.get("indicator") or data.get(entity) or []
            if isinstance(items, dict):
                items = [items]
            yield from items
            start += self.page_size
            if len(items) < self.page_size:
                return

    def _deleted_v3(self, indicator_type: str, deleted_since: dt.datetime) -> Iterator[dict[str, Any]]:
        params = [
            ("deletedSince", iso_z(deleted_since)),
            ("type", indicator_type),
            ("owner", self.owner),
            ("resultStart", "0"),
            ("resultLimit", str(self.page_size)),
        ]
        url: str | None = f"{self.base_url}/v3/indicators/deleted?{query(params)}"
        seen: set[str] = set()
        expected, received = None, 0
        while url is not None:
            body = self._get(url)
            if expected is None and isinstance(body.get("count"), int):
                expected = body["count"]
            items = body.get("data") or []
            items = [items] if isinstance(items, dict) else items
            received += len(items)
            yield from items
            url = self._next_link(body, seen)
        if expected is not None and received < expected:
            log.warning(  # the documented shape shows no next link: say so rather than drop deletions unseen
                "ThreatConnect listed %s of the %s deleted %s indicators it counted, and no next link for the rest",
                received,
                expected,
                indicator_type,
            )
