"""The soak's verdict: what the job rows and the jobs' own execution log prove, given the faults.

Pure functions (no database, no processes), so the rules can be unit-tested on made-up data
(``tests/test_soak_check.py``). :mod:`bench.soak` gathers the inputs:

- ``rows``: every ``oban_jobs`` row of the run, times as unix seconds;
- ``execs``: the execution log (:mod:`bench.soak_workers`) parsed into :class:`Exec` records,
  one per START line, with its END line when there is one;
- ``faults``: what the injector did, each with its time and the node / pid it hit;
- ``deaths``: worker processes the engine itself saw die or killed (from the node logs).

Rules (bench/README.md, "soak", says the same in prose):

1. **Final state.** Each kind implies one final state (``EXPECTED``). A job still
   available/scheduled/retryable/executing after the drain, or enqueued but without a row, is
   **lost**. A job of a kind that should complete but was discarded is accepted only when every
   error entry of its row is explained (faults used up its attempts or its crash budget).
2. **Re-executions.** Executions of one job are ordered by START time. Each one after the first
   is justified by the execution before it (``prev``):

   - *designed*: ``prev`` ended in an outcome that calls for another attempt (raise, snooze,
     crash), or is a ``timeout`` execution (no END: the engine killed it);
   - *explained by a fault*: ``prev`` has no END and its process was killed while it ran
     (kill -9 of its node, or of its worker process, or its process died through another job's
     crash/timeout, or the engine reported that process dead), or its node was paused (SIGSTOP)
     beyond the ttl while it ran; or ``prev`` finished but its node was killed (or paused)
     before the ack could be written — within ``ack_bound`` seconds of its END, plus the length
     of any PostgreSQL outage in between (acks wait for the database);
   - anything else is an **unexplained duplicate**, reported with both executions.
3. **Rows agree with the log (no stale ack applied).** A completed row must match a finished
   execution with the row's attempt and node whose END came before ``completed_at``; a
   cancelled / discarded row must match its last execution's outcome; no execution may start
   after its job was finished; every error entry must match what its attempt did in the log
   (a raise, a crash, a timeout, a rescue of a node that was killed or paused). A rescue of a
   node that was neither killed nor paused is reported as such: a live node's job was rescued.
4. **Schedule and uniqueness.** A scheduled job never starts before its time; each unique key
   has exactly one row, and every insert of that key returned that row.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

#: The final state each kind must reach.
EXPECTED: dict[str, str] = {
    "noop": "completed",
    "cpu": "completed",
    "record": "completed",
    "sync_io": "completed",
    "async_io": "completed",
    "slow_io": "completed",
    "flaky": "completed",
    "doomed": "discarded",
    "crash": "completed",
    "poison": "discarded",
    "timeout": "completed",
    "snooze": "completed",
    "cancel": "cancelled",
    "scheduled": "completed",
    "unique": "completed",
}
FINAL = ("completed", "discarded", "cancelled")
RETRY_OUTCOMES = ("raise", "snooze", "crash")
#: Seconds a process may still run jobs after a crash job logged its END (it dies moments later).
CRASH_SLACK = 1.0
FINISHED_OUTCOMES = ("ok", "record", "cancel")
#: How much later than the log's END a completed_at may be... never earlier than this.
CLOCK_SLACK = 0.002
#: Seconds a worker process of a killed node may still start a job (it exits once it notices).
ORPHAN_GRACE = 5.0

_RESCUED = re.compile(r"rescued: node (\S+) \(producer")
_DIED = re.compile(r"child process \(pid (\d+)\) died")
# The rebuilt pool gives back, uncharged and with their attempt, the jobs that shared a child
# that died ("... while running 3 jobs (this one and ...) ... given back without being
# charged") or was killed for another job ("given back without being charged: its child
# process (pid N) was killed because job M ..."). Both are judged like a death of that pid.
_GIVEN_BACK = re.compile(
    r"child process \(pid (\d+)\)[^;]* while running \d+ jobs|"
    r"given back without being charged: its child process \(pid (\d+)\)"
)
_TIMEOUT = re.compile(r"exceeded its timeout .*\(pid (\d+)\)")


@dataclass
class Exec:
    """One execution: a START line and, unless the process died first, its END line."""

    job: int
    attempt: int
    kind: str
    plan: str
    node: str
    pid: int
    ppid: int
    start: float
    end: float | None = None
    outcome: str | None = None

    def brief(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "plan": self.plan,
            "outcome": self.outcome,
            "node": self.node,
            "pid": self.pid,
            "start": round(self.start, 6),
            "end": None if self.end is None else round(self.end, 6),
        }


@dataclass
class CheckSettings:
    ack_bound: float = 10.0  # s an ack may legitimately stay unwritten after its job's END
    ack_retry_slack: float = 6.0  # s the acker may take to retry after the database is back
    timeout: float = 0.5  # the Slow worker's timeout
    rescue_slack: float = 10.0  # s after SIGCONT a rescue may still be attributed to the pause
    max_details: int = 50


@dataclass
class Row:
    id: int
    state: str
    kind: str
    attempt: int
    max_attempts: int
    args: dict[str, Any]
    meta: dict[str, Any]
    errors: list[dict[str, Any]]
    node: str | None
    completed_at: float | None = None
    discarded_at: float | None = None
    cancelled_at: float | None = None

    @property
    def finished_at(self) -> float | None:
        return self.completed_at or self.discarded_at or self.cancelled_at


# -- parsing -----------------------------------------------------------------------------------


def parse_log(lines: Iterable[str]) -> tuple[dict[int, list[Exec]], list[str]]:
    """Executions by job id (in START order) and the lines that made no sense."""
    by_job: dict[int, list[Exec]] = defaultdict(list)
    open_: dict[tuple[int, int, str, int], list[Exec]] = defaultdict(list)
    anomalies: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 9 or parts[0] not in ("S", "E"):
            anomalies.append(f"malformed log line: {line[:200]}")
            continue
        tag, job, attempt, kind, word, node, pid, ppid, at = parts
        try:
            key = (int(job), int(attempt), node, int(pid))
            t = float(at)
            ppid_i = int(ppid)
        except ValueError:
            anomalies.append(f"malformed log line: {line[:200]}")
            continue
        if tag == "S":
            ex = Exec(key[0], key[1], kind, word, node, key[3], ppid_i, t)
            by_job[key[0]].append(ex)
            open_[key].append(ex)
        else:
            pending = open_.get(key)
            if not pending:
                anomalies.append(f"END without START: {line}")
                continue
            ex = pending.pop()
            ex.end, ex.outcome = t, word
    for execs in by_job.values():
        execs.sort(key=lambda e: e.start)
    return dict(by_job), anomalies


def iso_to_unix(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return None


# -- faults ------------------------------------------------------------------------------------


class Faults:
    """The injector's record, indexed for the questions the rules ask."""

    def __init__(
        self,
        faults: Sequence[Mapping[str, Any]],
        deaths: Sequence[Mapping[str, Any]] = (),
        wake: float = 10.0,
    ):
        faults = [f for f in faults if "failed" not in f]  # injections that did not happen
        self.all = list(faults)
        self.wake = wake
        self.node_kills = sorted(
            (f for f in faults if f["kind"] == "node_kill"), key=lambda f: f["at"]
        )
        self.child_kills = [f for f in faults if f["kind"] == "child_kill"]
        self.pauses = [f for f in faults if f["kind"] == "pause"]
        self.outages = [(f["at"], f["until"]) for f in faults if f["kind"] == "pg_restart"]
        self.deaths = list(deaths)  # engine-observed: {"node", "pid", "at", "reason"}

    def node_kill(
        self, node: str, pid: int | None, after: float, before: float, ppid: int | None = None
    ) -> Mapping[str, Any] | None:
        """The kill -9 of ``node``'s incarnation that ``pid`` belonged to, between ``after``
        (less ORPHAN_GRACE: a worker may start a job it was sent just before its coordinator
        died) and ``before``. A worker whose parent (``ppid``, the node's forkserver) was in
        the kill's process list belongs to it too: it was forked after the list was taken."""
        for f in self.node_kills:
            if f["node"] != node or not (after - ORPHAN_GRACE <= f["at"] <= before):
                continue
            if pid is None or "pids" not in f or pid in f["pids"] or ppid in f["pids"]:
                return f
        return None

    def child_kill(self, node: str, pid: int, after: float, before: float) -> Any:
        for f in self.child_kills:
            if f["node"] == node and f["pid"] == pid and after <= f["at"] <= before:
                return f
        return None

    def pause(self, node: str, running_from: float, running_to: float, rerun: float) -> Any:
        """A pause of ``node`` that overlaps [running_from, running_to] and began before
        ``rerun`` (the later execution). The pause lasts until the node has heartbeated again
        after SIGCONT (``wake`` s at most): jobs it starts in between may still be rescued."""
        for f in self.pauses:
            awake = f["until"] + self.wake
            if f["node"] == node and running_from <= awake and f["at"] <= running_to:
                if f["at"] <= rerun:
                    return f
        return None

    def stale_copy(self, ex: Exec, slack: float) -> Mapping[str, Any] | None:
        """The pause of ``ex``'s node that it started within ``slack`` s after (or during)."""
        for f in self.pauses:
            if f["node"] == ex.node and f["at"] <= ex.start <= f["until"] + slack:
                return f
        return None

    def engine_death(self, node: str, pid: int, after: float, before: float) -> Any:
        for d in self.deaths:
            if d["node"] == node and d["pid"] == pid and after - 1.0 <= d["at"] <= before + 1.0:
                return d
        return None

    def death_seen(self, node: str, pid: int, after: float) -> float | None:
        """When the engine logged the death of ``node``'s process ``pid`` (after ``after``)."""
        seen = [d["at"] for d in self.deaths if d["node"] == node and d["pid"] == pid]
        later = [at for at in seen if at >= after - 1.0]
        return min(later) if later else None

    def outage_overlap(self, t0: float, t1: float) -> float:
        return sum(max(0.0, min(t1, b) - max(t0, a)) for a, b in self.outages)

    def outages_between(self, t0: float, t1: float) -> int:
        return sum(1 for a, b in self.outages if a <= t1 and b >= t0)


