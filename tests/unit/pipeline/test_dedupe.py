"""Stable external ids and de-duplication: the newest version of each indicator wins, nothing else is dropped."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given
from hypothesis import strategies as st

from include.microsoft.sentinel.stix import stix_id
from include.pipeline.dedupe import KEY_COLUMNS, NAMESPACE, dedupe, external_id, external_ids, winners
from include.pipeline.schema import TS

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
# The namespace as documented (dedupe.py, README "dedupe"), derived here with the standard library, not imported.
DOCUMENTED_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/tc-sentinel/indicator")


def _documented_id(owner: str, indicator_type: str, value: str) -> str:
    return str(uuid.uuid5(DOCUMENTED_NAMESPACE, f"{owner}|{indicator_type}|{value}"))


def test_the_external_id_of_a_known_indicator_never_changes():
    # Pinned: every id already sent to Graph or Sentinel derives from this. A change here orphans them all.
    assert NAMESPACE == uuid.UUID("6fa483d2-46d5-5e85-94df-89d7a8157f84") == DOCUMENTED_NAMESPACE
    assert external_id("Example Org", "Address", "192.0.2.1") == "f8b3ab4a-830e-52a8-8e4a-ef17fd4c4593"
    stix = stix_id(external_id("Example Org", "Address", "192.0.2.1"))
    assert stix == "indicator--f8b3ab4a-830e-52a8-8e4a-ef17fd4c4593"


def test_the_external_id_is_the_same_in_another_process_with_another_hash_seed():
    code = "from include.pipeline.dedupe import external_id; print(external_id('Example Org', 'Address', '192.0.2.1'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "f8b3ab4a-830e-52a8-8e4a-ef17fd4c4593"


@given(st.text(), st.sampled_from(["Address", "Host", "URL", "EmailAddress", "File"]), st.text())
def test_the_external_id_is_uuid5_of_owner_type_and_value(owner, indicator_type, value):
    assert external_id(owner, indicator_type, value) == _documented_id(owner, indicator_type, value)


@given(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=30)), max_size=20))
def test_the_bulk_external_ids_are_uuid5_of_owner_type_and_value(pairs):
    owners = [o for o, _ in pairs]
    values = [v for _, v in pairs]
    bulk = external_ids(owners, "Host", values)
    assert bulk.type == pa.string()
    assert bulk.to_pylist() == [_documented_id(o, "Host", v) for o, v in pairs]


def test_owner_type_and_value_each_change_the_id():
    base = external_id("Org", "Host", "example.com")
    assert base != external_id("Org2", "Host", "example.com")
    assert base != external_id("Org", "URL", "example.com")
    assert base != external_id("Org", "Host", "example.org")


# --- dedupe -----------------------------------------------------------------------------------------------------


def keys(rows: list[tuple[str | None, datetime | None, int | None]], **extra: list) -> pa.Table:
    return pa.table(
        {
            "external_id": pa.array([r[0] for r in rows], pa.string()),
            "last_modified": pa.array([r[1] for r in rows], TS),
            "tc_id": pa.array([r[2] for r in rows], pa.int64()),
            **extra,
        }
    )


def test_a_duplicate_from_a_later_page_keeps_the_newest_version():
    table = keys(
        [("a", T0, 1), ("b", T0, 2), ("a", T0 + timedelta(hours=1), 1), ("c", T0, 3)],
        page=[0, 0, 3, 3],
    )
    kept, dropped = dedupe(table)
    assert dropped == 1
    assert kept.to_pylist() == [
        {"external_id": "b", "last_modified": T0, "tc_id": 2, "page": 0},
        {"external_id": "a", "last_modified": T0 + timedelta(hours=1), "tc_id": 1, "page": 3},
        {"external_id": "c", "last_modified": T0, "tc_id": 3, "page": 3},
    ]


def test_an_older_version_on_a_later_page_loses():
    kept, dropped = dedupe(keys([("a", T0, 1), ("a", T0 - timedelta(days=1), 1)], page=[0, 1]))
    assert (kept.column("page").to_pylist(), dropped) == ([0], 1)


def test_a_tie_on_last_modified_goes_to_the_highest_tc_id_whatever_the_order():
    rows = [("a", T0, 5), ("a", T0, 9), ("a", T0, 7)]
    for ordering in (rows, rows[::-1], [rows[1], rows[0], rows[2]]):
        kept, _ = dedupe(keys(ordering))
        assert kept.column("tc_id").to_pylist() == [9]


def test_a_complete_tie_keeps_the_first_row():
    kept, _ = dedupe(keys([("a", T0, 1), ("a", T0, 1)], page=[4, 5]))
    assert kept.column("page").to_pylist() == [4]


def test_null_timestamps_and_ids_lose_and_null_external_ids_are_never_duplicates():
    table = keys([("a", None, 9), ("a", T0, None), ("b", T0, None), ("b", T0, 1), (None, T0, 1), (None, T0, 1)])
    assert winners(table).to_pylist() == [False, True, False, True, True, True]


def test_an_empty_table_dedupes_to_itself():
    kept, dropped = dedupe(keys([]))
    assert (kept.num_rows, dropped) == (0, 0)


_rows = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.integers(0, 3).map(lambda h: T0 + timedelta(hours=h)),
        st.integers(1, 4),
    ),
    max_size=40,
)


@given(_rows)
def test_only_duplicates_are_removed_and_each_winner_is_the_newest(rows):
    table = keys(rows, position=list(range(len(rows))))
    kept, dropped = dedupe(table)
    assert sorted(kept.column("external_id").to_pylist()) == sorted({r[0] for r in rows})
    assert dropped == len(rows) - len({r[0] for r in rows})
    for row in kept.to_pylist():
        best = max((lm, tc, -i) for i, (e, lm, tc) in enumerate(rows) if e == row["external_id"])
        assert (row["last_modified"], row["tc_id"], -row["position"]) == best
    assert kept.column("position").to_pylist() == sorted(kept.column("position").to_pylist())  # order kept


@given(_rows, st.lists(st.integers(1, 7), max_size=8))
def test_a_streamed_second_pass_over_slices_of_the_mask_keeps_exactly_the_newest_rows(rows, batch_sizes):
    table = keys(rows, position=list(range(len(rows))))
    mask = winners(table.select([c for c in KEY_COLUMNS if c in table.column_names]))  # pass 1: key columns
    kept_batches, offset = [], 0
    for batch in table.to_batches(max_chunksize=max(batch_sizes, default=3)):  # pass 2: stream
        kept_batches.append(batch.filter(mask.slice(offset, batch.num_rows)))
        offset += batch.num_rows
    streamed = pa.Table.from_batches(kept_batches, schema=table.schema)
    # newest lastModified, then the highest tc_id, then the first row: worked out here, not by dedupe()
    newest = {e: max((lm, tc, -i) for i, (e2, lm, tc) in enumerate(rows) if e2 == e) for e, _, _ in rows}
    assert streamed.column("position").to_pylist() == sorted(-i for _, _, i in newest.values())


def test_a_million_rows_dedupe_to_their_newest_halves():
    # Correctness at scale (the speed is measured by a benchmark script, not asserted here).
    n = 1_000_000
    seq = pa.array(np.arange(n, dtype=np.int64))
    table = pa.table(
        {
            "external_id": pc.cast(pc.divide(seq, 2), pa.string()),  # each id twice, in adjacent rows
            "last_modified": seq.cast(TS),
            "tc_id": seq,
        }
    )
    kept, dropped = dedupe(table)
    assert dropped == n // 2
    assert kept.column("tc_id").to_numpy().tolist() == list(range(1, n, 2))  # the later copy of each wins


def test_a_value_re_created_after_its_deletion_keeps_the_live_row_even_when_the_deletion_is_stamped_later():
    # The deleted listing's row is versioned by the window that reported it, which can be later than the
    # re-created row's lastModified: the active listing only shows what exists now, so the live row must win.
    table = pa.table(
        {
            "external_id": ["a", "a", "b", "b"],
            "last_modified": pa.array([5, 9, 3, 4], pa.int64()).cast(TS),
            "tc_id": [1, 2, 3, 4],
            "deleted": [False, True, True, False],
        }
    )
    assert winners(table).to_pylist() == [True, False, False, True]


def test_a_deletion_alone_is_kept_and_two_deletions_keep_the_newest():
    table = pa.table(
        {
            "external_id": ["a", "b", "b"],
            "last_modified": pa.array([5, 1, 2], pa.int64()).cast(TS),
            "tc_id": [1, 2, 3],
            "deleted": [True, True, True],
        }
    )
    assert winners(table).to_pylist() == [True, False, True]
