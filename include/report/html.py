"""The per-run HTML report: plots (matplotlib, inline PNG) over tables of the exact numbers, one self-contained page.

Built from the ``runs`` dataset and the run's snapshots; written to ``<data_root>/reports/<quoted run id>.html`` and
``latest.html``. Nothing in the page loads from the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from include.pipeline.snapshots import SnapshotStore, quote_partition_value
from include.report import runs as runs_ds

REPORTS = "reports"
HISTORY = 30
STAGE_COLUMNS = (
    "extracted",
    "rejected",
    "deduplicated",
    "planned_create",
    "planned_update",
    "planned_refresh",
    "planned_retract",
    "planned_skip",
    "sent",
    "loaded",
    "rejected_by_target",
    "quarantined",
    "failed",
    "verified",
)
HISTORY_SERIES = ("loaded", "retracted", "rejected", "quarantined")
# Documented budgets (requests a minute) of each target kind; a Connection's requests_per_minute may differ.
BUDGETS = {"graph": 950, "sentinel": 95, "defender": 28}


def report_name(run_id: str) -> str:
    """The report's file name for a run (the run id URL-quoted, like the snapshot partitions)."""
    return f"{quote_partition_value(run_id)}.html"


def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display: render to bytes only
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)


def _table(table_id: str, header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return "<td>-</td>"
        if isinstance(value, int | float) and not isinstance(value, bool):
            return f'<td class="n">{int(value) if float(value).is_integer() else value}</td>'
        return f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in body)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _label(row: pd.Series) -> str:
    return f"{row['indicator_type']} → {row['target']}"


def _loads(value: Any) -> dict[str, Any]:
    """A JSON object column of ``runs``; null (None or NaN, as pandas reads it) is empty."""
    return json.loads(value) if isinstance(value, str) and value else {}


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def _stage_section(current: pd.DataFrame) -> str:
    labels = [_label(r) for _, r in current.iterrows()]
    figure, axes = _figure(10, 0.5 + 0.45 * max(1, len(labels)))
    ax = axes[0][0]
    shown = ("extracted", "rejected", "deduplicated", "sent", "loaded", "verified")
    height = 0.8 / len(shown)
    for i, column in enumerate(shown):
        values = [(_int(v) or 0) for v in current[column]]
        ax.barh([k + i * height for k in range(len(labels))], values, height=height, label=column)
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("stage counts this run")
    body = [[_label(r), *(_int(r[c]) for c in STAGE_COLUMNS), r["status"]] for _, r in current.iterrows()]
    return (
        "<h2>Stage counts</h2>"
        + _png(figure)
        + _table("stage-counts", ["type → target", *STAGE_COLUMNS, "status"], body)
    )


