"""The soak under faults, short: ``python -m bench soak`` at a few thousand jobs over 30 s.

Three nodes as separate processes, the soak's mixed workload (no-op, CPU, async and sync I/O,
raising, crashing, timing out, snoozing, cancelling, scheduled and unique jobs), and one of each
fault: kill -9 of a worker process, kill -9 of a node (restarted), a PostgreSQL restart, a
SIGSTOP of a coordinator beyond heartbeat_ttl. The checker (``bench/soak_check.py``) must find
nothing lost, no re-execution that no fault explains, every job in the state its kind implies,
rows that agree with the execution log, and no process or zombie left behind. About 75 s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import import_bench

soak = import_bench("soak")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.chaos

TTL = 3.0
PLAN = [
    (6.0, "child_kill", None),
    (9.0, "node_kill", None),
    (14.0, "pg_restart", 1.5),  # a quick restart, well under the ttl
    (19.0, "pause", 2 * TTL + 1),  # beyond the ttl: the paused node's jobs are rescued
    (28.0, "child_kill", None),
]


@pytest.mark.timeout(300)
def test_short_soak_loses_nothing_and_runs_nothing_twice_unexplained(
    oban_dsn, oban_prefix, oban_embedded, tmp_path, monkeypatch
):
    if oban_embedded is None:
        pytest.skip("restarts the server: needs the embedded one (OBAN_TEST_DSN is set)")
    paths = (str(ROOT), os.environ.get("PYTHONPATH"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    cfg = soak.SoakConfig(
        jobs=3000,
        minutes=0.5,
        processes=2,
        limits={"soak": 8, "soak_io": 8, "soak_risky": 2},  # 2 processes: risky jobs alone
        warmup=4.0,
        plan=PLAN,
        timings={
            **soak.TIMINGS,
            "heartbeat_interval": 0.5,
            "heartbeat_ttl": TTL,
            "lifeline_interval": 0.5,
            "leader_ttl": TTL,
        },
        scheduled_max=8.0,
        drain_timeout=120.0,
        quiet=True,
    )
    result = soak.run_soak(
        cfg,
        oban_dsn,
        restart_db=soak.embedded_restarter(oban_embedded),
        workdir=tmp_path,
        prefix=oban_prefix,
    )
    table = soak.summary_table(result)
    (tmp_path / "result.json").write_text(json.dumps(result, indent=1, default=str))
    check = result["check"]
    said = (
        f"\n{table}\nfailures: {result['failures']}\ndetails: "
        + json.dumps(check["details"], default=str)[:6000]
        + f"\n(logs in {tmp_path})"
    )

    injected = result["faults_by_kind"]
    assert injected.get("node_kill") == 1 and injected.get("pg_restart") == 1, said
    assert injected.get("pause") == 1 and injected.get("child_kill") == 2, said
    assert not any("failed" in f for f in result["faults"]), said
    assert check["lost"] == 0, said
    assert check["duplicates"]["unexplained"] == 0, said
    assert check["counts"].get("wrong final state", 0) == 0, said
    assert check["jobs"] >= 2900 and check["final_states"]["doomed"] == {
        "discarded": sum(check["final_states"]["doomed"].values())
    }, said
    assert result["ok"], said