class _Death(NamedTuple):
    """A process taken down by a job's crash or timeout, as the log tells it."""

    start: float  # the killer job's START
    died_by: float  # the latest the process can have died
    job: int  # the killer job
    earliest: float  # the earliest it can have died (a crash's END; a timeout's expiry)


class ProcessDeaths:
    """Processes that died by a job's own doing, by (node, pid)."""

    def __init__(self, execs: Mapping[int, list[Exec]], timeout: float) -> None:
        self._by: dict[tuple[str, int], list[_Death]] = defaultdict(list)
        for runs in execs.values():
            for e in runs:
                if e.outcome == "crash" and e.end is not None:
                    # END is written just before os._exit/abort: the process dies moments
                    # later, and jobs of the same child may start in that moment.
                    self._by[(e.node, e.pid)].append(
                        _Death(e.start, e.end + CRASH_SLACK, e.job, e.end)
                    )
                elif e.plan == "timeout" and e.end is None:
                    self._by[(e.node, e.pid)].append(
                        _Death(e.start, e.start + timeout + 5.0, e.job, e.start + timeout)
                    )

    def on_pid(self, pid: int, before: float) -> int | None:
        """A job whose crash/timeout took down process ``pid`` (any node) by ``before``."""
        for (_node, p), deaths in self._by.items():
            if p == pid:
                for d in deaths:
                    if d.start <= before:
                        return d.job
        return None

    def died_at(self, ex: Exec, killer: int) -> float:
        """The earliest time ``killer`` can have taken down ``ex``'s process."""
        for d in self._by.get((ex.node, ex.pid), ()):
            if d.job == killer:
                return d.earliest
        return math.inf

    def killer(self, ex: Exec, before: float) -> int | None:
        """The job whose crash/timeout took down ``ex``'s process while ``ex`` ran."""
        for d in self._by.get((ex.node, ex.pid), ()):
            if d.job != ex.job and d.died_by >= ex.start and d.start <= before:
                return d.job
        return None


