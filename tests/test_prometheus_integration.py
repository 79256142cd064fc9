"""The dashboard and the alert rules against a real Prometheus scraping a real node.

A node with metrics on runs jobs with every kind of outcome (completed, retryable, discarded,
snoozed, killed past its timeout, crashing its child) plus jobs left in a queue nobody runs. A
Prometheus subprocess scrapes it every second and loads the alert rules. Then every expression of
every dashboard panel must parse and return data, every rule must be loaded and healthy, and the
"no progress" alert must be pending for the queue nobody runs.

Needs the ``prometheus`` binary (Debian package ``prometheus``) and PostgreSQL (the plugin's
embedded server, or ``OBAN_TEST_DSN``). Everything waits by polling with a deadline.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

if importlib.util.find_spec("oban_pro.oban") is None:
    pytest.skip(
        "the engine (oban_pro.oban) is not importable yet; this test needs a running node",
        allow_module_level=True,
    )

from prometheus_support import (  # noqa: E402 - after the skip above
    INSTALL_HINT,
    Complete,
    CrashChild,
    PastTimeout,
    PrometheusServer,
    Raise,
    SnoozeMinute,
    concrete,
    ensure_prometheus,
    promtool_binary,
)

from oban_pro import Oban  # noqa: E402
from oban_pro.workflow import Workflow  # noqa: E402

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "oban-pro.json"
RULES = ROOT / "grafana" / "alerts" / "oban-pro-rules.yml"
RATE_INTERVALS = ("5s", "1m")


def require_binary() -> str:
    binary = ensure_prometheus()
    if binary is None:
        pytest.fail(f"prometheus binary not found; {INSTALL_HINT}")
    return binary


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append((inner["title"], target["expr"]))
    return out


def rule_names() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in doc["groups"] for rule in group["rules"]]


async def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Run the blocking ``check`` off the event loop (the node lives on it) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def scalar(prom: PrometheusServer, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else 0.0


@pytest.mark.asyncio
async def test_every_panel_and_rule_against_a_real_prometheus(
    oban_dsn: str, oban_prefix: str, tmp_path: Path
) -> None:
    require_binary()
    oban = Oban(
        dsn=oban_dsn,
        prefix=oban_prefix,
        name=f"Oban-{oban_prefix}",
        node="n1",
        # "limited" has limits across nodes, for the dashboard's "Limits across nodes" row.
        queues={
            "default": 4,
            "limited": {"limit": 2, "global_limit": 2, "rate_limit": {"allowed": 50, "period": 60}},
        },
        processes=2,
        imports=["prometheus_support"],
        gossip_interval=0.5,
        metrics_port=0,
        poll_interval=0.2,
        stage_interval=0.5,
        heartbeat_interval=0.5,
        lifeline_interval=0.5,
        leader_ttl=3.0,
        shutdown_timeout=2.0,
    )
    prom: PrometheusServer | None = None
    await oban.start()
    try:
        assert oban.metrics_port, "the node did not report its metrics port"
        prom = PrometheusServer(
            tmp_path / "prometheus", [f"127.0.0.1:{oban.metrics_port}"], [RULES]
        )
        prom.launch()  # from this (main) thread, so it dies with the test process
        await poll(prom.ready, 30, "Prometheus to be ready", interval=0.2)

        jobs = (
            [Complete.new({"ms": 5}) for _ in range(20)]
            + [Raise.new({}) for _ in range(3)]  # retryable
            + [Raise.new({}, max_attempts=1) for _ in range(2)]  # discarded
            + [SnoozeMinute.new({}), PastTimeout.new({}), CrashChild.new({})]
            + [Complete.new({}, queue="backlog") for _ in range(5)]  # nobody runs "backlog"
            + [Complete.new({"ms": 5}, queue="limited") for _ in range(3)]
        )
        for job in jobs:
            await oban.enqueue(job)
        # A workflow, for the "Workflows by state" panel.
        await oban.enqueue_many(
            Workflow(name="panel")
            .add("a", Complete.new({"ms": 5}))
            .add("b", Complete.new({"ms": 5}), deps="a")
        )

        # 1. The events have reached Prometheus.
        expected = {
            'sum(oban_pro_jobs_total{state="completed"})': 20,
            'sum(oban_pro_jobs_total{state="retryable"})': 5,  # 3 raised + timeout + crash
            'sum(oban_pro_jobs_total{state="discarded"})': 2,
            'sum(oban_pro_jobs_total{state="snoozed"})': 1,
            'sum(oban_pro_child_restarts_total{reason="timeout"})': 1,
            'sum(oban_pro_child_restarts_total{reason="crash"})': 1,
            'sum(oban_pro_queue_jobs{queue="backlog", state="available"})': 5,
            'sum(oban_pro_queue_jobs{queue="default", state="scheduled"})': 1,
            'sum(oban_pro_queue_jobs{queue="default", state="retryable"})': 1,
            "sum(oban_pro_leader)": 1,
            "sum(oban_pro_ack_batch_size_count)": 1,
            "sum(oban_pro_jobs_fetched_total)": 33,
            'sum(oban_pro_queue_rate_window_used{queue="limited"})': 3,
            'sum(oban_pro_queue_global_limit{queue="limited"})': 2,
            'sum(oban_pro_workflows{state="completed"})': 1,
        }

        def events_arrived() -> bool:
            return all(scalar(prom, expr) >= want for expr, want in expected.items())

        try:
            await poll(events_arrived, 45, "job outcomes, restarts and queue counts in Prometheus")
        except TimeoutError:
            seen = {expr: scalar(prom, expr) for expr in expected}
            raise AssertionError(f"expected at least {expected}, Prometheus has {seen}") from None
        assert await asyncio.to_thread(prom.targets_health) == ["up"]
        assert scalar(prom, 'oban_pro_queue_limit{queue="default"}') == 4
        assert scalar(prom, 'sum(oban_pro_pool_children{node="n1"})') >= 1
        assert scalar(prom, "max(oban_pro_heartbeat_age_seconds)") < 10

        # 2. A second wave, now that Prometheus has seen the first values: counters that appear
        # with their first increment already in them give rate() 0, so the latency panels need
        # increments between two scrapes to show real numbers.
        for _ in range(20):
            await oban.enqueue(Complete.new({"ms": 20}))
        await poll(
            lambda: scalar(prom, 'sum(oban_pro_jobs_total{state="completed"})') >= 40,
            30,
            "the second wave to complete",
        )

        # 3. Every panel expression parses and returns data at two rate intervals; over 1m each
        # one has a number, not only NaN (a quantile over zero rates). Rates need two samples in
        # the window, so poll until the last one has them.
        exprs = [
            (title, concrete(expr, interval), interval == "1m")
            for title, expr in dashboard_exprs()
            for interval in RATE_INTERVALS
        ]

        def has_data(expr: str, need_number: bool) -> bool:
            result = prom.query(expr)
            if not need_number:
                return bool(result)
            return any(not math.isnan(float(r["value"][1])) for r in result)

        failing: list[tuple[str, str]] = []

        def all_panels_have_data() -> bool:
            failing[:] = [(t, e) for t, e, number in exprs if not has_data(e, number)]
            return not failing

        try:
            await poll(all_panels_have_data, 20, "every panel query to return data")
        except TimeoutError:
            listing = "\n".join(f"  {title}: {e}" for title, e in failing)
            raise AssertionError(f"panel queries with no data:\n{listing}") from None

        # The template variables' queries find the node and the queue.
        nodes = prom.api("label/node/values", **{"match[]": "oban_pro_leader"})
        queues = prom.api("label/queue/values", **{"match[]": 'oban_pro_queue_limit{node=~".*"}'})
        assert "n1" in nodes and "default" in queues

        # 4. Every rule is loaded and evaluates cleanly; "no progress" is pending for "backlog".
        def rules_healthy() -> list[dict[str, Any]] | None:
            rules = prom.rules()
            if len(rules) == len(rule_names()) and all(r["health"] == "ok" for r in rules):
                return rules
            return None

        try:
            rules = await poll(rules_healthy, 15, "every alert rule to be evaluated with health ok")
        except TimeoutError:
            state = [(r["name"], r["health"], r.get("lastError")) for r in prom.rules()]
            raise AssertionError(f"rules not healthy: {state}") from None
        assert sorted(r["name"] for r in rules) == sorted(rule_names())

        def no_progress_pending() -> bool:
            for rule in prom.rules():
                if rule["name"] == "ObanProNoProgress":
                    return any(a["labels"].get("queue") == "backlog" for a in rule["alerts"])
            return False

        await poll(no_progress_pending, 10, "ObanProNoProgress to be pending for queue backlog")
    finally:
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        await oban.stop()


# -- the alert rules' semantics, with promtool (no node, no database) ---------------------------

RULE_TESTS = {
    "evaluation_interval": "1m",
    "tests": [
        {
            "interval": "1m",
            "input_series": [
                # A queue with available jobs and no progress, and one that makes progress.
                {
                    "series": 'oban_pro_queue_jobs{node="n1",queue="stuck",state="available"}',
                    "values": "5x40",
                },
                {
                    "series": 'oban_pro_queue_jobs{node="n1",queue="busy",state="available"}',
                    "values": "5x40",
                },
                {
                    "series": 'oban_pro_jobs_total{node="n1",queue="busy",worker="w",'
                    'state="completed"}',
                    "values": "0+10x40",
                },
                {
                    "series": 'oban_pro_jobs_total{node="n1",queue="busy",worker="w",'
                    'state="discarded"}',
                    "values": "0+5x40",
                },
                {"series": 'oban_pro_jobs_rescued_total{node="n1"}', "values": "0+5x40"},
                {
                    "series": 'oban_pro_child_restarts_total{node="n1",reason="crash"}',
                    "values": "0+2x40",
                },
                {
                    "series": 'oban_pro_child_restarts_total{node="n1",reason="recycle"}',
                    "values": "0+50x40",
                },
                {"series": 'oban_pro_ack_backlog{node="n1"}', "values": "20000x40"},
                {"series": 'oban_pro_ack_backlog{node="n2"}', "values": "10x40"},
                {"series": 'oban_pro_heartbeat_age_seconds{node="n1"}', "values": "100x40"},
                {"series": 'oban_pro_heartbeat_age_seconds{node="n2"}', "values": "1x40"},
                {"series": 'oban_pro_leader{node="n1"}', "values": "0x40"},
                {"series": 'oban_pro_leader{node="n2"}', "values": "0x40"},
                {
                    "series": 'oban_pro_db_errors_total{node="n1",operation="ack"}',
                    "values": "0+60x40",
                },
            ],
            "alert_rule_test": [
                {
                    "eval_time": "30m",
                    "alertname": "ObanProNoProgress",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "queue": "stuck"}}],
                },
                {
                    "eval_time": "35m",
                    "alertname": "ObanProHighDiscardRate",
                    "exp_alerts": [{"exp_labels": {"severity": "warning", "queue": "busy"}}],
                },
                {
                    "eval_time": "15m",
                    "alertname": "ObanProRescueSpike",
                    "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                },
                {
                    "eval_time": "15m",
                    "alertname": "ObanProChildCrashLoop",
                    "exp_alerts": [{"exp_labels": {"severity": "critical", "node": "n1"}}],
                },
                {
                    "eval_time": "15m",
                    "alertname": "ObanProAckBacklog",
                    "exp_alerts": [{"exp_labels": {"severity": "warning", "node": "n1"}}],
                },
                {
                    "eval_time": "10m",
                    "alertname": "ObanProHeartbeatStale",
                    "exp_alerts": [{"exp_labels": {"severity": "warning", "node": "n1"}}],
                },
                {
                    "eval_time": "15m",
                    "alertname": "ObanProNoLeader",
                    "exp_alerts": [{"exp_labels": {"severity": "warning"}}],
                },
                {
                    "eval_time": "15m",
                    "alertname": "ObanProDatabaseErrors",
                    "exp_alerts": [
                        {"exp_labels": {"severity": "warning", "node": "n1", "operation": "ack"}}
                    ],
                },
                # "for" holds alerts back: nothing fires a minute in.
                {"eval_time": "1m", "alertname": "ObanProNoProgress", "exp_alerts": []},
                {"eval_time": "1m", "alertname": "ObanProAckBacklog", "exp_alerts": []},
            ],
        },
        {
            # A healthy cluster: nothing fires.
            "interval": "1m",
            "input_series": [
                {
                    "series": 'oban_pro_queue_jobs{node="n1",queue="q",state="available"}',
                    "values": "3x40",
                },
                {
                    "series": 'oban_pro_jobs_total{node="n1",queue="q",worker="w",'
                    'state="completed"}',
                    "values": "0+100x40",
                },
                {
                    "series": 'oban_pro_jobs_total{node="n1",queue="q",worker="w",'
                    'state="discarded"}',
                    "values": "0+1x40",
                },
                {"series": 'oban_pro_jobs_rescued_total{node="n1"}', "values": "0x40"},
                {
                    "series": 'oban_pro_child_restarts_total{node="n1",reason="crash"}',
                    "values": "0x40",
                },
                {"series": 'oban_pro_ack_backlog{node="n1"}', "values": "50x40"},
                {"series": 'oban_pro_heartbeat_age_seconds{node="n1"}', "values": "1x40"},
                {"series": 'oban_pro_leader{node="n1"}', "values": "1x40"},
                {"series": 'oban_pro_db_errors_total{node="n1",operation="ack"}', "values": "0x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "35m", "alertname": name, "exp_alerts": []}
                for name in (
                    "ObanProNoProgress",
                    "ObanProHighDiscardRate",
                    "ObanProRescueSpike",
                    "ObanProChildCrashLoop",
                    "ObanProAckBacklog",
                    "ObanProHeartbeatStale",
                    "ObanProNoLeader",
                    "ObanProDatabaseErrors",
                )
            ],
        },
    ],
}


def test_alert_rules_check_and_fire_as_documented(tmp_path: Path) -> None:
    require_binary()
    promtool = promtool_binary()
    if promtool is None:
        pytest.fail(f"promtool not found (it ships with prometheus); {INSTALL_HINT}")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr

    # promtool compares annotations too; they are templates checked above, so drop them here
    # and test expressions, "for" durations and labels.
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(doc))
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump({"rule_files": [str(rules)], **RULE_TESTS}))
    run = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # Every rule in the file is covered by a firing case.
    fired = {t["alertname"] for t in RULE_TESTS["tests"][0]["alert_rule_test"] if t["exp_alerts"]}
    assert fired == set(rule_names())
