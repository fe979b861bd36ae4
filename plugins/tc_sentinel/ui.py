"""The run reports inside the Airflow UI: a FastAPI app the API server mounts at ``/tc-sentinel``.

It lists the reports under ``<data_root>/reports`` and serves each page. Every route needs the same login as the
UI: the API server's own ``requires_access_dag`` dependency (the JWT from the UI's ``_token`` cookie or a bearer
header, checked by the configured auth manager) with read access to the DAG's runs. It reads only the data root.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote, unquote

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse

URL_PREFIX = "/tc-sentinel"
DAG_ID = "threatconnect_to_sentinel"
REPORTS = "reports"


def _requires_login() -> Any:
    # Imported here: only the API server has (and needs) its security module and auth manager.
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))


def data_root() -> str:
    """The data root the DAG writes to: the Variable ``tc_sentinel_data_root``, else the pipeline's default."""
    from airflow.models.variable import Variable

    from include.pipeline.config import DEFAULT_DATA_ROOT

    return str(Variable.get("tc_sentinel_data_root", default_var=None) or DEFAULT_DATA_ROOT)


def _reports() -> tuple[Any, str]:
    import fsspec

    fs, base = fsspec.core.url_to_fs(data_root().rstrip("/"))
    return fs, f"{base}/{REPORTS}"


def list_reports() -> list[tuple[str, str]]:
    """(run id, file name) of every report, newest file first (``latest.html`` left out)."""
    fs, directory = _reports()
    if not fs.exists(directory):
        return []
    entries = [e for e in fs.ls(directory, detail=True) if e["name"].endswith(".html")]
    entries.sort(key=lambda e: (e.get("mtime") or e.get("LastModified") or 0, e["name"]), reverse=True)
    names = [e["name"].rsplit("/", 1)[-1] for e in entries]
    return [(unquote(n.removesuffix(".html")), n) for n in names if n != "latest.html"]


def _page(name: str) -> str:
    fs, directory = _reports()
    # Only names this app listed: no path can leave the reports directory.
    if name != "latest.html" and name not in {n for _, n in list_reports()}:
        raise HTTPException(status_code=404, detail="no such report")
    path = f"{directory}/{name}"
    if not fs.exists(path):
        raise HTTPException(status_code=404, detail="no such report")
    with fs.open(path, "r", encoding="utf-8") as handle:
        return handle.read()


def create_app() -> FastAPI:
    """The reports app; every route requires a logged-in user who may read the DAG's runs."""
    app = FastAPI(
        title="tc-sentinel run reports",
        dependencies=[_requires_login()],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        rows = "".join(
            f'<li><a href="{URL_PREFIX}/reports/{quote(n)}">{html.escape(run_id)}</a></li>'
            for run_id, n in list_reports()
        )
        return (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>tc-sentinel run reports</title>"
            "</head><body style='font-family:system-ui,sans-serif'><h1>tc-sentinel run reports</h1>"
            f'<p><a href="{URL_PREFIX}/reports/latest.html">latest</a></p><ul id="runs">{rows}</ul>'
            "</body></html>"
        )

    @app.get("/reports/{name}", response_class=HTMLResponse)
    def report(name: str) -> str:
        return _page(name)

    return app


def app_spec() -> dict[str, Any]:
    """The ``fastapi_apps`` entry of the plugin."""
    return {"app": create_app(), "url_prefix": URL_PREFIX, "name": "tc-sentinel run reports"}


EXTERNAL_VIEW = {
    "name": "Run reports",
    "href": f"{URL_PREFIX}/",
    "destination": "nav",
    "category": "browse",
    "url_route": "tc-sentinel-reports",
}