# -- the rules ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    settings: CheckSettings
    counts: Counter[str] = field(default_factory=Counter)
    details: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))

    def add(self, what: str, detail: Any = None) -> None:
        self.counts[what] += 1
        if detail is not None and len(self.details[what]) < self.settings.max_details:
            self.details[what].append(detail)


def justify(prev: Exec, nxt: Exec, faults: Faults, deaths: ProcessDeaths, s: CheckSettings):
    """Why ``nxt`` (a later execution of the same job) was allowed to run: (category, reason,
    fault or None, extra). Category: designed, fault, unexplained."""
    if nxt.attempt < prev.attempt:
        # An older attempt started after a newer one: a copy the node held while it could not
        # know the job had been rescued (fetched before a SIGSTOP, started after SIGCONT).
        f = faults.stale_copy(nxt, s.rescue_slack)
        if f:
            return "fault", "stale copy started by a node paused beyond the ttl", f, {}
        return "unexplained", "an older attempt started after a newer one", None, {}
    if prev.end is not None and prev.outcome in RETRY_OUTCOMES:
        return "designed", f"after {prev.outcome}", None, {}
    if prev.end is None:
        if prev.plan == "timeout":
            return "designed", "after timeout", None, {}
        f = faults.node_kill(prev.node, prev.pid, prev.start, nxt.start, prev.ppid)
        if f:
            return "fault", "node kill -9 while running", f, {}
        f = faults.child_kill(prev.node, prev.pid, prev.start, nxt.start)
        if f:
            return "fault", "worker process kill -9 while running", f, {}
        f = faults.pause(prev.node, prev.start, nxt.start, nxt.start)
        if f:
            return "fault", "node paused beyond heartbeat_ttl while running", f, {}
        killer = deaths.killer(prev, nxt.start)
        if killer is not None:
            return (
                "fault",
                "its process died with another job's crash/timeout",
                None,
                {"killer_job": killer},
            )
        d = faults.engine_death(prev.node, prev.pid, prev.start, nxt.start)
        if d:
            return "fault", f"its process died ({d.get('reason', '?')})", d, {}
        return "unexplained", "interrupted with no fault on its node or process", None, {}
    # prev finished (ok, record, cancel, timeout-missed): its ack must have been lost.
    if prev.outcome == "timeout-missed":
        # Only a coordinator that could not act (paused) fails to kill a job past its timeout.
        f = faults.pause(prev.node, prev.start, prev.end, nxt.start)
        if f:
            return "fault", "ran past its timeout while its node was paused", f, {}
        return "unexplained", "ran past its timeout and then ran again", None, {}
    assert prev.end is not None
    late_kill = faults.node_kill(prev.node, prev.pid, prev.end, nxt.start, prev.ppid)
    if late_kill and late_kill["at"] < prev.end:
        return "fault", "node kill -9 while running (it finished after)", late_kill, {}
    if late_kill:
        unacked = {"unacked_for": late_kill["at"] - prev.end}
        allowed = s.ack_bound + faults.outage_overlap(prev.end, late_kill["at"])
        allowed += s.ack_retry_slack * faults.outages_between(prev.end, late_kill["at"])
        if unacked["unacked_for"] <= allowed:
            return "fault", "finished, ack lost in node kill -9", late_kill, unacked
        # Too long before the kill for the ack to have been pending: the kill explains nothing,
        # but the job's own process may have died before it reported (below).
    why = _finished_then_lost(prev, nxt, faults, deaths, s)
    if why is not None:
        return why
    if late_kill:
        return "unexplained", "finished long before its node was killed", late_kill, unacked
    return "unexplained", f"finished ({prev.outcome}) and ran again", None, {}


