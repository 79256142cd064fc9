"""Cron, as a plugin: at each minute boundary the leader inserts a job for every entry due
that minute, and at its node's first boundary the ``@reboot`` entries too.

Each insert is unique on (worker, cron name, minute) across all states, so a leader failover
mid-minute, or two nodes that both believe they lead, never insert the same minute twice.
As in Elixir Oban, ``@reboot`` entries are inserted once per node start, by the node that
leads at its first evaluation: a follower that later becomes leader inserts none, and a node
starting mid-minute evaluates first at the next boundary (the minute it missed is not run).

It runs on every node (``leader_only`` False) so that a follower's first evaluation also
settles its ``@reboot``; only the leader inserts. Its loop waits for the next minute boundary
(:meth:`seconds_to_next_run`) rather than a fixed interval.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .. import telemetry
from ..cron import CronEntry, cron_meta, with_default_timezone
from ..job import Job
from ..unique import ALL_STATES

if TYPE_CHECKING:
    from ..store import Store
    from .base import NodeView

log = logging.getLogger(__name__)


class Scheduler:
    name = "cron"
    #: Not read by the loop (it waits for minute boundaries), kept for the plugin protocol.
    interval = 60.0
    leader_only = False

    def __init__(
        self,
        store: Store,
        node: NodeView,
        entries: Sequence[CronEntry],
        default_timezone: str | None = None,
    ) -> None:
        self._store = store
        self._node = node
        # Entries that named no timezone are read in the node's cron_timezone.
        self.entries = with_default_timezone(entries, default_timezone)
        self._last_minute: datetime | None = None
        self._rebooted = False

    def seconds_to_next_run(self, now: datetime | None = None) -> float:
        """Seconds to just after the next minute boundary."""
        now = now or datetime.now(UTC)
        return 60.0 - now.second - now.microsecond / 1e6 + 0.05

    async def step(self, now: datetime | None = None) -> list[Job]:
        """Evaluate ``now``'s minute (once per minute per process): if this node leads, insert
        the jobs due in it, and the ``@reboot`` ones at this node's first evaluation."""
        minute = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
        if minute == self._last_minute:
            return []  # the clock stepped back (NTP, a resumed VM): this minute was done
        self._last_minute = minute
        reboot, self._rebooted = not self._rebooted, True
        if not self._node.is_leader or not self.entries:
            return []
        with telemetry.span("oban.scheduler.evaluate", {"cron_at": minute}) as context:
            jobs = [
                self.build(entry, minute)
                for entry in self.entries
                if (reboot if entry.is_reboot else entry.matches(minute))
            ]
            inserted = await self._store.insert_jobs(jobs) if jobs else []
            fresh = [job for job in inserted if not job.conflict]
            context.add({"enqueued_count": len(fresh)})
        if fresh:
            log.info("cron inserted %d jobs for %s", len(fresh), minute.isoformat())
        return fresh

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
