"""Prometheus metrics of one node: a registry the coordinator owns, and its ``/metrics`` endpoint.

Children never touch Prometheus: they report results, RSS and liveness through their pipes and
the coordinator records them here, so one ordinary ``CollectorRegistry`` is enough (no
multiprocess mode, no files on disk).

Cost matters: :meth:`Metrics.job_finished` and friends run on the coordinator's event loop once
per job or batch, and a parent that spends more than ~10 µs per job becomes the bottleneck
(design.md). ``prometheus_client``'s ``Histogram.observe`` takes a lock per bucket and per sum
(about 2 µs each), so the per-job and per-batch metrics are kept as plain counts written only by
the event loop (about 1 µs for a whole ``job_finished``), found through small dicts keyed by the
label tuple, and turned into metric families when Prometheus scrapes. Rare events use ordinary
``prometheus_client`` counters and gauges whose label children are resolved once.

Labels are bounded: ``state``, ``reason`` and ``operation`` come from fixed sets (anything else is
recorded as ``other``); ``queue`` and ``worker`` values are capped at ``label_limit`` distinct
values each, after which new ones are folded into :data:`OVERFLOW`. Job ids and args are never
labels. Every series carries ``node`` (constant per process) so one dashboard can show a cluster.

Values that are cheap to read but expensive to push (jobs executing per queue, pool state, child
RSS, heartbeat age, queue depths) are computed at scrape time by a custom collector, which runs on
the HTTP server's thread: providers given to :meth:`Metrics.track_producers` and
:meth:`Metrics.track_pool` must be quick and must return a snapshot rather than a live view.

:data:`METRICS` documents every metric; the README's metrics table is generated from it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

__all__ = [
    "ACK_BATCH_BUCKETS",
    "DB_OPERATIONS",
    "DURATION_BUCKETS",
    "FAST_BUCKETS",
    "JOB_STATES",
    "METRICS",
    "OVERFLOW",
    "QUEUE_STATES",
    "RESTART_REASONS",
    "KILL_REASONS",
    "Metrics",
    "ChildSnapshot",
    "PoolSnapshot",
    "metrics_table_markdown",
]

#: Outcomes a finished attempt can have (``state`` label of ``oban_pro_jobs_total``).
JOB_STATES = ("completed", "retryable", "discarded", "cancelled", "snoozed")
#: Why a child was replaced (``reason`` label of ``oban_pro_child_restarts_total``).
RESTART_REASONS = (
    "timeout", "crash", "memory", "recycle", "cancelled", "rescued", "start_failure",
)  # fmt: skip
#: Why the pool stopped a job (``reason`` label of ``oban_pro_job_kills_total``); "collateral"
#: counts jobs given back because their child was killed or died for another job.
KILL_REASONS = ("timeout", "cancel", "rescued", "memory", "collateral")
#: Database operations whose errors are counted (``operation`` label).
DB_OPERATIONS = (
    "fetch",
    "ack",
    "heartbeat",
    "stage",
    "prune",
    "rescue",
    "leader",
    "notify",
    "gauge",
)
#: Job states counted in the database by the leader (``state`` label of ``oban_pro_queue_jobs``).
QUEUE_STATES = ("available", "scheduled", "retryable", "executing")
#: The ``state`` label of ``oban_pro_workflows``.
WORKFLOW_STATES = ("executing", "completed", "cancelled", "discarded")
#: Label value used for a fixed-set label given a value outside its set.
OTHER = "other"
#: Label value that stands for every ``queue``/``worker`` beyond ``label_limit`` distinct ones.
OVERFLOW = "__other__"

#: Job execution and queue wait: from a millisecond to past two hours.
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
#: Database round trips (fetch, ack): sub-millisecond to tens of seconds.
FAST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Jobs per ack statement (the acker writes at most ``ack_batch_size``, default 1000).
ACK_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

#: Every metric this module exports: (name, type, labels, meaning). ``node`` is on every series.
#: Histograms also expose ``_bucket``/``_count``/``_sum``; counters are named with ``_total``.
METRICS: list[tuple[str, str, tuple[str, ...], str]] = [
    ("oban_pro_jobs_total", "counter", ("node", "queue", "worker", "state"),
     "Job attempts finished on this node, by outcome (completed, retryable, discarded, "
     "cancelled, snoozed)."),
    ("oban_pro_job_duration_seconds", "histogram", ("node", "queue", "worker"),
     "Execution time of a job attempt in its child process."),
    ("oban_pro_job_wait_seconds", "histogram", ("node", "queue"),
     "Queue wait: seconds from a job's scheduled_at to its attempted_at."),
    ("oban_pro_jobs_fetched_total", "counter", ("node", "queue"),
     "Jobs fetched (claimed) by this node's producers."),
    ("oban_pro_fetch_duration_seconds", "histogram", ("node", "queue"),
     "Duration of one fetch statement."),
    ("oban_pro_ack_batch_size", "histogram", ("node",),
     "Job outcomes written per ack statement."),
    ("oban_pro_ack_duration_seconds", "histogram", ("node",),
     "Duration of one ack statement (one batch)."),
    ("oban_pro_acks_stale_total", "counter", ("node",),
     "Acks fenced out because the job was no longer this node's attempt (rescued or re-run "
     "elsewhere); they change nothing."),
    ("oban_pro_ack_backlog", "gauge", ("node",),
     "Job outcomes buffered in the coordinator, not yet written to the database."),
    ("oban_pro_child_restarts_total", "counter", ("node", "reason"),
     "Worker processes replaced, by reason (timeout, crash, memory, recycle, cancelled, "
     "rescued, start_failure)."),
    ("oban_pro_job_kills_total", "counter", ("node", "reason"),
     "Jobs the pool stopped, by reason: timeout, cancel (pkill), rescued, memory, and "
     "collateral (given back, uncharged, because their child was killed or died for another "
     "job)."),
    ("oban_pro_jobs_rescued_total", "counter", ("node",),
     "Executing jobs of dead producers rescued by this node's lifeline (leader only)."),
    ("oban_pro_leader", "gauge", ("node",),
     "1 while this node holds the leadership lease, else 0."),
    ("oban_pro_notifier_reconnects_total", "counter", ("node",),
     "Times the LISTEN connection was re-established."),
    ("oban_pro_db_errors_total", "counter", ("node", "operation"),
     "Database errors, by operation (fetch, ack, heartbeat, stage, prune, rescue, leader, "
     "notify, gauge)."),
    ("oban_pro_heartbeat_age_seconds", "gauge", ("node",),
     "Seconds since this node last refreshed its producer rows (since start, before the first)."),
    ("oban_pro_queue_jobs", "gauge", ("node", "queue", "state"),
     "Jobs in the database by queue and state (available, scheduled, retryable, executing: "
     "cluster-wide); exported by the leader only."),
    ("oban_pro_workflows", "gauge", ("node", "state"),
     "Workflows by current state (executing while any step is unfinished, else discarded, "
     "cancelled or completed; a sub-workflow counts as one); exported by the leader only."),
    ("oban_pro_queue_executing", "gauge", ("node", "queue"),
     "Jobs this node is executing, per local queue."),
    ("oban_pro_queue_limit", "gauge", ("node", "queue"),
     "Concurrency limit of each local queue."),
    ("oban_pro_queue_paused", "gauge", ("node", "queue"),
     "1 if the local queue is paused, else 0."),
    ("oban_pro_queue_global_limit", "gauge", ("node", "queue"),
     "The queue's global_limit: jobs executing at once across all nodes (per partition when "
     "partitioned)."),
    ("oban_pro_queue_global_executing", "gauge", ("node", "queue"),
     "The queue's jobs executing across all nodes and engines, as last read (globally limited "
     "queues; every gossip_interval)."),
    ("oban_pro_queue_rate_limit", "gauge", ("node", "queue"),
     "The queue's rate_limit: jobs allowed to start per period across all nodes (per "
     "partition when partitioned)."),
    ("oban_pro_queue_rate_window_used", "gauge", ("node", "queue"),
     "Jobs of the queue started within the last rate period, all partitions, as last read."),
    ("oban_pro_queue_rate_window_remaining", "gauge", ("node", "queue"),
     "Starts the rate window still allows now (queues whose rate_limit is not partitioned)."),
    ("oban_pro_pool_children", "gauge", ("node", "state"),
     "Worker processes by state (busy, idle)."),
    ("oban_pro_pool_jobs_waiting", "gauge", ("node", "state"),
     "Jobs the node holds that have not begun: state=line (waiting for a child to take them: "
     "isolated jobs while every child is busy) or state=on_deck (sent to a child that runs an "
     "isolated job, to begin there the moment it ends)."),
    ("oban_pro_child_jobs", "gauge", ("node", "child"),
     "Jobs in flight in each worker process (child: a slot number 0..2N that a replacement "
     "reuses, not a pid)."),
    ("oban_pro_child_threads_busy", "gauge", ("node", "child"),
     "Threads of each worker process running a sync job."),
    ("oban_pro_child_rss_bytes", "gauge", ("node", "child"),
     "Resident memory of each worker process."),
    ("oban_pro_child_rss_max_bytes", "gauge", ("node",),
     "Resident memory of the largest worker process."),
    ("oban_pro_pool_rss_bytes", "gauge", ("node",),
     "Resident memory of all worker processes together."),
    ("oban_pro_coordinator_cpu_seconds_total", "counter", ("node",),
     "CPU time used by the coordinator process (user + system); its rate near 1 means the "
     "parent is the bottleneck."),
]  # fmt: skip


def metrics_table_markdown() -> str:
    """The README's metrics table, generated from :data:`METRICS`."""
    lines = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    for name, kind, labels, help_text in METRICS:
        lines.append(f"| `{name}` | {kind} | {', '.join(labels)} | {help_text} |")
    return "\n".join(lines) + "\n"