def _finished_then_lost(prev: Exec, nxt: Exec, faults: Faults, deaths: ProcessDeaths, s: Any):
    """Why a finished execution's result may never have reached its node, other than a node
    kill: its process was killed, or died of another job, before the result left it (the
    ``lost_after`` extra is how long after the finish that death came), or its node was
    paused. None when none of these happened."""
    assert prev.end is not None
    f = faults.child_kill(prev.node, prev.pid, prev.start, nxt.start)
    if f and f["at"] - prev.end <= 1.0:
        return "fault", "worker process kill -9 before it reported", f, {}
    f = faults.pause(prev.node, prev.start, prev.end + s.ack_bound, nxt.start)
    if f and prev.end > f["at"]:
        return "fault", "node paused beyond heartbeat_ttl while running", f, {}
    if f:
        return "fault", "finished, ack held by the paused node", f, {}
    d = faults.engine_death(prev.node, prev.pid, prev.end, prev.end + 1.0)
    if d:
        return (
            "fault",
            f"its process died before it reported ({d.get('reason', '?')})",
            d,
            {"lost_after": d["at"] - prev.end},
        )
    # Several jobs share a child now: another job's crash can take the process down after this
    # one finished but before its result reached the parent; it is given back and runs again.
    killer = deaths.killer(prev, prev.end + 1.0)
    if killer is not None:
        return (
            "fault",
            "its process died with another job's crash/timeout before it reported",
            None,
            {
                "killer_job": killer,
                "lost_after": _death_time(prev, killer, faults, deaths) - prev.end,
            },
        )
    return None


