"""Oban.py's public API on oban_pro: names, call shapes and behaviour that need no node.

The first test reads the installed Oban.py 0.7 source (the interop/bench virtual environment,
when it exists) and checks that every public name and every parameter of it is accepted by the
same name in oban_pro. The others pin the behaviour Oban.py documents.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import oban_pro
from oban_pro import Cancel, ConfigError, Job, Oban, QueueInfo, Record, Snooze, current_job, job
from oban_pro import worker as worker_decorator
from oban_pro.config import Config, load_config
from oban_pro.errors import ValidationError

JOB_MODULE = sys.modules["oban_pro.job"]
WORKER_MODULE = sys.modules["oban_pro.worker"]


def _obanpy_source() -> Path | None:
    cache = Path.home() / ".cache" / "oban-pro" / "bench"
    for init in sorted(cache.glob("oban-py-venv-*/lib/python*/site-packages/oban/__init__.py")):
        return init.parent
    return None


def _parse(path: Path) -> ast.Module:
    # Oban.py needs Python 3.12; its one 3.12-only statement (``type X[T] = ...``) is rewritten
    # so that this interpreter can parse the file.
    text = re.sub(r"^type\s+(\w+)(\[[^\]]*\])?\s*=", r"\1 =", path.read_text(), flags=re.M)
    return ast.parse(text)


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[str, str]]:
    a = node.args
    out = [(p.arg, "positional_only") for p in a.posonlyargs]
    out += [(p.arg, "positional_or_keyword") for p in a.args]
    if a.vararg:
        out.append((a.vararg.arg, "var_positional"))
    out += [(p.arg, "keyword_only") for p in a.kwonlyargs]
    if a.kwarg:
        out.append((a.kwarg.arg, "var_keyword"))
    return [(n, k) for n, k in out if n not in ("self", "cls")]


def _functions(tree: ast.AST) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {
        node.name: node
        for node in getattr(tree, "body", [])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def _check_accepts(label: str, target: object, params: list[tuple[str, str]]) -> list[str]:
    """What Oban.py accepts that ``target`` does not (empty when it accepts it all)."""
    sig = inspect.signature(target)  # type: ignore[arg-type]
    pro = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    kinds = {p.kind for p in pro}
    positional = [
        p
        for p in pro
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    by_name = {p.name: p for p in pro}
    problems = []
    for index, (name, kind) in enumerate(params):
        if kind == "var_positional":
            if inspect.Parameter.VAR_POSITIONAL not in kinds:
                problems.append(f"{label}: no *{name}")
            continue
        if kind == "var_keyword":
            if inspect.Parameter.VAR_KEYWORD not in kinds:
                problems.append(f"{label}: no **{name}")
            continue
        if kind in ("positional_only", "positional_or_keyword") and not (
            index < len(positional) or inspect.Parameter.VAR_POSITIONAL in kinds
        ):
            problems.append(f"{label}: argument {index} ({name}) cannot be given by position")
        if kind in ("positional_or_keyword", "keyword_only"):
            found = by_name.get(name)
            keywordable = found is not None and found.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
            if not keywordable and inspect.Parameter.VAR_KEYWORD not in kinds:
                problems.append(f"{label}: no keyword {name}=")
    return problems


def test_every_obanpy_public_name_and_parameter_is_accepted():
    source = _obanpy_source()
    if source is None:
        pytest.skip("Oban.py's source is not installed here (no bench/interop virtualenv)")
    names = ("__init__", "oban", "job", "schema", "worker", "decorators", "_producer", "_executor",
             "testing")  # fmt: skip
    read = {name: _parse(source / f"{name}.py") for name in names}
    problems: list[str] = []

    exported = next(
        node.value
        for node in read["__init__"].body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
    )
    for name in ast.literal_eval(exported):
        if not hasattr(oban_pro, name):
            problems.append(f"oban.{name} missing from oban_pro")

    oban_class = _class(read["oban"], "Oban")
    for name, node in _functions(oban_class).items():
        if name.startswith("_") and name not in ("__init__", "_connection"):
            continue
        if not hasattr(Oban, name):
            problems.append(f"Oban.{name} missing")
            continue
        if isinstance(inspect.getattr_static(Oban, name), property):
            continue
        problems += _check_accepts(f"Oban.{name}", getattr(Oban, name), _params(node))

    job_class = _class(read["job"], "Job")
    for name, node in _functions(job_class).items():
        if name.startswith("_") and name != "__init__":
            continue
        if not hasattr(Job, name):
            problems.append(f"Job.{name} missing")
            continue
        problems += _check_accepts(f"Job.{name}", getattr(Job, name), _params(node))
    slots = next(
        node.value
        for node in job_class.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__slots__"
    )
    for slot in ast.literal_eval(slots):
        if slot not in Job.__slots__:
            problems.append(f"Job attribute {slot} missing")
    for member in ("AVAILABLE", "CANCELLED", "COMPLETED", "DISCARDED", "EXECUTING", "RETRYABLE"):
        assert getattr(JOB_MODULE.JobState, member)
    for name in ("Snooze", "Cancel", "Record", "JobState", "RECORDED_LIMIT", "Result"):
        if not hasattr(JOB_MODULE, name):
            problems.append(f"oban.job.{name} missing")

    schema = importlib.import_module("oban_pro.schema")
    for name, node in _functions(read["schema"]).items():
        if not hasattr(schema, name):
            problems.append(f"oban.schema.{name} missing")
            continue
        problems += _check_accepts(f"schema.{name}", getattr(schema, name), _params(node))

    testing = importlib.import_module("oban_pro.testing")
    for name, node in _functions(read["testing"]).items():
        if name.startswith("_"):
            continue
        if not hasattr(testing, name):
            problems.append(f"oban.testing.{name} missing")
            continue
        problems += _check_accepts(f"testing.{name}", getattr(testing, name), _params(node))
    for name in ("FAR_FUTURE", "SCHEDULED_IN_DELTA"):
        if getattr(testing, name, None) is None:
            problems.append(f"oban.testing.{name} missing")

    for name, node in _functions(read["decorators"]).items():
        problems += _check_accepts(f"@{name}", getattr(WORKER_MODULE, name), _params(node))
    for name in ("Worker", "JobTimeoutError", "WorkerResolutionError", "worker_name",
                 "register_worker", "resolve_worker"):  # fmt: skip
        if not hasattr(WORKER_MODULE, name):
            problems.append(f"oban.worker.{name} missing")

    queue_info = _class(read["_producer"], "QueueInfo")
    for node in queue_info.body:
        if isinstance(node, ast.AnnAssign) and node.target.id not in QueueInfo.__dataclass_fields__:
            problems.append(f"QueueInfo.{node.target.id} missing")
    assert not problems, "\n".join(problems)


# -- Job ----------------------------------------------------------------------------------------


def test_job_tags_are_normalised_as_obanpy_does():
    job_ = Job("app.W", tags=[" Urgent", "urgent", "B", "", None, 42, "a "])
    assert job_.tags == ["42", "a", "b", "urgent"]
    with pytest.raises(ValidationError) as err:
        Job("app.W", tags="a,b")
    assert err.value.field == "tags"
    with pytest.raises(ValidationError, match="tag"):
        Job("app.W", tags=[{"no": 1}])


def test_scheduled_in_wins_over_scheduled_at_and_schedule_in_is_its_old_name():
    far = datetime(2100, 1, 1, tzinfo=UTC)
    job_ = Job("app.W", scheduled_at=far, scheduled_in=60)
    assert job_.scheduled_at < far and job_.state == "scheduled"
    soon = Job("app.W", schedule_in=timedelta(seconds=5)).scheduled_at
    assert soon is not None and soon - datetime.now(UTC) < timedelta(seconds=6)
    with pytest.raises(ValidationError) as err:
        Job("app.W", scheduled_in="soon")
    assert err.value.field == "scheduled_in"


def test_job_state_is_validated_and_naive_times_are_utc():
    assert Job("app.W", state=JOB_MODULE.JobState.COMPLETED).state == "completed"
    with pytest.raises(ValidationError) as err:
        Job("app.W", state="finished")
    assert err.value.field == "state"
    assert Job("app.W", inserted_at=datetime(2024, 1, 1)).inserted_at.tzinfo is UTC


def test_job_update_changes_only_updatable_fields_and_validates():
    job_ = Job("app.W", priority=1)
    assert job_.update({"priority": 0, "tags": ["Urgent"], "scheduled_in": 300}) is job_
    assert (job_.priority, job_.tags) == (0, ["urgent"])
    assert job_.scheduled_at > datetime.now(UTC) + timedelta(seconds=290)
    with pytest.raises(ValidationError) as err:
        job_.update({"priority": 10, "queue": "other"})
    assert err.value.field == "priority" and (job_.priority, job_.queue) == (0, "default")
    with pytest.raises(ValidationError) as err:
        job_.update({"state": "completed"})
    assert err.value.field == "state" and "cannot be updated" in str(err.value)


def test_job_cancelled_extra_str_and_defaults():
    job_ = Job("app.workers.Export", args={"id": 1}, extra={"trace": "x"})
    assert not job_.cancelled() and job_.extra == {"trace": "x"}
    job_.request_cancellation()
    assert job_.cancelled()
    assert str(job_) == 'Job(id=None, worker=Export, args={"id":1}, queue=default, state=available)'
    assert (job_.attempted_by, job_.errors, job_.meta) == ([], [], {})
    assert Job.from_row({"worker": "a.B", "id": 3, "attempted_by": None}).attempted_by == []


def test_result_types():
    assert Snooze(seconds=30).seconds == 30 and Cancel("x").reason == "x"
    assert Record({"a": 1}, limit=100).encoded
    with pytest.raises(ValueError):
        Record("x" * 1000, limit=10)
    assert JOB_MODULE.Result[int]


# -- workers ------------------------------------------------------------------------------------


@worker_decorator(queue="media", priority=2, timeout=5, partition="tenant", unique=None)
class Resize:
    async def process(self, job):
        return current_job()


@worker_decorator(queue="media")
class SyncResize:
    def process(self, job):
        return current_job()


def test_unknown_worker_options_and_new_overrides_go_to_extra():
    job_ = Resize.new({"id": 1}, priority=5, trace_id="abc")  # type: ignore[attr-defined]
    assert (job_.queue, job_.priority) == ("media", 5)
    assert job_.extra == {"partition": "tenant", "trace_id": "abc"}  # timeout is oban_pro's
    assert Resize._opts["partition"] == "tenant"  # type: ignore[attr-defined]


def test_current_job_is_set_while_process_runs(event_loop_policy=None):
    import asyncio

    job_ = Resize.new({"id": 1})  # type: ignore[attr-defined]
    assert current_job() is None
    assert asyncio.run(Resize().process(job_)) is job_
    assert SyncResize().process(job_) is job_
    assert current_job() is None
    assert inspect.iscoroutinefunction(Resize().process)
    assert not inspect.iscoroutinefunction(SyncResize().process)


@job(queue="mailers", max_attempts=3)
def send_email(to, subject, body="(empty)", **headers):
    running = current_job()
    return (to, subject, body, headers, running.id if running else None)


def test_function_jobs_take_the_functions_own_arguments():
    positional = send_email.new("a@b", "Hi")  # type: ignore[attr-defined]
    assert positional.args == {"to": "a@b", "subject": "Hi", "body": "(empty)"}
    assert (positional.queue, positional.max_attempts) == ("mailers", 3)
    keyword = send_email.new(to="a@b", subject="Hi", body="x", reply_to="c@d")  # type: ignore[attr-defined]
    assert keyword.args == {"to": "a@b", "subject": "Hi", "body": "x", "reply_to": "c@d"}
    # job options that are not parameters of the function go to the job
    later = send_email.new("a@b", "Hi", schedule_in=timedelta(hours=6), priority=1)  # type: ignore[attr-defined]
    assert later.state == "scheduled" and later.priority == 1 and "schedule_in" not in later.args
    # oban_pro's older form: one dict of keyword arguments
    assert send_email.new({"to": "a@b", "subject": "Hi"}).args == {"to": "a@b", "subject": "Hi"}  # type: ignore[attr-defined]
    with pytest.raises(ValidationError) as err:
        send_email.new("a@b")  # type: ignore[attr-defined]
    assert err.value.field == "args" and "subject" in str(err.value)
    # the function still works as a function; as a job it reads current_job()
    assert send_email("x", "y")[0] == "x"
    cls = send_email._worker_class  # type: ignore[attr-defined]
    result = cls().process(Job(cls._worker_name, args={"to": "t", "subject": "s"}, id=9))
    assert result == ("t", "s", "(empty)", {}, 9)


# -- QueueInfo ------------------------------------------------------------------------------------


def test_queue_info_has_obanpy_fields_and_the_old_dict_access():
    info = QueueInfo(
        limit=5, meta={}, node="n", paused=False, queue="q", running=[1], started_at=None, uuid="u"
    )
    assert (info.limit, info["limit"], info["running"]) == (5, 5, [1])
    with pytest.raises(KeyError):
        info["nope"]


# -- Config -------------------------------------------------------------------------------------


def test_obanpy_keywords_map_onto_fields(caplog):
    with caplog.at_level(logging.WARNING, logger="oban_pro.config"):
        config = Config(
            queues={"default": 10, "media": {"limit": 5, "paused": True}},
            pruner={"max_age": 3600, "interval": 30.0, "limit": 50_000},
            lifeline={"interval": 30, "rescue_after": 600},
            stager={"interval": 0.5},
            refresher={"interval": 10.0, "max_age": 40.0},
            scheduler={"timezone": "America/Chicago"},
            notifier={"type": "postgres"},
            shutdown_grace_period=None,
            pool_max_size=7,
            leadership=False,
        )
    assert config.queues == {"default": 10, "media": 5} and config.paused_queues == ["media"]
    assert (config.prune_max_age, config.prune_interval, config.prune_limit) == (3600, 30.0, 50_000)
    assert (config.lifeline_interval, config.rescue_after, config.stage_interval) == (30, 600, 0.5)
    assert (config.heartbeat_interval, config.heartbeat_ttl) == (10.0, 40.0)
    assert config.cron_timezone == "America/Chicago" and config.leadership is False
    assert config.shutdown_timeout == float("inf") and config.pool_size == 7
    assert not caplog.records  # everything above applies
    assert Config(shutdown_grace_period=3).shutdown_timeout == 3
    assert config.replace(node="x").queues == config.queues


def test_obanpy_keys_that_do_not_apply_are_warned_not_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="oban_pro.config"):
        config = Config(
            stager={"limit": 10},
            metrics={"interval": 2.0, "counts_enabled": False},
            notifier={"type": "postgres", "beat_interval": 5},
            queues={"mailers": {"limit": 20, "debounce_interval": 0.05, "global_limit": 40}},
        )
    text = caplog.text
    for name in ("stager.limit", "metrics", "notifier.beat_interval",
                 "queues[mailers].debounce_interval"):  # fmt: skip
        assert f"setting {name}=" in text and "does not apply" in text, name
    assert "global_limit" not in text  # Oban Pro's global limit applies (oban_pro.limits)
    assert config.gossip_interval == 2.0 and config.queues == {"mailers": 20}
    assert config.cluster_limits["mailers"].global_limit.allowed == 40
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="oban_pro.config"):
        Oban(metrics=True, queues={"q": 1}, name="compat-metrics")
        Oban(dispatcher=object(), name="compat-dispatcher")
    assert "metrics=True" in caplog.text and "dispatcher" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pruner": {"max_agee": 1}}, "pruner.max_agee"),
        ({"pruner": 5}, "pruner"),
        ({"notifier": {"type": "redis"}}, "notifier.type"),
        ({"queues": {"q": {"limit": "many"}}}, "queues[q]"),
        ({"queues": {"q": {"limit": 2, "paused": "yes"}}}, "queues[q].paused"),
        ({"queues": {"q": {"limit": 2, "colour": 1}}}, "queues[q].colour"),
        ({"scheduler": {"timezone": "Mars/Base"}}, "cron_timezone"),
        ({"refresher": {"interval": 10, "max_age": 5}}, "heartbeat_ttl"),
        ({"pool_min_size": 9, "pool_max_size": 3}, "pool_min_size"),
        ({"pool_timeout": 0}, "pool_timeout"),
        ({"leadership": "sometimes"}, "leadership"),
        ({"log_level": "loud"}, "log_level"),
        ({"prune_max_age": 5, "pruner": {"max_age": 6}}, "prune_max_age"),
    ],
)
def test_bad_obanpy_settings_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        Config(**kwargs)
    assert err.value.field == field and field in str(err.value)


OBANPY_TOML = """
dsn = "postgresql://user:password@localhost/mydb"
prefix = "private"
node = "worker.1"
shutdown_grace_period = 30
leadership = true
pool_min_size = 2
pool_max_size = 20
pool_timeout = 5.0
pool_max_lifetime = 600.0
pool_max_idle = 60.0
pool_check = true

