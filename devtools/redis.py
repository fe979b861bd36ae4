"""A private, throwaway redis-server (Debian package, temp dir, free loopback port, password) for tests and demos."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.postgres import free_port

log = logging.getLogger(__name__)


class RedisError(RuntimeError):
    """redis-server could not be installed or started."""


def ensure_installed(timeout: float = 900) -> Path:
    """Return the path of ``redis-server``, installing Debian's ``redis-server`` package first when it is missing.

    Raises:
        RedisError: when it is missing and cannot be installed (needs root and apt-get).
    """
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found:
        return Path(found)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RedisError(
            "redis-server was not found and cannot be installed automatically (needs root and "
            "apt-get); install it with: sudo apt-get install -y redis-server"
        )
    log.info("redis-server is missing: apt-get install -y redis-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "redis-server"]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RedisError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    found = shutil.which("redis-server")
    if not found:
        raise RedisError("apt-get installed redis-server but it is not on PATH")
    return Path(found)


@dataclass
class RedisServer:
    """One private redis-server on 127.0.0.1: ``start()`` runs it, ``stop()`` kills it and deletes its directory.

    It requires a password (as a shared deployment should) and keeps nothing on disk.
    """

    password: str = field(default_factory=lambda: secrets.token_hex(16))
    port: int | None = None
    root: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _owns_root: bool = field(default=False, init=False, repr=False)

    def url(self, db: int = 0) -> str:
        """``redis://:<password>@127.0.0.1:<port>/<db>`` (carries the password: never log it)."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30) -> RedisServer:
        """Start the server and wait until it answers PING; a second call does nothing."""
        if self.process is not None and self.process.poll() is None:
            return self
        binary = ensure_installed()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="tc-sentinel-redis-"))
            self._owns_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.port = self.port if attempt == 0 and self.port else free_port()
            conf = self.root / "redis.conf"
            # The password goes into a 0600 file, not the command line other users could read in ps.
            conf.write_text(
                "\n".join(
                    [
                        "bind 127.0.0.1",
                        f"port {self.port}",
                        f"dir {self.root}",
                        'save ""',
                        "appendonly no",
                        "daemonize no",
                        f"requirepass {self.password}",
                        "protected-mode yes",
                        f"logfile {self.root / 'server.log'}",
                        "",
                    ]
                )
            )
            conf.chmod(0o600)
            self.process = subprocess.Popen(
                [str(binary), str(conf)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready(timeout):
                log.info("redis-server running on 127.0.0.1:%s (pid %s)", self.port, self.process.pid)
                return self
            self._kill()
            log.warning("redis-server on port %s did not start (attempt %s)", self.port, attempt + 1)
        raise RedisError(f"redis-server did not start:\n{self.server_log()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                reply = b""
                while b"PONG" not in reply and len(reply) < 200:
                    chunk = s.recv(200)
                    if not chunk:
                        break
                    reply += chunk
                if b"+PONG" in reply:
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Kill the server and delete its directory; safe to call more than once."""
        self._kill()
        if self._owns_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        self.process = None

    def server_log(self) -> str:
        path = (self.root or Path("/nonexistent")) / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
