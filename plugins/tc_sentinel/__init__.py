"""Airflow adapters for tc-sentinel: hooks that turn Connections into the clients in ``include/``, and the plugin
that serves the run reports in the UI (``ui.py``)."""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin


class TcSentinelPlugin(AirflowPlugin):
    """Run reports in the Airflow UI: the reports app (``fastapi_apps``) and its navigation entry."""

    name = "tc_sentinel"

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Built on demand: only the API server asks, and tasks importing tc_sentinel need no FastAPI app.
        from tc_sentinel.ui import app_spec

        return [app_spec()]

    @property
    def external_views(self) -> list[dict[str, Any]]:  # type: ignore[override]
        from tc_sentinel.ui import EXTERNAL_VIEW

        return [dict(EXTERNAL_VIEW)]
