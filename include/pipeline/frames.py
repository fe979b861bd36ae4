"""Rows of a data frame as dicts, the way ``DataFrame.to_dict("records")`` gives them, at about twice its speed."""

from __future__ import annotations

from typing import Any

import pandas as pd


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """``frame.to_dict("records")``: one dict per row with Python scalars (``Series.tolist`` boxes them the same
    way), built column by column instead of row by row."""
    columns = [str(c) for c in frame.columns]
    values = [frame[c].tolist() for c in frame.columns]
    return [dict(zip(columns, row, strict=True)) for row in zip(*values, strict=True)] if columns else [{}] * len(frame)
