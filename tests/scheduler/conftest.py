"""Fixtures for tests that run a real scheduler: a private PostgreSQL cluster for Airflow's metadata database."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from devtools.postgres import PostgresServer

# Airflow talks to PostgreSQL through psycopg2 and, for its async engine (postgresql+asyncpg, derived from the
# sync URL), through asyncpg: both must be in the dev lock.
DRIVERS = ("psycopg2", "asyncpg")


@pytest.fixture(scope="session")
def pg_drivers() -> None:
    """Fail with the fix, not with a ModuleNotFoundError deep in an Airflow subprocess."""
    missing = [name for name in DRIVERS if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            f"PostgreSQL drivers missing from .venv: {missing}; add psycopg2-binary and asyncpg to "
            "requirements-dev.txt and run `make lock`",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def postgres(pg_drivers: None) -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port, stopped and deleted after the module (even on failure)."""
    del pg_drivers
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()
