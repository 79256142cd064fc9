"""Cron (leader only): once per minute, insert a job for every entry due that minute.

Each insert is unique on (worker, cron name, minute) across all states, so a leader failover
mid-minute, or two nodes that both believe they lead, never insert the same minute twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from .. import telemetry
from ..cron import CronEntry, cron_meta, with_default_timezone
from ..job import Job
from ..unique import ALL_STATES

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(
        self,
        entries: Sequence[CronEntry],
        insert: Callable[[list[Job]], Awaitable[list[Job]]],
        default_timezone: str | None = None,
    ) -> None:
        # Entries that named no timezone are read in the node's cron_timezone.
        self.entries = with_default_timezone(entries, default_timezone)
        self._insert = insert
        self._last_minute: datetime | None = None

    def seconds_to_next_minute(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return 60.0 - now.second - now.microsecond / 1e6 + 0.05

    async def step(self, now: datetime | None = None) -> list[Job]:
        """Insert the jobs due in ``now``'s minute (once per minute per process)."""
        minute = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
        if minute == self._last_minute:
            return []
        self._last_minute = minute
        with telemetry.span("oban.scheduler.evaluate", {"cron_at": minute}) as context:
            jobs = [
                self.build(entry, minute)
                for entry in self.entries
                if not entry.is_reboot and entry.matches(minute)
            ]
            inserted = await self._insert(jobs) if jobs else []
            fresh = [job for job in inserted if not job.conflict]
            context.add({"enqueued_count": len(fresh)})
        if fresh:
            log.info("cron inserted %d jobs for %s", len(fresh), minute.isoformat())
        return fresh

    def reboot_jobs(self) -> list[Job]:
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        return [self.build(entry, minute) for entry in self.entries if entry.is_reboot]

    @staticmethod
    def build(entry: CronEntry, minute: datetime) -> Job:
        opts = dict(entry.opts)
        meta = {**opts.pop("meta", {}), **cron_meta(entry), "cron_at": minute.isoformat()}
        opts.pop("unique", None)
        unique = {
            "period": 86400,
            "fields": ["worker", "meta"],
            "keys": ["cron_name", "cron_at"],
            "states": list(ALL_STATES),
        }
        return Job(entry.worker, args=dict(entry.args), meta=meta, unique=unique, **opts)