def _death_time(prev: Exec, killer: int, faults: Faults, deaths: ProcessDeaths) -> float:
    """When ``prev``'s process died: as the engine logged it (a timeout's kill comes after the
    kill grace), else as the killer's own log line tells."""
    seen = faults.death_seen(prev.node, prev.pid, prev.start)
    return seen if seen is not None else deaths.died_at(prev, killer)


def error_kind(entry: Mapping[str, Any]) -> tuple[str, Any]:
    text = str(entry.get("error", ""))
    m = _RESCUED.search(text)
    if m:
        return "rescue", m.group(1)
    m = _TIMEOUT.search(text)
    if m:
        return "timeout", int(m.group(1))
    m = _DIED.search(text)
    if m:
        return "died", int(m.group(1))
    m = _GIVEN_BACK.search(text)
    if m:
        return "died", int(m.group(1) or m.group(2))
    if "SoakError" in text:
        return "raise", None
    if text.startswith("cancelled:"):
        return "cancel", None
    return "other", text[:300]


def explain_error(
    entry: Mapping[str, Any], runs: list[Exec], faults: Faults, deaths: ProcessDeaths,
    s: CheckSettings,
) -> str | None:  # fmt: skip
    """None when the entry matches what the log and the faults say; else why not."""
    attempt = int(entry.get("attempt", -1))
    at = iso_to_unix(entry.get("at")) or math.inf
    mine = [e for e in runs if e.attempt == attempt]
    kind, value = error_kind(entry)
    if kind == "raise":
        return None if any(e.outcome == "raise" for e in mine) else "a raise the log never saw"
    if kind == "cancel":
        return None if any(e.outcome == "cancel" for e in mine) else "a cancel the log never saw"
    if kind == "timeout":
        if any(e.plan == "timeout" and e.pid == value for e in mine):
            return None
        return f"timeout of pid {value}, but attempt {attempt} was no timeout job on that pid"
    if kind == "died":
        pid = value
        for e in mine:
            if e.pid != pid:
                continue
            if e.outcome == "crash":
                return None
            if faults.child_kill(e.node, pid, e.start - 1.0, at + 1.0):
                return None
            if deaths.killer(e, at) is not None:
                return None
        if not any(e.pid == pid for e in mine) and any(
            f["pid"] == pid and f["at"] <= at + 1.0 for f in faults.child_kills
        ):
            # Killed after the fetch, before the job's first line there (given back with its
            # attempt, so the same attempt may have run elsewhere since).
            return None
        if not any(e.pid == pid for e in mine) and deaths.on_pid(pid, at) is not None:
            return None  # given back: its child died with another job before its first line
        return f"pid {pid} died with no crash or kill the log or the injector knows of"
    if kind == "rescue":
        node = value
        ran = [e for e in mine if e.node == node]
        since = min((e.start for e in ran), default=-math.inf)
        pids = {e.pid for e in ran} | {e.ppid for e in ran}  # a worker, or its forkserver
        for f in faults.node_kills:
            if f["node"] == node and since - ORPHAN_GRACE <= f["at"] <= at:
                # Started before the kill: the incarnation alive then is the one killed (its
                # process may be missing from the kill's list: it died just before, with
                # another job). Started after it: only an orphan of that incarnation (its pid).
                if f["at"] >= since or not pids or "pids" not in f or pids & set(f["pids"]):
                    return None
        for f in faults.pauses:
            if f["node"] == node and f["at"] <= at <= f["until"] + s.rescue_slack:
                if since <= f["until"] + s.rescue_slack:  # or a copy it held, started after
                    return None
        return f"rescued from node {node}, which was neither killed nor paused then"
    return f"unknown error entry: {value}"


