"""Fixtures for the Celery cluster test: a private PostgreSQL (metadata database, result backend) and Redis."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from devtools.postgres import PostgresServer
from devtools.redis import RedisServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port, stopped and deleted after the module (even on failure)."""
    missing = [name for name in ("psycopg2", "asyncpg", "celery", "redis") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(f"missing from .venv: {missing} (see requirements-dev.lock)", pytrace=False)
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (Celery broker in db 0, request budgets in db 1), killed after the module."""
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.stop()
