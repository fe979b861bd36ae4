"""``python -m bench [--smoke]``: run every benchmark, print the table, write ``build/bench/results.json``."""

from __future__ import annotations

from bench.runner import main

raise SystemExit(main())
