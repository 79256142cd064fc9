"""Telemetry (oban_pro.telemetry): Oban.py's attach/detach/execute/span shapes, the events the
engine emits, and the JSON logger."""

from __future__ import annotations

import json
import logging

import pytest
from helpers import job_row, query
from plugin_support import FakeNode

from oban_pro import Job, telemetry
from oban_pro.client import Client
from oban_pro.coordinator.leader import Leader
from oban_pro.plugins.pruner import Pruner
from oban_pro.plugins.stager import Stager
from oban_pro.queries import Queries
from oban_pro.store import Store
from oban_pro.telemetry import logger as telemetry_logger


@pytest.fixture
def events():
    seen: list[tuple[str, dict]] = []
    telemetry.attach("test", telemetry.EVENTS, lambda name, meta: seen.append((name, meta)))
    try:
        yield seen
    finally:
        telemetry.detach("test")


def test_span_emits_start_and_stop_with_collected_metadata(events):
    telemetry.attach("test", ["app.work.start", "app.work.stop"],
                     lambda n, m: events.append((n, m)))  # fmt: skip
    with telemetry.span("app.work", {"report": 1}) as context:
        context.add({"rows": 3})
    names = [n for n, _ in events]
    assert names == ["app.work.start", "app.work.stop"]
    stop = events[1][1]
    assert stop["report"] == 1 and stop["rows"] == 3 and stop["duration"] >= 0


def test_span_emits_exception_and_reraises(events):
    telemetry.attach("test", ["app.work.exception"], lambda n, m: events.append((n, m)))
    with pytest.raises(KeyError):
        with telemetry.span("app.work", {}):
            raise KeyError("boom")
    name, meta = events[-1]
    assert name == "app.work.exception" and meta["error_type"] == "KeyError"
    assert "boom" in meta["error_message"] and "Traceback" in meta["traceback"]


def test_a_raising_handler_is_logged_and_others_still_run(caplog):
    seen = []
    telemetry.attach("bad", ["x.y"], lambda n, m: 1 / 0)
    telemetry.attach("good", ["x.y"], lambda n, m: seen.append(m["v"]))
    try:
        telemetry.execute("x.y", {"v": 1})
    finally:
        telemetry.detach("bad")
        telemetry.detach("good")
    assert seen == [1] and "telemetry handler for 'x.y' raised" in caplog.text
    assert not telemetry.listening("x.y")
    with pytest.raises(TypeError):
        telemetry.attach("bad", "x.y", print)  # a string is not a list of events


async def test_maintenance_emits_oban_py_events(oban_dsn, oban_prefix, pool, events):
    queries = Queries(oban_prefix)
    with Client(oban_dsn, prefix=oban_prefix) as client:
        job = client.enqueue(Job("app.W", schedule_in=60))
    query(
        oban_dsn,
        f'UPDATE "{oban_prefix}".oban_jobs SET scheduled_at = '
        f"timezone('UTC', now()) - interval '1 second' WHERE id = %s",
        (job.id,),
    )
    assert await Stager(Store(pool, queries), FakeNode(), interval=1).step() == 1
    await Pruner(Store(pool, queries), interval=60, max_age=60, limit=10).step()
    await Leader(store=Store(pool, queries), name="t", node="n", ttl=5).elect()
    by_name = {name: meta for name, meta in events}
    assert by_name["oban.stager.stage.stop"]["staged_count"] == 1
    assert by_name["oban.stager.stage.stop"]["available_queues"] == ["default"]
    assert by_name["oban.pruner.prune.stop"]["pruned_count"] == 0
    assert by_name["oban.leader.election.stop"]["leader"] is True
    assert {"oban.stager.stage.start", "oban.pruner.prune.start"} <= set(by_name)
    assert job_row(oban_dsn, oban_prefix, job.id)["state"] == "available"


def test_logger_writes_json_lines(caplog):
    caplog.set_level(logging.DEBUG, logger="oban")
    telemetry_logger.attach(level=logging.INFO)
    try:
        with telemetry.span("oban.pruner.prune", {}) as context:
            context.add({"pruned_count": 4})
    finally:
        telemetry_logger.detach()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "oban"]
    assert len(lines) == 1
    assert lines[0]["event"] == "oban.pruner.prune.stop" and lines[0]["pruned_count"] == 4
    assert isinstance(lines[0]["duration"], float)