def _help(name: str) -> str:
    for metric_name, _kind, _labels, help_text in METRICS:
        if metric_name == name:
            return help_text
    raise KeyError(name)  # pragma: no cover - a typo in this module


@dataclass(slots=True)
class ChildSnapshot:
    """One worker process in a :class:`PoolSnapshot`."""

    slot: int
    jobs: int
    threads_busy: int
    rss: int


@dataclass(slots=True)
class PoolSnapshot:
    """What :meth:`Metrics.track_pool`'s provider returns (``oban_pro.pool.PoolStats`` has the
    same fields): children by state, RSS per pid, each child, and jobs stopped by reason."""

    busy: int
    idle: int
    rss: dict[int, int] = field(default_factory=dict)
    children: list[Any] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    on_deck: int = 0


class _PoolLike(Protocol):
    busy: int
    idle: int
    rss: Mapping[int, int]
    children: list[Any]
    kills: Mapping[str, int]
    waiting: int
    on_deck: int


ProducersProvider = Callable[[], Iterable[tuple[str, int, int, bool]]]


@dataclass(frozen=True, slots=True)
class ClusterLimitRow:
    """A local queue's limits across nodes and their use, for the ``oban_pro_queue_global_*``
    and ``oban_pro_queue_rate_*`` gauges (None: that value does not apply to the queue)."""

    queue: str
    global_limit: int | None
    global_executing: int | None
    rate_limit: int | None
    rate_window_used: int | None
    rate_window_remaining: int | None


