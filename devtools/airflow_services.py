"""Run Airflow's api-server, scheduler and dag-processor in the background for an AirflowEnv, and drive them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from devtools.airflow_env import REPO_ROOT, AirflowEnv
from devtools.postgres import free_port

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor")
POOL = "tc_sentinel_load"
# One slot unless the request budget is shared across hosts (Redis): see the README's deployment section.
POOL_SLOTS = int(os.environ.get("TC_SENTINEL_LOAD_POOL_SLOTS", "1"))
POOL_DESCRIPTION = "tc-sentinel loads (TC_SENTINEL_LOAD_POOL_SLOTS at a time, within the targets' budgets)"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_ADMIN = "admin"


class ServiceError(RuntimeError):
    """An Airflow component did not start, did not become healthy, or a run did not finish in time."""


def create_pool(airflow: AirflowEnv, slots: int = POOL_SLOTS, description: str = POOL_DESCRIPTION) -> None:
    """Create (or resize) the pool the DAG's load tasks run in; tasks in a missing pool are never scheduled.

    The same command belongs in the demo and in docker-compose's ``airflow-init``:
    ``airflow pools set tc_sentinel_load <slots> "<description>"``.
    """
    airflow.run("pools", "set", POOL, str(slots), description)


def configure(airflow: AirflowEnv, api_port: int | None = None, parallelism: int = 4) -> int:
    """Point ``airflow`` (its ``extra`` environment, updated in place) at a local api-server; return its port.

    Everything is set through ``AIRFLOW__*`` variables so the CLI calls made with the same AirflowEnv (pools,
    backfill, unpause) see the same configuration as the background components.
    """
    port = api_port or free_port()
    airflow.home.mkdir(parents=True, exist_ok=True)
    passwords = airflow.home / "simple_auth_manager_passwords.json"
    if not passwords.exists():
        passwords.write_text(json.dumps({_ADMIN: secrets.token_urlsafe(18)}))
        passwords.chmod(0o600)
    base_url = f"http://127.0.0.1:{port}"
    airflow.extra.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__API__WORKERS": "1",
            # One secret for every component: the scheduler signs task tokens that the api-server must accept.
            "AIRFLOW__API_AUTH__JWT_SECRET": airflow.extra.get("AIRFLOW__API_AUTH__JWT_SECRET")
            or secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{_ADMIN}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            # The log server's default 8793 would clash with any other Airflow on this machine.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # New DAG runs are picked up quickly; the defaults are tuned for big deployments, not a 2-core test box.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        }
    )
    return port


@dataclass
class AirflowServices:
    """Background Airflow components of one AirflowEnv; ``stop()`` leaves no process behind."""

    airflow: AirflowEnv
    port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sessions: set[int] = field(default_factory=set)  # session ids (= leader pids) of every component ever started
    # Per component: the ``airflow`` arguments (default: the name split on spaces) and environment overrides, e.g.
    # two ``celery worker`` processes with their own hostnames and directories, as two hosts would have.
    commands: dict[str, list[str]] = field(default_factory=dict)
    component_env: dict[str, dict[str, str]] = field(default_factory=dict)
    _token: str | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.airflow.home / "services"

    def start(self, components: Iterable[str] = COMPONENTS, timeout: float = 180) -> AirflowServices:
        """Start each component in its own process group and wait until the API reports them healthy."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.airflow.env()
        airflow_bin = str(Path(sys.executable).parent / "airflow")
        for name in components:
            if name in self.processes:
                continue
            args = [airflow_bin, *self.commands.get(name, name.split())]
            if name == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.port)]
            with open(self.log_dir / f"{name}.log", "ab") as out:
                # start_new_session: the component and every worker it forks share a process group we can kill.
                self.processes[name] = subprocess.Popen(
                    args,
                    env={**env, **self.component_env.get(name, {})},
                    cwd=REPO_ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.sessions.add(self.processes[name].pid)
            log.info("started airflow %s (pid %s)", name, self.processes[name].pid)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 180) -> dict[str, Any]:
        """Wait until ``/api/v2/monitor/health`` says every started component is healthy."""
        wanted = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                response = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
                last = response.json() if response.ok else response.status_code
                if response.ok and all(
                    (last.get(key) or {}).get("status") == "healthy"
                    for name, key in wanted.items()
                    if name in self.processes
                ):
                    return last
            except (requests.ConnectionError, requests.Timeout, ValueError) as exc:
                last = exc
            time.sleep(1)
        raise ServiceError(f"Airflow did not become healthy within {timeout}s (last: {last})\n{self.logs_tail()}")

    def stop(self, timeout: float = 30) -> list[int]:
        """SIGTERM each component, SIGKILL its whole process group after ``timeout``; return pids left (none).

        The scheduler goes first so it stops handing out work, the api-server last so running tasks can still
        report their state while they wind down.
        """
        order = sorted(self.processes, key=lambda n: {"scheduler": 0, "dag-processor": 1}.get(n, 2))
        for name in order:
            _terminate_group(self.processes[name], timeout)
        self.processes.clear()
        leftovers = self.running_processes()
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        return [p.pid for p in leftovers if p.is_running()]

    def kill(self, name: str) -> list[int]:
        """SIGKILL one component and everything it started, at once (a host that dies); return the pids killed."""
        proc = self.processes.pop(name)
        members = _session_members(proc.pid)
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.kill()
        psutil.wait_procs(members, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return [m.pid for m in members]

    def running_processes(self) -> list[psutil.Process]:
        """Every live process these services started, however deep: there should be none after ``stop()``."""
        return leftover_processes(self.airflow.home, self.sessions)

    def __enter__(self) -> AirflowServices:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs_tail(self, chars: int = 4000) -> str:
        parts = []
        for path in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise ServiceError(f"airflow {name} exited with {proc.returncode}\n{self.logs_tail()}")

    # --- REST API -------------------------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            password = json.loads(
                Path(self.airflow.extra["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text()
            )[_ADMIN]
            response = requests.post(
                f"{self.base_url}/auth/token", json={"username": _ADMIN, "password": password}, timeout=30
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the public REST API (``/api/v2`` + ``path``) with a token; return the decoded JSON."""
        response = requests.request(
            method,
            f"{self.base_url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
            **kwargs,
        )
        if not response.ok:
            raise ServiceError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    def dag_runs(self, dag_id: str, run_type: str | None = None) -> list[dict[str, Any]]:
        """Every run of ``dag_id`` (optionally of one run type), oldest logical date first."""
        params: dict[str, Any] = {"limit": 100, "order_by": "logical_date"}
        if run_type:
            params["run_type"] = run_type
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params=params)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500})[
            "task_instances"
        ]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
        """One XCom value (deserialized), or None when the task pushed nothing under ``key``."""
        try:
            entry = self.api(
                "GET",
                f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
                params={"deserialize": "true", "stringify": "false"},
            )
        except ServiceError as exc:
            if " -> 404:" in str(exc):
                return None
            raise
        return entry["value"]

    def wait_for_runs(
        self,
        dag_id: str,
        expected: int,
        run_type: str | None = None,
        timeout: float = 600,
        progress: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until at least ``expected`` runs exist and all of them are finished (success or failed)."""
        deadline = time.monotonic() + timeout
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self._check_alive()
            runs = self.dag_runs(dag_id, run_type)
            if progress:
                progress(runs)
            if len(runs) >= expected and all(r["state"] in TERMINAL_RUN_STATES for r in runs):
                return runs
            time.sleep(2)
        states = [(r["run_id"], r["state"]) for r in runs]
        raise ServiceError(f"{dag_id}: runs not finished within {timeout}s: {states}\n{self.logs_tail()}")

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed and serialized ``dag_id``; fail fast on import errors."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            errors = self.api("GET", "/importErrors")["import_errors"]
            if errors:
                raise ServiceError(f"the DAG folder has import errors: {errors}")
            try:
                self.api("GET", f"/dags/{dag_id}")
                return
            except ServiceError:
                time.sleep(2)
        raise ServiceError(f"{dag_id} was not parsed within {timeout}s\n{self.logs_tail()}")

    def unpause(self, dag_id: str) -> None:
        """Unpause (through the API: the CLI costs seconds); with catchup the scheduler starts creating runs."""
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, logical_date: dt.datetime, conf: dict[str, Any] | None = None) -> str:
        """Trigger a manual run for ``logical_date``; return its run id."""
        body: dict[str, Any] = {"logical_date": logical_date.astimezone(dt.UTC).isoformat(), "conf": conf or {}}
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    # --- CLI ------------------------------------------------------------------------------------------------

    def backfill(
        self,
        dag_id: str,
        from_date: dt.date | dt.datetime,
        to_date: dt.date | dt.datetime,
        max_active_runs: int = 1,
        reprocess_behavior: str = "none",
    ) -> None:
        """``airflow backfill create``: queue one backfill run per interval whose logical date is in the range."""
        self.airflow.run(
            "backfill",
            "create",
            "--dag-id",
            dag_id,
            "--from-date",
            from_date.isoformat(),
            "--to-date",
            to_date.isoformat(),
            "--max-active-runs",
            str(max_active_runs),
            "--reprocess-behavior",
            reprocess_behavior,
        )


def start_services(
    airflow: AirflowEnv,
    api_port: int | None = None,
    parallelism: int = 4,
    components: Iterable[str] = COMPONENTS,
    timeout: float = 180,
) -> AirflowServices:
    """Configure ``airflow`` for LocalExecutor behind a local api-server, start the components, wait for health.

    The metadata database (``airflow.sql_alchemy_conn``) must already be migrated (``airflow.migrate()``).
    """
    port = configure(airflow, api_port, parallelism)
    services = AirflowServices(airflow, port)
    try:
        return services.start(components, timeout)
    except BaseException:
        services.stop()
        raise


def leftover_processes(home: Path, sessions: Iterable[int] = ()) -> list[psutil.Process]:
    """Live processes in one of ``sessions`` or running with ``AIRFLOW_HOME=home``.

    The session is what a component's descendants reliably share: task processes get process groups of their own,
    and ``setproctitle`` (scheduler, executor workers) can overwrite the memory ``/proc/<pid>/environ`` reads.
    """
    sessions = set(sessions)
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(proc.pid) in sessions or proc.environ().get("AIRFLOW_HOME") == str(home):
                found.append(proc)
    return found


def _terminate_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the leader (a clean component shutdown), then SIGKILL whatever is left of its session.

    The leader was started with ``start_new_session``, so its pid is the session id of everything it forks.
    LocalExecutor workers ignore SIGTERM and outlive a killed parent, and the task supervisor moves each task into a
    process group of its own: killing the leader's process group alone would miss those.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %s ignored SIGTERM for %ss; killing its session", proc.pid, timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    members = _session_members(proc.pid)
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(members, timeout=10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _session_members(sid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid:
                members.append(proc)
    return members
