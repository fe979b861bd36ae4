"""The harness stops what it starts: PostgreSQL clusters and whole process groups, stubborn children included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from devtools.airflow_services import _terminate_group
from devtools.postgres import PostgresServer

pytestmark = pytest.mark.scheduler


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.usefixtures("pg_drivers")
def test_a_private_postgres_serves_its_database_and_leaves_nothing_behind() -> None:
    server = PostgresServer()
    server.start()
    try:
        assert server.start() is server  # a second start is a no-op
        engine = sa.create_engine(server.url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("select current_user, current_database()")).one() == ("airflow", "airflow")
        engine.dispose()
        pid = int((server.datadir / "postmaster.pid").read_text().split()[0])
    finally:
        server.stop()
    server.stop()  # and so is a second stop
    assert not _port_open(server.port)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not server.root.exists()


def test_stopping_a_component_also_kills_children_that_ignore_sigterm_in_their_own_group(tmp_path: Path) -> None:
    # Like a scheduler's LocalExecutor workers, the child ignores SIGTERM and outlives its parent; like a task
    # under the Task SDK supervisor, it sits in a process group of its own, out of reach of the leader's killpg.
    child_pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import os, signal, time; os.setpgid(0, 0); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "time.sleep(600)"])
        open({str(child_pid_file)!r}, "w").write(str(child.pid))
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 30
    while not child_pid_file.exists() or not child_pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = psutil.Process(int(child_pid_file.read_text()))
    while os.getpgid(child.pid) != child.pid:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert os.getsid(child.pid) == proc.pid
    _terminate_group(proc, timeout=5)
    assert proc.poll() is not None
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