def check(
    *,
    rows: Mapping[int, Row],
    execs: Mapping[int, list[Exec]],
    enqueued: Mapping[int, str],
    uniques: Mapping[str, list[tuple[int, bool]]],
    faults: Sequence[Mapping[str, Any]],
    deaths: Sequence[Mapping[str, Any]] = (),
    log_anomalies: Sequence[str] = (),
    settings: CheckSettings | None = None,
) -> dict[str, Any]:
    s = settings or CheckSettings()
    fx = Faults(faults, deaths, wake=s.rescue_slack)
    pd = ProcessDeaths(execs, s.timeout)
    v = Verdict(s)
    for line in log_anomalies:
        v.add("log anomaly", line)
    final_states: dict[str, Counter[str]] = defaultdict(Counter)
    reexec: dict[str, Counter[str]] = {"designed": Counter(), "fault": Counter()}
    rescues: Counter[str] = Counter()
    acklost: list[dict[str, Any]] = []
    # Finished jobs whose result died with their worker process before it left it.
    lost_with_process: list[float] = []

    for job_id, kind in enqueued.items():
        if job_id not in rows:
            v.add("lost: enqueued, no row", {"id": job_id, "kind": kind})
    for job_id in execs:
        if job_id not in rows:
            v.add("ran a job with no row", {"id": job_id})

    for job_id, row in rows.items():
        runs = execs.get(job_id, [])
        final_states[row.kind][row.state] += 1
        expected = EXPECTED.get(row.kind)
        # -- re-executions
        for prev, nxt in zip(runs, runs[1:], strict=False):
            cat, reason, f, extra = justify(prev, nxt, fx, pd, s)
            if cat == "unexplained":
                v.add(
                    "unexplained duplicate",
                    {
                        "id": job_id,
                        "kind": row.kind,
                        "why": reason,
                        "earlier": prev.brief(),
                        "later": nxt.brief(),
                        "fault": _fault_brief(f),
                        "overlapping": prev.end is None or prev.end > nxt.start,
                        "errors": row.errors,
                        **extra,
                    },
                )
            else:
                reexec[cat][reason] += 1
                if "unacked_for" in extra:
                    acklost.append({"id": job_id, "node": prev.node, "kill_at": f["at"],
                                    "unacked_for": extra["unacked_for"]})  # fmt: skip
                if "lost_after" in extra:
                    lost_with_process.append(extra["lost_after"])
        # -- final state
        if row.state not in FINAL:
            v.add("lost: not finished after the drain", _row_brief(row, runs))
            continue
        bad_errors = []
        for entry in row.errors:
            why = explain_error(entry, runs, fx, pd, s)
            is_rescue = error_kind(entry)[0] == "rescue"
            if is_rescue:
                rescues["explained" if why is None else "of a live node"] += 1
            if why is None:
                continue
            bad_errors.append(entry)
            v.add(
                "rescue of a live node" if is_rescue else "error entry the log cannot explain",
                {"id": job_id, "kind": row.kind, "entry": entry, "why": why,
                 "runs": [e.brief() for e in runs]},
            )  # fmt: skip
        if expected is not None and row.state != expected:
            if expected == "completed" and row.state == "discarded" and not bad_errors:
                v.add("discarded by faults (explained)", _row_brief(row, runs))
            else:
                v.add("wrong final state", {**_row_brief(row, runs), "expected": expected})
        # -- the row agrees with the log (no stale or foreign ack applied)
        _check_row_vs_log(row, runs, v, fx, s)
        _check_kind_details(row, runs, v)

    _check_uniques(rows, uniques, v)
    ack = ack_loss_summary(acklost)
    failures = {
        k: n for k, n in v.counts.items() if not k.startswith(("discarded by faults", "note:"))
    }
    return {
        "ok": not failures,
        "failures": dict(failures),
        "counts": dict(v.counts),
        "details": {k: list(d) for k, d in v.details.items()},
        "jobs": len(rows),
        "executions": sum(len(r) for r in execs.values()),
        "final_states": {k: dict(c) for k, c in sorted(final_states.items())},
        "reexecutions": {k: dict(c) for k, c in reexec.items()},
        "duplicates": {
            "explained": sum(reexec["fault"].values()),
            "unexplained": v.counts.get("unexplained duplicate", 0),
        },
        "designed_retries": sum(reexec["designed"].values()),
        "lost": v.counts.get("lost: not finished after the drain", 0)
        + v.counts.get("lost: enqueued, no row", 0),
        "rescues": dict(rescues),
        "ack_lost_from_log": ack,
        "results_lost_with_process": death_window_summary(lost_with_process),
    }