PoolProvider = Callable[[], _PoolLike]


class _Bounded:
    """Caps the distinct values one label may take; values past the cap become OVERFLOW."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OVERFLOW
        self.seen.add(value)
        return value


def _fixed(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else OTHER


class _Cell:
    """A counter value written by the event loop only (single writer, read at scrape)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class _Hist:
    """Histogram state written by the event loop only: per-bucket (not cumulative) counts.

    ``buckets[i]`` counts observations with ``bounds[i-1] < v <= bounds[i]``; the last slot is
    +Inf. Observing is one ``bisect`` and two additions, about 5x cheaper than
    ``prometheus_client.Histogram.observe`` (which takes a lock per bucket and per sum).
    """

    __slots__ = ("buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0


def _histogram_family(
    name: str,
    labelnames: list[str],
    bounds: tuple[float, ...],
    children: Iterable[tuple[tuple[str, ...], _Hist]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, _help(name), labels=labelnames)
    edges = [floatToGoString(b) for b in bounds] + ["+Inf"]
    for labels, hist in children:
        counts = list(hist.buckets)  # copy first: the event loop may observe meanwhile
        total = hist.sum
        cumulative, running = [], 0
        for edge, count in zip(edges, counts, strict=True):
            running += count
            cumulative.append((edge, running))
        family.add_metric(list(labels), cumulative, total)
    return family


def _counter_family(
    name: str, labelnames: list[str], children: Iterable[tuple[tuple[str, ...], _Cell]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name.removesuffix("_total"), _help(name), labels=labelnames)
    for labels, cell in children:
        family.add_metric(list(labels), cell.value)
    return family


#: Metrics computed at scrape time by :class:`_ScrapeCollector` (the rest are prometheus_client
#: objects registered directly).
_SCRAPE_TIME = frozenset({
    "oban_pro_jobs_total", "oban_pro_job_duration_seconds", "oban_pro_job_wait_seconds",
    "oban_pro_jobs_fetched_total", "oban_pro_fetch_duration_seconds", "oban_pro_ack_batch_size",
    "oban_pro_ack_duration_seconds",
    "oban_pro_heartbeat_age_seconds", "oban_pro_queue_jobs", "oban_pro_queue_executing",
    "oban_pro_workflows",
    "oban_pro_queue_limit", "oban_pro_queue_paused", "oban_pro_pool_children",
    "oban_pro_queue_global_limit", "oban_pro_queue_global_executing", "oban_pro_queue_rate_limit",
    "oban_pro_queue_rate_window_used", "oban_pro_queue_rate_window_remaining",
    "oban_pro_child_rss_max_bytes", "oban_pro_pool_rss_bytes", "oban_pro_job_kills_total",
    "oban_pro_child_jobs", "oban_pro_child_threads_busy", "oban_pro_child_rss_bytes",
    "oban_pro_coordinator_cpu_seconds_total",
})  # fmt: skip


class _ScrapeCollector(Collector):
    """Hot-path state and provider values, turned into metric families at scrape time.

    Runs on the HTTP server's thread while the event loop keeps writing. Each dict is copied
    with one ``tuple(d.items())`` (a single C call under the GIL, so it never sees a dict
    changing size) and each histogram's buckets with one ``list()``; a scrape may miss the
    observation being recorded at that instant, never more.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        # Names only, so the registry rejects clashes without calling the providers.
        for name, kind, _labels, help_text in METRICS:
            if name in _SCRAPE_TIME:
                family = {
                    "counter": CounterMetricFamily,
                    "gauge": GaugeMetricFamily,
                    "histogram": HistogramMetricFamily,
                }[kind]
                yield family(name.removesuffix("_total"), help_text)

    def collect(self) -> Iterable[Metric]:
        m = self._m
        node = m.node
        yield _counter_family(
            "oban_pro_jobs_total",
            ["node", "queue", "worker", "state"],
            [((node, *key), cell) for key, cell in tuple(m._jobs.items())],
        )
        yield _histogram_family(
            "oban_pro_job_duration_seconds",
            ["node", "queue", "worker"],
            DURATION_BUCKETS,
            [((node, *key), h) for key, h in tuple(m._durations.items())],
        )
        yield _histogram_family(
            "oban_pro_job_wait_seconds",
            ["node", "queue"],
            DURATION_BUCKETS,
            [((node, key), h) for key, h in tuple(m._waits.items())],
        )
        yield _counter_family(
            "oban_pro_jobs_fetched_total",
            ["node", "queue"],
            [((node, key), cell) for key, cell in tuple(m._fetched.items())],
        )
        yield _histogram_family(
            "oban_pro_fetch_duration_seconds",
            ["node", "queue"],
            FAST_BUCKETS,
            [((node, key), h) for key, h in tuple(m._fetch_durations.items())],
        )
        yield _histogram_family(
            "oban_pro_ack_batch_size", ["node"], ACK_BATCH_BUCKETS, [((node,), m._ack_sizes)]
        )
        yield _histogram_family(
            "oban_pro_ack_duration_seconds", ["node"], FAST_BUCKETS, [((node,), m._ack_durations)]
        )
        yield from self._heartbeat(node)
        yield from self._queue_jobs(node)
        yield from self._producers(node)
        yield from self._cluster_limits(node)
        yield from self._pool(node)
        cpu = CounterMetricFamily(
            "oban_pro_coordinator_cpu_seconds",
            _help("oban_pro_coordinator_cpu_seconds_total"),
            labels=["node"],
        )
        cpu.add_metric([node], time.process_time())
        yield cpu

    def _heartbeat(self, node: str) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            "oban_pro_heartbeat_age_seconds",
            _help("oban_pro_heartbeat_age_seconds"),
            labels=["node"],
        )
        age.add_metric([node], max(0.0, time.monotonic() - self._m._last_heartbeat))
        yield age

    def _queue_jobs(self, node: str) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "oban_pro_queue_jobs", _help("oban_pro_queue_jobs"), labels=["node", "queue", "state"]
        )
        for (queue, state), count in self._m._queue_counts.items():
            family.add_metric([node, queue, state], count)
        yield family
        workflows = GaugeMetricFamily(
            "oban_pro_workflows", _help("oban_pro_workflows"), labels=["node", "state"]
        )
        for state, count in self._m._workflow_counts.items():
            workflows.add_metric([node, state], count)
        yield workflows

    def _producers(self, node: str) -> Iterable[Metric]:
        provider = self._m._producers
        if provider is None:
            return
        try:
            rows = list(provider())
        except Exception:  # a scrape must never fail because of one provider
            log.exception("metrics: producers provider failed")
            return
        labels = ["node", "queue"]
        executing = GaugeMetricFamily(
            "oban_pro_queue_executing", _help("oban_pro_queue_executing"), labels=labels
        )
        limit = GaugeMetricFamily(
            "oban_pro_queue_limit", _help("oban_pro_queue_limit"), labels=labels
        )
        paused = GaugeMetricFamily(
            "oban_pro_queue_paused", _help("oban_pro_queue_paused"), labels=labels
        )
        # Local queues come from this node's configuration, so they are bounded already (and
        # folding two into one label set would make duplicate series).
        for queue, queue_limit, running, is_paused in rows:
            key = [node, queue]
            executing.add_metric(key, running)
            limit.add_metric(key, queue_limit)
            paused.add_metric(key, 1.0 if is_paused else 0.0)
        yield executing
        yield limit
        yield paused

    def _cluster_limits(self, node: str) -> Iterable[Metric]:
        provider = self._m._cluster_limits
        if provider is None:
            return
        try:
            rows = list(provider())
        except Exception:  # a scrape must never fail because of one provider
            log.exception("metrics: cluster limits provider failed")
            return
        families = {
            name: GaugeMetricFamily(name, _help(name), labels=["node", "queue"])
            for name in (
                "oban_pro_queue_global_limit", "oban_pro_queue_global_executing",
                "oban_pro_queue_rate_limit", "oban_pro_queue_rate_window_used",
                "oban_pro_queue_rate_window_remaining",
            )
        }  # fmt: skip
        for row in rows:
            values = {
                "oban_pro_queue_global_limit": row.global_limit,
                "oban_pro_queue_global_executing": row.global_executing,
                "oban_pro_queue_rate_limit": row.rate_limit,
                "oban_pro_queue_rate_window_used": row.rate_window_used,
                "oban_pro_queue_rate_window_remaining": row.rate_window_remaining,
            }
            for name, value in values.items():
                if value is not None:
                    families[name].add_metric([node, row.queue], value)
        yield from families.values()

    def _pool(self, node: str) -> Iterable[Metric]:
        provider = self._m._pool
        if provider is None:
            return
        try:
            snap = provider()
            rss = list(snap.rss.values())
            busy, idle = snap.busy, snap.idle
            children = list(snap.children)
            kills = dict(snap.kills)
            waiting, on_deck = snap.waiting, snap.on_deck
        except Exception:
            log.exception("metrics: pool provider failed")
            return
        yield from self._children(node, children, kills)
        by_state = GaugeMetricFamily(
            "oban_pro_pool_children", _help("oban_pro_pool_children"), labels=["node", "state"]
        )
        by_state.add_metric([node, "busy"], busy)
        by_state.add_metric([node, "idle"], idle)
        yield by_state
        held = GaugeMetricFamily(
            "oban_pro_pool_jobs_waiting", _help("oban_pro_pool_jobs_waiting"),
            labels=["node", "state"],
        )  # fmt: skip
        held.add_metric([node, "line"], waiting)
        held.add_metric([node, "on_deck"], on_deck)
        yield held
        rss_max = GaugeMetricFamily(
            "oban_pro_child_rss_max_bytes", _help("oban_pro_child_rss_max_bytes"), labels=["node"]
        )
        rss_max.add_metric([node], max(rss, default=0))
        yield rss_max
        rss_sum = GaugeMetricFamily(
            "oban_pro_pool_rss_bytes", _help("oban_pro_pool_rss_bytes"), labels=["node"]
        )
        rss_sum.add_metric([node], sum(rss))
        yield rss_sum

    def _children(self, node: str, children: list[Any], kills: dict[str, int]) -> Iterable[Metric]:
        labels = ["node", "child"]
        jobs = GaugeMetricFamily("oban_pro_child_jobs", _help("oban_pro_child_jobs"), labels=labels)
        threads = GaugeMetricFamily(
            "oban_pro_child_threads_busy", _help("oban_pro_child_threads_busy"), labels=labels
        )
        rss = GaugeMetricFamily(
            "oban_pro_child_rss_bytes", _help("oban_pro_child_rss_bytes"), labels=labels
        )
        for child in children:
            key = [node, str(child.slot)]
            jobs.add_metric(key, child.jobs)
            threads.add_metric(key, child.threads_busy)
            rss.add_metric(key, child.rss)
        yield jobs
        yield threads
        yield rss
        family = CounterMetricFamily(
            "oban_pro_job_kills", _help("oban_pro_job_kills_total"), labels=["node", "reason"]
        )
        for reason in KILL_REASONS:
            family.add_metric([node, reason], kills.get(reason, 0))
        yield family


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass


class Metrics:
    """The node's Prometheus metrics. See :data:`METRICS` for what each one means.

    ``registry`` defaults to a fresh ``CollectorRegistry`` owned by this object (never the
    global one, so two nodes in one process do not collide). ``label_limit`` caps the distinct
    ``queue`` and ``worker`` values (each) a node will ever export.

    The recording methods are meant to be called from one thread, the coordinator's event loop:
    per-job state is plain Python numbers with a single writer (that is what makes
    :meth:`job_finished` cost about a microsecond); scrapes read it from the HTTP thread.
    """

    def __init__(
        self, node: str, registry: CollectorRegistry | None = None, *, label_limit: int = 500
    ) -> None:
        self.node = node
        self.registry = registry if registry is not None else CollectorRegistry()
        self._queue_label = _Bounded(label_limit)
        self._worker_label = _Bounded(label_limit)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._last_heartbeat = time.monotonic()
        self._queue_counts: dict[tuple[str, str], int] = {}
        self._workflow_counts: dict[str, int] = {}
        self._producers: ProducersProvider | None = None
        self._cluster_limits: Callable[[], Iterable[ClusterLimitRow]] | None = None
        self._pool: PoolProvider | None = None

        # Hot-path state (see _ScrapeCollector), keyed by (bounded) label values.
        self._jobs: dict[tuple[str, str, str], _Cell] = {}
        self._durations: dict[tuple[str, str], _Hist] = {}
        self._waits: dict[str, _Hist] = {}
        self._fetched: dict[str, _Cell] = {}
        self._fetch_durations: dict[str, _Hist] = {}
        self._ack_sizes = _Hist(ACK_BATCH_BUCKETS)
        self._ack_durations = _Hist(FAST_BUCKETS)
        # Caches from the caller's raw label tuple to the children above.
        self._finished_cache: dict[tuple[str, str, str], tuple[_Cell, _Hist, _Hist]] = {}
        self._fetch_cache: dict[str, tuple[_Cell, _Hist]] = {}

        # Rare events: ordinary prometheus_client metrics with their children resolved once.
        r, n = self.registry, node
        self._acks_stale = Counter(
            "oban_pro_acks_stale", _help("oban_pro_acks_stale_total"), ["node"], registry=r
        ).labels(n)
        self._ack_backlog = Gauge(
            "oban_pro_ack_backlog", _help("oban_pro_ack_backlog"), ["node"], registry=r
        ).labels(n)
        restarts = Counter(
            "oban_pro_child_restarts", _help("oban_pro_child_restarts_total"), ["node", "reason"],
            registry=r,
        )  # fmt: skip
        # Every fixed-set label value exists from the start, so rate()/increase() and alerts see
        # a 0 series rather than a series that appears with its first event.
        self._restarts = {
            reason: restarts.labels(n, reason) for reason in (*RESTART_REASONS, OTHER)
        }
        self._rescued = Counter(
            "oban_pro_jobs_rescued", _help("oban_pro_jobs_rescued_total"), ["node"], registry=r
        ).labels(n)
        self._leader = Gauge(
            "oban_pro_leader", _help("oban_pro_leader"), ["node"], registry=r
        ).labels(n)
        self._notifier_reconnects = Counter(
            "oban_pro_notifier_reconnects", _help("oban_pro_notifier_reconnects_total"), ["node"],
            registry=r,
        ).labels(n)  # fmt: skip
        db_errors = Counter(
            "oban_pro_db_errors", _help("oban_pro_db_errors_total"), ["node", "operation"],
            registry=r,
        )  # fmt: skip
        self._db_errors = {op: db_errors.labels(n, op) for op in (*DB_OPERATIONS, OTHER)}
        r.register(_ScrapeCollector(self))

    # -- per job / per batch (event loop hot path) -------------------------------------------

    def job_finished(
        self, queue: str, worker: str, state: str, duration: float, wait: float
    ) -> None:
        """One attempt ended: ``duration`` seconds in the child, ``wait`` seconds queued."""
        children = self._finished_cache.get((queue, worker, state))
        if children is None:
            children = self._resolve_finished(queue, worker, state)
        jobs, dur, wt = children
        jobs.value += 1
        dur.buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        dur.sum += duration
        if wait < 0.0:  # clock skew between the inserting and the fetching side
            wait = 0.0
        wt.buckets[bisect_left(DURATION_BUCKETS, wait)] += 1
        wt.sum += wait

    def _resolve_finished(self, queue: str, worker: str, state: str) -> tuple[_Cell, _Hist, _Hist]:
        q = self._queue_label(queue)
        w = self._worker_label(worker)
        s = _fixed(state, JOB_STATES)
        jobs = self._jobs.get((q, w, s))
        if jobs is None:
            jobs = self._jobs[(q, w, s)] = _Cell()
        dur = self._durations.get((q, w))
        if dur is None:
            dur = self._durations[(q, w)] = _Hist(DURATION_BUCKETS)
        wt = self._waits.get(q)
        if wt is None:
            wt = self._waits[q] = _Hist(DURATION_BUCKETS)
        children = (jobs, dur, wt)
        # Only tuples that kept their own labels are cached, so the cache is bounded too.
        if (q, w, s) == (queue, worker, state):
            self._finished_cache[(queue, worker, state)] = children
        return children

    def jobs_fetched(self, queue: str, count: int, seconds: float) -> None:
        """One fetch for ``queue`` took ``seconds`` and claimed ``count`` jobs (may be 0)."""
        children = self._fetch_cache.get(queue)
        if children is None:
            q = self._queue_label(queue)
            fetched = self._fetched.get(q)
            if fetched is None:
                fetched = self._fetched[q] = _Cell()
            hist = self._fetch_durations.get(q)
            if hist is None:
                hist = self._fetch_durations[q] = _Hist(FAST_BUCKETS)
            children = (fetched, hist)
            if q == queue:
                self._fetch_cache[queue] = children
        fetched, hist = children
        fetched.value += count
        hist.buckets[bisect_left(FAST_BUCKETS, seconds)] += 1
        hist.sum += seconds

    def ack_batch(self, size: int, seconds: float) -> None:
        """One ack statement wrote ``size`` outcomes in ``seconds``."""
        sizes, durations = self._ack_sizes, self._ack_durations
        sizes.buckets[bisect_left(ACK_BATCH_BUCKETS, size)] += 1
        sizes.sum += size
        durations.buckets[bisect_left(FAST_BUCKETS, seconds)] += 1
        durations.sum += seconds

    def acks_stale(self, count: int) -> None:
        """``count`` acks of a batch were fenced out (the job was no longer ours)."""
        if count:
            self._acks_stale.inc(count)

    def set_ack_backlog(self, n: int) -> None:
        """Outcomes currently buffered and not yet written."""
        self._ack_backlog.set(n)

    # -- occasional events ------------------------------------------------------------------

    def child_restart(self, reason: str) -> None:
        """A child was replaced; ``reason`` is one of :data:`RESTART_REASONS`."""
        self._restarts[_fixed(reason, RESTART_REASONS)].inc()

    def jobs_rescued(self, count: int) -> None:
        """The lifeline rescued ``count`` jobs."""
        if count:
            self._rescued.inc(count)

    def set_leader(self, is_leader: bool) -> None:
        """Leadership gained or lost; losing it also drops the DB-wide queue counts."""
        self._leader.set(1 if is_leader else 0)
        if not is_leader:
            self._queue_counts = {}
            self._workflow_counts = {}

    def notifier_reconnect(self) -> None:
        """The LISTEN connection was re-established."""
        self._notifier_reconnects.inc()

    def db_error(self, operation: str) -> None:
        """A database call failed; ``operation`` is one of :data:`DB_OPERATIONS`."""
        self._db_errors[_fixed(operation, DB_OPERATIONS)].inc()

    def heartbeat_sent(self) -> None:
        """Producer rows were refreshed now (exported as ``oban_pro_heartbeat_age_seconds``)."""
        self._last_heartbeat = time.monotonic()

    def set_queue_counts(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Replace the (queue, state) -> count snapshot (leader only); absent pairs disappear."""
        snapshot: dict[tuple[str, str], int] = {}
        for (queue, state), count in counts.items():
            key = (self._queue_label(queue), _fixed(state, QUEUE_STATES))
            snapshot[key] = snapshot.get(key, 0) + count
        self._queue_counts = snapshot  # one reference swap: a concurrent scrape sees old or new

    def set_workflow_counts(self, counts: Mapping[str, int]) -> None:
        """Replace the state -> workflows snapshot (leader only); absent states disappear."""
        self._workflow_counts = {
            _fixed(state, WORKFLOW_STATES): count for state, count in counts.items()
        }

    # -- scrape-time providers ----------------------------------------------------------------

    def track_producers(self, fn: ProducersProvider) -> None:
        """``fn() -> [(queue, limit, executing, paused), ...]`` for the local queues.

        Called on the HTTP thread at each scrape: it must be quick and return a snapshot.
        """
        self._producers = fn

    def track_cluster_limits(self, fn: Callable[[], Iterable[ClusterLimitRow]]) -> None:
        """``fn() -> [ClusterLimitRow, ...]`` for the local queues with limits across nodes
        (values as last read from the database), called at each scrape."""
        self._cluster_limits = fn

    def track_pool(self, fn: PoolProvider) -> None:
        """``fn() -> PoolSnapshot(busy, idle, rss={pid: bytes})``, called at each scrape."""
        self._pool = fn

    # -- exposition ---------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; return the bound port.

        Port 0 picks a free port. Raises ``OSError`` if the address is taken.
        """
        if self._server is not None:
            raise RuntimeError("metrics endpoint already serving")
        server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
        server = make_server(
            host, port, make_wsgi_app(self.registry), server_class, handler_class=_QuietHandler
        )
        thread = threading.Thread(
            target=server.serve_forever, name=f"oban-pro-metrics:{server.server_port}", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        log.info("metrics: serving http://%s:%d/metrics", host, server.server_port)
        return int(server.server_port)

    @property
    def port(self) -> int | None:
        """The bound port while serving, else None."""
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        """Stop the endpoint (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
