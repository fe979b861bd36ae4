"""A CeleryExecutor deployment on one machine that looks like several hosts: Redis broker, PostgreSQL, two workers.

Each worker gets what a host of its own would have: a hostname (what its task instances record), an Airflow home,
a log folder, a log-server port, a temporary directory and a limiter directory. Only the data root (shared storage
in a real deployment), the metadata database and Redis are shared.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from devtools.airflow_env import AirflowEnv
from devtools.airflow_services import AirflowServices, ServiceError, configure
from devtools.postgres import PostgresServer, free_port
from devtools.redis import RedisServer

HOSTNAME_VARIABLE = "TC_SENTINEL_HOSTNAME"
CORE_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def hostname() -> str:
    """``[core] hostname_callable`` for the workers: the host name the test gave them, else the machine's."""
    return os.environ.get(HOSTNAME_VARIABLE) or socket.getfqdn()


@dataclass
class Host:
    """One simulated worker host."""

    name: str
    root: Path

    @property
    def component(self) -> str:
        return f"celery worker {self.name}"


def configure_celery(
    airflow: AirflowEnv,
    postgres: PostgresServer,
    redis: RedisServer,
    root: Path,
    workers: Sequence[str] = ("worker-a", "worker-b"),
    concurrency: int = 3,
    parallelism: int = 8,
    heartbeat_timeout: int = 20,
) -> tuple[AirflowServices, list[Host]]:
    """Configure ``airflow`` for CeleryExecutor (Redis db 0 as broker, PostgreSQL as result backend) and return the
    services (not started) with one ``celery worker`` component per name.

    ``heartbeat_timeout``: how soon the scheduler gives up on a task whose worker died (Airflow's default is 300 s).
    """
    port = configure(airflow, parallelism=parallelism)
    result_backend = "db+" + postgres.url  # postgresql+psycopg2: a bare postgresql:// would want psycopg 3
    airflow.extra.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": redis.url(0),
            "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
            "AIRFLOW__TRIGGERER__CAPACITY": "10",
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),  # 8794 would clash with any other Airflow
        }
    )
    services = AirflowServices(airflow, port)
    hosts = []
    for name in workers:
        host = Host(name, root / name)
        home = host.root / "airflow-home"
        (host.root / "tmp").mkdir(parents=True, exist_ok=True)
        config = airflow.home / "config"
        if config.exists():  # cluster policy and local settings: every host has the same deployment
            shutil.copytree(config, home / "config", dirs_exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        services.commands[host.component] = [
            "celery",
            "worker",
            "--celery-hostname",
            f"{name}@%h",
            "--concurrency",
            str(concurrency),
            "--without-mingle",
            "--without-gossip",
        ]
        services.component_env[host.component] = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.hostname",
            HOSTNAME_VARIABLE: name,
            "TMPDIR": str(host.root / "tmp"),
            "TC_SENTINEL_LIMITER_DIR": str(host.root / "limiters"),
        }
        hosts.append(host)
    return services, hosts


def log_size(services: AirflowServices, host: Host) -> int:
    """How long the worker's log is now (a restarted worker appends to it: wait for the ready line after this)."""
    path = services.log_dir / f"{host.component}.log"
    return path.stat().st_size if path.exists() else 0


def wait_for_workers(
    services: AirflowServices, hosts: Sequence[Host], timeout: float = 180, since: dict[str, int] | None = None
) -> None:
    """Wait until each worker's log (after byte ``since[name]``) says Celery is ready to take tasks."""
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    since = since or {}
    while pending and time.monotonic() < deadline:
        for name, proc in services.processes.items():
            if proc.poll() is not None:
                raise ServiceError(f"airflow {name} exited with {proc.returncode}\n{services.logs_tail()}")
        pending = [h for h in pending if not _ready(services, h, since.get(h.name, 0))]
        if pending:
            time.sleep(1)
    if pending:
        raise ServiceError(
            f"celery workers not ready within {timeout}s: {[h.name for h in pending]}\n{services.logs_tail()}"
        )


def _ready(services: AirflowServices, host: Host, offset: int) -> bool:
    path = services.log_dir / f"{host.component}.log"
    if not path.exists():
        return False
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return f"{host.name}@" in text and " ready." in text
