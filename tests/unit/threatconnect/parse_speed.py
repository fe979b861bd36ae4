"""Local timing check (not a test): parse_page must sustain >= 150,000 indicators/s on one core.

Run: ``.venv/bin/python tests/unit/threatconnect/parse_speed.py`` from the repository root.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from include.threatconnect.parse import parse_page

V3 = [
    {
        "id": i,
        "ownerName": "Example Organization",
        "type": "Host",
        "dateAdded": "2019-03-28T10:32:05Z",
        "lastModified": "2019-03-28T11:02:46Z",
        "rating": 3.0,
        "confidence": 50,
        "threatAssessScore": 300,
        "webLink": "https://app/#/details/indicators/1/overview",
        "summary": f"a{i}.example.com",
        "hostName": f"a{i}.example.com",
        "active": True,
        "falsePositives": 0,
        "tags": {"data": [{"id": 1, "name": "APT"}, {"id": 2, "name": "Phish"}]},
        "securityLabels": {"data": [{"name": "TLP:AMBER"}]},
    }
    for i in range(10_000)
]
V2_FILES = [
    {
        "id": i,
        "ownerName": "O",
        "dateAdded": "2019-03-28T10:32:05-04:00",
        "lastModified": "2019-03-28T11:02:46Z",
        "md5": "a" * 32,
        "sha256": "b" * 64,
        "tag": [{"name": "x"}],
        "securityLabel": [{"name": "TLP:RED"}],
        "falsePositiveCount": 2,
        "active": True,
    }
    for i in range(10_000)
]

if __name__ == "__main__":
    for name, items, kind in (("v3 Host", V3, None), ("v2 File", V2_FILES, "File")):
        parse_page(items, kind)
        best = float("inf")
        for _ in range(10):
            started = time.perf_counter()
            parse_page(items, kind)
            best = min(best, time.perf_counter() - started)
        rate = len(items) / best
        print(f"{name}: {rate:,.0f} indicators/s (best of 10 pages of 10,000)", "OK" if rate >= 150_000 else "SLOW")
