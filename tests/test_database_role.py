"""The engine runs under the unprivileged role the README documents (no superuser)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from engine_workers import Fail, Noop
from helpers import job_row, wait_until
from plugin_support import FakeNode
from psycopg_pool import AsyncConnectionPool

from oban_pro import Oban
from oban_pro.coordinator.leader import Leader
from oban_pro.migrations import migrate_up
from oban_pro.plugins.lifeline import Lifeline
from oban_pro.plugins.pruner import Pruner
from oban_pro.plugins.stager import Stager
from oban_pro.queries import Queries
from oban_pro.store import Store


@pytest.fixture
def app_role(oban_dsn, oban_empty_prefix):
    """A login role with exactly the README's grants on a migrated schema."""
    role = "oban_app_" + uuid.uuid4().hex[:8]
    prefix = oban_empty_prefix
    migrate_up(oban_dsn, prefix=prefix)
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE')
        dbname = conn.info.dbname
        conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{role}"')
        conn.execute(f'GRANT USAGE ON SCHEMA "{prefix}" TO "{role}"')
        conn.execute(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{prefix}".oban_jobs, '
            f'"{prefix}".oban_producers, "{prefix}".oban_leaders, "{prefix}".oban_rate_limits '
            f'TO "{role}"'
        )
        conn.execute(f'GRANT USAGE ON SEQUENCE "{prefix}".oban_jobs_id_seq TO "{role}"')
    dsn = psycopg.conninfo.make_conninfo(oban_dsn, user=role)
    try:
        yield dsn, prefix
    finally:
        with psycopg.connect(oban_dsn, autocommit=True) as conn:
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')


async def test_node_runs_with_the_documented_grants(app_role, caplog):
    dsn, prefix = app_role
    oban = Oban(dsn=dsn, prefix=prefix, queues={"default": 2}, processes=1,
                imports=["engine_workers"], name=f"role-{prefix}", poll_interval=0.2,
                heartbeat_interval=0.2, heartbeat_ttl=1.0, lifeline_interval=0.2,
                leader_ttl=1.0, stage_interval=0.2)  # fmt: skip
    async with oban:
        ok, bad = await oban.enqueue_many([Noop.new({}), Fail.new({}, max_attempts=1)])
        await wait_until(lambda: job_row(dsn, prefix, ok.id).get("state") == "completed")
        await wait_until(lambda: job_row(dsn, prefix, bad.id).get("state") == "discarded")
        await wait_until(lambda: oban.is_leader, message="leadership under the app role")
        await oban.cancel_job(ok.id)  # operations work too
    # every maintenance statement runs under this role too
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False,
                                   kwargs={"autocommit": True}) as pool:  # fmt: skip
        queries = Queries(prefix)
        jobs = Store(pool, queries)
        await Stager(jobs, FakeNode(), interval=1).step()
        await Lifeline(jobs, FakeNode(), interval=5, heartbeat_ttl=30, reconnect_bound=4,
                       rescue_after=3600).step()  # fmt: skip
        await Pruner(jobs, interval=60, max_age=1, limit=10).step()
        assert await Leader(store=Store(pool, queries), name="x", node="y", ttl=5).elect()
    problems = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")
                and "job " not in r.getMessage()]  # fmt: skip
    assert problems == []
    with psycopg.connect(dsn) as conn:
        is_super = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert is_super.fetchone()[0] is False
