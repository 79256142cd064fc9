"""The threads of a worker process that run sync jobs.

Lighter than ``concurrent.futures.ThreadPoolExecutor`` on purpose: no Future per job and no
Condition round trips, because a no-op job's whole cost is this hand-off. Threads start only
when no started thread is free, up to ``limit``, and take jobs from one queue. They are daemon
threads: a process that must exit (its parent stopped it, or it is being killed) never waits
for a job stuck in a C call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["JobThreads"]


class JobThreads:
    def __init__(self, limit: int, name: str = "oban-job") -> None:
        self._limit = max(1, limit)
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._started = 0
        # Started threads not yet promised a job: a submit takes one, a finished job returns it.
        self._spare = 0
        # Jobs queued with no thread promised (every thread busy, at the limit).
        self._backlog = 0

    @property
    def started(self) -> int:
        return self._started

    @property
    def limit(self) -> int:
        return self._limit

    def resize(self, limit: int) -> None:
        """Allow ``limit`` threads; jobs waiting for one get new threads at once."""
        with self._lock:
            self._limit = max(1, limit)
            more = min(self._backlog, self._limit - self._started)
            if more > 0:
                self._backlog -= more
                self._started += more
        for _ in range(max(0, more)):
            self._start_thread()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on a free thread (a new one if none is free and under the limit;
        otherwise it waits for the first thread to finish)."""
        with self._lock:
            start = False
            if self._spare:
                self._spare -= 1
            elif self._started < self._limit:
                self._started += 1
                start = True
            else:
                self._backlog += 1
        self._queue.put((fn, args))
        if start:
            self._start_thread()

    def shutdown(self) -> None:
        """Let idle threads end (running jobs are not waited for)."""
        for _ in range(self._started):
            self._queue.put(None)

    def _start_thread(self) -> None:
        threading.Thread(
            target=self._work, name=f"{self._name}-{self._started}", daemon=True
        ).start()

    def _work(self) -> None:
        get, lock = self._queue.get, self._lock
        while True:
            item = get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - fn reports its own errors; keep the thread
                pass
            with lock:
                if self._backlog:
                    self._backlog -= 1  # this thread takes a queued job next
                else:
                    self._spare += 1
