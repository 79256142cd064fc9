"""Load benchmarks for oban_pro: ``python -m bench <scenario>`` or ``oban-pro bench <scenario>``.

Scenarios (quality.md, "Benchmarks"): throughput, cpu, latency, rescue, insert, peer. Each prints
a table (median and min-max of ``--repeat`` runs) and writes JSON (and a PNG with ``--plot``) to
``bench/results/``. See ``bench/README.md`` for the committed results and the exact commands.

The package lives beside ``oban_pro`` in a source checkout (it is not part of the wheel). Worker
processes import :mod:`bench.workers`, so the repository root must be importable by children:
:func:`ensure_importable` puts it on ``sys.path`` and ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def ensure_importable() -> None:
    """Make ``bench`` importable here and in every child process (forkserver, spawn, nodes)."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


ensure_importable()
