"""Prepared statements called from one simple-protocol message (oban_pro.prepared), and the
limited fetch that uses them when the server forgets them."""

from __future__ import annotations

import uuid

import psycopg
from helpers import OneConnection, fetch_limited, query

from oban_pro.limits import GlobalLimit, QueueLimits, fetch_params
from oban_pro.prepared import Prepared, PreparedStatements
from oban_pro.queries import Queries


def test_placeholders_become_numbered_parameters_in_first_use_order() -> None:
    p = Prepared("SELECT %(b)s::int + %(a)b::int + %(b)s::int WHERE 'x' LIKE 'x%%'")
    assert p.text == "SELECT $1::int + $2::int + $1::int WHERE 'x' LIKE 'x%'"
    assert p.params == ("b", "a")
    assert p.call({"a": 1, "b": 2, "unused": 3}) == (f"EXECUTE {p.name}(%s, %s)", [2, 1])
    assert Prepared("SELECT 1").name != Prepared("SELECT 2").name


async def test_each_connection_prepares_once_and_again_after_forget(oban_dsn) -> None:
    statements = PreparedStatements()
    p = Prepared("SELECT %(n)s::int * 2")
    async with await psycopg.AsyncConnection.connect(oban_dsn, autocommit=True) as conn:
        await statements.ensure(conn, [p])
        await statements.ensure(conn, [p])  # no second PREPARE (it would fail: it exists)
        cur = psycopg.AsyncClientCursor(conn)
        sql, args = p.call({"n": 21})
        await cur.execute(sql, args)
        assert await cur.fetchone() == (42,)
        await conn.execute("DEALLOCATE ALL")
        statements.forget(conn)
        await statements.ensure(conn, [p])
        await cur.execute(sql, args)
        assert await cur.fetchone() == (42,)
        statements.forget(conn)  # forgotten while the server still has it: no error
        await statements.ensure(conn, [p])
    async with await psycopg.AsyncConnection.connect(oban_dsn, autocommit=True) as other:
        await statements.ensure(other, [p])  # a new connection prepares its own
        cur = psycopg.AsyncClientCursor(other)
        await cur.execute(sql, args)
        assert await cur.fetchone() == (42,)


async def test_limited_fetch_survives_a_server_that_lost_its_statements(
    oban_dsn, oban_prefix
) -> None:
    query(oban_dsn, f"INSERT INTO \"{oban_prefix}\".oban_jobs (queue, worker, args) "
                    f"SELECT 'api', 'app.W', '{{}}' FROM generate_series(1, 10)")  # fmt: skip
    limits = QueueLimits(global_limit=GlobalLimit(3))
    params = {**fetch_params(limits, oban_prefix, "api"), "demand": 2, "node": "n",
              "uuid": str(uuid.uuid4()), "now": None}  # fmt: skip
    async with await psycopg.AsyncConnection.connect(oban_dsn, autocommit=True) as conn:
        assert (
            len(await fetch_limited(OneConnection(conn), Queries(oban_prefix), limits, params)) == 2
        )
        await conn.execute("DISCARD ALL")  # what a pooler between us and the server may do
        assert (
            len(await fetch_limited(OneConnection(conn), Queries(oban_prefix), limits, params)) == 1
        )
        assert await fetch_limited(OneConnection(conn), Queries(oban_prefix), limits, params) == []
