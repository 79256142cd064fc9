"""Fixtures for the chaos suite: node processes that are always cleaned up, a sync client, and
small database probes. Every test here runs real nodes (``python -m oban_pro start``) as
separate OS processes against the session's PostgreSQL."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import query
from node_runner import NodeProcess

from oban_pro import Client


class Nodes:
    """Starts nodes for one test and kills whatever is left of them afterwards."""

    def __init__(self, dsn: str, prefix: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.log_dir = log_dir
        self.all: list[NodeProcess] = []

    def start(self, name: str, *, ready: bool = True, **options: Any) -> NodeProcess:
        node = NodeProcess(self.dsn, self.prefix, name, self.log_dir, **options)
        self.all.append(node)
        node.start()
        if ready:
            node.wait_ready()
        return node

    def stop_all(self) -> None:
        for node in self.all:
            node.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"===== {n.node} =====\n{n.log_text()[-6000:]}" for n in self.all)


@pytest.fixture
def nodes(
    oban_dsn: str, oban_prefix: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Nodes]:
    group = Nodes(oban_dsn, oban_prefix, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(group.dump_logs())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@pytest.fixture
def client(oban_dsn: str, oban_prefix: str) -> Iterator[Client]:
    with Client(oban_dsn, prefix=oban_prefix) as c:
        yield c


# -- probes -----------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float, message: str, interval: float = 0.05) -> Any:
    """Poll ``check`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def leader(dsn: str, prefix: str, name: str = "Oban") -> str | None:
    rows = query(
        dsn,
        f'SELECT node FROM "{prefix}".oban_leaders WHERE name = %s '
        f"AND expires_at >= timezone('UTC', now())",
        (name,),
    )
    return rows[0][0] if rows else None


def job_states(dsn: str, prefix: str, ids: list[int]) -> Counter[str]:
    rows = query(
        dsn,
        f'SELECT state::text, count(*) FROM "{prefix}".oban_jobs WHERE id = ANY(%s) GROUP BY 1',
        (ids,),
    )
    return Counter(dict(rows))


def all_done(dsn: str, prefix: str, ids: list[int]) -> bool:
    return job_states(dsn, prefix, ids).get("completed", 0) == len(ids)


def rows_by_id(dsn: str, prefix: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = query(
        dsn,
        f"SELECT id, state::text, attempt, meta, to_jsonb(errors), attempted_by "
        f'FROM "{prefix}".oban_jobs WHERE id = ANY(%s)',
        (ids,),
    )
    return {
        r[0]: {"state": r[1], "attempt": r[2], "meta": r[3], "errors": r[4], "attempted_by": r[5]}
        for r in rows
    }


def executing_on(dsn: str, prefix: str, node: str, worker: str | None = None) -> list[int]:
    sql = (
        f"SELECT id FROM \"{prefix}\".oban_jobs WHERE state = 'executing' AND attempted_by[1] = %s"
    )
    params: list[Any] = [node]
    if worker is not None:
        sql += " AND worker = %s"
        params.append(worker)
    return [r[0] for r in query(dsn, sql, params)]


def runs_by_id(runs: list[tuple[int, int, int, float]]) -> dict[int, list[tuple[int, int, float]]]:
    """Execution-log lines grouped by job id: [(attempt, pid, time), ...] in time order."""
    out: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for job_id, attempt, pid, at in sorted(runs, key=lambda r: r[3]):
        out[job_id].append((attempt, pid, at))
    return out


def producers(dsn: str, prefix: str) -> list[tuple[str, str, float]]:
    """(node, queue, seconds since the last heartbeat) of every producer row."""
    return [
        (r[0], r[1], float(r[2]))
        for r in query(
            dsn,
            f"SELECT node, queue, extract(epoch FROM timezone('UTC', now()) "
            f'- updated_at) FROM "{prefix}".oban_producers',
        )
    ]


def duplicate_cron_minutes(dsn: str, prefix: str) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        f"SELECT worker, meta->>'cron_at', count(*) FROM \"{prefix}\".oban_jobs "
        f"WHERE meta ? 'cron_at' GROUP BY 1, 2 HAVING count(*) > 1",
    )


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
