"""Oban.py's command line on ``oban-pro`` (and its ``obanpro`` alias): ``install``,
``uninstall``, ``--version``, ``start`` with ``--pool-min-size``, ``--pool-max-size``,
``--cron-modules``, ``--cron-paths``, ``--dry-run``, and an Oban.py ``oban.toml``."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from helpers import query

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
CLI = [sys.executable, "-m", "oban_pro"]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    base = {k: v for k, v in os.environ.items() if not k.startswith("OBAN_")}
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def test_obanpro_is_a_console_script_of_the_same_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["obanpro"] == scripts["oban-pro"] == "oban_pro.cli:main"


def test_version_flag_and_command():
    flag = run_cli("--version")
    command = run_cli("version")
    assert flag.returncode == 0 and command.returncode == 0
    assert flag.stdout.split()[-1] == command.stdout.split()[-1]


def test_install_and_uninstall(oban_dsn, oban_empty_prefix):
    prefix = oban_empty_prefix
    tables = f"SELECT tablename FROM pg_tables WHERE schemaname = '{prefix}' ORDER BY 1"
    installed = run_cli("install", "--dsn", oban_dsn, "--prefix", prefix)
    assert installed.returncode == 0, installed.stderr
    assert f"create table {prefix}.oban_jobs" in installed.stdout
    assert [t for (t,) in query(oban_dsn, tables)] == [
        "oban_jobs", "oban_leaders", "oban_peers", "oban_producers", "oban_rate_limits",
    ]  # fmt: skip
    again = run_cli("install", env={"OBAN_DSN": oban_dsn, "OBAN_PREFIX": prefix})
    assert again.returncode == 0 and "up to date" in again.stdout
    query(oban_dsn, f"INSERT INTO \"{prefix}\".oban_jobs (worker) VALUES ('a.B')")
    removed = run_cli("uninstall", "--dsn", oban_dsn, "--prefix", prefix)
    assert removed.returncode == 0, removed.stderr
    assert f"drop table {prefix}.oban_jobs" in removed.stdout  # jobs too, as Oban.py does
    assert query(oban_dsn, tables) == []
    bad = run_cli("install", "--dsn", oban_dsn, "--prefix", "bad prefix")
    assert bad.returncode == 2 and "prefix" in bad.stderr


def test_uninstall_keeps_tables_another_engine_made(oban_dsn, oban_empty_prefix):
    prefix = oban_empty_prefix
    fixture = (TESTS / "fixtures" / "elixir_v14.sql").read_text()
    query(oban_dsn, fixture.replace("{prefix}", f'"{prefix}"').replace("{schema}", f"'{prefix}'"))
    assert run_cli("install", "--dsn", oban_dsn, "--prefix", prefix).returncode == 0
    removed = run_cli("uninstall", "--dsn", oban_dsn, "--prefix", prefix)
    assert removed.returncode == 0, removed.stderr
    assert "kept" in removed.stdout and "elixir" in removed.stdout
    tables = f"SELECT tablename FROM pg_tables WHERE schemaname = '{prefix}' ORDER BY 1"
    assert [t for (t,) in query(oban_dsn, tables)] == ["oban_jobs", "oban_peers"]


def test_dry_run_imports_cron_modules_without_a_database():
    named = run_cli("start", "--dry-run", "--queues", "maintenance:1",
                    "--cron-modules", "compat.cron_app", cwd=TESTS)  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert "compat.cron_app" in named.stdout and "1 cron entries" in named.stdout
    from_env = run_cli(
        "start", "--dry-run", cwd=TESTS, env={"OBAN_CRON_MODULES": "compat.cron_app"}
    )
    assert from_env.returncode == 0 and "1 cron entries" in from_env.stdout
    found = run_cli("start", "--dry-run", "--cron-paths", "compat", cwd=TESTS)
    assert found.returncode == 0, found.stderr
    assert "compat.cron_app" in found.stdout and "1 cron entries" in found.stdout
    missing = run_cli("start", "--dry-run", "--cron-modules", "no_such_module", cwd=TESTS)
    assert missing.returncode == 2 and "cron_modules='no_such_module'" in missing.stderr


def test_start_without_flags_discovers_cron_workers_in_the_current_directory(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "jobs.py").write_text((HERE / "cron_app.py").read_text())
    (app / "plain.py").write_text("from oban_pro import worker\n\n@worker()\nclass P:\n"
                                  "    def process(self, job): ...\n")  # fmt: skip
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "skip.py").write_text("@worker(cron='@daily')\n")
    result = run_cli("start", "--dry-run", "--queues", "maintenance:1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(app.jobs)" in result.stdout and "1 cron entries" in result.stdout


def test_pool_flags_and_an_obanpy_toml(tmp_path):
    (tmp_path / "oban.toml").write_text(
        'dsn = "postgresql://nowhere/db"\n'
        "[queues]\ndefault = 10\n[queues.media]\nlimit = 5\npaused = true\n"
        "[queues.mailers]\nlimit = 2\ndebounce_interval = 0.05\n"
        "[pruner]\nmax_age = 3_600\n[stager]\nlimit = 100\n"
    )
    result = run_cli("start", "--dry-run", "--pool-min-size", "2", "--pool-max-size", "8",
                     "--log-level", "DEBUG", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "queues default:10, media:5, mailers:2" in result.stdout
    for name in ("stager.limit", "queues[mailers].debounce_interval"):
        assert f"setting {name}=" in result.stderr and "does not apply" in result.stderr
    bad = run_cli("start", "--dry-run", "--pool-min-size", "9", "--pool-max-size", "3",
                  cwd=tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "pool_min_size" in bad.stderr
    env = {"OBAN_POOL_MIN_SIZE": "x"}
    assert run_cli("start", "--dry-run", cwd=tmp_path, env=env).returncode == 2
    typo = tmp_path / "typo.toml"
    typo.write_text("[pruner]\nmax_agee = 1\n")
    wrong = run_cli("start", "--dry-run", "--config", str(typo), cwd=tmp_path)
    assert wrong.returncode == 2 and "pruner.max_agee" in wrong.stderr