def _superseded(row: Row, ex: Exec) -> bool:
    """Whether the row moved on from ``ex``'s attempt without it: a later attempt, or a rescue
    of that very attempt from ``ex``'s node (which discards a job at its last attempt, so the
    row keeps the attempt number of the copy the paused node still holds)."""
    if ex.attempt < row.attempt:
        return True
    return ex.attempt == row.attempt and any(
        entry.get("attempt") == ex.attempt and error_kind(entry) == ("rescue", ex.node)
        for entry in row.errors
    )


def _check_row_vs_log(row: Row, runs: list[Exec], v: Verdict, fx: Faults, s: CheckSettings) -> None:
    done_at = row.finished_at
    if done_at is not None:
        late = [e for e in runs if e.start > done_at + CLOCK_SLACK]
        for e in list(late):
            if _superseded(row, e) and fx.stale_copy(e, s.rescue_slack):
                late.remove(e)
                v.add(
                    "note: stale copy ran on a paused node after its job was finished",
                    {"id": row.id, "finished_at": done_at, "late": e.brief()},
                )
        if late:
            v.add(
                "ran after its job was finished",
                {"id": row.id, "finished_at": done_at, "late": [e.brief() for e in late]},
            )
    if row.state == "completed":
        match = [
            e for e in runs
            if e.attempt == row.attempt and e.node == row.node
            and e.outcome in ("ok", "record") and e.end is not None
        ]  # fmt: skip
        if not match:
            v.add(
                "completed, but no finished execution of that attempt on that node (stale ack?)",
                _row_brief(row, runs),
            )
        elif row.completed_at is not None and min(e.end or 0.0 for e in match) > (
            row.completed_at + CLOCK_SLACK
        ):
            v.add("completed before its execution finished (stale ack?)", _row_brief(row, runs))
    elif row.state == "cancelled":
        if not any(e.attempt == row.attempt and e.outcome == "cancel" for e in runs):
            v.add("cancelled, but its attempt never returned Cancel", _row_brief(row, runs))
    elif row.state == "discarded" and row.errors:
        last = row.errors[-1]
        if int(last.get("attempt", -1)) != row.attempt:
            v.add("discarded, but its last error is not of its last attempt", _row_brief(row, runs))


