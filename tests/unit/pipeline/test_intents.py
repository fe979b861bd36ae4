"""The create guard's ledger: ids written down as sent (or recorded in ``loaded``) are always looked up; the rest
skip the look-up only once a listing showed that the store saw everything of ours the target holds."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
import pytest

from include.pipeline import intents
from include.pipeline.ports import Listed
from include.pipeline.schema import LOADED_SCHEMA
from include.pipeline.snapshots import SnapshotStore

TARGET = "graph"
RUN, NEXT = "scheduled__2026-12-01", "scheduled__2026-12-02"


class FakeListing:
    """What the app owns in the target, listed ``page_size`` at a time; ``before_page`` runs before each page."""

    def __init__(self, held: list[str], page_size: int = 2, before_page: Callable[[], None] | None = None) -> None:
        self.held = held
        self.page_size = page_size
        self.requests = 0
        self.before_page = before_page

    def pages(self) -> Iterator[list[Listed]]:
        for start in range(0, max(len(self.held), 1), self.page_size):
            if self.before_page is not None:
                self.before_page()
            self.requests += 1
            yield [Listed(e, "", {}) for e in self.held[start : start + self.page_size]]


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    return SnapshotStore(str(tmp_path / "snapshots"))


def _loaded(store: SnapshotStore, kind: str, run_id: str, ids: list[str], status: str = "ok") -> None:
    rows = [{"external_id": e, "action": "create", "status": status, "sink": TARGET} for e in ids]
    store.write_table("loaded", kind, run_id, pa.Table.from_pylist(rows, schema=LOADED_SCHEMA), part=TARGET)


def test_an_empty_target_beside_an_empty_store_is_proven_by_one_listing_request_and_remembered(store) -> None:
    listing = FakeListing([])
    guard = intents.CreateGuard.open(store, "Host", TARGET, RUN, listing)
    assert guard.never_sent(["a", "b"]) == {"a", "b"}
    assert listing.requests == 1
    again = FakeListing(["never", "listed"])
    intents.CreateGuard.open(store, "URL", TARGET, RUN, again)
    assert again.requests == 0  # the ledger says the store is complete for this target


def test_ids_written_down_before_sending_are_looked_up_by_the_next_attempt(store) -> None:
    guard = intents.CreateGuard.open(store, "Host", TARGET, RUN, FakeListing([]))
    guard.record(["a", "b"])  # ... then the process is killed before any outcome is recorded
    retry = intents.CreateGuard.open(store, "Host", TARGET, RUN, FakeListing(["a"]))
    assert retry.never_sent(["a", "b", "c"]) == {"c"}


def test_every_earlier_loaded_row_counts_as_sent_whatever_its_status(store) -> None:
    _loaded(store, "Host", RUN, ["ok-1"])
    _loaded(store, "URL", RUN, ["failed-1"], status="failed")
    listing = FakeListing(["ok-1"])  # a store from before the ledger, consistent with the target
    host = intents.CreateGuard.open(store, "Host", TARGET, NEXT, listing)
    assert host.never_sent(["ok-1", "new"]) == {"new"}
    url = intents.CreateGuard.open(store, "URL", TARGET, NEXT, listing)
    assert url.never_sent(["failed-1", "new"]) == {"new"}


def test_a_target_holding_objects_the_store_never_sent_gets_every_create_looked_up(store) -> None:
    listing = FakeListing(["x", "y", "z", "from-a-lost-store"], page_size=2)
    guard = intents.CreateGuard.open(store, "Host", TARGET, RUN, listing)
    assert guard.never_sent(["new"]) == frozenset()
    assert store.read_part(intents.INTENT, intents.LEDGER_TYPE, intents.LEDGER_RUN, TARGET) is None
    assert listing.requests == 1  # stopped on the first page, which already held unknown objects


def test_once_the_runs_have_adopted_what_the_target_held_the_ledger_is_written(store) -> None:
    listing = FakeListing(["old-1", "old-2"])
    assert not intents.CreateGuard.open(store, "Host", TARGET, RUN, listing).complete
    _loaded(store, "Host", RUN, ["old-1", "old-2"])  # looked up and updated by that run
    assert intents.CreateGuard.open(store, "Host", TARGET, NEXT, listing).complete


def test_another_types_load_that_writes_down_its_ids_while_this_one_lists_does_not_count_as_unknown(store) -> None:
    def other_load_sends() -> None:
        intents.CreateGuard(store, "URL", TARGET, RUN, complete=True).record(["url-1", "url-2"])

    listing = FakeListing(["url-1", "url-2"], before_page=other_load_sends)
    guard = intents.CreateGuard.open(store, "Host", TARGET, RUN, listing)
    assert guard.complete
    assert guard.never_sent(["host-1"]) == {"host-1"}


def test_a_sink_without_a_listing_never_skips_a_look_up(store) -> None:
    guard = intents.CreateGuard.open(store, "Host", TARGET, RUN, None)
    assert guard.never_sent(["a"]) == frozenset()


def test_written_down_ids_of_another_target_do_not_count_for_this_one(store) -> None:
    intents.CreateGuard(store, "Host", "graph@emea", RUN, complete=True).record(["a"])
    guard = intents.CreateGuard.open(store, "Host", TARGET, RUN, FakeListing([]))
    assert guard.never_sent(["a"]) == {"a"}
