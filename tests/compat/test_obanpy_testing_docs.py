"""Oban.py's docs/testing.md, its examples run as written, on oban_pro.

``tests/compat/obanpy_testing_guide/`` holds the guide's examples copied unchanged between
marked lines (with stand-ins for the application code they take for granted). They import
``oban``, which the test-only shim in ``tests/compat/shim`` maps to oban_pro, and run in a
pytest of their own, as an application's test suite would, against a database of their own
(the docs use the default prefix and ``Oban.create_pool()``, which reads ``OBAN_DSN``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from oban_pro.migrations import migrate_up

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim"
DOCS = HERE / "obanpy_testing_guide"
REPO = HERE.parent.parent


@pytest.fixture
def database(oban_dsn):
    name = "td_" + uuid.uuid4().hex[:10]
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(oban_dsn, dbname=name)
    try:
        migrate_up(dsn)
        yield dsn
    finally:
        with psycopg.connect(oban_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_testing_guide_runs_unchanged(database, tmp_path):
    suite = tmp_path / "app_tests"
    shutil.copytree(DOCS, suite, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBAN_")}
    path = [str(SHIM), str(suite), str(REPO), env.get("PYTHONPATH", "")]
    env.update(OBAN_DSN=database, PYTHONPATH=os.pathsep.join(p for p in path if p))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
         "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function", "-W",
         "error::pytest.PytestUnraisableExceptionWarning", str(suite)],
        cwd=suite, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # Every example ran: 12 tests, none skipped.
    assert re.search(r"^12 passed in ", result.stdout, re.M), result.stdout