def _check_kind_details(row: Row, runs: list[Exec], v: Verdict) -> None:
    if row.state == "completed" and not runs:
        v.add("completed without running", _row_brief(row, runs))
    if row.kind == "scheduled" and runs:
        at = float(row.args.get("at", 0))
        if runs[0].start < at - CLOCK_SLACK:
            v.add("ran before its scheduled time", {**_row_brief(row, runs), "at": at})
    if row.kind == "snooze" and row.state == "completed":
        if not int(row.meta.get("snoozed", 0) or 0):
            v.add("snooze job completed without a snooze in its row", _row_brief(row, runs))
        # The final attempt's own executions (a snooze gives its attempt back): a stale copy
        # of an older attempt, run by a node frozen past the ttl, is noted elsewhere.
        final = [e for e in runs if e.attempt == row.attempt]
        ends = [e.end for e in final if e.outcome == "snooze" and e.end is not None]
        oks = [e.start for e in final if e.outcome == "ok"]
        if ends and oks and max(oks) < max(ends) + 1.0 - 0.05:
            v.add("snooze job ran again before its snooze was over", _row_brief(row, runs))
    if row.kind == "record" and row.state == "completed" and "return" not in row.meta:
        v.add("Record job completed without meta.return", _row_brief(row, runs))


def _check_uniques(
    rows: Mapping[int, Row], uniques: Mapping[str, list[tuple[int, bool]]], v: Verdict
) -> None:
    by_key: dict[str, list[int]] = defaultdict(list)
    for row in rows.values():
        if row.kind == "unique":
            by_key[str(row.args.get("u"))].append(row.id)
    for key, inserts in uniques.items():
        ids = {i for i, _conflict in inserts}
        fresh = [i for i, conflict in inserts if not conflict]
        found = by_key.get(key, [])
        if len(found) != 1 or len(ids) != 1 or len(fresh) != 1 or set(found) != ids:
            v.add(
                "unique key not deduplicated",
                {"key": key, "rows": found, "inserts": inserts},
            )


def _row_brief(row: Row, runs: list[Exec]) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "state": row.state,
        "attempt": row.attempt,
        "max_attempts": row.max_attempts,
        "node": row.node,
        "meta": {k: row.meta[k] for k in ("snoozed", "crashes", "rescued") if k in row.meta},
        "errors": [
            {"attempt": e.get("attempt"), "at": e.get("at"), "error": str(e.get("error"))[-240:]}
            for e in row.errors
        ],
        "finished_at": row.finished_at,
        "runs": [e.brief() for e in runs],
    }


def _fault_brief(f: Mapping[str, Any] | None) -> Any:
    if not f:
        return None
    return {k: f[k] for k in ("kind", "node", "pid", "at", "until") if k in f}


# -- the ack loss window ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ack_loss_summary(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    delays = [float(i["unacked_for"]) for i in items]
    return {
        "jobs": len(items),
        "p50_s": percentile(delays, 50),
        "p99_s": percentile(delays, 99),
        "max_s": max(delays) if delays else math.nan,
    }


def death_window_summary(gaps: Sequence[float]) -> dict[str, Any]:
    """Finished jobs whose result was lost with their worker process (it died, of another
    job or a kill, before the result left it), and how long after the finish it died: the
    log's END line to the death the engine logged (or the killer's own END line)."""
    return {
        "jobs": len(gaps),
        "p50_s": percentile(gaps, 50),
        "p99_s": percentile(gaps, 99),
        "max_s": max(gaps) if gaps else math.nan,
    }


def ack_window_at_kill(
    kill_at: float, node: str, executing: Iterable[tuple[int, int]], execs: Mapping[int, list[Exec]]
) -> dict[str, Any]:
    """What a killed node held: its rows still ``executing`` just after the kill, split by the
    log into finished (END before the kill: the acks it lost), running, and not yet started."""
    finished: list[float] = []
    running = not_started = 0
    for job_id, attempt in executing:
        mine = [
            e for e in execs.get(job_id, [])
            if e.attempt == attempt and e.node == node and e.start <= kill_at
        ]  # fmt: skip
        if not mine:
            not_started += 1
            continue
        latest = max(mine, key=lambda e: e.start)  # a snoozed job repeats its attempt number
        if latest.end is not None and latest.end <= kill_at:
            finished.append(kill_at - latest.end)
        else:
            running += 1
    return {
        "held_executing": len(finished) + running + not_started,
        "finished_unacked": len(finished),
        "running": running,
        "fetched_not_started": not_started,
        "unacked_for_s": sorted(round(d, 6) for d in finished),
    }
