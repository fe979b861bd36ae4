"""A private, throwaway PostgreSQL cluster (Debian packages, temp dir, free port) for Airflow's metadata database."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Debian installs the server binaries per major version and puts only wrappers on PATH.
_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_SERVICE_USER = "postgres"


class PostgresError(RuntimeError):
    """PostgreSQL could not be installed, started or prepared."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb``/``pg_ctl``/``psql`` of the newest installed PostgreSQL, or None."""
    found = [Path(p) for p in glob.glob(_BIN_GLOB) if Path(p).parent.name.isdigit()]
    for bindir in sorted(found, key=lambda p: int(p.parent.name), reverse=True):
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres", "psql")):
            return bindir
    initdb = shutil.which("initdb")  # a non-Debian layout (Homebrew, a source build) has the tools on PATH
    if initdb and (Path(initdb).resolve().parent / "pg_ctl").exists():
        return Path(initdb).resolve().parent
    return None


def ensure_installed(timeout: float = 900) -> Path:
    """Return PostgreSQL's bin directory, installing Debian's ``postgresql`` package first when it is missing.

    CI is a fresh Debian 12 machine where the job runs as root; on a workstation without root this only explains
    what to install.

    Raises:
        PostgresError: when PostgreSQL is missing and cannot be installed.
    """
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostgresError(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found and cannot be installed automatically "
            "(needs root and apt-get); install them with: sudo apt-get install -y postgresql"
        )
    log.info("PostgreSQL is missing: apt-get install -y postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise PostgresError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    _stop_package_clusters()
    bindir = find_bindir()
    if bindir is None:
        raise PostgresError("apt-get installed postgresql but no initdb/pg_ctl was found under /usr/lib/postgresql")
    return bindir


def _stop_package_clusters() -> None:
    """Stop the ``main`` cluster Debian's package creates and starts on 5432: we only use private clusters."""
    if shutil.which("pg_lsclusters") is None:
        return
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].startswith("online"):
            subprocess.run(["pg_ctlcluster", fields[0], fields[1], "stop"], capture_output=True, check=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    """One private cluster: ``start()`` initialises and starts it, ``stop()`` stops it and deletes its files.

    The server only listens on 127.0.0.1 and a private socket directory. As root it runs as the ``postgres`` user
    (the server refuses to run as root); otherwise as the current user.
    """

    database: str = "airflow"
    user: str = "airflow"
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    root: Path | None = None
    port: int | None = None
    bindir: Path | None = None
    _owns_root: bool = field(default=False, init=False, repr=False)
    _running: bool = field(default=False, init=False, repr=False)

    @property
    def datadir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        assert self.root is not None
        return self.root / "sock"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow uses (``postgresql+psycopg2``, password auth over TCP on loopback)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self, timeout: float = 60) -> PostgresServer:
        """Initialise and start the cluster, create the database and its owner; a second call does nothing.

        Raises:
            PostgresError: with the server's log when a step fails.
        """
        if self._running:
            return self
        self.bindir = self.bindir or ensure_installed()
        if self.root is None:
            # Outside the repo: every parent directory must be traversable by the ``postgres`` user.
            self.root = Path(tempfile.mkdtemp(prefix="tc-sentinel-pg-"))
            self._owns_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        owner = _service_user()
        if owner is not None:
            for path in (self.root, self.sockdir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        pwfile = self.root / "superuser.pw"
        superuser_password = secrets.token_hex(16)
        pwfile.write_text(superuser_password + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        pwfile.chmod(0o600)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--pwfile",
                str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
                timeout=timeout,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        for attempt in range(3):
            self.port = self.port if attempt == 0 and self.port else free_port()
            # fsync off: the cluster dies with the test, durability buys nothing and costs seconds.
            options = (
                f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.root / "server.log"),
                "-w",
                "-t",
                str(int(timeout)),
                "-o",
                options,
                "start",
                timeout=timeout + 10,
                check=False,
            )
            if result.returncode == 0:
                break
            log.warning("pg_ctl start on port %s failed (attempt %s)", self.port, attempt + 1)
        else:
            raise PostgresError(f"pg_ctl start failed:\n{result.stdout}{result.stderr}\n{self.server_log()}")
        self._running = True
        self._psql(f"CREATE ROLE \"{self.user}\" LOGIN PASSWORD '{self.password}'")
        self._psql(f'CREATE DATABASE "{self.database}" OWNER "{self.user}"')
        log.info("PostgreSQL running on 127.0.0.1:%s (data in %s)", self.port, self.datadir)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the server (fast shutdown) and delete the cluster's files; safe to call more than once."""
        if self._running:
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
                timeout=timeout + 10,
                check=False,
            )
            if result.returncode != 0:
                # A stuck server still must not outlive the test: kill it by the pid its data dir records.
                _kill_postmaster(self.datadir)
            self._running = False
        if self._owns_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        path = (self.root or Path("/nonexistent")) / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _psql(self, sql: str) -> None:
        self._run(
            "psql",
            "-h",
            str(self.sockdir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
            timeout=30,
        )

    def _run(self, tool: str, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        owner = _service_user()
        cmd = [str(self.bindir / tool), *args]
        kwargs: dict = {}
        if owner is not None:
            kwargs = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "HOME": str(self.root),
        }
        try:
            result = subprocess.run(
                cmd, env=env, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{tool} timed out after {timeout}s\n{self.server_log()}") from exc
        if check and result.returncode != 0:
            shown = [a if "PASSWORD" not in a else "<sql with a password>" for a in args]
            raise PostgresError(
                f"{tool} {' '.join(shown)} exited {result.returncode}:\n{result.stderr[-3000:]}\n{self.server_log()}"
            )
        return result


def _service_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ``postgres`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVICE_USER)
    except KeyError as exc:
        raise PostgresError("running as root but there is no 'postgres' user (apt-get install postgresql)") from exc


def _kill_postmaster(datadir: Path) -> None:
    pidfile = datadir / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, 9)
        time.sleep(0.5)
