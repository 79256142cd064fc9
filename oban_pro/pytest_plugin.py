"""pytest fixtures for a real, migrated PostgreSQL (registered as the ``oban_pro`` plugin).

- ``oban_dsn`` (session): ``OBAN_TEST_DSN`` when set, else one embedded server for the session.
- ``oban_embedded`` (session): the embedded server handle, or ``None`` with ``OBAN_TEST_DSN``.
- ``oban_prefix``: a fresh schema, migrated, dropped after the test; tests cannot see each
  other's rows.
- ``oban_empty_prefix``: a fresh schema with nothing in it (for migration tests).
- ``oban_instance`` (async; needs pytest-asyncio): an :class:`~oban_pro.Oban` client named
  "Oban" on ``oban_prefix``, so ``Worker.enqueue(...)`` and the helpers of
  :mod:`oban_pro.testing` (which find the instance by that name) work; stopped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from .database import EmbeddedPostgres, start_embedded


@pytest.fixture(scope="session")
def oban_embedded() -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("OBAN_TEST_DSN"):
        yield None
        return
    directory = tempfile.mkdtemp(prefix="oban-pro-test-")
    server = start_embedded(directory, cleanup="delete", announce=False)
    try:
        yield server
    finally:
        server.server.cleanup()


@pytest.fixture(scope="session")
def oban_dsn(oban_embedded: EmbeddedPostgres | None) -> str:
    if oban_embedded is None:
        return os.environ["OBAN_TEST_DSN"]
    return oban_embedded.dsn


def _drop_schema(dsn: str, prefix: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}" CASCADE')


@pytest.fixture
def oban_empty_prefix(oban_dsn: str) -> Iterator[str]:
    import psycopg

    prefix = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(oban_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{prefix}"')
    try:
        yield prefix
    finally:
        _drop_schema(oban_dsn, prefix)


@pytest.fixture
def oban_prefix(oban_dsn: str, oban_empty_prefix: str) -> str:
    from .migrations import migrate_up

    migrate_up(oban_dsn, prefix=oban_empty_prefix)
    return oban_empty_prefix


try:
    import pytest_asyncio
except ImportError:  # the async fixture needs pytest-asyncio; the others do not
    pytest_asyncio = None  # type: ignore[assignment]

if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def oban_instance(oban_dsn: str, oban_prefix: str) -> AsyncIterator[Any]:
        from .oban import Oban

        oban = Oban(dsn=oban_dsn, prefix=oban_prefix)
        try:
            yield oban
        finally:
            await oban.stop()
