"""Shared test helpers. Database fixtures come from the ``oban_pro`` pytest plugin
(``oban_dsn``, ``oban_prefix``, ``oban_empty_prefix``, ``oban_embedded``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from psycopg_pool import AsyncConnectionPool

TESTS_DIR = Path(__file__).resolve().parent

# Oban.py's testing guide, copied as an application's test suite: it imports ``oban`` (the
# test-only shim) and runs in a pytest of its own (tests/compat/test_obanpy_testing_docs.py).
collect_ignore = ["compat/obanpy_testing_guide"]

# Worker modules used by tests live in tests/; child processes and node subprocesses must be
# able to import them by name.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p
)


@pytest.fixture
async def pool(oban_dsn):
    """A small autocommit connection pool on the test database."""
    async with AsyncConnectionPool(
        oban_dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True}
    ) as pool:
        yield pool


@pytest.fixture(scope="session")
def pg15_dsn():
    """A private PostgreSQL 15 for conformance runs (see ``second_server``)."""
    import second_server

    problem = second_server.ensure_binaries()
    if problem:
        pytest.fail(problem)
    server = second_server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture(params=["pg18", "pg15"])
def any_server_dsn(request):
    """The embedded PostgreSQL 18, then Debian's PostgreSQL 15: a module that overrides
    ``oban_dsn`` with this runs its tests on both major versions."""
    if request.param == "pg15":
        return request.getfixturevalue("pg15_dsn")
    embedded = request.getfixturevalue("oban_embedded")
    return embedded.dsn if embedded is not None else os.environ["OBAN_TEST_DSN"]
