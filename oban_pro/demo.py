"""The demo workload: CPU-heavy pure-Python jobs (used by ``oban-pro demo`` and the benchmarks)."""

from __future__ import annotations

import hashlib
import os

from .job import Record
from .worker import worker


def burn(rounds: int) -> str:
    """Chained SHA-256 in a Python loop: CPU-bound, holds the GIL (threads could not help)."""
    digest = b"oban"
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
        digest = bytes(b ^ 0x5A for b in digest)  # a Python-level loop per round
    return digest.hex()[:16]


@worker(queue="demo", name="oban_pro.demo.CpuJob")
class CpuJob:
    """Burns CPU for ``args["rounds"]`` rounds and records which process ran it."""

    def process(self, job):  # type: ignore[no-untyped-def]
        return Record({"pid": os.getpid(), "digest": burn(int(job.args.get("rounds", 10_000)))})


@worker(queue="demo", name="oban_pro.demo.NoopJob")
class NoopJob:
    def process(self, job):  # type: ignore[no-untyped-def]
        return None