[queues]
default = 10

[queues.mailers]
limit = 20

[queues.media]
limit = 5
paused = true

[pruner]
max_age = 3_600
limit = 50_000

[lifeline]
interval = 30
rescue_after = 600

[stager]
interval = 2.0

[refresher]
interval = 10.0
max_age = 40.0

[scheduler]
timezone = "America/Chicago"

[notifier]
type = "postgres"
"""


def test_an_obanpy_oban_toml_is_read_whole(tmp_path):
    (tmp_path / "oban.toml").write_text(OBANPY_TOML)
    config = load_config({}, environ={}, cwd=tmp_path)
    assert config.dsn == "postgresql://user:password@localhost/mydb"
    assert (config.prefix, config.node, config.shutdown_timeout) == ("private", "worker.1", 30)
    assert config.queues == {"default": 10, "mailers": 20, "media": 5}
    assert config.paused_queues == ["media"] and config.leadership is True
    assert (config.pool_min_size, config.pool_size, config.pool_timeout) == (2, 20, 5.0)
    assert (config.pool_max_lifetime, config.pool_max_idle, config.pool_check) == (600, 60, True)
    assert (config.prune_max_age, config.prune_limit) == (3600, 50_000)
    assert (config.lifeline_interval, config.rescue_after, config.stage_interval) == (30, 600, 2)
    assert (config.heartbeat_interval, config.heartbeat_ttl) == (10.0, 40.0)
    assert config.cron_timezone == "America/Chicago"


def test_obanpy_environment_variables(tmp_path):
    (tmp_path / "oban.toml").write_text("shutdown_grace_period = 30\npool_max_size = 20\n")
    env = {
        "OBAN_DSN": "postgresql://env/db",
        "OBAN_QUEUES": "default:10,mailers:5",
        "OBAN_PREFIX": "envprefix",
        "OBAN_NODE": "env-node",
        "OBAN_NOTIFIER": "postgres",
        "OBAN_SHUTDOWN_GRACE_PERIOD": "12.5",
        "OBAN_POOL_MIN_SIZE": "3",
        "OBAN_POOL_MAX_SIZE": "9",
        "OBAN_POOL_TIMEOUT": "4",
        "OBAN_POOL_MAX_LIFETIME": "100",
        "OBAN_POOL_MAX_IDLE": "50",
        "OBAN_POOL_CHECK": "true",
        "OBAN_CRON_MODULES": "app.cron,app.jobs",
        "OBAN_CRON_PATHS": "app/workers",
    }
    config = load_config({}, environ=env, cwd=tmp_path)
    assert (config.dsn, config.prefix, config.node) == (
        "postgresql://env/db",
        "envprefix",
        "env-node",
    )
    assert config.queues == {"default": 10, "mailers": 5}
    assert (config.shutdown_timeout, config.pool_min_size, config.pool_size) == (12.5, 3, 9)
    assert (config.pool_timeout, config.pool_max_lifetime, config.pool_max_idle) == (4, 100, 50)
    assert config.pool_check is True
    assert config.cron_modules == ["app.cron", "app.jobs"] and config.cron_paths == ["app/workers"]
    with pytest.raises(ConfigError) as err:
        load_config({}, environ={"OBAN_NOTIFIER": "redis"}, cwd=tmp_path)
    assert err.value.field == "notifier.type"
    with pytest.raises(ConfigError) as err:
        load_config({}, environ={"OBAN_POOL_CHECK": "maybe"}, cwd=tmp_path)
    assert err.value.field == "pool_check"
    # CLI flags (overrides) win over the environment, under either name
    assert load_config({"pool_size": 5}, environ=env, cwd=tmp_path).pool_size == 5
    assert load_config({"pool_max_size": 6}, environ=env, cwd=tmp_path).pool_size == 6


def test_oban_accepts_obanpy_none_defaults():
    oban = Oban(
        pool=None, name=None, node=None, prefix=None, queues=None, pruner=None, lifeline=None,
        leadership=None, notifier=None, refresher=None, scheduler=None, stager=None,
        metrics=None, dispatcher=None,
    )  # fmt: skip
    assert (oban.name, oban.config.prefix, oban.config.queues) == ("Oban", "public", {})
    assert Oban(shutdown_grace_period=None, name="compat-none").config.shutdown_timeout == float(
        "inf"
    )


def test_sync_client_enqueues_inside_a_sqlalchemy_session(oban_dsn, oban_prefix):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    import psycopg
    from sqlalchemy.orm import Session

    from oban_pro import Client
    from oban_pro.client import enqueue_sync

    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(oban_dsn)
    )
    try:
        with Client(oban_dsn, prefix=oban_prefix) as client:
            with Session(engine) as session, session.begin():
                client.enqueue(Job("app.W", args={"kept": 1}), conn=session)
                enqueue_sync(Job("app.W", args={"kept": 2}), conn=session, prefix=oban_prefix)
            with Session(engine) as session:
                session.begin()
                client.enqueue_many(Job("app.W", args={"gone": 1}), conn=session)
                session.rollback()
            assert [j.args for j in client.list_jobs()] == [{"kept": 2}, {"kept": 1}]
            updated = client.update_jobs([j.id for j in client.list_jobs()], {"priority": 4})
            assert [j.priority for j in updated] == [4, 4]
    finally:
        engine.dispose()


def test_scheduler_timezone_applies_to_entries_that_name_none():
    from oban_pro.cron import CronEntry, cron_meta
    from oban_pro.plugins.scheduler import Scheduler

    entries = [
        CronEntry("0 9 * * *", "w.Plain"),
        CronEntry("0 9 * * *", "w.Paris", timezone="Europe/Paris"),
        CronEntry("0 9 * * *", "w.Utc", timezone="Etc/UTC"),
    ]
    # Only the entries are read here: no Store, no node.
    zones = [str(e.zone) for e in Scheduler(None, None, entries, "America/Chicago").entries]
    assert zones == ["America/Chicago", "Europe/Paris", "Etc/UTC"]
    assert [str(e.zone) for e in Scheduler(None, None, entries).entries][0] == "Etc/UTC"
    assert cron_meta(entries[0])["cron_tz"] == "Etc/UTC"
    chicago = Scheduler(None, None, entries, "America/Chicago").entries[0]
    assert chicago.matches(datetime(2026, 1, 5, 15, 0, tzinfo=UTC))  # 09:00 in Chicago
    assert Config(scheduler={"timezone": "America/Chicago"}).cron_timezone == "America/Chicago"
