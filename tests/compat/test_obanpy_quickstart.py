"""Oban.py's documented quick start, run unchanged on oban_pro through a test-only ``oban`` shim.

``tests/compat/shim/oban`` is an ``oban`` package that re-exports oban_pro (it is never shipped:
the wheel holds only ``oban_pro``). With it on PYTHONPATH, the copies of Oban.py's README quick
start and docs/quickstart.md in ``tests/compat/quickstart/`` run as written for Oban.py, and
the ``oban`` commands they show run as ``obanpro`` (Oban.py Pro's name; ``python -m oban_pro``
where the console script is not installed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from helpers import wait_until_sync
from psycopg.conninfo import make_conninfo

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim"
APP = HERE / "quickstart"
FAST_ENV = {
    "OBAN_POLL_INTERVAL": "0.2",
    "OBAN_HEARTBEAT_INTERVAL": "0.5",
    "OBAN_HEARTBEAT_TTL": "3",
    "OBAN_LIFELINE_INTERVAL": "0.5",
    "OBAN_LEADER_TTL": "3",
    "OBAN_STAGE_INTERVAL": "0.2",
}


def obanpro() -> list[str]:
    """The `obanpro` console script, or the same entry point through ``python -m oban_pro``."""
    script = shutil.which("obanpro")
    return [script] if script else [sys.executable, "-m", "oban_pro"]


@pytest.fixture
def database(oban_dsn):
    """A database of its own, so the quick start runs on the default prefix ``public``."""
    name = "qs_" + uuid.uuid4().hex[:10]
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(oban_dsn, dbname=name)
    finally:
        with psycopg.connect(oban_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def app(tmp_path):
    """The quick start's files in a folder of their own (the current directory of the runs)."""
    for source in APP.glob("*.py"):
        shutil.copy(source, tmp_path / source.name)
    return tmp_path


def app_env(app_dir: Path, **extra: str) -> dict[str, str]:
    path = [str(SHIM), str(app_dir), os.environ.get("PYTHONPATH", "")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBAN_")}
    return {
        **env,
        **FAST_ENV,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "QUICKSTART_OUTBOX": str(app_dir / "outbox.jsonl"),
        **extra,
    }


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_shim_is_oban_pro(app):
    """``import oban`` gives oban_pro's objects (not copies), and Oban.py's module names."""
    code = (
        "import sys, oban, oban_pro\n"
        "j, w = sys.modules['oban_pro.job'], sys.modules['oban_pro.worker']\n"
        "from oban.job import Job, JobState\n"
        "from oban.schema import install_sql, uninstall_sql, install, uninstall\n"
        "from oban.decorators import worker, job\n"
        "from oban.worker import JobTimeoutError, WorkerResolutionError\n"
        "assert oban.Oban is oban_pro.Oban and Job is j.Job and worker is w.worker\n"
        "assert set(['Cancel','Job','Oban','Record','Snooze','Worker','current_job','job',"
        "'worker']) <= set(dir(oban))\n"
        "print(oban.__version__)\n"
    )
    result = run([sys.executable, "-c", code], app, app_env(app))
    assert result.stdout.strip()


def test_readme_quick_start_embedded(database, app):
    """README steps 1-3: `oban install --dsn ...`, the ExportWorker, enqueue, embedded node."""
    env = app_env(app, OBAN_DSN=database)
    installed = run([*obanpro(), "install", "--dsn", database], app, env)
    assert "create table public.oban_jobs" in installed.stdout

    result = run([sys.executable, "embedded.py"], app, env)
    states = {job_id: state for job_id, state in json.loads(result.stdout.splitlines()[-1])["jobs"]}
    assert sorted(states.values()) == ["completed", "scheduled"]

    sent = [json.loads(line) for line in (app / "outbox.jsonl").read_text().splitlines()]
    assert [(s["email"], s["report"]) for s in sent] == [("user@example.com", 123)]
    # report 7 was "pending": snoozed for 30 s without using up an attempt
    ((state, attempt, snoozed),) = rows(
        database,
        "SELECT state::text, attempt, (meta->>'snoozed')::int FROM oban_jobs "
        "WHERE args->>'report_id' = '7'",
    )
    assert (state, attempt, snoozed) == ("scheduled", 0, 1)


def test_docs_quick_start_standalone(database, app):
    """docs/quickstart.md: oban.toml, `oban install`, a client-only web app that enqueues, and
    `oban start` (as `obanpro start`, no flags: everything from oban.toml) running the jobs."""
    (app / "oban.toml").write_text((APP / "oban.toml.in").read_text().replace("@DSN@", database))
    env = app_env(app)
    run([*obanpro(), "install"], app, env)
    enqueued = run([sys.executable, "web.py"], app, env)
    assert json.loads(enqueued.stdout.splitlines()[-1]) == {"enqueued": 5}

    node = subprocess.Popen(
        [*obanpro(), "start"],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_sync(
            lambda: (
                rows(database, "SELECT state::text, count(*) FROM oban_jobs GROUP BY 1 ORDER BY 1")
                == [("completed", 4), ("scheduled", 1)]
            ),
            timeout=90,
            message="the 4 due jobs completed by `obanpro start`",
        )
    finally:
        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=60)
    assert node.returncode == 0, out
    assert out.count("Sending an email...") == 3, out
    ((args,),) = rows(database, "SELECT args FROM oban_jobs WHERE state = 'scheduled'")
    assert args == {"email": "user@example.com", "subject": "Reminder", "body": "Don't forget!"}
    # [pruner] max_age from oban.toml reached the node
    assert "prune_max_age" not in out  # no complaint about the setting
