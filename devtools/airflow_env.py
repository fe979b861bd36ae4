"""A throwaway Airflow home configured only by standard environment variables, and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# What the HITL REST endpoint does with an answer (airflow/api_fastapi/core_api/routes/public/hitl.py), for a home
# without an API server. Arguments: dag_id run_id task_id map_index option.
_ANSWER_HITL = """
import sys
from sqlalchemy import select
from sqlalchemy.orm import joinedload
from airflow.models.taskinstance import TaskInstance as TI
from airflow.models.trigger import handle_event_submit
from airflow.triggers.base import TriggerEvent
from airflow.utils import timezone
from airflow.utils.session import create_session

dag_id, run_id, task_id, map_index, option = sys.argv[1:]
with create_session() as session:
    ti = session.scalar(select(TI).where(TI.dag_id == dag_id, TI.run_id == run_id, TI.task_id == task_id,
                                         TI.map_index == int(map_index)).options(joinedload(TI.hitl_detail)))
    detail = ti.hitl_detail
    detail.responded_by = {"id": "tests", "name": "tests"}
    detail.responded_at = timezone.utcnow()
    detail.chosen_options = [option]
    detail.params_input = {}
    session.add(detail)
    handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session)
"""


@dataclass
class AirflowEnv:
    """An ``AIRFLOW_HOME`` under ``home`` whose DAGs and plugins are this repository's."""

    home: Path
    extra: dict[str, str] = field(default_factory=dict)
    sql_alchemy_conn: str | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__"))}
        bin_dir = str(Path(sys.executable).parent)
        env.update(
            {
                "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.sql_alchemy_conn or f"sqlite:///{self.home}/airflow.db",
                "PYTHONPATH": str(REPO_ROOT),
                "TC_SENTINEL_LIMITER_DIR": str(self.home / "limiters"),
                # failures in a throwaway home should retry quickly, not wait minutes
                "TC_SENTINEL_RETRY_DELAY_SECONDS": "1",
            }
        )
        env.pop("MSAL_FORCE_REGION", None)
        env.update(self.extra)
        return env

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` in this home; output is captured."""
        self.home.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=self.env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} exited {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
                f"\n--- stderr ---\n{result.stderr[-6000:]}"
            )
        return result

    def migrate(self) -> None:
        if not (self.home / "airflow.db").exists() or self.sql_alchemy_conn:
            self.run("db", "migrate")

    def dags_test(
        self, dag_id: str, logical_date: str, conf: dict | None = None, check: bool = False, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        args = ["dags", "test", dag_id, logical_date]
        if conf:
            args += ["-c", json.dumps(conf)]
        return self.run(*args, check=check, timeout=timeout)

    def dags_test_in_background(
        self, dag_id: str, logical_date: str, output: Path, conf: dict | None = None
    ) -> subprocess.Popen[bytes]:
        """``airflow dags test`` that the caller waits for (a run that pauses for a person's answer); its output
        goes to the file ``output`` (a pipe nobody reads while the run waits would fill up and stall the run)."""
        self.home.mkdir(parents=True, exist_ok=True)
        args = ["dags", "test", dag_id, logical_date, *(["-c", json.dumps(conf)] if conf else [])]
        with output.open("wb") as sink:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "airflow"), *args],
                env=self.env(),
                cwd=REPO_ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def answer_hitl(self, dag_id: str, run_id: str, task_id: str, option: str, map_index: int = -1) -> None:
        """Record a person's answer to a waiting human-in-the-loop task in this home's metadata database, as the
        REST API's ``PATCH .../taskInstances/{task}/{map_index}/hitlDetails`` does (``airflow dags test`` has no
        API server; the scheduler tests go through the real endpoint)."""
        result = subprocess.run(
            [sys.executable, "-c", _ANSWER_HITL, dag_id, run_id, task_id, str(map_index), option],
            env=self.env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"answering {task_id} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    def log_text(self) -> str:
        """Every task log file under this home, concatenated (for secret-leak checks)."""
        logs = self.home / "logs"
        if not logs.exists():
            return ""
        return "\n".join(p.read_text(errors="replace") for p in sorted(logs.rglob("*")) if p.is_file())
