"""soak: three nodes under a mixed workload while a fault injector kills, restarts and pauses;
then proves from the rows and the jobs' own execution log that nothing was lost, nothing ran twice
without a fault to explain it, no stale ack was applied, and nothing leaked.

Nodes are real processes (``python -m oban_pro start``, as the chaos suite runs them: see
``tests/node_runner.py``), serving three queues (``soak``, ``soak_io``, ``soak_risky``). Jobs are
enqueued progressively over ``--minutes`` (``--size`` jobs in all): no-op, CPU-bound, async and
sync I/O, 2% that raise (some until discarded), 1% that crash their process, 1% that time out,
snoozing, cancelling, scheduled and unique jobs (see ``KINDS``). Every execution appends START
and END lines to one log (``bench/soak_workers.py``).

Faults (each recorded with its time and the node / pids it hit): every ``--fault-interval``
seconds a kill -9 of a random node's coordinator (restarted a second later) or of one of its
worker processes (one running a job, when there is one); PostgreSQL restarted twice
(``--pg-outages`` seconds down each: one short, one longer than heartbeat_ttl); once, one node's
coordinator stopped with SIGSTOP for longer than the ttl, then SIGCONT. The ``--spare`` node
(default c) is never killed, so its coordinator lives through the whole run and its RSS, file
descriptors and worker processes can be compared with their level after warm-up; it is the one
paused.

``--processes`` counts worker processes per node (6 by default here); each runs many jobs at
once, up to the queues' limits.

After the drain the checker (``bench/soak_check.py``) classifies every re-execution, checks each
row against the log, and measures the ack loss window at each node kill: the jobs the node had
finished (END line) whose rows were still ``executing`` just after it died, and how long before
the kill they finished. Exit code 1 when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from . import REPO_ROOT, common, soak_check
from .measure import qp
from .soak_workers import TIMEOUT

DEFAULT_SIZE = 200_000

#: kind -> (share of all jobs in %, worker class, queue). The retry of a crash or a timeout waits
#: the engine's default backoff (15 s + 2**attempt): those kinds are enqueued in the first half
#: of the run only, at twice their share, so the drain stays short.
KINDS: dict[str, tuple[float, str, str]] = {
    "noop": (29.5, "Sync", "soak"),
    "cpu": (14.0, "Sync", "soak"),
    "record": (5.0, "Sync", "soak"),
    "sync_io": (12.0, "Sync", "soak_io"),
    "async_io": (15.0, "Async", "soak_io"),
    "slow_io": (0.5, "Sync", "soak_io"),
    "flaky": (1.5, "Sync", "soak"),
    "doomed": (0.5, "Sync", "soak"),
    "crash": (0.8, "Sync", "soak_risky"),
    "poison": (0.2, "Sync", "soak_risky"),
    "timeout": (1.0, "Slow", "soak_risky"),
    "snooze": (3.0, "Sync", "soak"),
    "cancel": (1.0, "Sync", "soak"),
    "scheduled": (8.0, "Sync", "soak"),
    "unique": (8.0, "Sync", "soak"),
}
SLOW_RETRY = ("crash", "poison", "timeout")

TIMINGS = {
    "heartbeat_interval": 1.0,
    "heartbeat_ttl": 5.0,
    "lifeline_interval": 1.0,
    "leader_ttl": 5.0,
    "stage_interval": 0.5,
    "poll_interval": 1.0,
    "gossip_interval": 5.0,
}


@dataclass
class SoakConfig:
    jobs: int = DEFAULT_SIZE
    minutes: float = 10.0  # enqueueing lasts this long; the drain follows
    nodes: int = 3
    processes: int = 6  # worker processes per node
    limits: dict[str, int] = field(
        # soak_risky at 6 (one job per child of the node's 6): each of its timeouts holds a
        # slot for the timeout plus the 3 s kill grace, and at 2 a node the queue fell ~2,800
        # jobs behind over the 10 minutes on the rebuilt pool.
        default_factory=lambda: {"soak": 8, "soak_io": 8, "soak_risky": 6}
    )
    warmup: float = 30.0  # no faults before; leak baselines taken this long after a node is ready
    fault_interval: float = 20.0
    pg_outages: tuple[float, ...] = (2.0, 8.0)
    pause_seconds: float | None = None  # default: 2 * heartbeat_ttl + 2
    pause: bool = True
    spare: str | None = "c"
    restart_delay: float = 1.0
    tail: float = 10.0  # no faults in the last seconds of the enqueue window
    drain_timeout: float = 120.0  # give up after this long without a job finishing
    seed: int = 1
    timings: dict[str, float] = field(default_factory=lambda: dict(TIMINGS))
    #: Explicit fault plan [(seconds after start, kind, argument)]; replaces the generated one.
    plan: list[tuple[float, str, float | None]] | None = None
    scheduled_max: float = 30.0
    ack_bound: float = 10.0
    metrics: bool = True
    sample_every: float = 2.0
    rss_tolerance_mib: float = 16.0
    rss_tolerance_ratio: float = 0.25
    fd_tolerance: int = 2
    quiet: bool = False

    @property
    def duration(self) -> float:
        return self.minutes * 60.0

    @property
    def pause_for(self) -> float:
        ttl = self.timings["heartbeat_ttl"]
        return self.pause_seconds if self.pause_seconds is not None else 2 * ttl + 2

    @property
    def names(self) -> list[str]:
        return [chr(ord("a") + i) for i in range(self.nodes)]


# -- the fault plan ---------------------------------------------------------------------------


def build_plan(cfg: SoakConfig, rng: random.Random) -> list[tuple[float, str, float | None]]:
    """When each fault happens (seconds after the start): PostgreSQL restarts and the pause at
    fixed fractions of the fault window, a node or worker kill every ``fault_interval`` in
    between (not within a few seconds of a fixed one)."""
    if cfg.plan is not None:
        return sorted(cfg.plan)
    start, end = cfg.warmup, cfg.duration - cfg.tail
    if end <= start:
        return []
    fixed: list[tuple[float, str, float | None]] = []
    specials: list[tuple[str, float | None]] = [("pg_restart", s) for s in cfg.pg_outages]
    if cfg.pause:
        specials.insert(len(specials) // 2 + (len(specials) % 2), ("pause", cfg.pause_for))
    for i, (kind, arg) in enumerate(specials):
        fixed.append((start + (end - start) * (i + 1) / (len(specials) + 1), kind, arg))
    plan = list(fixed)
    t = start + cfg.fault_interval / 2
    while t < end:
        busy = any(
            at - 5.0 <= t <= at + (arg or 0.0) + cfg.timings["heartbeat_ttl"] + 5.0
            for at, _k, arg in fixed
        )
        if not busy:
            plan.append((t, "node_kill" if rng.random() < 0.5 else "child_kill", None))
        t += cfg.fault_interval * rng.uniform(0.8, 1.2)
    return sorted(plan)


# -- processes (from /proc: no psutil) ---------------------------------------------------------


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process, zombies included."""
    out: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(entry)] = (int(fields[1]), fields[0])
    return out


