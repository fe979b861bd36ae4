"""Vendor wheels the oracle tests read (never installed): pinned, fetched once into build/wheels, read from the zip."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

WHEELS = Path(__file__).resolve().parents[1] / "build" / "wheels"

#: The pinned vendor releases the oracles read. Bump deliberately: a new release may change what they say.
TCEX = ("tcex", "4.0.11")
MSGRAPH_BETA = ("msgraph-beta-sdk", "1.66.0")


def wheel(project: str, version: str) -> Path:
    """The wheel of ``project==version`` under build/wheels, downloaded with pip (no dependencies) when missing.

    A failed download fails the calling test with pip's message: an oracle that silently skips judges nothing.
    """
    stem = f"{project.replace('-', '_')}-{version}-"
    found = sorted(WHEELS.glob(f"{stem}*.whl"))
    if found:
        return found[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        f"{project}=={version}",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(WHEELS),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    found = sorted(WHEELS.glob(f"{stem}*.whl"))
    if done.returncode != 0 or not found:
        pytest.fail(
            f"could not download the vendor oracle {project}=={version} into {WHEELS} "
            f"(needs PyPI access once; later runs use the cached wheel):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}",
            pytrace=False,
        )
    return found[0]


def read_member(wheel_path: Path, member: str) -> str:
    """The text of one file inside a wheel."""
    with zipfile.ZipFile(wheel_path) as archive:
        try:
            return archive.read(member).decode("utf-8")
        except KeyError:
            pytest.fail(f"{wheel_path.name} has no {member}: the vendor moved it, update the oracle", pytrace=False)
