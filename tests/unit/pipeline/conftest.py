"""Fixtures for the pipeline unit tests."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from tests.unit.pipeline.pipeline_rows import raw_row, raw_table


@pytest.fixture
def make_table():
    """Build a RAW_SCHEMA table from keyword-overridden rows: ``make_table(dict(summary=...), ...)``."""

    def build(*overrides: dict[str, Any]) -> pa.Table:
        return raw_table([raw_row(**o) for o in overrides])

    return build