def _children(table: dict[int, tuple[int, str]], pid: int) -> list[int]:
    return [p for p, (ppid, _state) in table.items() if ppid == pid]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def node_processes(coordinator: int) -> dict[str, Any]:
    """The coordinator's worker processes (children of its forkserver), every descendant and
    the zombies among them."""
    table = proc_table()
    descendants, todo = [], [coordinator]
    while todo:
        for child in _children(table, todo.pop()):
            descendants.append(child)
            todo.append(child)
    servers = [p for p in _children(table, coordinator) if "forkserver" in _cmdline(p)]
    workers = [
        p for s in servers for p in _children(table, s) if table.get(p, (0, "Z"))[1] not in "ZX"
    ]
    zombies = [p for p in descendants if table[p][1] in "ZX"]
    return {"workers": workers, "descendants": descendants, "zombies": zombies}


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The counters the soak reports, from a node's /metrics (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as resp:
            text = resp.read().decode()
    except (OSError, ValueError):
        return {}
    out: dict[str, float] = {}
    wanted = {
        "oban_pro_acks_stale_total": None,
        "oban_pro_jobs_rescued_total": None,
        "oban_pro_child_restarts_total": "reason",
        "oban_pro_db_errors_total": "operation",
        "oban_pro_jobs_total": "state",
        "oban_pro_notifier_reconnects_total": None,
    }
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, rest = line.partition("{")
        name = name.split()[0]
        if name not in wanted:
            continue
        value = float(line.rsplit(" ", 1)[1])
        label = wanted[name]
        key = name.removeprefix("oban_pro_").removesuffix("_total")
        if label:
            marker = f'{label}="'
            at = rest.find(marker)
            if at < 0:
                continue
            key += ":" + rest[at + len(marker) :].split('"', 1)[0]
        out[key] = out.get(key, 0.0) + value
    return out


# -- nodes -------------------------------------------------------------------------------------


@dataclass
class Incarnation:
    """One life of a node: from its start to its kill -9 (or the end of the run)."""

    name: str
    number: int
    proc: Any  # node_runner.NodeProcess
    port: int | None
    started_at: float
    ready_at: float = 0.0
    killed_at: float | None = None
    paused: bool = False
    samples: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def label(self) -> str:
        return f"{self.name}#{self.number}"


def _in_chunks(client: Any, jobs: list[Any], size: int = 50) -> list[Any]:
    """Unique jobs, one transaction per ``size``: each holds its keys' advisory locks until it
    commits, so a long batch would stall the racing connection (and the enqueue rate) for long."""
    out: list[Any] = []
    for i in range(0, len(jobs), size):
        out += client.enqueue_many(jobs[i : i + size])
    return out


