"""At ``LOGGING_LEVEL=DEBUG`` no secret and no issued token reaches the run's output or a log file, for either target.

Airflow 3.3's in-process task runner (what ``airflow dags test`` uses) logs every request a task sends to its
supervisor at DEBUG, the MaskSecret request for a Connection's password included: without the plugin's redaction
these runs print both the ThreatConnect secret key and the Microsoft client secret.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.dags.dagrun import FIRST_DATE, Pipeline, migrated_database

pytestmark = [pytest.mark.integration, pytest.mark.dag]

SINKS = ("graph", "sentinel")
# One indicator type is enough: every task that reads a Connection or a token runs once per type.
TYPES = ("Host",)
DEBUG = {"AIRFLOW__LOGGING__LOGGING_LEVEL": "DEBUG"}
# Logged only at DEBUG, by Airflow itself (``BaseHook.get_connection``), once per Connection read.
DEBUG_ONLY_LINE = "Connection Retrieved 'threatconnect_default'"
# The upstream DEBUG line that leaked (``InProcessSupervisorComms.send``).
UPSTREAM_LINE = "Sending request"


@pytest.fixture(scope="module")
def debug_runs(
    tmp_path_factory: pytest.TempPathFactory, seeded_records: list[dict[str, Any]]
) -> Iterator[dict[str, Pipeline]]:
    """One DEBUG ``dags test`` per target, both at once (each is a subprocess)."""
    database = migrated_database(tmp_path_factory.mktemp("airflow-template-debug"))
    pipelines: dict[str, Pipeline] = {}

    def run(sink: str) -> None:
        pipeline = Pipeline.start(
            tmp_path_factory.mktemp(f"debug-{sink}"), sink, seeded_records, database, types=TYPES, env=DEBUG
        )
        pipelines[sink] = pipeline
        pipeline.run(FIRST_DATE)

    try:
        with ThreadPoolExecutor(max_workers=len(SINKS)) as pool:
            list(pool.map(run, SINKS))
        yield pipelines
    finally:
        for pipeline in pipelines.values():
            pipeline.stop()


@pytest.fixture(params=SINKS)
def pipeline(request: pytest.FixtureRequest, debug_runs: dict[str, Pipeline]) -> Pipeline:
    return debug_runs[request.param]


def _logged(pipeline: Pipeline) -> str:
    return "\n".join(run.output for run in pipeline.runs) + pipeline.airflow.log_text()


def _leaks(text: str, secrets: list[str]) -> list[str]:
    # Report a prefix only: the failure message must not become the leak.
    return [s[:4] + "..." for s in secrets if s in text]


def test_the_run_succeeded_and_logged_at_debug_level(pipeline: Pipeline) -> None:
    # Guard: at INFO there is nothing to leak, so a run that ignored the level would pass the scan vacuously.
    (run,) = pipeline.runs
    assert run.succeeded, run.explain()
    assert DEBUG_ONLY_LINE in run.output
    assert "load summary" in run.output  # the task logs are in the scanned text


def test_the_connection_secrets_mask_requests_are_still_logged_but_blanked(pipeline: Pipeline) -> None:
    # Guard: the upstream line that leaked is present, so its absence cannot be why the scan below passes.
    requests = [line for line in _logged(pipeline).splitlines() if UPSTREAM_LINE in line and "MaskSecret(" in line]
    assert any("MaskSecret(value='***', name=None" in line for line in requests), requests[:5]


def test_no_secret_or_issued_token_appears_in_the_output_or_any_log_file(pipeline: Pipeline) -> None:
    secrets = pipeline.stack.secrets
    assert len(secrets) > 2, "no token was issued: the run never authenticated to Microsoft"
    assert _leaks(_logged(pipeline), secrets) == []
