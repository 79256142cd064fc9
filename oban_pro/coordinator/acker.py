"""The acker: buffers job outcomes and writes them in one fenced, set-based UPDATE per batch.

Batches form by themselves from the acks that arrive while the previous write is in flight, so
a busy node writes large batches. When outcomes trickle in (long jobs finishing one by one) each
would be a statement and a commit of its own, taken from the cores the jobs run on; so an ack
may wait for others to share its write — at most ``linger`` seconds, and never longer than its
job ran, so short jobs are written at once and a job's row reads ``executing`` for at most the
shorter of its own run time and ``linger`` after it ended (plus the write itself); its
``completed_at`` still says when it ended. River's
batch completer holds completions up to 250 ms for the same reason. ``interval`` adds a fixed
wait to every batch.
Each write is a telemetry span, ``oban.acker.ack`` (``count``, ``stale``: fenced out,
``backlog``: left buffered), which the Prometheus metrics subscribe to.
Database errors are retried with backoff; nothing is dropped. Past ``max_backlog`` buffered acks,
:attr:`backpressure` tells producers to stop fetching until the backlog drains. Acks that
were not written when a node dies come back through the lifeline (their jobs are still
``executing`` under a dead producer).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from .. import telemetry
from .._aio import cancel_and_wait, wait_event

if TYPE_CHECKING:
    from ..pool.messages import Run
    from ..store import Store

log = logging.getLogger(__name__)

#: Acks of jobs that ran for less than this are written at once: on a busy node they batch by
#: themselves, and waits this short cost more turns of the event loop than they save.
MIN_LINGER = 0.002


@dataclass(slots=True)
class Ack:
    """One outcome to write. ``kind``: completed, record, error, crash, cancel, snooze, release.

    The fields after ``meta`` are not written: they travel with the ack so that whoever logs
    and reports finished jobs (:mod:`.outcomes`) does it with the state the database decided
    (``on_written``).
    """

    job_id: int
    attempt: int
    producer_uuid: str
    kind: str
    delay: float = 0.0
    error: str | None = None  # a JSON error entry
    meta: str | None = None  # a JSON object merged into meta
    queue: str = ""
    worker: str = ""
    duration: float = 0.0  # seconds the attempt ran
    wait: float = 0.0  # seconds from scheduled_at to attempted_at
    text: str | None = None  # the failure text, for the log line of a failed attempt
    run: Run | None = None  # the job as it was dispatched (telemetry's ``job``)
    error_type: str | None = None  # a failure's exception class name (telemetry)
    error_message: str | None = None  # and its message
    #: Event-loop time the outcome arrived (set by :meth:`Acker.add`). The write sends its age,
    #: so ``completed_at`` and the others say when the job ended, not when a lingering batch
    #: was written; an age, not a client timestamp, so a skewed clock here changes nothing.
    ended: float = 0.0
    #: Other jobs wait for this one (``wf_next`` in the meta it was fetched with): its batch
    #: is written with the workflow release.
    workflow: bool = False


class Acker:
    def __init__(
        self,
        store: Store,
        *,
        max_crashes: int,
        batch_size: int = 1000,
        interval: float = 0.0,
        linger: float = 0.0,
        max_backlog: int = 50000,
        name: str = "",
        node: str = "",
        on_error: Callable[[], None] | None = None,
        on_written: Callable[[list[tuple[Ack, str]]], None] | None = None,
    ) -> None:
        self._store = store
        self._max_crashes = max_crashes
        self._batch_size = batch_size
        self._interval = interval
        self._linger = linger
        # loop.time() by which the buffered acks must be written (inf: nothing is waiting), and
        # whether a caller waits for them (flush, caught_up, stop): then nothing lingers.
        self._deadline = math.inf
        self._urgent = False
        self._max_backlog = max_backlog
        # Telemetry metadata: which instance's acker this is.
        self._identity = {"name": name, "node": node}
        self._on_error = on_error
        self._on_written = on_written
        self._buffer: list[Ack] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Acks ever added / ever written (batches are written in order, so a count says which).
        self._added = 0
        self._written = 0
        self._progress = asyncio.Event()

    # -- producer side --------------------------------------------------------------------

    def add(self, ack: Ack) -> None:
        self._buffer.append(ack)
        self._added += 1
        self._drained.clear()
        now = asyncio.get_running_loop().time()
        ack.ended = now
        wait = min(self._linger, ack.duration)
        if wait >= MIN_LINGER:
            self._deadline = min(self._deadline, now + wait)
        else:
            self._deadline = -math.inf
        if not self._wake.is_set():
            self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    @property
    def backpressure(self) -> bool:
        return len(self._buffer) >= self._max_backlog

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oban-acker")

    async def caught_up(self, timeout: float) -> bool:
        """Wait until every ack added so far is written (later ones are not waited for);
        False if ``timeout`` passed first. A limited fetch waits for this: the global count
        is read from the database, where a job that finished here is still ``executing``
        until its ack is written."""
        target = self._added
        if self._written >= target:
            return True
        self._hurry()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._written < target:
            left = deadline - loop.time()
            if left <= 0 or not await wait_event(self._progress, left):
                return False
        return True

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every buffered ack is written; False if ``timeout`` passed first."""
        self._hurry()
        return await wait_event(self._drained, timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        """Final flush, then stop. Acks still unwritten after ``timeout`` are logged."""
        self._closing = True
        if not await self.flush(timeout):
            log.error(
                "%d acks could not be written before shutdown; their jobs will be rescued",
                len(self._buffer),
            )
        if self._task:
            await cancel_and_wait(self._task)

    def _hurry(self) -> None:
        """Someone waits for the buffered acks: write them now, without lingering."""
        self._urgent = True
        self._wake.set()

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            if len(self._buffer) < self._batch_size and not self._closing:
                # Yield at least once so outcomes that arrived in the same pipe read join this
                # batch; acks that arrive while a write is in flight form the next one.
                await asyncio.sleep(self._interval)
                await self._linger_for_company()
            self._wake.clear()
            while self._buffer:
                batch = self._buffer[: self._batch_size]
                try:
                    await self._write(batch)
                except (psycopg.Error, OSError) as exc:
                    failures += 1
                    if self._on_error:
                        self._on_error()
                    delay = min(0.05 * 2**failures, 5.0)
                    log.warning(
                        "ack batch of %d failed (%s); retrying in %.2fs", len(batch), exc, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                del self._buffer[: len(batch)]
                self._written += len(batch)
                self._progress.set()  # wake every waiter, then re-arm for the next batch
                self._progress = asyncio.Event()
            # Everything is written (no await since the loop's last check): what woke or
            # hurried the loop meanwhile was for acks that are written now.
            self._wake.clear()
            self._deadline = math.inf
            self._urgent = False
            self._drained.set()

    async def _linger_for_company(self) -> None:
        """Wait until the buffered acks' earliest deadline, a full batch, or a hurry. Each new
        ack wakes this to bring the deadline closer when it may wait less."""
        loop = asyncio.get_running_loop()
        while not (self._urgent or self._closing) and len(self._buffer) < self._batch_size:
            left = self._deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            await wait_event(self._wake, left)

    async def _write(self, batch: list[Ack]) -> None:
        now = asyncio.get_running_loop().time()
        with telemetry.span("oban.acker.ack", {**self._identity, "count": len(batch)}) as span:
            states = await self._store.ack_jobs(
                ids=[a.job_id for a in batch],
                attempts=[a.attempt for a in batch],
                uuids=[a.producer_uuid for a in batch],
                kinds=[a.kind for a in batch],
                delays=[a.delay for a in batch],
                errors=[a.error for a in batch],
                metas=[a.meta for a in batch],
                ages=[now - a.ended for a in batch],
                workflow=any(a.workflow for a in batch),
                max_crashes=self._max_crashes,
            )
            span.add({"stale": len(batch) - len(states), "backlog": len(self._buffer) - len(batch)})
        if self._on_written is not None and states:
            # The state each job is in now, as the statement decided it (RETURNING): the only
            # place a finished job's state is decided. Acks fenced out are not in it.
            written = [(a, states[a.job_id]) for a in batch if a.job_id in states]
            try:
                self._on_written(written)
            except Exception:  # noqa: BLE001 - logging/metrics must not undo a written batch
                log.exception("ack on_written callback raised")