class Gate:
    """A readers-writer lock: inserts share it; a PostgreSQL restart waits for them to end and
    holds it alone (an insert that fails mid-commit could not tell whether it committed)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Soak:
    """One run: nodes, enqueuer, fault injector, sampler; then the checks."""

    def __init__(
        self,
        cfg: SoakConfig,
        dsn: str,
        prefix: str,
        workdir: Path,
        restart_db: Callable[[float], None] | None,
    ) -> None:
        self.cfg = cfg
        self.dsn = dsn
        self.prefix = prefix
        self.workdir = workdir
        self.log_path = str(workdir / "executions.log")
        self.restart_db = restart_db
        self.rng = random.Random(cfg.seed)
        self.lock = threading.RLock()
        self.gate = Gate()  # shared by the inserts of a batch, exclusive for a restart
        self.stop = threading.Event()
        self.live: dict[str, Incarnation] = {}
        self.incarnations: list[Incarnation] = []
        self.numbers: Counter[str] = Counter()
        self.faults: list[dict[str, Any]] = []
        self.enqueued: dict[int, str] = {}
        self.uniques: dict[str, list[tuple[int, bool]]] = {}
        self.enqueue_errors: list[str] = []
        self.insert_seconds: list[float] = []  # per batch
        self.enqueued_until = 0.0  # when the last batch went in
        self.timeline: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.enqueue_done = threading.Event()
        self.inject_done = threading.Event()
        self.thread_errors: list[str] = []

    # -- nodes ----------------------------------------------------------------------------

    def start_node(self, name: str) -> Incarnation:
        from node_runner import NodeProcess  # tests/node_runner.py (on sys.path: see run_soak)

        self.numbers[name] += 1
        number = self.numbers[name]
        logdir = self.workdir / f"{name}.{number}"
        logdir.mkdir(parents=True, exist_ok=True)
        port = free_port() if self.cfg.metrics else None
        settings: dict[str, Any] = dict(self.cfg.timings)
        settings["log_format"] = "json"
        if port is not None:
            settings["metrics_port"] = port
        proc = NodeProcess(
            self.dsn,
            self.prefix,
            name,
            logdir,
            queues=",".join(f"{q}:{n}" for q, n in self.cfg.limits.items()),
            processes=self.cfg.processes,
            imports=["bench.soak_workers"],
            shutdown_timeout=5.0,
            settings=settings,
            env={"SOAK_NODE": name},
        )
        inc = Incarnation(name, number, proc, port, time.time())
        with self.lock:
            self.incarnations.append(inc)
        proc.start()
        proc.wait_ready(90)
        inc.ready_at = time.time()
        with self.lock:
            self.live[name] = inc
        return inc

    def sample(self, inc: Incarnation) -> dict[str, Any] | None:
        if inc.paused or inc.killed_at is not None:
            return None
        pid = inc.proc.pid
        procs = node_processes(pid)
        inc.proc.remember_tree()
        got = {
            "t": time.time(),
            "rss_kib": rss_kib(pid),
            "fds": open_fds(pid),
            "workers": len(procs["workers"]),
            "zombies": len(procs["zombies"]),
            "descendants": len(procs["descendants"]),
        }
        if inc.port is not None and not inc.paused:
            metrics = scrape(inc.port)
            if metrics:
                inc.metrics = metrics
        inc.samples.append(got)
        return got

    # -- database probes ------------------------------------------------------------------

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql.replace("{p}", qp(self.prefix)), params)
            return cur.fetchall() if cur.description else []

    def leader(self) -> str | None:
        with contextlib.suppress(Exception):
            rows = self.query(
                "SELECT node FROM {p}.oban_leaders WHERE expires_at >= timezone('UTC', now())"
            )
            return rows[0][0] if rows else None
        return None

    def executing_on(self, inc: Incarnation) -> list[tuple[int, int]]:
        return [
            (int(r[0]), int(r[1]))
            for r in self.query(
                "SELECT id, attempt FROM {p}.oban_jobs WHERE state = 'executing' "
                "AND attempted_by[1] = %s AND extract(epoch FROM attempted_at) >= %s",
                (inc.name, inc.started_at - 1.0),
            )
        ]

    def state_counts(self) -> dict[str, int]:
        return {
            str(s): int(n)
            for s, n in self.query("SELECT state::text, count(*) FROM {p}.oban_jobs GROUP BY 1")
        }

    # -- enqueueing -----------------------------------------------------------------------

    def _new_job(self, kind: str, seq: int, batch: int) -> Any:
        from . import soak_workers as w

        _share, worker, queue = KINDS[kind]
        cls: Any = {"Sync": w.Sync, "Async": w.Async, "Slow": w.Slow}[worker]
        rng = self.rng
        args: dict[str, Any] = {"k": kind, "log": self.log_path, "seq": seq, "b": batch}
        opts: dict[str, Any] = {"queue": queue}
        if kind == "cpu":
            args["ms"] = round(rng.uniform(5, 20), 1)
        elif kind == "record":
            args["ms"] = round(rng.uniform(1, 3), 1)
        elif kind in ("sync_io", "async_io"):
            args["ms"] = round(rng.uniform(1, 25), 1)
        elif kind == "slow_io":
            args["ms"] = round(rng.uniform(100, 500), 1)
        elif kind == "flaky":
            args["fails"] = rng.choice((1, 2))
        elif kind == "doomed":
            opts["max_attempts"] = 3
        elif kind == "scheduled":
            at = time.time() + rng.uniform(1.0, self.cfg.scheduled_max)
            args["at"] = at
            opts["scheduled_at"] = datetime.fromtimestamp(at, UTC)
        return cls.new(args, **opts)

    def _unique_job(self, key: str, seq: int, batch: int) -> Any:
        from .soak_workers import Sync

        args = {"k": "unique", "log": self.log_path, "u": key, "seq": seq, "b": batch}
        return Sync.new(args, queue="soak", unique={"period": 3600, "keys": ["u"]})  # type: ignore[attr-defined]

    def _pick_kind(self, first_half: bool) -> str:
        kinds = list(KINDS)
        weights = [
            KINDS[k][0] * (2.0 if first_half else 0.0) if k in SLOW_RETRY else KINDS[k][0]
            for k in kinds
        ]
        return self.rng.choices(kinds, weights)[0]

    def enqueue_loop(self) -> None:
        from oban_pro import Client

        cfg = self.cfg
        clients = [Client(self.dsn, prefix=self.prefix) for _ in range(3)]
        done = seq = batch = 0
        again: list[tuple[float, str]] = []  # unique keys to insert once more, and when
        try:
            while not self.stop.is_set():
                elapsed = time.time() - self.t0
                target = (
                    cfg.jobs if elapsed >= cfg.duration else int(cfg.jobs * elapsed / cfg.duration)
                )
                n = target - done
                now = time.time()
                repeat = [k for at, k in again if at <= now]
                if n > 0 or repeat:
                    batch += 1
                    plain, fresh = [], []
                    for _ in range(n):
                        seq += 1
                        kind = self._pick_kind(elapsed < cfg.duration / 2)
                        if kind == "unique":
                            fresh.append(self._unique_job(f"u{seq}", seq, batch))
                        else:
                            plain.append(self._new_job(kind, seq, batch))
                    again = [(at, k) for at, k in again if at > now]
                    repeat_jobs = [self._unique_job(k, 0, batch) for k in repeat]
                    self._insert(clients, plain, fresh, repeat_jobs, batch)
                    again += [(now + self.rng.uniform(0.5, 3.0), j.args["u"]) for j in fresh]
                    done = target
                    self.enqueued_until = time.time()
                if done >= cfg.jobs and not again:
                    break
                time.sleep(0.25)
        except Exception as exc:  # noqa: BLE001 - reported in the verdict
            self.thread_errors.append(f"enqueuer: {exc!r}")
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    c.close()
            self.enqueue_done.set()

    def _insert(
        self, clients: list[Any], plain: list[Any], fresh: list[Any], repeat: list[Any], batch: int
    ) -> None:
        """One batch, three connections at once: the plain jobs; the new unique keys and the
        repeats of earlier ones; a quarter of the new keys again, racing the first insert
        (their advisory locks must make one row of each key)."""
        racing = [self._clone(j) for j in fresh[: (len(fresh) + 3) // 4]]
        steps = [
            (plain, lambda: clients[0].enqueue_many(plain) if plain else []),
            ([], lambda: _in_chunks(clients[1], fresh + repeat)),
            ([], lambda: _in_chunks(clients[2], racing)),
        ]
        results: list[Any] = [None] * len(steps)

        def one(i: int) -> None:
            try:
                results[i] = self._retry(batch, steps[i][1], steps[i][0], clients[i])
            except Exception as exc:  # noqa: BLE001 - re-raised below
                results[i] = exc

        started = time.perf_counter()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(steps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.insert_seconds.append(time.perf_counter() - started)
        for got in results:
            if isinstance(got, BaseException):
                raise got
        with self.lock:
            for got in results:
                for job in got:
                    if job.args["k"] != "unique":
                        self.enqueued[job.id] = job.args["k"]
                        continue
                    self.uniques.setdefault(job.args["u"], []).append((job.id, job.conflict))
                    if not job.conflict:
                        self.enqueued[job.id] = "unique"

    def _retry(self, batch: int, step: Callable[[], Any], plain: list[Any], client: Any) -> Any:
        """Run one insert step (sharing the gate with the other inserts); after a database
        error reconnect and retry, unless the plain jobs turn out to have committed after all."""
        for attempt in range(60):
            with self.gate.shared():
                try:
                    return step()
                except (psycopg.Error, OSError) as exc:
                    self.enqueue_errors.append(f"batch {batch} attempt {attempt}: {exc!r}")
                    with contextlib.suppress(Exception):
                        client.close()
                    if self._recover(batch, plain):
                        return []
            time.sleep(0.5)
        raise RuntimeError(f"batch {batch} could not be enqueued: {self.enqueue_errors[-1]}")

    def _clone(self, job: Any) -> Any:
        return self._unique_job(job.args["u"], job.args["seq"], job.args["b"])

    def _recover(self, batch: int, plain: list[Any]) -> bool:
        """After a failed batch: did its plain jobs commit after all? (Then keep their ids.)"""
        if not plain:
            return False
        with contextlib.suppress(Exception):
            rows = self.query(
                "SELECT id, args->>'k' FROM {p}.oban_jobs WHERE args->>'b' = %s "
                "AND args->>'k' <> 'unique'",
                (str(batch),),
            )
            if rows:
                with self.lock:
                    for job_id, kind in rows:
                        self.enqueued[int(job_id)] = str(kind)
                return True
        return False

    # -- faults ---------------------------------------------------------------------------

    def inject_loop(self, plan: list[tuple[float, str, float | None]]) -> None:
        try:
            for at, kind, arg in plan:
                while not self.stop.is_set() and time.time() < self.t0 + at:
                    time.sleep(0.05)
                if self.stop.is_set():
                    return
                try:
                    getattr(self, f"_do_{kind}")(arg)
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    self.faults.append({"kind": kind, "at": time.time(), "failed": repr(exc)})
        finally:
            self.inject_done.set()

    def _record(self, fault: dict[str, Any]) -> dict[str, Any]:
        fault["t"] = round(fault["at"] - self.t0, 3)
        with self.lock:
            self.faults.append(fault)
        return fault

    def _targets(self, killable: bool) -> list[Incarnation]:
        with self.lock:
            return [
                inc
                for name, inc in sorted(self.live.items())
                if not inc.paused and not (killable and name == self.cfg.spare)
            ]

    def _do_node_kill(self, _arg: Any) -> None:
        targets = self._targets(killable=True)
        if not targets:
            return
        inc = self.rng.choice(targets)
        leader = self.leader()
        with self.lock:
            del self.live[inc.name]
        pids = sorted(inc.proc.worker_pids())
        at = inc.proc.kill9()
        inc.killed_at = at
        fault = self._record(
            {
                "kind": "node_kill",
                "at": at,
                "node": inc.name,
                "incarnation": inc.label,
                "pid": inc.proc.pid,
                "pids": pids,
                "was_leader": leader == inc.name,
            }
        )
        time.sleep(0.5)  # an ack statement in flight at the kill has committed by now
        fault["executing_after_kill"] = self.executing_on(inc)
        time.sleep(max(0.0, self.cfg.restart_delay - 0.5))
        new = self.start_node(inc.name)
        fault["restarted_at"] = new.ready_at
        fault["restarted_as"] = new.label

    def _do_child_kill(self, _arg: Any) -> None:
        targets = self._targets(killable=False)
        if not targets:
            return
        inc = self.rng.choice(targets)
        for _ in range(5):  # the worker picked may die by itself (a crash job) meanwhile
            workers = node_processes(inc.proc.pid)["workers"]
            if not workers:
                return
            inc.proc.remember_tree()
            busy = sorted(set(workers) & self._busy_pids(inc.name))
            pid = self.rng.choice(busy or sorted(workers))
            at = time.time()  # before the kill: the engine may log the death before we look
            try:
                os.kill(pid, signal.SIGKILL)
                break
            except ProcessLookupError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"every worker of node {inc.name} picked died before the kill")
        self._record(
            {
                "kind": "child_kill",
                "at": at,
                "node": inc.name,
                "incarnation": inc.label,
                "pid": pid,
            }
        )

    def _busy_pids(self, node: str) -> set[int]:
        """Worker pids of ``node`` running a job now, by the tail of the execution log (a START
        with no END yet): a kill there interrupts a job, which an idle worker's would not."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, os.path.getsize(self.log_path) - (1 << 18)))
                tail = log.read().decode(errors="replace").splitlines()[1:]
        except OSError:
            return set()
        running: dict[tuple[str, str], str] = {}
        for line in tail:
            parts = line.split()
            if len(parts) == 9 and parts[5] == node:
                key = (parts[1], parts[6])
                if parts[0] == "S":
                    running[key] = parts[6]
                else:
                    running.pop(key, None)
        return {int(pid) for pid in running.values()}

    def _do_pg_restart(self, outage: float | None) -> None:
        if self.restart_db is None:
            self._record({"kind": "pg_restart_skipped", "at": time.time(),
                          "why": "external server and no --restart-command"})  # fmt: skip
            return
        with self.gate.exclusive():
            at = time.time()
            self.restart_db(float(outage or 0.0))
            until = time.time()
        self._record({"kind": "pg_restart", "at": at, "until": until, "outage": until - at})

    def _do_pause(self, seconds: float | None) -> None:
        seconds = float(seconds or self.cfg.pause_for)
        with self.lock:
            spare = self.live.get(self.cfg.spare or "")
            inc = spare if spare is not None else self.rng.choice(list(self.live.values()))
        leader = self.leader()
        deadline = time.time() + 5.0  # pause it while it runs jobs (so some get rescued)
        held = self.executing_on(inc)
        while not held and time.time() < deadline:
            time.sleep(0.05)
            held = self.executing_on(inc)
        inc.paused = True
        os.kill(inc.proc.pid, signal.SIGSTOP)
        at = time.time()
        try:
            time.sleep(seconds)
        finally:
            os.kill(inc.proc.pid, signal.SIGCONT)
            until = time.time()
            inc.paused = False
        rescued = 0
        if held:
            with contextlib.suppress(Exception):
                rows = self.query(
                    "SELECT count(*) FROM {p}.oban_jobs WHERE id = ANY(%s) AND meta ? 'rescued'",
                    ([i for i, _a in held],),
                )
                rescued = int(rows[0][0])
        self._record(
            {
                "kind": "pause",
                "at": at,
                "until": until,
                "node": inc.name,
                "incarnation": inc.label,
                "pid": inc.proc.pid,
                "was_leader": leader == inc.name,
                "executing_at_pause": len(held),
                "of_them_rescued_by_sigcont": rescued,
            }
        )

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        plan = build_plan(cfg, self.rng)
        for name in cfg.names:  # the first one started becomes the leader
            self.start_node(name)
        self.t0 = time.time()
        threads = [
            threading.Thread(target=self.enqueue_loop, name="soak-enqueue", daemon=True),
            threading.Thread(target=self.inject_loop, args=(plan,), name="soak-faults",
                             daemon=True),
        ]  # fmt: skip
        for t in threads:
            t.start()
        progress = _ProgressLine(cfg.quiet)
        drained_at: float | None = None
        finished, moved_at = -1, time.time()
        try:
            last_sample = 0.0
            last_count = 0.0
            counts: dict[str, int] = {}
            while True:
                now = time.time()
                if now - last_sample >= cfg.sample_every:
                    last_sample = now
                    for inc in list(self.live.values()):
                        with contextlib.suppress(Exception):
                            self.sample(inc)
                if now - last_count >= 2.0:
                    last_count = now
                    with contextlib.suppress(Exception):
                        counts = self.state_counts()
                        self.timeline.append({"t": round(now - self.t0, 2), **counts})
                    progress.show(self._progress_text(now, counts))
                    done_now = sum(counts.get(s, 0) for s in soak_check.FINAL)
                    if done_now != finished:
                        finished, moved_at = done_now, now
                busy = sum(counts.get(s, 0) for s in ("available", "executing", "scheduled",
                                                      "retryable"))  # fmt: skip
                if self.enqueue_done.is_set() and self.inject_done.is_set():
                    if drained_at is None:
                        drained_at = now
                    if busy == 0 and counts and now - last_count < 0.1:
                        break
                    # Give up when nothing has finished for drain_timeout seconds (a job may
                    # wait ~25 s for a retry), or after the enqueue window again.
                    stalled = now - moved_at > cfg.drain_timeout
                    if stalled or now - drained_at > max(600.0, cfg.duration):
                        break
                time.sleep(0.1)
            end_of_drain = time.time()
            time.sleep(2.0)  # idle: let the last replacements settle before the final samples
            final: dict[str, dict[str, Any]] = {}
            for inc in list(self.live.values()):
                got = None
                for _ in range(3):
                    got = self.sample(inc) or got
                    time.sleep(0.5)
                if got:
                    final[inc.label] = got
        finally:
            self.stop.set()
            progress.close()
            for t in threads:
                t.join(timeout=60)
            self._stop_nodes()
        return self._verdict(plan, final, end_of_drain)

    def _progress_text(self, now: float, counts: dict[str, int]) -> str:
        finished = sum(counts.get(s, 0) for s in soak_check.FINAL)
        with self.lock:
            faults = Counter(f["kind"] for f in self.faults)
            last = self.faults[-1] if self.faults else None
        last_text = f" last: {last['kind']} {last.get('node', '')}".rstrip() if last else ""
        return (
            f"soak {now - self.t0:5.0f}s  enqueued {len(self.enqueued):,}/{self.cfg.jobs:,}  "
            f"finished {finished:,}  executing {counts.get('executing', 0)}  "
            f"waiting {counts.get('available', 0) + counts.get('scheduled', 0) + counts.get('retryable', 0)}  "  # noqa: E501
            f"faults {sum(faults.values())}{last_text}"
        )

    def _stop_nodes(self) -> None:
        for inc in list(self.live.values()):
            with contextlib.suppress(Exception):
                if inc.paused:
                    os.kill(inc.proc.pid, signal.SIGCONT)
                inc.proc.terminate()
        for inc in list(self.live.values()):
            try:
                inc.exit_code = inc.proc.wait(30)
            except Exception:  # noqa: BLE001 - reported as no exit code
                inc.exit_code = None

    # -- the verdict ----------------------------------------------------------------------

    def _verdict(
        self, plan: list[Any], final: dict[str, dict[str, Any]], end_of_drain: float
    ) -> dict[str, Any]:
        cfg = self.cfg
        time.sleep(1.0)  # orphaned worker processes of killed nodes exit by themselves
        left_behind = {
            inc.label: inc.proc.known_alive() for inc in self.incarnations if inc.proc.known_alive()
        }
        for inc in self.incarnations:
            with contextlib.suppress(Exception):
                inc.proc.stop()
        state = {
            "dsn": self.dsn,
            "prefix": self.prefix,
            "ack_bound": cfg.ack_bound,
            # after SIGCONT a node heartbeats again within an interval (+ a connect timeout);
            # until then the leader may still rescue what it runs
            "wake": cfg.timings["heartbeat_interval"] + cfg.timings["lifeline_interval"] + 3.0,
            "enqueued": self.enqueued,
            "uniques": self.uniques,
            "faults": self.faults,
        }
        (self.workdir / "state.json").write_text(json.dumps(state, default=str))
        check, ack_window, deaths = verdict_of(self.workdir, state)
        leaks = self._leaks(final)
        exit_codes = {i.label: i.exit_code for i in self.incarnations if i.killed_at is None}
        failures = dict(check["failures"])
        for label, leak in leaks.items():
            for what in ("rss", "fds", "workers", "zombies"):
                if not leak.get(f"{what}_ok", True):
                    failures[f"leak: {label} {what}"] = 1
        if left_behind:
            failures["processes of killed nodes left behind"] = sum(map(len, left_behind.values()))
        bad_exit = {k: c for k, c in exit_codes.items() if c != 0}
        if bad_exit:
            failures["nodes that did not stop cleanly (SIGTERM)"] = len(bad_exit)
        if self.thread_errors:
            failures["driver errors"] = len(self.thread_errors)
        injected = Counter(f["kind"] for f in self.faults)
        if any("failed" in f for f in self.faults):
            failures["faults that could not be injected"] = sum(
                1 for f in self.faults if "failed" in f
            )
        metrics: Counter[str] = Counter()
        for inc in self.incarnations:
            metrics.update(inc.metrics)
        elapsed = end_of_drain - self.t0
        return {
            "ok": not failures,
            "failures": failures,
            "check": check,
            "ack_window": ack_window,
            "leaks": leaks,
            "left_behind": left_behind,
            "exit_codes": exit_codes,
            "faults": self.faults,
            "faults_by_kind": dict(injected),
            "plan": plan,
            "engine_deaths": len(deaths),
            "metrics": dict(metrics),
            "enqueue_errors": self.enqueue_errors[:50],
            "enqueue": {
                "window_s": cfg.duration,
                "last_batch_at_s": round(self.enqueued_until - self.t0, 1),
                "batches": len(self.insert_seconds),
                "batch_p50_s": soak_check.percentile(self.insert_seconds, 50),
                "batch_p99_s": soak_check.percentile(self.insert_seconds, 99),
            },
            "driver_errors": self.thread_errors,
            "timeline": self.timeline,
            "incarnations": [
                {
                    "label": i.label,
                    "started_at": i.started_at - self.t0,
                    "killed_at": None if i.killed_at is None else i.killed_at - self.t0,
                    "samples": len(i.samples),
                }
                for i in self.incarnations
            ],
            "seconds": elapsed,
            "jobs_per_second": check["jobs"] / elapsed if elapsed > 0 else math.nan,
            "executions_per_second": check["executions"] / elapsed if elapsed > 0 else math.nan,
            "workdir": str(self.workdir),
        }

    def _leaks(self, final: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        cfg = self.cfg
        out: dict[str, dict[str, Any]] = {}
        for inc in self.incarnations:
            end = final.get(inc.label)
            if end is None:
                continue
            quiet = [
                smp for smp in inc.samples
                if smp["rss_kib"] and not self._disturbed(smp["t"])
            ]  # fmt: skip
            base = next((smp for smp in quiet if smp["t"] >= inc.ready_at + cfg.warmup), None)
            if base is None:
                out[inc.label] = {"baseline": None, "end": end, "note": "lived < warm-up"}
                continue
            # fds: the most seen up to the baseline (the pool opens connections on demand)
            base_fds = max(smp["fds"] for smp in quiet if smp["t"] <= base["t"])
            peak = max(smp["rss_kib"] for smp in inc.samples)
            allowed = base["rss_kib"] * (1 + cfg.rss_tolerance_ratio) + cfg.rss_tolerance_mib * 1024
            out[inc.label] = {
                "baseline_at_s": round(base["t"] - self.t0, 1),
                "rss_mib": [round(base["rss_kib"] / 1024, 1), round(end["rss_kib"] / 1024, 1)],
                "rss_peak_mib": round(peak / 1024, 1),
                "fds": [base_fds, end["fds"]],
                "fds_peak": max(s["fds"] for s in inc.samples),
                "workers": [base["workers"], end["workers"]],
                "zombies": [base["zombies"], end["zombies"]],
                "rss_ok": end["rss_kib"] <= allowed,
                "fds_ok": end["fds"] <= base_fds + cfg.fd_tolerance,
                "workers_ok": end["workers"] == cfg.processes,
                "zombies_ok": end["zombies"] == 0,
                "lived_s": round(end["t"] - inc.ready_at, 1),
                "jobs_run": int(sum(v for k, v in inc.metrics.items() if k.startswith("jobs:"))),
            }
        return out

    def _disturbed(self, t: float) -> bool:
        """Whether ``t`` falls in (or just after) a PostgreSQL outage or the pause: connection
        counts are not at their level then."""
        for f in self.faults:
            if f["kind"] in ("pg_restart", "pause") and f["at"] - 1.0 <= t <= f["until"] + 10.0:
                return True
        return False


# -- reading a run back ------------------------------------------------------------------------


def verdict_of(workdir: Path, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list]:
    """The checker's verdict and the ack loss window of a finished run: its rows (from the
    schema), its execution log and node logs (in ``workdir``) and the driver's ``state``."""
    rows = read_rows(state["dsn"], state["prefix"])
    with open(workdir / "executions.log") as log:
        execs, anomalies = soak_check.parse_log(log)
    deaths = engine_deaths(sorted(workdir.glob("*.*/node-*.log")))
    faults = state["faults"]
    check = soak_check.check(
        rows=rows,
        execs=execs,
        enqueued={int(k): v for k, v in state["enqueued"].items()},
        uniques={k: [tuple(x) for x in v] for k, v in state["uniques"].items()},
        faults=faults,
        deaths=deaths,
        log_anomalies=anomalies,
        settings=soak_check.CheckSettings(
            ack_bound=float(state["ack_bound"]),
            timeout=TIMEOUT,
            rescue_slack=float(state.get("wake", 10.0)),
        ),
    )
    kills = []
    for f in faults:
        if f["kind"] == "node_kill" and "executing_after_kill" in f:
            w = soak_check.ack_window_at_kill(
                f["at"], f["node"], [tuple(x) for x in f["executing_after_kill"]], execs
            )
            kills.append({"t": f["t"], "node": f["node"], "was_leader": f["was_leader"], **w})
    delays = [d for k in kills for d in k["unacked_for_s"]]
    ack_window = {
        "kills": len(kills),
        "finished_unacked": sum(k["finished_unacked"] for k in kills),
        "per_kill": [k["finished_unacked"] for k in kills],
        "running_at_kill": sum(k["running"] for k in kills),
        "fetched_not_started": sum(k["fetched_not_started"] for k in kills),
        "p50_s": soak_check.percentile(delays, 50),
        "p99_s": soak_check.percentile(delays, 99),
        "max_s": max(delays) if delays else math.nan,
        "detail": kills,
    }
    return check, ack_window, deaths


def recheck(workdir: str | Path) -> dict[str, Any]:
    """Run the checks again on a kept run (``--keep``, or any failed run): ``--recheck DIR``."""
    work = Path(workdir)
    state = json.loads((work / "state.json").read_text())
    check, ack_window, _deaths = verdict_of(work, state)
    return {"check": check, "ack_window": ack_window}


def read_rows(dsn: str, prefix: str) -> dict[int, soak_check.Row]:
    out: dict[int, soak_check.Row] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT id, state::text, args, meta, to_jsonb(errors), attempt, max_attempts, "
            "attempted_by, extract(epoch FROM completed_at)::float8, "
            "extract(epoch FROM discarded_at)::float8, extract(epoch FROM cancelled_at)::float8 "
            f"FROM {qp(prefix)}.oban_jobs"
        )
        for r in cur.fetchall():
            args = r[2] or {}
            out[int(r[0])] = soak_check.Row(
                id=int(r[0]),
                state=r[1],
                kind=str(args.get("k", "?")),
                attempt=int(r[5]),
                max_attempts=int(r[6]),
                args=args,
                meta=r[3] or {},
                errors=list(r[4] or []),
                node=(r[7] or [None])[0],
                completed_at=r[8],
                discarded_at=r[9],
                cancelled_at=r[10],
            )
    return out


