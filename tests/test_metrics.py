"""oban_pro.metrics: each recording method shows up in the exposition, labels stay bounded, and
the /metrics endpoint serves the Prometheus text format on a free port and closes."""

from __future__ import annotations

import math
import re
import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from oban_pro.metrics import (
    DB_OPERATIONS,
    DURATION_BUCKETS,
    METRICS,
    OVERFLOW,
    RESTART_REASONS,
    ChildSnapshot,
    ClusterLimitRow,
    Metrics,
    PoolSnapshot,
    metrics_table_markdown,
)

NODE = "n1"
# child: a slot number (0..2 x processes), never a pid
ALLOWED_LABELS = {"queue", "worker", "state", "node", "reason", "operation", "child"}


@pytest.fixture
def m() -> Metrics:
    return Metrics(NODE)


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, {"node": NODE, **labels})


def families(m: Metrics) -> dict[str, object]:
    text = generate_latest(m.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def series(m: Metrics) -> list[tuple[str, dict[str, str]]]:
    text = generate_latest(m.registry).decode()
    return [(s.name, s.labels) for f in text_string_to_metric_families(text) for s in f.samples]


# -- each method -------------------------------------------------------------------------------


def test_job_finished_counts_outcome_duration_and_wait(m: Metrics) -> None:
    labels = {"queue": "default", "worker": "app.Mailer"}
    m.job_finished("default", "app.Mailer", "completed", 0.003, 1.5)
    m.job_finished("default", "app.Mailer", "completed", 40.0, 0.0)
    m.job_finished("default", "app.Mailer", "retryable", 0.2, 0.01)

    assert value(m, "oban_pro_jobs_total", **labels, state="completed") == 2
    assert value(m, "oban_pro_jobs_total", **labels, state="retryable") == 1
    assert value(m, "oban_pro_jobs_total", **labels, state="discarded") is None
    assert value(m, "oban_pro_job_duration_seconds_count", **labels) == 3
    assert value(m, "oban_pro_job_duration_seconds_sum", **labels) == pytest.approx(40.203)
    # Buckets are cumulative and "le" is inclusive.
    assert value(m, "oban_pro_job_duration_seconds_bucket", **labels, le="0.0025") == 0
    assert value(m, "oban_pro_job_duration_seconds_bucket", **labels, le="0.005") == 1
    assert value(m, "oban_pro_job_duration_seconds_bucket", **labels, le="0.25") == 2
    assert value(m, "oban_pro_job_duration_seconds_bucket", **labels, le="30.0") == 2
    assert value(m, "oban_pro_job_duration_seconds_bucket", **labels, le="60.0") == 3
    assert value(m, "oban_pro_job_duration_seconds_bucket", **labels, le="+Inf") == 3
    assert value(m, "oban_pro_job_wait_seconds_count", queue="default") == 3
    assert value(m, "oban_pro_job_wait_seconds_sum", queue="default") == pytest.approx(1.51)
    assert value(m, "oban_pro_job_wait_seconds_bucket", queue="default", le="0.001") == 1


def test_duration_buckets_span_milliseconds_to_hours() -> None:
    assert DURATION_BUCKETS[0] <= 0.001
    assert DURATION_BUCKETS[-1] >= 3600
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


def test_observation_exactly_on_a_bound_lands_in_that_bucket(m: Metrics) -> None:
    m.job_finished("q", "w", "completed", 1.0, 3600.0)
    assert value(m, "oban_pro_job_duration_seconds_bucket", queue="q", worker="w", le="0.5") == 0
    assert value(m, "oban_pro_job_duration_seconds_bucket", queue="q", worker="w", le="1.0") == 1
    assert value(m, "oban_pro_job_wait_seconds_bucket", queue="q", le="1800.0") == 0
    assert value(m, "oban_pro_job_wait_seconds_bucket", queue="q", le="3600.0") == 1


def test_negative_wait_from_clock_skew_counts_as_zero(m: Metrics) -> None:
    m.job_finished("q", "w", "completed", 0.1, -0.5)
    assert value(m, "oban_pro_job_wait_seconds_sum", queue="q") == 0
    assert value(m, "oban_pro_job_wait_seconds_bucket", queue="q", le="0.001") == 1


def test_every_job_state_is_recorded(m: Metrics) -> None:
    for state in ("completed", "retryable", "discarded", "cancelled", "snoozed"):
        m.job_finished("q", "w", state, 0.01, 0.01)
        assert value(m, "oban_pro_jobs_total", queue="q", worker="w", state=state) == 1


def test_jobs_fetched(m: Metrics) -> None:
    m.jobs_fetched("default", 5, 0.002)
    m.jobs_fetched("default", 0, 0.0004)
    m.jobs_fetched("media", 2, 0.01)
    assert value(m, "oban_pro_jobs_fetched_total", queue="default") == 5
    assert value(m, "oban_pro_jobs_fetched_total", queue="media") == 2
    assert value(m, "oban_pro_fetch_duration_seconds_count", queue="default") == 2
    assert value(m, "oban_pro_fetch_duration_seconds_bucket", queue="default", le="0.0005") == 1
    assert value(m, "oban_pro_fetch_duration_seconds_sum", queue="media") == pytest.approx(0.01)


def test_acks(m: Metrics) -> None:
    m.ack_batch(250, 0.004)
    m.ack_batch(1, 0.0008)
    assert value(m, "oban_pro_ack_batch_size_count") == 2
    assert value(m, "oban_pro_ack_batch_size_sum") == 251
    assert value(m, "oban_pro_ack_batch_size_bucket", le="1.0") == 1
    assert value(m, "oban_pro_ack_batch_size_bucket", le="500.0") == 2
    assert value(m, "oban_pro_ack_duration_seconds_count") == 2
    assert value(m, "oban_pro_ack_duration_seconds_sum") == pytest.approx(0.0048)

    assert value(m, "oban_pro_acks_stale_total") == 0
    m.acks_stale(3)
    m.acks_stale(0)
    assert value(m, "oban_pro_acks_stale_total") == 3

    m.set_ack_backlog(42)
    assert value(m, "oban_pro_ack_backlog") == 42
    m.set_ack_backlog(0)
    assert value(m, "oban_pro_ack_backlog") == 0


def test_child_restarts_by_reason_start_at_zero(m: Metrics) -> None:
    for reason in RESTART_REASONS:
        assert value(m, "oban_pro_child_restarts_total", reason=reason) == 0
    m.child_restart("crash")
    m.child_restart("crash")
    m.child_restart("timeout")
    assert value(m, "oban_pro_child_restarts_total", reason="crash") == 2
    assert value(m, "oban_pro_child_restarts_total", reason="timeout") == 1
    assert value(m, "oban_pro_child_restarts_total", reason="memory") == 0


def test_rescue_leader_notifier_db_errors(m: Metrics) -> None:
    assert value(m, "oban_pro_jobs_rescued_total") == 0
    m.jobs_rescued(4)
    m.jobs_rescued(0)
    assert value(m, "oban_pro_jobs_rescued_total") == 4

    assert value(m, "oban_pro_leader") == 0
    m.set_leader(True)
    assert value(m, "oban_pro_leader") == 1
    m.set_leader(False)
    assert value(m, "oban_pro_leader") == 0

    assert value(m, "oban_pro_notifier_reconnects_total") == 0
    m.notifier_reconnect()
    assert value(m, "oban_pro_notifier_reconnects_total") == 1

    for op in DB_OPERATIONS:
        assert value(m, "oban_pro_db_errors_total", operation=op) == 0
    m.db_error("ack")
    m.db_error("ack")
    m.db_error("fetch")
    assert value(m, "oban_pro_db_errors_total", operation="ack") == 2
    assert value(m, "oban_pro_db_errors_total", operation="fetch") == 1


def test_heartbeat_age_is_computed_at_scrape(m: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    import oban_pro.metrics as module

    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    m.heartbeat_sent()
    now[0] += 7.5
    assert value(m, "oban_pro_heartbeat_age_seconds") == pytest.approx(7.5)
    now[0] += 2.5
    assert value(m, "oban_pro_heartbeat_age_seconds") == pytest.approx(10.0)
    m.heartbeat_sent()
    assert value(m, "oban_pro_heartbeat_age_seconds") == 0


def test_heartbeat_age_counts_from_start_before_the_first_heartbeat(m: Metrics) -> None:
    age = value(m, "oban_pro_heartbeat_age_seconds")
    assert age is not None and 0 <= age < 60


def test_queue_counts_replace_the_whole_set(m: Metrics) -> None:
    m.set_leader(True)
    m.set_queue_counts(
        {("default", "available"): 10, ("default", "scheduled"): 3, ("media", "retryable"): 1}
    )
    assert value(m, "oban_pro_queue_jobs", queue="default", state="available") == 10
    assert value(m, "oban_pro_queue_jobs", queue="media", state="retryable") == 1

    m.set_queue_counts({("default", "available"): 4})
    assert value(m, "oban_pro_queue_jobs", queue="default", state="available") == 4
    assert value(m, "oban_pro_queue_jobs", queue="default", state="scheduled") is None
    assert value(m, "oban_pro_queue_jobs", queue="media", state="retryable") is None
    assert [s for s in series(m) if s[0] == "oban_pro_queue_jobs"] == [
        ("oban_pro_queue_jobs", {"node": NODE, "queue": "default", "state": "available"})
    ]


def test_workflow_counts_by_state_and_dropped_with_leadership(m: Metrics) -> None:
    m.set_leader(True)
    m.set_workflow_counts({"executing": 2, "completed": 5, "weird": 1})
    assert value(m, "oban_pro_workflows", state="executing") == 2
    assert value(m, "oban_pro_workflows", state="completed") == 5
    assert value(m, "oban_pro_workflows", state="other") == 1
    m.set_leader(False)
    assert value(m, "oban_pro_workflows", state="executing") is None


def test_losing_leadership_drops_queue_counts(m: Metrics) -> None:
    m.set_leader(True)
    m.set_queue_counts({("default", "available"): 10})
    m.set_leader(False)
    assert value(m, "oban_pro_queue_jobs", queue="default", state="available") is None


def test_producers_provider(m: Metrics) -> None:
    rows = [("default", 10, 3, False), ("media", 2, 0, True)]
    m.track_producers(lambda: rows)
    assert value(m, "oban_pro_queue_executing", queue="default") == 3
    assert value(m, "oban_pro_queue_limit", queue="default") == 10
    assert value(m, "oban_pro_queue_paused", queue="default") == 0
    assert value(m, "oban_pro_queue_paused", queue="media") == 1
    rows[0] = ("default", 10, 7, False)  # read again at every scrape
    assert value(m, "oban_pro_queue_executing", queue="default") == 7


def test_cluster_limits_provider_exports_only_what_applies(m: Metrics) -> None:
    rows = [
        ClusterLimitRow("api", 4, 3, None, None, None),
        ClusterLimitRow("mail", None, None, 60, 59, 1),
    ]
    m.track_cluster_limits(lambda: rows)
    assert value(m, "oban_pro_queue_global_limit", queue="api") == 4
    assert value(m, "oban_pro_queue_global_executing", queue="api") == 3
    assert value(m, "oban_pro_queue_rate_limit", queue="api") is None
    assert value(m, "oban_pro_queue_rate_limit", queue="mail") == 60
    assert value(m, "oban_pro_queue_rate_window_used", queue="mail") == 59
    assert value(m, "oban_pro_queue_rate_window_remaining", queue="mail") == 1
    assert value(m, "oban_pro_queue_global_limit", queue="mail") is None


def test_pool_provider_exports_max_and_sum_not_pids(m: Metrics) -> None:
    snap = PoolSnapshot(busy=3, idle=1, rss={4101: 50_000_000, 4102: 80_000_000, 4103: 20_000_000})
    m.track_pool(lambda: snap)
    assert value(m, "oban_pro_pool_children", state="busy") == 3
    assert value(m, "oban_pro_pool_children", state="idle") == 1
    assert value(m, "oban_pro_child_rss_max_bytes") == 80_000_000
    assert value(m, "oban_pro_pool_rss_bytes") == 150_000_000
    for _name, labels in series(m):
        assert "pid" not in labels and "4101" not in labels.values()


def test_pool_provider_exports_each_child_and_kills_by_reason(m: Metrics) -> None:
    snap = PoolSnapshot(
        busy=2,
        idle=0,
        rss={4101: 50, 4102: 80},
        children=[ChildSnapshot(0, jobs=25, threads_busy=20, rss=50),
                  ChildSnapshot(1, jobs=3, threads_busy=0, rss=80)],
        kills={"timeout": 2, "collateral": 9},
        waiting=4,
        on_deck=2,
    )  # fmt: skip
    m.track_pool(lambda: snap)
    assert value(m, "oban_pro_pool_jobs_waiting", state="line") == 4
    assert value(m, "oban_pro_pool_jobs_waiting", state="on_deck") == 2
    assert value(m, "oban_pro_child_jobs", child="0") == 25
    assert value(m, "oban_pro_child_threads_busy", child="0") == 20
    assert value(m, "oban_pro_child_rss_bytes", child="1") == 80
    assert value(m, "oban_pro_job_kills_total", reason="timeout") == 2
    assert value(m, "oban_pro_job_kills_total", reason="collateral") == 9
    assert value(m, "oban_pro_job_kills_total", reason="memory") == 0


def test_empty_pool(m: Metrics) -> None:
    m.track_pool(lambda: PoolSnapshot(busy=0, idle=0))
    assert value(m, "oban_pro_child_rss_max_bytes") == 0
    assert value(m, "oban_pro_pool_rss_bytes") == 0


def test_a_failing_provider_does_not_break_the_scrape(m: Metrics) -> None:
    def broken() -> list[tuple[str, int, int, bool]]:
        raise RuntimeError("boom")

    m.track_producers(broken)
    m.track_pool(lambda: 1 / 0)  # type: ignore[arg-type,return-value]
    m.job_finished("q", "w", "completed", 0.1, 0.1)
    text = generate_latest(m.registry).decode()
    assert "oban_pro_jobs_total" in text
    assert "oban_pro_queue_executing" not in text


def test_coordinator_cpu_is_exported(m: Metrics) -> None:
    cpu = value(m, "oban_pro_coordinator_cpu_seconds_total")
    assert cpu is not None and cpu > 0


# -- naming and cardinality ----------------------------------------------------------------------


def _exercise(m: Metrics) -> None:
    """Call every recording method once so every metric has a series."""
    m.job_finished("default", "w.A", "completed", 0.1, 0.1)
    m.jobs_fetched("default", 1, 0.001)
    m.ack_batch(1, 0.001)
    m.acks_stale(1)
    m.set_ack_backlog(1)
    m.child_restart("crash")
    m.jobs_rescued(1)
    m.set_leader(True)
    m.notifier_reconnect()
    m.db_error("fetch")
    m.heartbeat_sent()
    m.set_queue_counts({("default", "available"): 1})
    m.set_workflow_counts({"executing": 2, "completed": 5})
    m.track_producers(lambda: [("default", 1, 1, False)])
    m.track_cluster_limits(lambda: [ClusterLimitRow("default", 4, 2, 20, 5, 15)])
    m.track_pool(
        lambda: PoolSnapshot(
            busy=1, idle=0, rss={1: 1}, children=[ChildSnapshot(0, 1, 1, 1)], kills={"cancel": 1}
        )
    )


def test_the_documented_table_matches_the_exposition(m: Metrics) -> None:
    _exercise(m)
    fams = families(m)
    documented = {name: (kind, labels) for name, kind, labels, _ in METRICS}
    # prometheus_client names counter families without _total; the documented name has it.
    exported = {
        (f.name + "_total" if f.type == "counter" else f.name): f
        for f in fams.values()
        if f.name.startswith("oban_pro_") and not f.name.endswith("_created")
    }
    assert set(exported) == set(documented)
    for name, fam in exported.items():
        kind, labels = documented[name]
        assert fam.type == kind, name
        for sample in fam.samples:
            if sample.name.endswith("_created"):
                continue
            assert set(sample.labels) - {"le"} == set(labels), (name, sample)


def test_names_follow_prometheus_conventions() -> None:
    for name, kind, labels, help_text in METRICS:
        assert re.fullmatch(r"oban_pro_[a-z_]+", name), name
        assert help_text.strip(), name
        assert set(labels) <= ALLOWED_LABELS, name
        assert "node" in labels, name
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith("_total"), name
        if "seconds" in name or "bytes" in name:
            assert name.endswith(("_seconds", "_bytes", "_seconds_total")), name


def test_readme_table_has_a_row_per_metric() -> None:
    table = metrics_table_markdown()
    assert table.startswith("| Metric | Type | Labels | Meaning |")
    assert len(table.strip().splitlines()) == 2 + len(METRICS)
    for name, *_ in METRICS:
        assert f"`{name}`" in table


def test_worker_and_queue_labels_are_capped() -> None:
    m = Metrics(NODE, label_limit=3)
    for i in range(50):
        m.job_finished(f"q{i}", f"w{i}", "completed", 0.01, 0.01)
        m.jobs_fetched(f"q{i}", 1, 0.001)
    workers = {s[1]["worker"] for s in series(m) if s[0] == "oban_pro_jobs_total"}
    queues = {s[1]["queue"] for s in series(m) if s[0] == "oban_pro_jobs_fetched_total"}
    assert workers == {"w0", "w1", "w2", OVERFLOW}
    assert queues == {"q0", "q1", "q2", OVERFLOW}
    assert value(m, "oban_pro_jobs_total", queue=OVERFLOW, worker=OVERFLOW, state="completed") == 47
    assert value(m, "oban_pro_jobs_fetched_total", queue=OVERFLOW) == 47
    # Folded tuples are not cached, so the caches cannot grow without bound either.
    assert len(m._finished_cache) <= 3 and len(m._fetch_cache) <= 3


def test_folded_queue_counts_are_summed_not_duplicated() -> None:
    m = Metrics(NODE, label_limit=1)
    m.set_leader(True)
    m.set_queue_counts({("a", "available"): 1, ("b", "available"): 2, ("c", "available"): 3})
    assert value(m, "oban_pro_queue_jobs", queue="a", state="available") == 1
    assert value(m, "oban_pro_queue_jobs", queue=OVERFLOW, state="available") == 5


def test_unknown_fixed_label_values_become_other(m: Metrics) -> None:
    m.job_finished("q", "w", "weird-state", 0.1, 0.1)
    m.child_restart("cosmic-ray")
    m.db_error("DROP TABLE")
    m.set_queue_counts({("q", "completed"): 9})
    assert value(m, "oban_pro_jobs_total", queue="q", worker="w", state="other") == 1
    assert value(m, "oban_pro_child_restarts_total", reason="other") == 1
    assert value(m, "oban_pro_db_errors_total", operation="other") == 1
    assert value(m, "oban_pro_queue_jobs", queue="q", state="other") == 9


def test_series_count_is_bounded_by_labels_not_by_jobs() -> None:
    m = Metrics(NODE)
    _exercise(m)
    before = len(series(m))
    for i in range(5000):
        m.job_finished("default", "w.A", "completed", i / 1000, i / 100)
    assert len(series(m)) == before


def test_hostile_label_values_are_escaped(m: Metrics) -> None:
    m.job_finished('q"}\nevil 1', "w\\x", "completed", 0.1, 0.1)
    text = generate_latest(m.registry).decode()
    assert "\nevil 1" not in text
    parsed = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert any(s.labels.get("queue") == 'q"}\nevil 1' for s in parsed)


def test_nan_free_exposition(m: Metrics) -> None:
    _exercise(m)
    for name, _labels in series(m):
        assert name.startswith(("oban_pro_",)), name
    for fam in families(m).values():
        for s in fam.samples:
            assert not math.isnan(s.value), s


def test_a_caller_supplied_registry_is_used_and_clashes_are_refused() -> None:
    registry = CollectorRegistry()
    m = Metrics(NODE, registry=registry)
    assert m.registry is registry
    with pytest.raises(ValueError):
        Metrics("n2", registry=registry)
    with pytest.raises(ValueError):
        Counter("oban_pro_jobs", "clash with a scrape-time family", registry=registry)


def test_two_nodes_in_one_process_do_not_collide() -> None:
    a, b = Metrics("a"), Metrics("b")
    a.job_finished("q", "w", "completed", 0.1, 0.1)
    assert (
        b.registry.get_sample_value(
            "oban_pro_jobs_total", {"node": "b", "queue": "q", "worker": "w", "state": "completed"}
        )
        is None
    )


def test_scrapes_while_recording_from_another_thread(m: Metrics) -> None:
    """The HTTP thread reads while the event loop writes: no 'dict changed size' errors."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                generate_latest(m.registry)
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for i in range(20000):
            m.job_finished(f"q{i % 300}", f"w{i % 400}", "completed", 0.01, 0.01)
    finally:
        stop.set()
        thread.join()
    assert not errors


def test_job_finished_is_cheap(m: Metrics) -> None:
    """The parent's budget is ~10 µs per job; metrics must be a small part of it."""
    import time

    m.job_finished("default", "w.A", "completed", 0.1, 0.1)
    n = 20000
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            m.job_finished("default", "w.A", "completed", 0.1, 0.1)
        best = min(best, (time.perf_counter() - start) / n)
    assert best < 5e-6, f"job_finished takes {best * 1e6:.1f} µs"


# -- HTTP endpoint --------------------------------------------------------------------------------


def test_serve_on_port_zero_then_close(m: Metrics) -> None:
    m.job_finished("default", "w.A", "completed", 0.1, 0.1)
    port = m.serve("127.0.0.1", 0)
    try:
        assert port > 0 and m.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            content_type = resp.headers["Content-Type"]
            body = resp.read().decode()
        assert content_type.startswith("text/plain")
        assert "version=0.0.4" in content_type
        names = {f.name for f in text_string_to_metric_families(body)}
        assert "oban_pro_jobs" in names and "oban_pro_job_duration_seconds" in names
        with pytest.raises(RuntimeError):
            m.serve("127.0.0.1", 0)
    finally:
        m.close()
    assert m.port is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    m.close()  # idempotent


def test_serve_again_after_close(m: Metrics) -> None:
    first = m.serve("127.0.0.1", 0)
    m.close()
    second = m.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{second}/metrics", timeout=5) as resp:
            assert resp.status == 200
    finally:
        m.close()
    assert first > 0


def test_serve_refuses_a_taken_port(m: Metrics) -> None:
    port = m.serve("127.0.0.1", 0)
    other = Metrics("n2")
    try:
        with pytest.raises(OSError):
            other.serve("127.0.0.1", port)
    finally:
        other.close()
        m.close()


def test_the_metrics_label_sets_are_the_pools_reasons() -> None:
    # metrics.py keeps its own copies (it must not import the pool); they may not drift.
    from oban_pro import metrics, pool

    assert metrics.RESTART_REASONS == pool.RESTART_REASONS
    assert metrics.KILL_REASONS == pool.KILL_REASONS