def _history_section(history: pd.DataFrame) -> str:
    history = history.copy()
    history["rejected"] = history["rejected"].fillna(0) + history["rejected_by_target"].fillna(0)
    pairs = sorted({(r["indicator_type"], r["target"]) for _, r in history.iterrows()})
    if not pairs:
        return ""
    ncols = min(3, len(pairs))
    nrows = (len(pairs) + ncols - 1) // ncols
    figure, axes = _figure(4 * ncols, 2.4 * nrows, ncols, nrows)
    body = []
    for k, (indicator_type, target) in enumerate(pairs):
        ax = axes[k // ncols][k % ncols]
        series = history[(history["indicator_type"] == indicator_type) & (history["target"] == target)]
        series = series.sort_values(["data_interval_end", "run_id"]).tail(HISTORY)
        x = range(len(series))
        for column in HISTORY_SERIES:
            ax.plot(x, series[column].fillna(0).astype(int).tolist(), marker=".", label=column)
        ax.set_xticks(list(x), [pd.Timestamp(v).strftime("%m-%d") for v in series["data_interval_end"]], rotation=90)
        ax.set_title(f"{indicator_type} → {target}", fontsize=9)
        ax.tick_params(labelsize=7)
        for _, r in series.iterrows():
            body.append(
                [indicator_type, target, r["run_id"], r["run_type"], r["status"], *(_int(r[c]) for c in HISTORY_SERIES)]
            )
    for k in range(len(pairs), nrows * ncols):
        axes[k // ncols][k % ncols].axis("off")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"last {HISTORY} runs (oldest left)")
    return (
        f"<h2>Last {HISTORY} runs</h2>"
        + _png(figure)
        + _table("history", ["type", "target", "run", "run type", "status", *HISTORY_SERIES], body)
    )


def _rejects_section(current: pd.DataFrame) -> str:
    counts: dict[tuple[str, str], int] = {}
    for _, r in current.drop_duplicates("indicator_type").iterrows():
        for reason, n in _loads(r["rejected_by_reason"]).items():
            counts[(r["indicator_type"], reason)] = counts.get((r["indicator_type"], reason), 0) + n
    if not counts:
        return "<h2>Rejects by reason</h2><p>No value was rejected this run.</p>" + _table(
            "rejects", ["type", "reason", "count"], []
        )
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    figure, axes = _figure(8, 0.6 + 0.3 * len(ordered))
    ax = axes[0][0]
    ax.barh([f"{t}: {reason}" for (t, reason), _ in ordered], [n for _, n in ordered])
    ax.invert_yaxis()
    ax.set_title("rejected values by reason")
    return (
        "<h2>Rejects by reason</h2>"
        + _png(figure)
        + _table("rejects", ["type", "reason", "count"], [[t, reason, n] for (t, reason), n in ordered])
    )


def _plan_section(current: pd.DataFrame) -> str:
    actions = [f"planned_{a}" for a in runs_ds.PLAN_ACTIONS]
    labels = [_label(r) for _, r in current.iterrows()]
    figure, axes = _figure(10, 0.5 + 0.45 * max(1, len(labels)))
    ax = axes[0][0]
    left = [0] * len(labels)
    for column in actions:
        values = [(_int(v) or 0) for v in current[column]]
        ax.barh(labels, values, left=left, label=column.removeprefix("planned_"))
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncols=6, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.set_title("plan actions")
    body = [[_label(r), *(_int(r[c]) for c in actions)] for _, r in current.iterrows()]
    return (
        "<h2>Plan actions</h2>"
        + _png(figure)
        + _table("plan-actions", ["type → target", *(a.removeprefix("planned_") for a in actions)], body)
    )


def expiring_by_day(
    store: SnapshotStore, pairs: Iterable[tuple[str, str]], start: dt.datetime, days: int = 7
) -> list[tuple[str, str, str, int]]:
    """(type, target, day, count) of live delivered indicators whose expiry falls in ``[start, start + days)``."""
    from include.pipeline.lifecycle import delivered_state

    out = []
    begin = pd.Timestamp(start).tz_convert("UTC") if pd.Timestamp(start).tzinfo else pd.Timestamp(start, tz="UTC")
    end = begin + pd.Timedelta(days=days)
    for indicator_type, target in pairs:
        state = delivered_state(store, indicator_type, target)
        if state.empty:
            continue
        live = state[state["action"] != "retract"]
        expiry = pd.to_datetime(live["expiration"], utc=True)
        soon = expiry[(expiry >= begin) & (expiry < end)]
        for day, n in sorted(soon.dt.strftime("%Y-%m-%d").value_counts().items()):
            out.append((indicator_type, target, day, int(n)))
    return out


def _expiry_section(expiring: list[tuple[str, str, str, int]], start: Any) -> str:
    title = "<h2>Expiring in the next 7 days</h2>"
    if not expiring:
        return (
            title
            + "<p>Nothing we delivered expires in the next 7 days.</p>"
            + _table("expiring", ["type", "target", "day", "count"], [])
        )
    begin = pd.Timestamp(start).tz_convert("UTC") if pd.Timestamp(start).tzinfo else pd.Timestamp(start, tz="UTC")
    days = [(begin + pd.Timedelta(days=k)).strftime("%Y-%m-%d") for k in range(7)]
    figure, axes = _figure(8, 2.6)
    ax = axes[0][0]
    bottom = [0] * len(days)
    for indicator_type, target in sorted({(t, s) for t, s, _, _ in expiring}):
        values = [sum(n for t, s, d, n in expiring if (t, s, d) == (indicator_type, target, day)) for day in days]
        ax.bar([d[5:] for d in days], values, bottom=bottom, label=f"{indicator_type} → {target}")
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    ax.legend(fontsize=7)
    ax.set_title("live indicators expiring per day")
    return title + _png(figure) + _table("expiring", ["type", "target", "day", "count"], expiring)


def _budget_section(current: pd.DataFrame) -> str:
    body = []
    for _, r in current.iterrows():
        requests, throttled = _loads(r["requests"]), _loads(r["throttled"])
        seconds = _loads(r["durations"]).get("load")
        kind = str(r["target"]).split("@", 1)[0]
        sent = requests.get(kind)
        rate = None if not sent or not seconds else round(sent / (seconds / 60.0), 1)
        budget = BUDGETS.get(kind)
        body.append(
            [
                _label(r),
                sent,
                throttled.get(kind),
                seconds,
                rate,
                budget,
                None if rate is None or not budget else f"{rate / budget:.0%}",
            ]
        )
    section = "<h2>Request rate against the budget</h2>"
    if all(row[1] is None for row in body):
        section += (
            "<p>This run's stages did not report their request counts (see the README: Run history); "
            "budgets per target are shown for reference.</p>"
        )
    else:
        figure, axes = _figure(8, 0.6 + 0.45 * len(body))
        ax = axes[0][0]
        ax.barh([row[0] for row in body], [row[4] or 0 for row in body], label="requests/min")
        ax.scatter(
            [row[5] or 0 for row in body], [row[0] for row in body], color="red", marker="|", s=300, label="budget"
        )
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        section += _png(figure)
    return section + _table(
        "budget", ["type → target", "requests", "429s", "load seconds", "requests/min", "budget/min", "share"], body
    )


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 2em}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}td.n{text-align:right}th{background:#f3f3f3}
img{max-width:100%}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}.failed{color:#b00}"""


def render(store: SnapshotStore, run_id: str) -> str:
    """The report page of one run (which must have rows in the ``runs`` dataset)."""
    table = runs_ds.read(store).to_pandas()
    current = table[table["run_id"] == run_id].sort_values(["indicator_type", "target"]).reset_index(drop=True)
    if current.empty:
        raise ValueError(f"no rows for run {run_id!r} in the runs dataset under {store.root}")
    first = current.iloc[0]
    end = first["data_interval_end"]
    history = table[table["data_interval_end"] <= end]
    order = history.drop_duplicates("run_id").sort_values(["data_interval_end", "run_id"])["run_id"].tolist()
    history = history[history["run_id"].isin(order[-HISTORY:])]
    pairs = [(r["indicator_type"], r["target"]) for _, r in current.iterrows()]
    failed = current[current["status"] == "failed"]
    status = (
        (
            "<p class=failed>Did not complete: "
            + html.escape(", ".join(_label(r) for _, r in failed.iterrows()))
            + "</p>"
        )
        if not failed.empty
        else "<p>Every type and target got through verify.</p>"
    )
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>tc-sentinel run {html.escape(run_id)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>tc-sentinel: run {html.escape(run_id)}</h1>",
        f"<p>{html.escape(str(first['run_type']))} run, data interval {first['data_interval_start']} → {end}</p>",
        status,
        _stage_section(current),
        _history_section(history),
        _rejects_section(current),
        _plan_section(current),
        _expiry_section(expiring_by_day(store, pairs, end.to_pydatetime()), end),
        _budget_section(current),
        "</body></html>",
    ]
    return "\n".join(parts)


def write(store: SnapshotStore, run_id: str) -> str:
    """Render the run's report to ``reports/<run>.html`` and ``reports/latest.html``; returns the run's page."""
    page = render(store, run_id)
    directory = f"{store._base}/{REPORTS}"
    store.fs.makedirs(directory, exist_ok=True)
    target = f"{directory}/{report_name(run_id)}"
    for path in (target, f"{directory}/latest.html"):
        with store.fs.open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
    return target if store._local else store.fs.unstrip_protocol(target)
