"""Support for the limits-across-nodes tests: a database sampler of executing jobs."""

from __future__ import annotations

import threading
from collections import Counter

import psycopg


class Sampler:
    """Counts the queue's executing jobs (per ``group`` expression) every few milliseconds."""

    def __init__(self, dsn: str, prefix: str, group: str = "''") -> None:
        self._sql = (
            f'SELECT {group}, count(*) FROM "{prefix}".oban_jobs '
            f"WHERE state = 'executing' AND queue = 'api' GROUP BY 1"
        )
        self._dsn = dsn
        self.peaks: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                for key, count in conn.execute(self._sql).fetchall():
                    self.peaks[key] = max(self.peaks[key], count)
                self.samples += 1
                self._stop.wait(0.003)

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)