_KILLED = re.compile(r"killed worker process (\d+) \((\w+)\)")
_DIED = re.compile(r"worker process (\d+) (?:died running job|closed its pipe)")
_IDLE = re.compile(r"idle worker process (\d+) died")


def engine_deaths(logs: list[Path]) -> list[dict[str, Any]]:
    """Worker processes the engine saw die or killed, from the nodes' JSON logs
    (``<workdir>/<node>.<n>/node-<node>.log``)."""
    out = []
    for path in logs:
        node = path.name.removeprefix("node-").removesuffix(".log")
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if "worker process" not in line or not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            msg = entry.get("message", "")
            at = soak_check.iso_to_unix(entry.get("time"))
            for pattern, reason in ((_KILLED, None), (_DIED, "died"), (_IDLE, "idle died")):
                m = pattern.search(msg)
                if m and at is not None:
                    out.append({"node": node, "pid": int(m.group(1)), "at": at,
                                "reason": reason or m.group(2)})  # fmt: skip
                    break
    return out


class _ProgressLine:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text[:200])
            sys.stderr.flush()
        elif time.time() - self.last >= 10.0:
            self.last = time.time()
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- entry points ------------------------------------------------------------------------------


def embedded_restarter(embedded: Any) -> Callable[[float], None]:
    def restart(outage: float) -> None:
        embedded.stop()
        try:
            time.sleep(outage)
        finally:
            embedded.start()

    return restart


