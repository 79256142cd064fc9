"""The ``oban-pro`` command line, run as real subprocesses with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from engine_workers import Fail, Noop, WaitForFile
from helpers import execution_log, job_row, query, states, wait_until_sync

from oban_pro import Client

CLI = [sys.executable, "-m", "oban_pro"]
FAST_ENV = {
    "OBAN_POLL_INTERVAL": "0.2",
    "OBAN_HEARTBEAT_INTERVAL": "0.5",
    "OBAN_HEARTBEAT_TTL": "3",
    "OBAN_LIFELINE_INTERVAL": "0.5",
    "OBAN_LEADER_TTL": "3",
    "OBAN_STAGE_INTERVAL": "0.2",
}


def run_cli(
    *args: str, timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_node(dsn: str, prefix: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *CLI,
            "start",
            "--dsn",
            dsn,
            "--prefix",
            prefix,
            "--queues",
            "default:4",
            "--processes",
            "2",
            "--import",
            "engine_workers",
            "--node",
            "cli-node",
            *extra,
        ],
        env={**os.environ, **FAST_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_help_and_usage_errors():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("start", "migrate", "status", "jobs", "demo", "version"):
        assert command in result.stdout
    assert "exit codes" in result.stdout
    assert run_cli().returncode == 2
    start_help = run_cli("start", "--help").stdout
    assert "--queues" in start_help and "OBAN_" in start_help and "130" in start_help
    assert run_cli("version").stdout.startswith("oban-pro ")


def test_bad_configuration_exits_2_naming_the_field(oban_dsn, oban_prefix):
    result = run_cli(
        "start",
        "--dsn",
        oban_dsn,
        "--prefix",
        oban_prefix,
        "--queues",
        "default:10",
        "--processes",
        "0",
    )
    assert result.returncode == 2 and "processes" in result.stderr
    result = run_cli("start", "--dsn", oban_dsn, "--prefix", "x;drop", "--queues", "default:1")
    assert result.returncode == 2 and "prefix" in result.stderr
    result = run_cli("start", "--dsn", oban_dsn, "--prefix", oban_prefix)
    assert result.returncode == 2 and "no queues" in result.stderr


def test_start_runs_jobs_and_sigterm_stops_cleanly(oban_dsn, oban_prefix, tmp_path):
    log = tmp_path / "log"
    with Client(oban_dsn, prefix=oban_prefix) as client:
        jobs = client.enqueue_many([Noop.new({"log": str(log)}) for _ in range(20)])
        failing = client.enqueue(Fail.new({}, max_attempts=1))
    proc = start_node(oban_dsn, oban_prefix, "--log-format", "json")
    try:
        wait_until_sync(
            lambda: states(oban_dsn, oban_prefix) == {"completed": 20, "discarded": 1},
            timeout=60,
            message="20 jobs completed by the CLI node",
        )
    finally:
        code, out = stop(proc)
    assert code == 0, out
    assert '"node": "cli-node"' in out and "stopped" in out
    assert f'"job_id": {failing.id}' in out and "RuntimeError: boom" in out
    assert len(execution_log(log)) == len(jobs)
    assert query(oban_dsn, f'SELECT count(*) FROM "{oban_prefix}".oban_producers')[0][0] == 0


def test_sigterm_releases_running_jobs_at_once(oban_dsn, oban_prefix, tmp_path):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        job = client.enqueue(
            WaitForFile.new({"release": str(tmp_path / "never"), "started": str(tmp_path / "s")})
        )
    proc = start_node(oban_dsn, oban_prefix, "--shutdown-timeout", "0.5")
    try:
        wait_until_sync(lambda: (tmp_path / "s").exists(), timeout=60, message="job start")
    finally:
        started = time.monotonic()
        code, out = stop(proc)
    assert code == 0, out
    assert time.monotonic() - started < 15
    row = job_row(oban_dsn, oban_prefix, job.id)
    assert row["state"] == "available" and row["attempt"] == 0


def test_second_sigint_stops_immediately(oban_dsn, oban_prefix, tmp_path):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        client.enqueue(
            WaitForFile.new({"release": str(tmp_path / "never"), "started": str(tmp_path / "s")})
        )
    proc = start_node(oban_dsn, oban_prefix, "--shutdown-timeout", "60")
    try:
        wait_until_sync(lambda: (tmp_path / "s").exists(), timeout=60, message="job start")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # the two interrupts must be distinct deliveries
        started = time.monotonic()
        code, out = stop(proc, signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, out
    assert time.monotonic() - started < 15


def test_jobs_commands(oban_dsn, oban_prefix):
    with Client(oban_dsn, prefix=oban_prefix) as client:
        a, b = client.enqueue_many([Noop.new({"n": 1}), Noop.new({"n": 2})])
    base = ["--dsn", oban_dsn, "--prefix", oban_prefix]
    listing = run_cli("jobs", "list", *base)
    assert listing.returncode == 0 and "engine_workers.Noop" in listing.stdout
    assert "2 jobs" in listing.stdout
    assert run_cli("jobs", "cancel", *base, str(a.id)).returncode == 0
    assert job_row(oban_dsn, oban_prefix, a.id)["state"] == "cancelled"
    assert run_cli("jobs", "retry", *base, str(a.id)).returncode == 0
    assert job_row(oban_dsn, oban_prefix, a.id)["state"] == "available"
    assert run_cli("jobs", "delete", *base, str(b.id)).returncode == 0
    missing = run_cli("jobs", "delete", *base, str(b.id))
    assert missing.returncode == 1 and "not changed" in missing.stdout
    status = run_cli("status", *base)
    assert status.returncode == 0 and "queue default" in status.stdout


def test_demo_runs_cpu_jobs_and_summarises(oban_dsn, oban_empty_prefix):
    result = run_cli(
        "demo",
        "--dsn",
        oban_dsn,
        "--prefix",
        oban_empty_prefix,
        "--jobs",
        "20",
        "--rounds",
        "200",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ran 20 of 20 jobs" in result.stdout and "failures: 0" in result.stdout
    assert result.stdout.count("process ") >= 1


@pytest.mark.parametrize("flag", ["--queues", "--processes", "--max-memory", "--metrics-port"])
def test_every_start_flag_has_an_env_var(flag):
    from oban_pro.cli.start import FLAGS

    field = FLAGS[flag][0]
    from oban_pro.config import field_names

    assert field in field_names()  # so OBAN_<FIELD> reads it


def test_unreachable_database_exits_1_with_a_clear_message():
    result = run_cli("start", "--dsn", "postgresql://nobody@127.0.0.1:1/none",
                     "--queues", "default:1", timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert "could not start the node" in result.stderr and "--dsn" in result.stderr


def test_a_schema_made_only_by_elixir_says_to_migrate(oban_dsn, oban_empty_prefix):
    """On a schema made by Elixir's migrations alone (no oban_producers / oban_leaders) a node
    refuses to start with a message naming `oban-pro migrate up`, not a traceback."""
    from test_migrations import load_fixture

    load_fixture(oban_dsn, oban_empty_prefix, "elixir_v14")
    result = run_cli("start", "--dsn", oban_dsn, "--prefix", oban_empty_prefix,
                     "--queues", "default:1", "--processes", "1", timeout=60)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"oban-pro migrate up --prefix {oban_empty_prefix}" in result.stderr
    assert f"{oban_empty_prefix}.oban_producers" in result.stderr
    assert "Traceback" not in result.stderr


async def test_oban_start_on_an_unmigrated_schema_raises_and_touches_nothing(
    oban_dsn, oban_empty_prefix
):
    from test_migrations import load_fixture

    from oban_pro import Oban, SchemaNotReadyError

    load_fixture(oban_dsn, oban_empty_prefix, "elixir_v14")
    oban = Oban(dsn=oban_dsn, prefix=oban_empty_prefix, queues={"default": 1}, processes=1)
    with pytest.raises(SchemaNotReadyError) as info:
        await oban.start()
    assert info.value.missing == ["oban_producers", "oban_leaders"]
    assert oban._pool is None or oban._pool.closed
    from helpers import query

    tables = query(oban_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                   (oban_empty_prefix,))  # fmt: skip
    assert [t for (t,) in tables] == ["oban_jobs", "oban_peers"]
