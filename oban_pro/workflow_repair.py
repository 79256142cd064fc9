"""Lifeline repair of workflows left stuck (run by the leader's lifeline, after rescue).

The ack releases waiting steps in its own statement, so a crashed node leaves nothing to
repair: its jobs are rescued and their next ack releases as usual. What the ack never sees:

- a job put in a final state by something else — cancelled or discarded by a person, by
  Oban Web or another engine, discarded by a rescue with no attempts left — still holds
  ``wf_next``: it is sealed and its waiting jobs are released or cancelled here
  (``REPAIR_UNSEALED``);
- a job deleted while others waited for it: a waiting job whose ``wf_wait`` is larger than the
  number of jobs still holding its id in ``wf_next`` is short of that many; it is cancelled,
  or released with ``ignore_deleted`` (``REPAIR_DELETED``, one page of suspended jobs per step,
  walking them in id order so every one is looked at in turn).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

#: Jobs looked at per statement.
PAGE = 500


class WorkflowRepair:
    def __init__(self, store: Store, *, page: int = PAGE) -> None:
        self._store = store
        self._page = page
        self._after = 0  # the last suspended job id looked at

    async def step(self) -> int:
        """One repair pass; returns the number of waiting jobs released or cancelled."""
        moved = await self._unsealed()
        moved += await self._deleted()
        return moved

    async def _unsealed(self) -> int:
        moved = 0
        while True:
            sealed, released = await self._store.repair_unsealed(limit=self._page)
            if sealed:
                log.warning(
                    "workflow repair: %d jobs finished without telling the %d jobs waiting for "
                    "them (cancelled, discarded or rescued outside an ack); told now",
                    sealed,
                    released,
                )
            moved += released
            if sealed < self._page:
                return moved

    async def _deleted(self) -> int:
        last, looked, moved = await self._store.repair_deleted(after=self._after, limit=self._page)
        self._after = last if looked == self._page else 0
        if moved:
            log.warning(
                "workflow repair: %d waiting jobs lost a job they waited for (deleted); "
                "cancelled, or released where ignore_deleted is set",
                moved,
            )
        return moved
