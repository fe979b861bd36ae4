"""No secret the simulators handed out leaks into what the DAG leaves behind: output, logs, snapshots, XCom."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from simulators.stack import TC_ACCESS_ID
from tests.dags.dagrun import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.dag]

# The start of ThreatConnect's signed header: "TC <access id>:<base64 HMAC signature>".
TC_AUTHORIZATION = f"TC {TC_ACCESS_ID}:"
SCENARIOS = ("graph", "graph_chaos", "graph_permanent_failure", "sentinel", "sentinel_chaos")


@pytest.fixture(params=SCENARIOS)
def pipeline(request: pytest.FixtureRequest, scenarios) -> Pipeline:
    """A scenario's pipeline once all of its runs have happened."""
    return scenarios.get(request.param).pipeline


def _secrets(pipeline: Pipeline) -> list[str]:
    secrets = pipeline.stack.secrets
    # Guard: without an issued token the scans below would check only the two static secrets.
    assert len(secrets) > 2, "no token was issued: the pipeline never authenticated to Microsoft"
    return secrets


def _leaks(text: str, secrets: list[str]) -> list[str]:
    # Report a prefix only: the failure message must not become the leak.
    return [s[:4] + "..." for s in secrets if s in text]


def _logged(pipeline: Pipeline) -> str:
    """Everything the runs logged: ``dags test`` runs tasks in-process, so their logs are in its output; task log
    files, when Airflow writes any, are included too."""
    return "\n".join(run.output for run in pipeline.runs) + pipeline.airflow.log_text()


def test_the_scanned_text_holds_every_runs_task_logs(pipeline) -> None:
    # Guard: a scan of text without the task logs would prove nothing.
    assert all("extracted" in run.output and "load summary" in run.output for run in pipeline.runs)


def test_no_secret_appears_in_anything_the_runs_logged(pipeline) -> None:
    assert _leaks(_logged(pipeline), _secrets(pipeline)) == []


def test_the_threatconnect_authorization_header_never_appears_in_anything_the_runs_logged(pipeline) -> None:
    assert TC_AUTHORIZATION not in _logged(pipeline)


def test_no_secret_appears_in_any_byte_of_any_parquet_file(pipeline) -> None:
    files = sorted(pipeline.data_root.rglob("*.parquet"))
    assert files, "the runs wrote no snapshot"
    blob = b"".join(f.read_bytes() for f in files).decode("latin-1")
    assert _leaks(blob, _secrets(pipeline)) == []


def test_no_secret_appears_in_any_decoded_parquet_value(pipeline) -> None:
    # Snapshots are zstd-compressed: the raw bytes alone would hide a secret sitting in a column value.
    text = "\n".join(
        json.dumps(pq.read_table(f).to_pylist(), default=str) for f in sorted(pipeline.data_root.rglob("*.parquet"))
    )
    assert _leaks(text, _secrets(pipeline)) == []


def test_no_secret_appears_in_any_xcom_value(pipeline) -> None:
    captured = [json.dumps(v, default=str) for run in pipeline.runs for v in run.xcoms.values()]
    assert _leaks("\n".join(pipeline.xcom_texts() + captured), _secrets(pipeline)) == []
