"""``python -m simulators``: serve the ThreatConnect and Microsoft simulators as a process until interrupted.

Prints the environment (``AIRFLOW_CONN_*``, ``REQUESTS_CA_BUNDLE``...) that points an Airflow at them, and writes it
to ``<workdir>/simulators.env`` for ``set -a; . build/simulators/simulators.env``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import signal
import threading
from pathlib import Path

from simulators.dataset import generate
from simulators.stack import OWNER, start_stack


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=4000, help="seeded indicators")
    parser.add_argument("--days", type=int, default=3, help="their changes spread over the last N days")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--api-version", choices=("v2", "v3"), default="v3")
    parser.add_argument("--workdir", type=Path, default=Path("build/simulators"))
    args = parser.parse_args(argv)

    end = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    indicators = generate(
        seed=args.seed, count=args.count, owner=OWNER, start=end - dt.timedelta(days=args.days), end=end
    )
    stack = start_stack(args.workdir.resolve(), indicators, api_version=args.api_version)
    env = stack.env()
    lines = [f"{key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    env_file = args.workdir / "simulators.env"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)  # it carries the simulators' (throwaway) secrets
    print(f"ThreatConnect: {stack.tc_server.base_url}/api   Microsoft: {stack.ms_server.base_url}")
    print(f"{len(indicators)} indicators; environment written to {env_file}; Ctrl-C to stop")
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    stack.stop()


if __name__ == "__main__":
    main()