def command_restarter(command: str) -> Callable[[float], None]:
    def restart(outage: float) -> None:
        env = dict(os.environ, SOAK_OUTAGE=str(outage))
        subprocess.run(command, shell=True, check=True, env=env, timeout=300)

    return restart


def run_soak(
    cfg: SoakConfig,
    dsn: str,
    *,
    restart_db: Callable[[float], None] | None,
    workdir: Path | None = None,
    prefix: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run one soak in a fresh schema (dropped afterwards unless it failed or ``keep``)."""
    from oban_pro.migrations import migrate_up

    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    own_dir = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="oban-soak-"))
    prefix = prefix or common.new_prefix("soak")
    migrate_up(dsn, prefix=prefix)
    soak = Soak(cfg, dsn, prefix, work, restart_db)
    result: dict[str, Any] = {}
    try:
        result = soak.run()
    finally:
        if result.get("ok") and not keep:
            with contextlib.suppress(Exception):
                common.drop_schema(dsn, prefix)
            if own_dir:
                shutil.rmtree(work, ignore_errors=True)
    result["prefix"] = prefix
    result["config"] = {k: v for k, v in asdict(cfg).items()}
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=10.0, help="enqueue for this long (10)")
    parser.add_argument("--nodes", type=int, default=3, help="node processes (3)")
    parser.add_argument("--fault-interval", type=float, default=20.0, help="seconds (20)")
    parser.add_argument(
        "--pg-outages",
        default="2,8",
        help="seconds PostgreSQL stays down in each restart, comma-separated ('2,8'; '' = none)",
    )
    parser.add_argument(
        "--pause-seconds", type=float, default=None, help="SIGSTOP length (2 x ttl + 2)"
    )
    parser.add_argument("--no-pause", action="store_true", help="no SIGSTOP of a coordinator")
    parser.add_argument("--spare", default="c", help="node never killed (c; '' = none)")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before faults (30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--heartbeat-ttl", type=float, default=TIMINGS["heartbeat_ttl"])
    parser.add_argument("--heartbeat-interval", type=float, default=TIMINGS["heartbeat_interval"])
    parser.add_argument("--lifeline-interval", type=float, default=TIMINGS["lifeline_interval"])
    parser.add_argument("--leader-ttl", type=float, default=TIMINGS["leader_ttl"])
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="after the enqueue window, give up when no job finished for this long (120)",
    )
    parser.add_argument(
        "--restart-command",
        default=None,
        help="with --dsn: a shell command that restarts the server ($SOAK_OUTAGE = seconds "
        "down); without one, a --dsn run skips the PostgreSQL restarts",
    )
    parser.add_argument("--keep", action="store_true", help="keep the schema and the logs")
    parser.add_argument(
        "--recheck",
        metavar="DIR",
        default=None,
        help="run no soak: check again the kept run in DIR (its schema must still exist)",
    )


def config_from(opts: common.Options) -> SoakConfig:
    ex = opts.extra
    timings = dict(TIMINGS)
    for key in ("heartbeat_ttl", "heartbeat_interval", "lifeline_interval", "leader_ttl"):
        if ex.get(key) is not None:
            timings[key] = float(ex[key])
    outages = tuple(float(x) for x in str(ex.get("pg_outages", "2,8")).split(",") if x.strip())
    return SoakConfig(
        jobs=opts.size_or(DEFAULT_SIZE),
        minutes=float(ex.get("minutes", 10.0)),
        nodes=int(ex.get("nodes", 3)),
        processes=opts.processes or 6,
        warmup=float(ex.get("warmup", 30.0)),
        fault_interval=float(ex.get("fault_interval", 20.0)),
        pg_outages=outages,
        pause_seconds=ex.get("pause_seconds"),
        pause=not ex.get("no_pause"),
        spare=ex.get("spare") or None,
        seed=int(ex.get("seed", 1)),
        timings=timings,
        drain_timeout=float(ex.get("drain_timeout", 120.0)),
        quiet=opts.quiet,
    )


def run(opts: common.Options) -> int:
    from oban_pro.database import configured_dsn, start_embedded

    if opts.extra.get("recheck"):
        if configured_dsn(opts.dsn) is None:
            start_embedded(announce=False)  # the kept schema lives in the embedded server
        got = recheck(opts.extra["recheck"])
        print(json.dumps(got, indent=1, default=str))
        return 0 if got["check"]["ok"] else 1
    cfg = config_from(opts)
    dsn = configured_dsn(opts.dsn)
    restart: Callable[[float], None] | None
    if dsn is None:
        embedded = start_embedded()
        dsn = embedded.dsn
        restart = embedded_restarter(embedded)
    else:
        command = opts.extra.get("restart_command")
        restart = command_restarter(command) if command else None
    info = common.machine_info(dsn)
    common.header(
        opts,
        info,
        f"{cfg.jobs:,} jobs over {cfg.minutes:g} min on {cfg.nodes} nodes x {cfg.processes} "
        f"processes, faults every ~{cfg.fault_interval:g} s",
    )

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the nodes' cleanup

    signal.signal(signal.SIGTERM, interrupted)
    result = run_soak(cfg, dsn, restart_db=restart, keep=bool(opts.extra.get("keep")))
    text = summary_table(result)
    if not opts.quiet:
        print(text)
        if not result["ok"]:
            print("\nFAILED: " + ", ".join(f"{k} ({v})" for k, v in result["failures"].items()))
            print(f"logs and execution log kept in {result['workdir']}")
    payload = {"scenario": "soak", "machine": info, "params": result["config"], **result,
               "table": text}  # fmt: skip
    common.save(opts, payload, _plot)
    return 0 if result["ok"] else 1


# -- the table ---------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:,.0f} ms"


def summary_table(result: dict[str, Any]) -> str:
    c = result["check"]
    counts = c["counts"]
    ack = result["ack_window"]
    lost = c.get("results_lost_with_process") or soak_check.death_window_summary([])
    faults = result["faults_by_kind"]
    fault_list = result["faults"]
    outages = [f"{f['outage']:.1f}" for f in fault_list if f["kind"] == "pg_restart"]
    pauses = [f"{f['until'] - f['at']:.1f}" for f in fault_list if f["kind"] == "pause"]
    wrong = counts.get("wrong final state", 0)
    by_fault = c["reexecutions"].get("fault", {})
    designed = c["reexecutions"].get("designed", {})
    stale_keys = [k for k in counts if "stale ack" in k or k.startswith("cancelled, but")
                  or k.startswith("discarded, but") or k == "ran after its job was finished"
                  or k == "error entry the log cannot explain"]  # fmt: skip
    rows: list[list[Any]] = [
        ["jobs (rows) / executions (START lines)", f"{c['jobs']:,} / {c['executions']:,}", ""],
        [
            "throughput over the run",
            f"{result['jobs_per_second']:,.0f} jobs/s, "
            f"{result['executions_per_second']:,.0f} executions/s",
            "",
        ],  # fmt: skip
        [
            "faults injected",
            ", ".join(f"{k} {v}" for k, v in sorted(faults.items())),
            "",
        ],
        [
            "  - seconds PostgreSQL was down / a coordinator paused",
            f"{', '.join(outages) or '-'} / {', '.join(pauses) or '-'}",
            "",
        ],
        ["lost (not final after the drain, or no row)", c["lost"], _ok(c["lost"] == 0)],
        [
            "final state as the kind implies",
            f"{c['jobs'] - wrong:,} of {c['jobs']:,}"
            + (
                f" ({counts['discarded by faults (explained)']} discarded by faults, explained)"
                if counts.get("discarded by faults (explained)")
                else ""
            ),
            _ok(wrong == 0),
        ],
        ["retries by design (raise, snooze, crash, timeout)", sum(designed.values()), ""],
        ["duplicates explained by a fault", f"{c['duplicates']['explained']:,}", ""],
        *[[f"  - {reason}", n, ""] for reason, n in sorted(by_fault.items())],
        [
            "unexplained duplicates",
            c["duplicates"]["unexplained"],
            _ok(c["duplicates"]["unexplained"] == 0),
        ],  # fmt: skip
        [
            "rescues of a live node",
            counts.get("rescue of a live node", 0),
            _ok(not counts.get("rescue of a live node")),
        ],  # fmt: skip
        [
            "stale acks applied (row vs log)",
            sum(counts[k] for k in stale_keys),
            _ok(not stale_keys),
        ],  # fmt: skip
        [
            "stale copies run by a paused node after their job was done",
            counts.get("note: stale copy ran on a paused node after its job was finished", 0),
            "",
        ],
        [
            "stale acks fenced out by the engine (metrics)",
            f"{result['metrics'].get('acks_stale', 0):,.0f}",
            "",
        ],  # fmt: skip
        [
            "scheduled run early / unique keys not deduplicated",
            f"{counts.get('ran before its scheduled time', 0)} / "
            f"{counts.get('unique key not deduplicated', 0)}",
            _ok(
                not counts.get("ran before its scheduled time")
                and not counts.get("unique key not deduplicated")
            ),  # fmt: skip
        ],
        [
            "ack loss window: finished, unacked at kill -9",
            f"{ack['finished_unacked']} jobs in {ack['kills']} kills "
            f"(per kill {min(ack['per_kill'], default=0)}-{max(ack['per_kill'], default=0)}; "
            f"{ack['running_at_kill']} more were running)",
            "",
        ],
        [
            "ack loss window: finished this long before the kill",
            f"p50 {_ms(ack['p50_s'])}, p99 {_ms(ack['p99_s'])}, max {_ms(ack['max_s'])}",
            "",
        ],
        [
            "results lost with their worker process (ran again)",
            f"{lost['jobs']} jobs; it died p50 {_ms(lost['p50_s'])}, p99 {_ms(lost['p99_s'])}, "
            f"max {_ms(lost['max_s'])} after they finished",
            "",
        ],
    ]
    for label, leak in sorted(result["leaks"].items()):
        if leak.get("baseline") is None and "rss_mib" not in leak:
            rows.append([f"node {label}: leak check", leak.get("note", "-"), ""])
            continue
        ok = all(leak[f"{w}_ok"] for w in ("rss", "fds", "workers", "zombies"))
        rows.append(
            [
                f"node {label} after warm-up -> end",
                f"RSS {leak['rss_mib'][0]}->{leak['rss_mib'][1]} MiB, "
                f"fds {leak['fds'][0]}->{leak['fds'][1]}, "
                f"workers {leak['workers'][0]}->{leak['workers'][1]}, "
                f"zombies {leak['zombies'][1]} ({leak['lived_s']:.0f} s)",
                _ok(ok),
            ]
        )
    rows.append(
        [
            "processes of killed nodes left behind",
            sum(map(len, result["left_behind"].values())),
            _ok(not result["left_behind"]),
        ]  # fmt: skip
    )
    others = {
        k: v
        for k, v in result["failures"].items()
        if k
        not in (
            "lost: not finished after the drain",
            "lost: enqueued, no row",
            "wrong final state",
            "unexplained duplicate",
            "rescue of a live node",
            "ran before its scheduled time",
            "unique key not deduplicated",
            *stale_keys,
        )
        and not k.startswith("leak:")
        and k != "processes of killed nodes left behind"
    }
    if others:
        rows.append(["other failures", ", ".join(f"{k}: {v}" for k, v in others.items()), "FAIL"])
    return common.table(["check", "result", "ok"], rows)


def _ok(flag: bool) -> str:
    return "yes" if flag else "FAIL"


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    timeline = payload.get("timeline", [])
    if not timeline:
        return
    t = [p["t"] for p in timeline]
    fin = [sum(p.get(s, 0) for s in soak_check.FINAL) for p in timeline]
    rate = [0.0] + [(fin[i] - fin[i - 1]) / max(t[i] - t[i - 1], 1e-9) for i in range(1, len(t))]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(t, rate, linewidth=1, label="jobs finished per second")
    ax.plot(t, [p.get("executing", 0) for p in timeline], linewidth=1, label="executing")
    colors = {"node_kill": "red", "child_kill": "orange", "pg_restart": "purple", "pause": "green"}
    t0 = payload["faults"][0]["at"] - payload["faults"][0]["t"] if payload["faults"] else 0
    seen = set()
    for f in payload["faults"]:
        kind = f["kind"]
        if kind not in colors:
            continue
        end = f.get("until", f["at"]) - t0
        ax.axvspan(f["t"], max(end, f["t"] + 0.5), color=colors[kind], alpha=0.3,
                   label=None if kind in seen else kind)  # fmt: skip
        seen.add(kind)
    ax.set_xlabel("seconds since the start")
    ax.set_title(f"soak under faults ({payload['machine']['date'][:10]})")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(common.plot_path(opts), dpi=110)
    plt.close(fig)
