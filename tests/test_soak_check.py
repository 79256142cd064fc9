"""The soak's checker on made-up rows, logs and faults: each rule says yes to what is explained
and no to what is not (no database, no processes; the soak itself is tests/chaos/test_soak.py)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import soak_check as sc  # noqa: E402

T = 1_000_000.0


def S(job, attempt, node, pid, t, kind="noop", plan="ok"):
    return f"S {job} {attempt} {kind} {plan} {node} {pid} 1 {T + t:.6f}"


def E(job, attempt, node, pid, t, kind="noop", outcome="ok"):
    return f"E {job} {attempt} {kind} {outcome} {node} {pid} 1 {T + t:.6f}"


def row(job, state="completed", attempt=1, node="a", kind="noop", errors=(), done=None, **kw):
    at = None if done is None else T + done
    return sc.Row(
        id=job, state=state, kind=kind, attempt=attempt, max_attempts=kw.pop("max_attempts", 20),
        args=kw.pop("args", {}), meta=kw.pop("meta", {}), errors=list(errors), node=node,
        completed_at=at if state == "completed" else None,
        discarded_at=at if state == "discarded" else None,
        cancelled_at=at if state == "cancelled" else None,
    )  # fmt: skip


def rescue(attempt, node, t):
    at = sc.datetime.fromtimestamp(T + t, sc.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = f"rescued: node {node} (producer x) stopped heartbeating; last heartbeat at ..."
    return {"attempt": attempt, "at": at, "error": text}


def run(lines, rows, faults=(), enqueued=None, uniques=None):
    execs, anomalies = sc.parse_log(lines)
    faults = [dict(f, at=T + f["at"], **({"until": T + f["until"]} if "until" in f else {}))
              for f in faults]  # fmt: skip
    rows = {r.id: r for r in rows}
    return sc.check(
        rows=rows, execs=execs, enqueued=enqueued or {i: r.kind for i, r in rows.items()},
        uniques=uniques or {}, faults=faults, log_anomalies=anomalies,
    )  # fmt: skip


def test_a_clean_run_passes():
    got = run([S(1, 1, "a", 10, 1), E(1, 1, "a", 10, 1.1)], [row(1, done=1.2)])
    assert got["ok"], got["failures"]
    assert got["duplicates"] == {"explained": 0, "unexplained": 0}


def test_rerun_after_node_kill_while_running_is_explained_and_without_it_is_not():
    lines = [S(1, 1, "a", 10, 1), S(1, 2, "b", 20, 9), E(1, 2, "b", 20, 9.1)]
    rows = [row(1, attempt=2, node="b", done=9.2, errors=[rescue(1, "a", 8)])]
    kill = {"kind": "node_kill", "node": "a", "at": 2.0, "pids": [9, 10]}
    got = run(lines, rows, [kill])
    assert got["ok"], got["failures"]
    assert got["reexecutions"]["fault"] == {"node kill -9 while running": 1}
    got = run(lines, rows)
    assert got["duplicates"]["unexplained"] == 1
    assert got["counts"]["rescue of a live node"] == 1
    # a kill of another incarnation of the same node name (other pids, before this run
    # started) explains nothing
    got = run(lines, rows, [dict(kill, at=0.5, pids=[99])])
    assert got["duplicates"]["unexplained"] == 1


def test_a_rescue_after_a_kill_during_the_run_is_explained_even_if_its_pid_was_not_listed():
    # The job's process died (with another job) just before its node was killed, so the kill's
    # process list lacks it; the node's kill during the run still explains the rescue entry.
    lines = [S(1, 1, "a", 10, 1), S(1, 2, "b", 20, 9), E(1, 2, "b", 20, 9.1)]
    rows = [row(1, attempt=2, node="b", done=9.2, errors=[rescue(1, "a", 8)])]
    got = run(lines, rows, [{"kind": "node_kill", "node": "a", "at": 2.0, "pids": [99]}])
    assert got["counts"].get("rescue of a live node", 0) == 0, got["failures"]


def test_finished_job_whose_ack_died_with_its_node_is_explained_within_the_bound():
    lines = [S(1, 1, "a", 10, 1), E(1, 1, "a", 10, 1.1), S(1, 2, "b", 20, 9), E(1, 2, "b", 20, 9.1)]
    rows = [row(1, attempt=2, node="b", done=9.2, errors=[rescue(1, "a", 8)])]
    got = run(lines, rows, [{"kind": "node_kill", "node": "a", "at": 1.3, "pids": [10]}])
    assert got["ok"], got["failures"]
    assert got["ack_lost_from_log"]["jobs"] == 1
    assert abs(got["ack_lost_from_log"]["p50_s"] - 0.2) < 1e-6
    # finished 60 s before the kill: the ack cannot have been waiting that long
    lines = [
        S(1, 1, "a", 10, 1),
        E(1, 1, "a", 10, 1.1),
        S(1, 2, "b", 20, 70),
        E(1, 2, "b", 20, 70.1),
    ]
    rows = [row(1, attempt=2, node="b", done=70.2, errors=[rescue(1, "a", 65)])]
    got = run(lines, rows, [{"kind": "node_kill", "node": "a", "at": 61.1, "pids": [10]}])
    assert got["duplicates"]["unexplained"] == 1


def test_a_pause_beyond_the_ttl_explains_the_rescue_and_the_overlap():
    lines = [S(1, 1, "c", 30, 1), S(1, 2, "a", 10, 6), E(1, 2, "a", 10, 6.1),
             E(1, 1, "c", 30, 6.5)]  # fmt: skip
    rows = [row(1, attempt=2, node="a", done=6.2, errors=[rescue(1, "c", 5.5)])]
    pause = {"kind": "pause", "node": "c", "at": 1.5, "until": 9.0}
    got = run(lines, rows, [pause])
    assert got["ok"], got["failures"]
    assert got["reexecutions"]["fault"] == {"node paused beyond heartbeat_ttl while running": 1}
    got = run(lines, rows)
    assert got["duplicates"]["unexplained"] == 1


def test_designed_retries_are_not_duplicates():
    lines = [S(1, 1, "a", 10, 1, "flaky", "raise"), E(1, 1, "a", 10, 1.1, "flaky", "raise"),
             S(1, 2, "a", 10, 3, "flaky"), E(1, 2, "a", 10, 3.1, "flaky")]  # fmt: skip
    err = {"attempt": 1, "at": "x", "error": "Traceback ... SoakError: fails on purpose"}
    got = run(lines, [row(1, attempt=2, kind="flaky", done=3.2, errors=[err])])
    assert got["ok"], got["failures"]
    assert got["designed_retries"] == 1


def test_a_completed_row_that_no_finished_execution_matches_is_a_stale_ack():
    # attempt 2 raised, yet the row says completed at attempt 2: some other ack was applied
    lines = [S(1, 1, "a", 10, 1), S(1, 2, "b", 20, 5, plan="raise"),
             E(1, 2, "b", 20, 5.1, outcome="raise"), E(1, 1, "a", 10, 5.2)]  # fmt: skip
    kill = {"kind": "node_kill", "node": "a", "at": 2.0, "pids": [10]}
    got = run(lines, [row(1, attempt=2, node="b", done=5.3, errors=[rescue(1, "a", 4)])], [kill])
    assert not got["ok"]
    assert any("stale ack" in k for k in got["failures"]), got["failures"]


def test_lost_jobs_wrong_states_early_starts_and_duplicate_unique_rows_are_reported():
    lines = [S(2, 1, "a", 10, 1, "scheduled"), E(2, 1, "a", 10, 1.1, "scheduled")]
    rows = [
        row(1, state="executing"),
        row(2, kind="scheduled", done=1.2, args={"at": T + 5}),
        row(3, kind="cancel", state="completed", done=1.0),
        row(4, kind="unique", args={"u": "k"}, done=1),
        row(5, kind="unique", args={"u": "k"}, done=1),
    ]
    got = run(lines, rows, enqueued={1: "noop", 2: "scheduled", 3: "cancel", 9: "noop"},
              uniques={"k": [(4, False), (5, False)]})  # fmt: skip
    c = got["counts"]
    assert got["lost"] == 2  # 1 still executing, 9 has no row
    assert c["ran before its scheduled time"] == 1
    assert c["wrong final state"] == 1
    assert c["unique key not deduplicated"] == 1


def test_log_pairing_and_the_ack_window_at_a_kill():
    execs, anomalies = sc.parse_log(
        [S(1, 1, "a", 10, 1), E(1, 1, "a", 10, 2), E(2, 1, "a", 10, 2), S(3, 1, "a", 11, 1), "junk"]
    )
    assert execs[1][0].outcome == "ok" and execs[3][0].end is None
    assert len(anomalies) == 2
    w = sc.ack_window_at_kill(T + 2.5, "a", [(1, 1), (3, 1), (4, 1)], execs)
    assert (w["finished_unacked"], w["running"], w["fetched_not_started"]) == (1, 1, 1)
    assert w["unacked_for_s"] == [0.5]


def test_a_copy_a_paused_node_held_and_started_after_sigcont_is_explained_but_noted():
    # c fetched attempt 1 before its SIGSTOP; rescued, the job ran on a (attempt 2) and
    # completed; after SIGCONT c started its stale copy. The fenced ack changed nothing.
    lines = [S(1, 2, "a", 10, 5), E(1, 2, "a", 10, 5.1), S(1, 1, "c", 30, 9.5),
             E(1, 1, "c", 30, 9.6)]  # fmt: skip
    rows = [row(1, attempt=2, node="a", done=5.2, errors=[rescue(1, "c", 4.5)])]
    pause = {"kind": "pause", "node": "c", "at": 1.0, "until": 9.4}
    got = run(lines, rows, [pause])
    assert got["ok"], got["failures"]
    assert got["reexecutions"]["fault"] == {"stale copy started by a node paused beyond the ttl": 1}
    assert got["counts"]["note: stale copy ran on a paused node after its job was finished"] == 1
    # with no pause, an older attempt starting after a newer one is reported
    got = run(lines, rows)
    assert got["duplicates"]["unexplained"] == 1 and not got["ok"]


def test_a_last_attempt_discarded_by_a_rescue_and_started_after_sigcont_is_a_stale_copy():
    # Attempt 3 of 3 was fetched by c before its SIGSTOP; the rescue discarded it (no attempt
    # left, so the row keeps attempt 3); after SIGCONT c started its copy of that attempt.
    lines = [S(1, 3, "c", 30, 9.45, kind="doomed", plan="raise"),
             E(1, 3, "c", 30, 9.5, kind="doomed", outcome="raise")]  # fmt: skip
    rows = [row(1, state="discarded", attempt=3, node="c", kind="doomed", done=6.0,
                errors=[rescue(3, "c", 6.0)], max_attempts=3)]  # fmt: skip
    pause = {"kind": "pause", "node": "c", "at": 1.0, "until": 9.4}
    got = run(lines, rows, [pause])
    assert "ran after its job was finished" not in got["counts"], got["details"]
    assert got["counts"]["note: stale copy ran on a paused node after its job was finished"] == 1
    # rescued from another node, or never paused: still reported
    other = [row(1, state="discarded", attempt=3, node="c", kind="doomed", done=6.0,
                 errors=[rescue(3, "b", 6.0)], max_attempts=3)]  # fmt: skip
    assert run(lines, other, [pause])["counts"]["ran after its job was finished"] == 1
    assert run(lines, rows)["counts"]["ran after its job was finished"] == 1


def test_a_job_the_paused_node_starts_just_after_sigcont_may_still_be_rescued():
    # SIGCONT at 9.4; c starts a job it fetched before the pause at 9.45, before its first
    # heartbeat; the leader rescues it at 9.5 and b runs it (attempt 2).
    lines = [S(1, 1, "c", 30, 9.45), E(1, 1, "c", 30, 9.5), S(1, 2, "b", 20, 9.6),
             E(1, 2, "b", 20, 9.7)]  # fmt: skip
    rows = [row(1, attempt=2, node="b", done=9.8, errors=[rescue(1, "c", 9.5)])]
    got = run(lines, rows, [{"kind": "pause", "node": "c", "at": 1.0, "until": 9.4}])
    assert got["ok"], got["failures"]
    got = run(lines, rows, [{"kind": "pause", "node": "c", "at": 1.0, "until": 9.4 - 30}])
    assert not got["ok"]


def given_back(attempt, pid, t, why="exited with code 7 while running 2 jobs"):
    at = sc.datetime.fromtimestamp(T + t, sc.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = (
        f"child process (pid {pid}) {why} (this one and 2); last RSS 30 MiB. Which job caused "
        f"it is not known, so this one was given back without being charged and runs isolated"
    )
    return {"attempt": attempt, "at": at, "error": text}


def test_a_result_lost_with_a_sibling_crash_is_explained_even_if_the_node_died_much_later():
    # Job 1 finished on pid 10; job 2 crashed pid 10 30 ms later, before job 1's result left
    # it; job 1 was given back (attempt returned) and ran again on b. Node a was killed much
    # later: that kill explains nothing, the crash does.
    lines = [
        S(1, 1, "a", 10, 1), E(1, 1, "a", 10, 1.0),
        S(2, 1, "a", 10, 1.01, kind="crash", plan="crash"),
        E(2, 1, "a", 10, 1.03, kind="crash", outcome="crash"),
        S(2, 2, "b", 20, 80, kind="crash"), E(2, 2, "b", 20, 80.1, kind="crash"),
        S(1, 1, "b", 20, 80), E(1, 1, "b", 20, 80.1),
    ]  # fmt: skip
    rows = [
        row(1, node="b", done=80.2, errors=[given_back(1, 10, 1.05)]),
        row(2, attempt=2, node="b", kind="crash", done=80.2, errors=[given_back(1, 10, 1.05)]),
    ]
    late_kill = {"kind": "node_kill", "node": "a", "at": 60.0, "pids": [9, 10]}
    got = run(lines, rows, [late_kill])
    assert got["ok"], got["failures"]
    reason = "its process died with another job's crash/timeout before it reported"
    assert got["reexecutions"]["fault"][reason] == 1
    lost = got["results_lost_with_process"]
    assert lost["jobs"] == 1 and abs(lost["p50_s"] - 0.03) < 1e-6
    # Without the crash, the same re-run is unexplained (and the late kill is named).
    no_crash = [line for line in lines if not line.startswith(("S 2 1", "E 2 1"))]
    got = run(no_crash, rows[:1], [late_kill])
    assert got["duplicates"]["unexplained"] == 1
    assert got["details"]["unexplained duplicate"][0]["why"] == (
        "finished long before its node was killed"
    )


def test_a_job_given_back_by_an_injected_child_kill_before_its_first_line_is_explained():
    # Sent to pid 10 (the parent saw it start), killed by the injector before the job's code
    # logged anything there; given back, the same attempt ran on b.
    lines = [S(1, 1, "b", 20, 3), E(1, 1, "b", 20, 3.1)]
    entry = given_back(1, 10, 1.05, why="killed by signal SIGKILL (9) while running 3 jobs")
    rows = [row(1, node="b", done=3.2, errors=[entry])]
    kill = {"kind": "child_kill", "node": "a", "pid": 10, "at": 1.0}
    got = run(lines, rows, [kill])
    assert got["ok"], got["failures"]
    got = run(lines, rows)
    assert got["counts"]["error entry the log cannot explain"] == 1


def test_a_timeout_missed_while_its_node_was_paused_is_explained_and_otherwise_not():
    lines = [
        S(1, 1, "a", 10, 1, kind="timeout", plan="timeout"),
        E(1, 1, "a", 10, 6, kind="timeout", outcome="timeout-missed"),
        S(1, 2, "b", 20, 9, kind="timeout"), E(1, 2, "b", 20, 9.1, kind="timeout"),
    ]  # fmt: skip
    rows = [row(1, attempt=2, node="b", kind="timeout", done=9.2, errors=[rescue(1, "a", 8)])]
    pause = {"kind": "pause", "node": "a", "at": 1.4, "until": 12.0}
    got = run(lines, rows, [pause])
    assert got["reexecutions"]["fault"] == {"ran past its timeout while its node was paused": 1}
    got = run(lines, rows)
    assert got["details"]["unexplained duplicate"][0]["why"] == (
        "ran past its timeout and then ran again"
    )


def test_a_worker_forked_after_the_kill_list_was_taken_belongs_to_the_killed_node():
    # pid 11 is not in the kill's list, but its parent (pid 9, the node's forkserver) is: it
    # started its jobs in the moment after its coordinator died, and they were rescued.
    def S2(job, attempt, node, pid, ppid, t):
        return f"S {job} {attempt} noop ok {node} {pid} {ppid} {T + t:.6f}"

    lines = [S2(1, 1, "a", 11, 9, 2.005), S(1, 2, "b", 20, 9), E(1, 2, "b", 20, 9.1)]
    rows = [row(1, attempt=2, node="b", done=9.2, errors=[rescue(1, "a", 8)])]
    kill = {"kind": "node_kill", "node": "a", "at": 2.0, "pids": [8, 9, 10]}
    got = run(lines, rows, [kill])
    assert got["ok"], got["failures"]
    stranger = [S2(1, 1, "a", 11, 7, 2.005), *lines[1:]]
    got = run(stranger, rows, [kill])
    assert got["counts"]["rescue of a live node"] == 1
