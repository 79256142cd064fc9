"""The runtime of a node: everything the coordinator runs besides the public API.

It owns the dispatcher (with the worker-process pool) and acker, one producer per queue, the
notifier,
heartbeats, leadership and (on the leader) the stager, lifeline, pruner, cron and queue gauges,
and wires their callbacks together. :class:`~oban_pro.Oban` creates one when it has queues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from psycopg_pool import AsyncConnectionPool

from .. import telemetry
from ..config import Config
from ..cron import CronEntry
from ..limits import QueueLimits
from ..metrics import ClusterLimitRow
from ..plugins.base import Plugin, QueueCheck
from ..plugins.gauges import QueueGauges, WorkflowGauges
from ..plugins.gossip import Gossip
from ..plugins.lifeline import Lifeline
from ..plugins.pruner import Pruner
from ..plugins.scheduler import Scheduler
from ..plugins.stager import Stager
from ..pool.messages import InstanceInfo, Run
from ..pool.pool import WorkerPool, default_threads
from ..registry import cron_entries
from ..store import Store
from ..workflow_repair import WorkflowRepair
from .acker import Ack, Acker
from .dispatcher import Dispatcher, RunningJob
from .freed_capacity import FreedCapacity
from .heartbeat import Heartbeat, LostJob, reconnect_bound
from .job_events import JobEvents
from .leader import Leader
from .notifier import Notifier
from .outcomes import JobOutcomes
from .periodic import Periodic
from .plugin_runner import PluginRunner
from .producer import Producer

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        pool: AsyncConnectionPool,
        metrics: Any,
        crontab: Sequence[CronEntry],
        on_signal: Callable[[dict[str, Any]], None],
    ) -> None:
        self.config = config
        self.name = config.name
        self.node = config.node
        self.queries = store.queries
        self.metrics = metrics
        self.producers: dict[str, Producer] = {}
        self._pool = pool
        #: Every statement of the node's coordinator goes through it (see oban_pro.store).
        self.store = store
        self._crontab = list(crontab)
        self._on_signal = on_signal
        self._loops: list[Periodic] = []
        self._plugins: PluginRunner | None = None
        self._notifier: Notifier | None = None
        self._acker: Acker | None = None
        self._freed = FreedCapacity(self.store, self._held_back_by_global_limit)
        self._dispatcher: Dispatcher | None = None
        self._leader: Leader | None = None
        self._heartbeat: Heartbeat | None = None
        self._last_db_error = -float("inf")  # monotonic time of this node's last db error

    @property
    def is_leader(self) -> bool:
        return bool(self._leader and self._leader.is_leader)

    @property
    def worker_pool(self) -> WorkerPool | None:
        """The worker processes (for inspection: size, pids, stats)."""
        return self._dispatcher.pool if self._dispatcher is not None else None

    @property
    def dispatcher(self) -> Dispatcher | None:
        """Queue limits, the ledger of running jobs, and stopping one of them."""
        return self._dispatcher

    @property
    def acker(self) -> Acker | None:
        return self._acker

    @property
    def notifier(self) -> Notifier | None:
        return self._notifier

    def kill_job(self, job_id: int) -> bool:
        """Stop ``job_id`` here (pkill: acked as cancelled); False if it does not run here."""
        return self.stop_job(job_id, "cancelled")

    def stop_job(self, job_id: int, reason: str) -> bool:
        """Stop the local copy of ``job_id`` (see :meth:`Dispatcher.stop_job`)."""
        return self._dispatcher is not None and self._dispatcher.stop_job(job_id, reason)

    def running(self) -> list[RunningJob]:
        """``(job_id, attempt, producer_uuid)`` of every job this node holds."""
        return self._dispatcher.running() if self._dispatcher is not None else []

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Children first (before any fetch), then notifier, acker, producers and loops."""
        pool = self._pool
        cfg = self.config
        m = self.metrics
        # The engine reports through telemetry events; the metrics (when on) subscribe to them.
        events = JobEvents(self.name, self.node)
        outcomes = JobOutcomes(None, events)

        def written(acks: list[tuple[Ack, str]]) -> None:
            outcomes.written(acks)
            self._freed.freed({ack.queue for ack, _state in acks})

        self._acker = Acker(
            self.store,
            max_crashes=cfg.max_crashes,
            batch_size=cfg.ack_batch_size,
            interval=cfg.ack_interval,
            linger=cfg.ack_linger,
            max_backlog=cfg.ack_max_backlog,
            name=self.name,
            node=self.node,
            on_error=lambda: self._on_db_error("ack"),
            on_written=written,
        )
        self._dispatcher = Dispatcher(
            self._acker,
            self._make_pool,
            default_timeout=cfg.job_timeout,
            isolated_queues=cfg.isolated_queues,
            threads_follow_limits=not cfg.threads,
            events=events,
        )
        worker_pool = self._dispatcher.pool
        await worker_pool.start()
        if m is not None:
            m.track_pool(lambda: worker_pool.stats)
            m.track_producers(self._producer_gauges)
            m.track_cluster_limits(self._cluster_limit_rows)
        self._notifier = Notifier(
            self._conninfo(), cfg.prefix, on_reconnect=self._on_notifier_reconnect
        )
        self._notifier.listen("insert", self._on_insert)
        self._notifier.listen("signal", self._on_signal)
        await self._notifier.start()
        self._acker.start()
        for queue, limit in cfg.queues.items():
            producer = self._make_producer(queue, limit, cfg.cluster_limits.get(queue))
            producer.paused = queue in cfg.paused_queues  # compat hook: [queues.q] paused = true
            await producer.register()
            self.producers[queue] = producer
        for producer in self.producers.values():
            producer.start()
        self._start_loops(pool)

    def _conninfo(self) -> str:
        # A pool the application passed in knows where the database is; the config may not.
        return self.config.dsn or getattr(self._pool, "conninfo", "") or ""

    def _make_pool(self, **callbacks: Any) -> WorkerPool:
        cfg = self.config
        return WorkerPool(
            cfg.processes,
            start_method=cfg.start_method,
            imports=cfg.imports,
            threads=cfg.threads or default_threads(cfg.queues.values()),
            max_jobs_per_child=cfg.max_jobs_per_child,
            max_memory=cfg.max_memory,
            memory_ceiling=cfg.memory_ceiling,
            kill_grace=cfg.kill_grace,
            cancel_grace=cfg.cancel_grace,
            on_restart=self._on_child_restart,
            instance=self._instance_info(),
            **callbacks,
        )

    def _instance_info(self) -> InstanceInfo:
        """What the children need to be this instance in job code (Oban.get_instance())."""
        cfg = self.config
        kwargs = dict(getattr(self._pool, "kwargs", None) or {})
        # Only plain values cross to the children (a row_factory or a callable cannot).
        plain = {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}
        return InstanceInfo(
            name=cfg.name,
            node=cfg.node,
            prefix=cfg.prefix,
            conninfo=self._conninfo(),
            connect_kwargs=plain,
            pool_max_size=min(2, cfg.pool_size),
            pool_timeout=cfg.pool_timeout,
        )

    def _make_producer(self, queue: str, limit: int, limits: QueueLimits | None) -> Producer:
        assert self._dispatcher is not None and self._acker is not None
        acker = self._acker
        producer = Producer(
            queue=queue,
            limit=limit,
            name=self.name,
            node=self.node,
            store=self.store,
            dispatcher=self._dispatcher,
            poll_interval=self.config.poll_interval,
            blocked=lambda: acker.backpressure,
            on_error=self._on_db_error,
            heartbeat_ttl=self.config.heartbeat_ttl,
            limits=limits,
            acks_written=acker.caught_up,
        )
        self._dispatcher.register(producer)
        return producer

    def _start_loops(self, pool: AsyncConnectionPool) -> None:
        cfg, m = self.config, self.metrics
        on_error = self._on_db_error
        store = self.store
        self._leader = Leader(
            store=store,
            name=self.name,
            node=self.node,
            ttl=cfg.leader_ttl,
            on_change=self._on_leader_change,
            enabled=cfg.leadership is not False,  # compat hook: Oban.py's leadership=False
        )
        # Followers look for an expired lease at least every heartbeat, so a dead leader is
        # replaced within leader_ttl + heartbeat_interval, and the new one rescues at once.
        election_every = min(cfg.leader_ttl / 3, cfg.heartbeat_interval)
        leader_loop = Periodic("leader", election_every, self._leader.elect, on_error=on_error)
        assert self._notifier is not None
        self._notifier.listen("leader", lambda p: self._leader.on_notice(p, leader_loop.trigger))  # type: ignore[union-attr]
        dispatcher = self._dispatcher
        assert dispatcher is not None
        self._heartbeat = Heartbeat(
            conninfo=self._conninfo(),
            connect_kwargs=dict(getattr(pool, "kwargs", None) or {}),
            queries=self.queries,
            name=self.name,
            node=self.node,
            interval=cfg.heartbeat_interval,
            producers=lambda: list(self.producers.values()),
            running=dispatcher.running,
            on_lost=self._on_lost_jobs,
            on_error=on_error,
        )
        view = _RuntimeView(self)
        plugins: list[Plugin] = [
            Gossip(store, view, interval=cfg.gossip_interval),
            Stager(store, view, interval=cfg.stage_interval),
            Lifeline(
                store,
                view,
                interval=cfg.lifeline_interval,
                heartbeat_ttl=cfg.heartbeat_ttl,
                reconnect_bound=reconnect_bound(cfg.heartbeat_interval),
                rescue_after=cfg.rescue_after,
                repair=WorkflowRepair(store),
            ),
            Pruner(
                store, interval=cfg.prune_interval, max_age=cfg.prune_max_age, limit=cfg.prune_limit
            ),  # fmt: skip
        ]
        if m is not None:
            plugins += [
                QueueGauges(store, m.set_queue_counts, interval=cfg.gauge_interval),
                WorkflowGauges(store, m.set_workflow_counts, interval=cfg.gauge_interval),
            ]
        # compat hook: cron_timezone (Oban.py's scheduler.timezone)
        entries = [*cron_entries(), *self._crontab]
        plugins.append(Scheduler(store, view, entries, cfg.cron_timezone))
        self._plugins = PluginRunner(plugins, view, on_error=on_error)
        self._loops = [leader_loop]
        self._heartbeat.start()
        for loop in self._loops:
            loop.start()
        self._plugins.start()

    # -- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Graceful stop: stop fetching, let running jobs finish up to ``shutdown_timeout``,
        then kill the children, ack what finished, release the rest to ``available`` at once,
        delete producer rows and resign leadership."""
        for producer in self.producers.values():
            await producer.stop()
        if self._dispatcher is not None:
            shutdown_started = time.monotonic_ns()
            unfinished = await self._dispatcher.pool.stop(self.config.shutdown_timeout)
            self._dispatcher.release(unfinished)
            self._report_shutdown(time.monotonic_ns() - shutdown_started, unfinished)
        for loop in self._loops:
            await loop.stop()
        if self._plugins is not None:
            await self._plugins.stop()
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        if self._acker is not None:
            await self._acker.stop(timeout=max(5.0, self.config.shutdown_timeout))
        await self._freed.stop()
        await self._cleanup_rows()
        if self._notifier is not None:
            await self._notifier.stop()

    def stop_now(self) -> None:
        """Cut a graceful stop short: running jobs are killed and released at once."""
        self.config.shutdown_timeout = 0
        if self._dispatcher is not None:
            self._dispatcher.pool.hurry()

    async def _cleanup_rows(self) -> None:
        if self._pool is None:
            return
        try:
            if self.producers:
                await self.store.delete_producers([p.uuid for p in self.producers.values()])
            if self._leader is not None:
                await self._leader.resign()
        except Exception as exc:  # the database may be gone; the lifeline cleans up later
            log.warning("could not delete producer rows / resign at shutdown: %s", exc)

    # -- callbacks ----------------------------------------------------------------------------

    def _emit(self, event: str, metadata: dict[str, Any]) -> None:
        """One of oban_pro's own events of this instance (see :mod:`oban_pro.telemetry`)."""
        if telemetry.listening(event):
            telemetry.execute(event, {"name": self.name, "node": self.node, **metadata})

    def _report_shutdown(self, elapsed: int, unfinished: list[Run]) -> None:
        """Oban.py's ``oban.queue.shutdown``, per queue: the jobs that did not finish in time
        (``orphaned``; they were released, available again)."""
        for queue in self.producers:
            orphaned = [run.job_id for run in unfinished if run.queue == queue]
            self._emit(
                "oban.queue.shutdown", {"queue": queue, "elapsed": elapsed, "orphaned": orphaned}
            )

    def _on_child_restart(self, reason: str) -> None:
        self._emit("oban.pool.restart", {"reason": reason})

    def _on_leader_change(self, leading: bool) -> None:
        if leading and self._plugins is not None:
            # A new leader stages and rescues at once rather than at its next tick.
            self._plugins.trigger(Stager.name)
            self._plugins.trigger(Lifeline.name)

    def _on_db_error(self, operation: str) -> None:
        self._last_db_error = time.monotonic()
        self._emit("oban.db.error", {"operation": operation})

    def seconds_since_db_error(self) -> float:
        """How long this node has talked to the database without an error."""
        return time.monotonic() - self._last_db_error

    def _wake_queue(self, queue: str) -> None:
        producer = self.producers.get(queue)
        if producer is not None:
            producer.notice()

    def _on_insert(self, payload: dict[str, Any]) -> None:
        queue = payload.get("queue")
        if isinstance(queue, str):
            self._wake_queue(queue)

    def _on_notifier_reconnect(self) -> None:
        self._emit("oban.notifier.reconnect", {})
        for producer in self.producers.values():
            producer.notice()  # notices may have been missed while disconnected

    def _on_lost_jobs(self, lost: list[LostJob]) -> None:
        assert self._dispatcher is not None
        for job in lost:
            where = f" and executing on {job.node}" if job.node else ""
            self._dispatcher.abandon(
                job.job_id, f"its row is now {job.state}{where}", attempt=job.attempt
            )

    def _on_rescued(self, queues: set[str]) -> None:
        for queue in queues:
            self._wake_queue(queue)
        self._freed.freed(queues, always=True)  # a dead node's share of a global limit is back

    def _held_back_by_global_limit(self, queue: str) -> bool:
        # Other nodes wait for room only if the limit binds; then this node's fetches come back
        # short too. While it never binds, freed-capacity notices would only add fetches.
        producer = self.producers.get(queue)
        return (
            producer is not None
            and producer.limits is not None
            and producer.limits.global_limit is not None
            and producer.held_back
        )

    def _producer_gauges(self) -> list[tuple[str, int, int, bool]]:
        assert self._dispatcher is not None
        count = self._dispatcher.running_count
        return [(p.queue, p.limit, count(p.queue), p.paused) for p in self.producers.values()]

    def _cluster_limit_rows(self) -> list[ClusterLimitRow]:
        rows = []
        for p in list(self.producers.values()):
            limits, status = p.limits, p.limit_status
            if limits is None:
                continue
            if status is not None and status.limits is not limits:
                status = None  # read before a scale changed the limits
            gl, rate = limits.global_limit, limits.rate_limit
            rows.append(
                ClusterLimitRow(
                    queue=p.queue,
                    global_limit=gl.allowed if gl else None,
                    global_executing=status.running if gl and status else None,
                    rate_limit=rate.allowed if rate else None,
                    rate_window_used=status.window_used if rate and status else None,
                    rate_window_remaining=status.rate_remaining() if status else None,
                )
            )
        return rows


class _RuntimeView:
    """The plugins' read-only view of their node (:class:`~oban_pro.plugins.base.NodeView`)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def name(self) -> str:
        return self._runtime.name

    @property
    def node(self) -> str:
        return self._runtime.node

    @property
    def is_leader(self) -> bool:
        return self._runtime.is_leader

    def seconds_since_db_error(self) -> float:
        return self._runtime.seconds_since_db_error()

    async def queue_checks(self) -> list[QueueCheck]:
        checks = []
        for producer in list(self._runtime.producers.values()):
            if producer.limits is not None:
                await producer.refresh_status()  # checks show the limits' use across nodes
            checks.append(
                QueueCheck(
                    uuid=producer.uuid, name=producer.name, node=producer.node,
                    queue=producer.queue, limit=producer.limit, paused=producer.paused,
                    running=producer.running, started_at=producer.started_at,
                    limits=producer.limits_json(),
                )
            )  # fmt: skip
        return checks

    def jobs_staged(self, queue: str) -> None:
        self._runtime._wake_queue(queue)

    def jobs_rescued(self, queues: set[str]) -> None:
        self._runtime._on_rescued(queues)
