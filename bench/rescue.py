"""rescue: ``kill -9`` a node holding long jobs; how long until they run again on another node,
and how many long jobs on the live node ran twice (must be 0).

Each trial starts two nodes as separate processes (``python -m bench.node``): the VICTIM holds K
long jobs, the SURVIVOR holds K long jobs of its own and has room for K more. The victim's
coordinator process is killed with SIGKILL (its worker processes notice and exit). The jobs log
every start to a file, so the trial counts executions per job: the victim's jobs must start again
on the survivor, and the survivor's jobs must start exactly once. Long jobs run longer than
``heartbeat_ttl`` + ``lifeline_interval``, so a time-based rescue would run them twice.

Rescue runs on the leader only. Two cases: the victim is NOT the leader (bound: heartbeat_ttl +
lifeline_interval), and the victim IS the leader (the survivor takes the lease over once it expires,
checking every min(leader_ttl/3, heartbeat_interval), and rescues at once: bound
max(leader_ttl + that check interval, heartbeat_ttl + lifeline_interval)).
Trials use shortened settings (``--heartbeat-ttl`` etc.); ``--defaults`` adds one trial per case
with the engine defaults (heartbeat_ttl 30 s, lifeline_interval 5 s, leader_ttl 30 s; long jobs
then run 60 s, so it takes a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from . import REPO_ROOT, common, measure

DEFAULT_SIZE = 4  # long jobs per node
QUEUE = "bench_long"
WORKER = "bench.workers.Long"

DEFAULTS = {
    "heartbeat_interval": 5.0,
    "heartbeat_ttl": 30.0,
    "lifeline_interval": 5.0,
    "leader_ttl": 30.0,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    parser.add_argument("--heartbeat-ttl", type=float, default=2.0)
    parser.add_argument("--lifeline-interval", type=float, default=0.5)
    parser.add_argument("--leader-ttl", type=float, default=3.0)
    parser.add_argument(
        "--job-seconds", type=float, default=None, help="long job duration (default: bound + 4 s)"
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="also run one trial per case with the engine's default settings",
    )
    parser.add_argument(
        "--cases",
        default="follower,leader",
        help="which victims: follower (not the leader), leader",
    )


def bound(settings: dict[str, float], victim_is_leader: bool) -> float:
    """Expected worst-case seconds from kill to rescue (before the survivor starts the jobs)."""
    if victim_is_leader:
        check = min(settings["leader_ttl"] / 3, settings.get("heartbeat_interval", 5.0))
        takeover = settings["leader_ttl"] + check
        return max(takeover, settings["heartbeat_ttl"] + settings["lifeline_interval"])
    return settings["heartbeat_ttl"] + settings["lifeline_interval"]


# -- node processes -------------------------------------------------------------------------


class NodeProc:
    """A node in a child process speaking the line protocol of :mod:`bench.node`."""

    def __init__(
        self,
        cmd: list[str],
        name: str,
        env: dict[str, str] | None = None,
        log_dir: str | None = None,
    ) -> None:
        self.name = name
        self.stderr_path = os.path.join(log_dir or tempfile.gettempdir(), f"node-{name}.log")
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env or os.environ.copy(),
            cwd=str(REPO_ROOT),
        )
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"node {self.name} said nothing for {timeout} s (see {self.stderr_path})"
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(
                        f"node {self.name} exited (code {self.proc.poll()}); "
                        f"see {self.stderr_path}: {self.tail()}"
                    )
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    def tail(self, n: int = 1500) -> str:
        with contextlib.suppress(OSError), open(self.stderr_path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
        return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        while True:
            line = self.readline(timeout)
            if line.startswith("ready"):
                return

    def command(self, text: str, timeout: float = 15.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write((text + "\n").encode())
        self.proc.stdin.flush()
        return self.readline(timeout)

    def is_leader(self) -> bool:
        return self.command("leader?") == "leader yes"

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._stderr.close()


def oban_pro_node(
    dsn: str, prefix: str, name: str, limit: int, settings: dict[str, float], log_dir: str
) -> NodeProc:
    config = dict(settings, poll_interval=1.0, shutdown_timeout=1.0)
    cmd = [
        sys.executable,
        "-m",
        "bench.node",
        "--dsn",
        dsn,
        "--prefix",
        prefix,
        "--node",
        name,
        "--queue",
        QUEUE,
        "--limit",
        str(limit),
        "--processes",
        str(limit),
        "--config",
        json.dumps(config),
    ]
    return NodeProc(cmd, name, log_dir=log_dir)


# -- one trial ------------------------------------------------------------------------------


@dataclass
class Engine:
    """How a trial starts nodes and enqueues long jobs for one engine."""

    label: str
    start: Callable[[str, int], NodeProc]  # (node name, limit) -> started (not yet ready) node
    enqueue: Callable[[int, dict[str, Any]], None]  # (count, args)
    worker: str


def read_log(path: str) -> list[tuple[str, int, str, int, float]]:
    out = []
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            kind, job_id, node, pid, at = line.split()
            out.append((kind, int(job_id), node, int(pid), float(at)))
    return out


def executing_on(dsn: str, prefix: str) -> dict[str, set[int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            f"SELECT attempted_by[1], id FROM {measure.qp(prefix)}.oban_jobs "
            f"WHERE state = 'executing'"
        ).fetchall()
    out: dict[str, set[int]] = {}
    for node, job_id in rows:
        out.setdefault(node, set()).add(int(job_id))
    return out


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def trial(
    dsn: str,
    prefix: str,
    eng: Engine,
    *,
    k: int,
    job_seconds: float,
    victim_is_leader: bool,
    expect_bound: float,
    workdir: str,
) -> dict[str, Any]:
    """One kill -9; returns rescue seconds per job and duplicate counts."""
    log = os.path.join(workdir, f"runs-{time.time_ns()}.log")
    with psycopg.connect(dsn, autocommit=True) as conn:
        p = measure.qp(prefix)
        conn.execute(f"TRUNCATE {p}.oban_jobs RESTART IDENTITY")
        conn.execute(f"DELETE FROM {p}.oban_producers")
        conn.execute(f"DELETE FROM {p}.oban_leaders")
    args = {"log": log, "seconds": job_seconds, "rerun_seconds": 0.2}
    victim_name, survivor_name = "victim", "survivor"
    nodes: list[NodeProc] = []
    try:
        # The node started first becomes the leader.
        order = [(victim_name, k), (survivor_name, 2 * k)]
        if not victim_is_leader:
            order.reverse()
        started: dict[str, NodeProc] = {}
        for name, limit in order:
            proc = eng.start(name, limit)
            nodes.append(proc)
            proc.wait_ready()
            started[name] = proc
            if len(started) == 1:
                wait_for(proc.is_leader, 30, f"{name} to lead", interval=0.2)
        victim, survivor = started[victim_name], started[survivor_name]
        survivor.command("pause")
        eng.enqueue(k, args)
        wait_for(
            lambda: len(executing_on(dsn, prefix).get(victim_name, ())) == k,
            30,
            f"{k} jobs executing on the victim",
        )
        survivor.command("resume")
        eng.enqueue(k, args)
        held = wait_for(
            lambda: (lambda e: e if len(e.get(survivor_name, ())) == k else None)(
                executing_on(dsn, prefix)
            ),
            30,
            f"{k} jobs executing on the survivor",
        )
        victim_jobs, survivor_jobs = held[victim_name], held[survivor_name]
        leader_ok = survivor.is_leader() != victim_is_leader
        killed_at = time.time()
        victim.kill9()

        def rescued() -> dict[int, float] | None:
            firsts: dict[int, float] = {}
            for kind, job_id, node, _pid, at in read_log(log):
                if kind == "start" and node == survivor_name and job_id in victim_jobs:
                    firsts.setdefault(job_id, at)
            return firsts if len(firsts) == len(victim_jobs) else None

        firsts = wait_for(
            rescued, expect_bound * 2 + 30, "the victim's jobs to run again", interval=0.02
        )
        with psycopg.connect(dsn, autocommit=True) as conn:

            def all_done() -> bool:
                row = conn.execute(
                    f"SELECT count(*) FILTER (WHERE state = 'completed'), count(*) "
                    f"FROM {measure.qp(prefix)}.oban_jobs"
                ).fetchone()
                return bool(row and row[0] == row[1] == 2 * k)

            wait_for(all_done, job_seconds + 60, "every job to complete", interval=0.2)
            time.sleep(0.5)  # let a late duplicate, if any, show in the log
    finally:
        for proc in nodes:
            with contextlib.suppress(Exception):
                proc.stop()
    entries = read_log(log)
    starts: dict[int, list[tuple[str, float]]] = {}
    for kind, job_id, node, _pid, at in entries:
        if kind == "start":
            starts.setdefault(job_id, []).append((node, at))
    duplicates_live = sum(len(starts.get(j, [])) - 1 for j in survivor_jobs)
    extra_victim_runs = sum(max(0, len(starts.get(j, [])) - 2) for j in victim_jobs)
    orphan_ends = sum(
        1
        for kind, _j, node, _p, at in entries
        if kind == "end" and node == victim_name and at > killed_at
    )
    rescue_s = sorted(t - killed_at for t in firsts.values())
    with contextlib.suppress(OSError):
        os.unlink(log)
    return {
        "victim_is_leader": victim_is_leader,
        "leader_as_planned": leader_ok,
        "rescue_seconds": rescue_s,
        "all_back_seconds": max(rescue_s),
        "first_back_seconds": min(rescue_s),
        "duplicates_on_live_node": duplicates_live,
        "extra_runs_of_rescued_jobs": extra_victim_runs,
        "victim_job_ends_after_kill": orphan_ends,
        "bound_seconds": expect_bound,
        "job_seconds": job_seconds,
        "jobs_per_node": k,
    }


# -- the scenario ---------------------------------------------------------------------------


def oban_pro_engine(dsn: str, prefix: str, settings: dict[str, float], workdir: str) -> Engine:
    from oban_pro import Client

    def start(name: str, limit: int) -> NodeProc:
        return oban_pro_node(dsn, prefix, name, limit, settings, workdir)

    def enqueue(count: int, args: dict[str, Any]) -> None:
        from .workers import Long

        with Client(dsn, prefix=prefix) as client:
            client.enqueue_many([Long.new(dict(args)) for _ in range(count)])  # type: ignore[attr-defined]

    return Engine("oban_pro", start, enqueue, WORKER)


def run(opts: common.Options) -> int:
    dsn = common.resolve_dsn(opts.dsn)
    info = common.machine_info(dsn)
    k = opts.size_or(DEFAULT_SIZE)
    ex = opts.extra
    short = {
        "heartbeat_interval": float(ex.get("heartbeat_interval", 0.5)),
        "heartbeat_ttl": float(ex.get("heartbeat_ttl", 2.0)),
        "lifeline_interval": float(ex.get("lifeline_interval", 0.5)),
        "leader_ttl": float(ex.get("leader_ttl", 3.0)),
    }
    cases = [c.strip() for c in str(ex.get("cases", "follower,leader")).split(",") if c.strip()]
    plan: list[tuple[str, dict[str, float], bool]] = []
    for _rep in range(opts.repeat):
        for case in cases:
            plan.append(("shortened", short, case == "leader"))
    if ex.get("defaults"):
        for case in cases:
            plan.append(("defaults", DEFAULTS, case == "leader"))
    common.header(
        opts,
        info,
        f"kill -9 a node holding {k} long jobs; {opts.repeat} trials per "
        f"case with shortened settings"
        + (" + 1 per case with defaults" if ex.get("defaults") else ""),
    )
    progress = common.Progress(len(plan), "rescue", opts.quiet)
    trials: list[dict[str, Any]] = []
    workdir = tempfile.mkdtemp(prefix="oban-bench-rescue-")
    with common.oban_pro_schema(dsn, "rescue") as prefix:
        for label, settings, leader in plan:
            expect = bound(settings, leader)
            seconds = float(ex.get("job_seconds") or 0) if label == "shortened" else 0
            seconds = seconds or (expect + 4.0 if label == "shortened" else expect + 15.0)
            progress.step(f"{label}: victim is {'the leader' if leader else 'a follower'}")
            got = trial(
                dsn,
                prefix,
                oban_pro_engine(dsn, prefix, settings, workdir),
                k=k,
                job_seconds=seconds,
                victim_is_leader=leader,
                expect_bound=expect,
                workdir=workdir,
            )
            got.update(settings=label, config=settings)
            trials.append(got)
            progress.advance()
    progress.close()
    rows, groups = [], []
    for label in ("shortened", "defaults"):
        for leader in (False, True):
            group = [
                t for t in trials if t["settings"] == label and t["victim_is_leader"] == leader
            ]
            if not group:
                continue
            back = measure.summary([t["all_back_seconds"] for t in group])
            first = measure.summary([t["first_back_seconds"] for t in group])
            dups = sum(t["duplicates_on_live_node"] for t in group)
            extra = sum(t["extra_runs_of_rescued_jobs"] for t in group)
            ends = sum(t["victim_job_ends_after_kill"] for t in group)
            cfg = group[0]["config"]
            groups.append(
                {
                    "settings": label,
                    "config": cfg,
                    "victim_is_leader": leader,
                    "all_back_seconds": back,
                    "first_back_seconds": first,
                    "bound_seconds": group[0]["bound_seconds"],
                    "duplicates": dups,
                    "extra_runs": extra,
                    "victim_ends_after_kill": ends,
                    "trials": len(group),
                }
            )
            rows.append(
                [
                    f"{label} (ttl {cfg['heartbeat_ttl']:g}s, "
                    f"lifeline {cfg['lifeline_interval']:g}s, "
                    f"leader_ttl {cfg['leader_ttl']:g}s)",
                    "leader" if leader else "follower",
                    len(group),
                    common.spread(first, 2),
                    common.spread(back, 2),
                    f"{group[0]['bound_seconds']:.1f}",
                    dups,
                    extra,
                    ends,
                ]
            )
    text = common.table(
        [
            "settings",
            "victim",
            "trials",
            "first job back s",
            "all jobs back s",
            "bound s",
            "duplicates on live node",
            "extra runs",
            "victim ends after kill",
        ],
        rows,
    )
    failures = sum(g["duplicates"] + g["extra_runs"] + g["victim_ends_after_kill"] for g in groups)
    if not opts.quiet:
        print(text)
        print(
            f"\nbound with the defaults: heartbeat_ttl + lifeline_interval = "
            f"{bound(DEFAULTS, False):.0f} s when the victim is not the leader; "
            f"{bound(DEFAULTS, True):.0f} s when it is (the lease of leader_ttl must expire "
            f"first). Oban.py rescues by time only: rescue_after 300 s (5 min) checked every "
            f"60 s, i.e. 5-6 min after a job STARTED, and any job running longer than 5 min "
            f"on a live node is rescued and runs twice (see `bench peer`)."
        )
        if failures:
            print(f"\nFAILED: {failures} duplicate or orphaned executions (must be 0)")
    payload = {
        "scenario": "rescue",
        "machine": info,
        "params": {
            "jobs_per_node": k,
            "repeat": opts.repeat,
            "shortened": short,
            "defaults": DEFAULTS,
            "ran_defaults": bool(ex.get("defaults")),
        },
        "summary": groups,
        "trials": trials,
        "table": text,
    }
    common.save(opts, payload, _plot)
    with contextlib.suppress(OSError):
        os.rmdir(workdir)
    return 1 if failures else 0


def _plot(opts: common.Options, payload: dict[str, Any]) -> None:
    plt = common.pyplot()
    groups = payload["summary"]
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [
        f"{g['settings']}\nvictim={'leader' if g['victim_is_leader'] else 'follower'}"
        for g in groups
    ]
    med, (lo, hi) = common.median_and_spread([r["all_back_seconds"] for r in groups])
    xs = list(range(len(groups)))
    ax.bar(xs, med, yerr=[lo, hi], capsize=4, label="all jobs running again (median, min-max)")
    ax.hlines(
        [g["bound_seconds"] for g in groups],
        [x - 0.4 for x in xs],
        [x + 0.4 for x in xs],
        colors="red",
        linewidth=2,
        label="expected bound",
        zorder=3,
    )
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("seconds after kill -9")
    ax.set_ylim(0, max(g["bound_seconds"] for g in groups) * 1.3)
    ax.set_title(f"Rescue after kill -9 ({payload['machine']['date'][:10]})")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(common.plot_path(opts), dpi=110)
    plt.close(fig)
