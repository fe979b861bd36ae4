"""Shared benchmark plumbing: the machine description, figures with targets, and measured worker subprocesses."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent


def environment() -> dict[str, Any]:
    """What every figure is relative to: cores, versions, and how busy the machine was when it was taken."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
    }


def load_average() -> float:
    """The 1-minute load average: on a shared 2-core machine a figure taken at load 3 is not one taken at 0."""
    return round(os.getloadavg()[0], 2)


@dataclass
class Figure:
    """One measured number, its target and whether it met it (None: reported, no target)."""

    benchmark: str
    figure: str
    value: float | int | str | None
    unit: str
    target: str = ""
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, env: dict[str, Any]) -> dict[str, Any]:
        data = asdict(self)
        data.update(cores=env["cores"], python=env["python"], pyarrow=env["pyarrow"], pandas=env["pandas"])
        return data


class WorkerFailed(RuntimeError):
    """A benchmark subprocess exited non-zero or wrote no result."""


@dataclass
class Worker:
    """A started ``python -m bench.worker`` subprocess; ``wait`` reaps it with its own resource usage."""

    task: str
    process: subprocess.Popen[bytes]
    out_path: Path
    log_path: Path
    started: float
    timer: threading.Timer

    def wait(self) -> dict[str, Any]:
        """Wait for the worker; its result dict plus ``peak_rss_mb`` (this process alone) and ``wall_seconds``.

        ``os.wait4`` returns the rusage of exactly this child, so one measurement never sees another's peak
        (``RUSAGE_CHILDREN`` would report the largest child so far).
        """
        _, status, usage = os.wait4(self.process.pid, 0)
        self.timer.cancel()
        self.process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - self.started
        if self.process.returncode != 0 or not self.out_path.exists():
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise WorkerFailed(f"bench worker {self.task} exited {self.process.returncode}:\n{tail}")
        result = json.loads(self.out_path.read_text())
        result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux reports kilobytes
        result["wall_seconds"] = round(wall, 3)
        return result


def start_worker(task: str, args: dict[str, Any], workdir: Path, timeout: float = 900) -> Worker:
    """Start one measurement in a fresh interpreter (arguments go through a 0600 file: they may hold a secret).

    Args:
        task: a name from ``bench.worker.TASKS``.
        args: JSON-serialisable arguments of the task.
        workdir: where the argument, result and log files go.
        timeout: seconds after which the worker is killed (its ``wait`` then raises).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"{task}-{time.monotonic_ns()}"
    args_path = workdir / f"{stem}.args.json"
    out_path = workdir / f"{stem}.out.json"
    log_path = workdir / f"{stem}.log"
    fd = os.open(args_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(args, handle)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", task, str(args_path), str(out_path)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    timer = threading.Timer(timeout, process.kill)
    timer.daemon = True
    timer.start()
    return Worker(task, process, out_path, log_path, time.perf_counter(), timer)


def run_worker(task: str, args: dict[str, Any], workdir: Path, timeout: float = 900) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter and return its result (see ``Worker.wait``)."""
    return start_worker(task, args, workdir, timeout).wait()


def self_peak_rss_mb() -> float:
    """This process's peak RSS so far, in MiB (a worker samples it after each phase)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
