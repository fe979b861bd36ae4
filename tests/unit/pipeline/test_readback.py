"""Reading back what a target holds: look-ups when few ids are wanted, one listing when many are, and that listing
shared by the run's other types only where it was taken after what they ask about. The target here is an in-memory
fake that counts requests the way Graph bills them (about 20 ids a look-up, a page per listing request)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pytest

from include.pipeline import readback
from include.pipeline.ports import Listed
from include.pipeline.schema import LOADED_SCHEMA, NORMALIZED_SCHEMA
from include.pipeline.snapshots import SnapshotStore

TARGET = "graph"
RUN = "scheduled__2026-12-01"
IDS_PER_LOOKUP = 20
PAGE = 10


class CountingTarget:
    """A target holding ``objects`` (external id -> list of (order, payload)), billing every request it answers."""

    def __init__(self) -> None:
        self.objects: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.lookups = 0
        self.list_requests = 0
        self.page_size = PAGE

    # the sink's side
    @property
    def listing(self) -> CountingTarget:
        return self

    def lookup_requests(self, external_ids: Sequence[str]) -> int:
        return math.ceil(len(external_ids) / IDS_PER_LOOKUP)

    def fetch(self, external_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        self.lookups += self.lookup_requests(external_ids)
        return {e: min(self.objects[e], key=lambda o: o[0])[1] for e in external_ids if e in self.objects}

    def pages(self) -> Iterator[list[Listed]]:
        flat = [Listed(e, order, payload) for e, held in self.objects.items() for order, payload in held]
        for start in range(0, max(len(flat), 1), self.page_size):
            self.list_requests += 1
            yield flat[start : start + self.page_size]

    # the test's side
    def hold(self, external_id: str, value: str, order: str = "2026-12-01") -> None:
        self.objects.setdefault(external_id, []).append((order, {"externalId": external_id, "value": value}))

    @property
    def requests(self) -> int:
        return self.lookups + self.list_requests


def _write_loaded(store: SnapshotStore, indicator_type: str, run_id: str, ids: list[str]) -> None:
    """A ``loaded`` file saying these ids were created in ``TARGET`` (what the delivered state counts)."""
    rows = [
        {"external_id": e, "action": "create", "status": "ok", "sink": TARGET, "indicator_type": indicator_type}
        for e in ids
    ]
    store.write_table("loaded", indicator_type, run_id, pa.Table.from_pylist(rows, schema=LOADED_SCHEMA), part=TARGET)


def _write_deduped(store: SnapshotStore, indicator_type: str, run_id: str) -> None:
    store.write_table("deduped", indicator_type, run_id, NORMALIZED_SCHEMA.empty_table())


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    return SnapshotStore(str(tmp_path / "snapshots"))


def _loaded_run(store: SnapshotStore, target: CountingTarget, per_type: int) -> dict[str, list[str]]:
    """This run created ``per_type`` indicators of Host and of URL, and the target holds them all."""
    ids = {kind: [f"{kind.lower()}-{i:04d}" for i in range(per_type)] for kind in ("Host", "URL")}
    for kind, wanted in ids.items():
        _write_deduped(store, kind, RUN)
        _write_loaded(store, kind, RUN, wanted)
        for external_id in wanted:
            target.hold(external_id, f"value of {external_id}")
    return ids


def test_a_few_ids_are_looked_up_and_nothing_is_listed(store) -> None:
    target = CountingTarget()
    ids = _loaded_run(store, target, per_type=100)
    found = readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"][:15], after_load=True)
    assert sorted(found) == ids["Host"][:15]
    assert (target.lookups, target.list_requests) == (1, 0)
    assert store.read_part(readback.HELD, readback.ALL_TYPES, RUN, TARGET) is None


def test_look_ups_are_chosen_when_listing_everything_of_ours_would_cost_more(store) -> None:
    target = CountingTarget()
    ids = _loaded_run(store, target, per_type=100)  # 200 held at 10 a page: 20 pages, against 5 look-ups
    found = readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"], after_load=True)
    assert found == {e: {"externalId": e, "value": f"value of {e}"} for e in ids["Host"]}
    assert (target.lookups, target.list_requests) == (5, 0)


def test_a_listing_is_chosen_when_it_costs_fewer_requests_and_is_shared_with_the_other_type(store) -> None:
    target = CountingTarget()
    target.page_size = 1000  # a page holds everything: one request instead of look-ups
    ids = _loaded_run(store, target, per_type=100)
    host = readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"], after_load=True)
    assert sorted(host) == ids["Host"]
    assert (target.lookups, target.list_requests) == (0, 1)
    url = readback.read_back(target, store, RUN, "URL", TARGET, ids["URL"], after_load=True)
    assert url == {e: {"externalId": e, "value": f"value of {e}"} for e in ids["URL"]}
    assert (target.lookups, target.list_requests) == (0, 1)  # read from the run's listing: no request


def test_verify_after_a_rewritten_load_lists_again(store) -> None:
    target = CountingTarget()
    target.page_size = 1000
    ids = _loaded_run(store, target, per_type=100)
    readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"], after_load=True)
    _write_loaded(store, "URL", RUN, ids["URL"])  # URL's load ran again after the listing
    target.hold("url-0000", "a second copy, newer", order="2026-12-02")
    found = readback.read_back(target, store, RUN, "URL", TARGET, ids["URL"], after_load=True)
    assert target.list_requests == 2
    assert found["url-0000"]["value"] == "value of url-0000"


def test_a_type_that_had_not_loaded_when_the_run_was_listed_is_never_verified_against_that_listing(store) -> None:
    target = CountingTarget()
    target.page_size = 1000
    ids = _loaded_run(store, target, per_type=100)
    store.fs.rm(
        store.partition_dir("loaded", "URL", RUN), recursive=True
    )  # URL has not loaded yet when Host's verify lists
    readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"], after_load=True)
    _write_loaded(store, "URL", RUN, ids["URL"])
    readback.read_back(target, store, RUN, "URL", TARGET, ids["URL"], after_load=True)
    assert target.list_requests == 2


def test_planning_reuses_a_listing_of_this_attempt_but_not_one_from_before_the_run_was_cleared(store) -> None:
    target = CountingTarget()
    target.page_size = 1000
    ids = _loaded_run(store, target, per_type=100)
    store.fs.rm(store.partition_dir("loaded", "URL", RUN), recursive=True)  # URL plans after Host's verify listed
    readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"], after_load=True)
    readback.read_back(target, store, RUN, "URL", TARGET, ids["URL"], after_load=False)
    assert target.list_requests == 1
    _write_deduped(store, "URL", RUN)  # the run was cleared and prepared again: the target may have changed since
    del target.objects["url-0001"]
    found = readback.read_back(target, store, RUN, "URL", TARGET, ids["URL"], after_load=False)
    assert target.list_requests == 2
    assert "url-0001" not in found
    assert len(found) == 99


def test_the_oldest_object_of_an_id_held_twice_is_the_one_read_back(store) -> None:
    target = CountingTarget()
    target.page_size = 1000
    ids = _loaded_run(store, target, per_type=100)
    target.objects["host-0003"].insert(0, ("2026-12-05", {"externalId": "host-0003", "value": "a later duplicate"}))
    found = readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"], after_load=True)
    assert found["host-0003"]["value"] == "value of host-0003"


def test_a_listing_longer_than_the_look_ups_is_abandoned_for_them(store) -> None:
    target = CountingTarget()
    target.page_size = 1000  # the state says 200 objects: one page expected
    ids = _loaded_run(store, target, per_type=100)
    for i in range(5000):  # but the target holds far more of ours than the store knows
        target.hold(f"unknown-{i}", "x")
    found = readback.read_back(target, store, RUN, "Host", TARGET, ids["Host"], after_load=True)
    assert sorted(found) == ids["Host"]
    assert target.list_requests == 6  # 5,200 held: stopped one page past the 5 look-ups' cost
    assert target.lookups == 5
    assert store.read_part(readback.HELD, readback.ALL_TYPES, RUN, TARGET) is None
