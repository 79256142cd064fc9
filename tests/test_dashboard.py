"""The Grafana dashboard, its provisioning files and the Prometheus alert rules (fast, no server).

The key check: every metric named in a panel query or an alert rule is really exported by
``oban_pro.metrics.Metrics`` (parsed out of the PromQL, with the ``_bucket``/``_count``/``_sum``
and ``_total`` sample suffixes resolved against a live registry).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from oban_pro.metrics import METRICS, Metrics

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "oban-pro.json"
RULES = GRAFANA / "alerts" / "oban-pro-rules.yml"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = [
    "Throughput & outcomes",
    "Latency percentiles",
    "Queue depth",
    "Limits across nodes",
    "Pool health",
    "Acks & database",
    "Rescue & leadership",
]

# PromQL words that are not metric names.
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
}


# -- helpers ------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows, rows excluded."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def panel_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def exported_samples() -> dict[str, str]:
    """Sample name -> metric type, from a registry where every method has been called."""
    from test_metrics import _exercise

    m = Metrics("n1")
    _exercise(m)
    samples = {}
    for family in m.registry.collect():
        for sample in family.samples:
            samples[sample.name] = family.type
    return samples


SAMPLES = exported_samples()


def metric_names(expr: str) -> list[str]:
    """Metric names used in a PromQL expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    # Grouping label lists, so "sum by (le) (" reads as the call "sum (".
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = []
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("("):  # a function or an aggregation
            continue
        if match.group() in KEYWORDS:
            continue
        names.append(match.group())
    return names


def all_exprs() -> list[tuple[str, str]]:
    out = [(f"panel {title!r}", expr) for title, expr in panel_exprs(load_dashboard())]
    out += [(f"rule {r['alert']}", r["expr"]) for r in load_rules()]
    dashboard = load_dashboard()
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            assert inner, var["definition"]
            out.append((f"variable {var['name']}", inner.group(1)))
    return out


# -- the parser itself ---------------------------------------------------------------------------


def test_metric_name_parser() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, worker) (rate(oban_pro_job_duration_seconds_bucket"
        '{queue=~"$queue", state="a b"}[$__rate_interval]))) / on (node) group_left (x) '
        "max without (queue) (oban_pro_leader) > 1e3 unless vector(0) or up"
    )
    assert metric_names(expr) == ["oban_pro_job_duration_seconds_bucket", "oban_pro_leader", "up"]


# -- metric names --------------------------------------------------------------------------------


@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_every_metric_used_is_exported(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    for name in names:
        assert name.startswith("oban_pro_"), f"{where}: foreign metric {name}"
        assert name in SAMPLES, f"{where}: {name} is not exported by oban_pro.metrics"


@pytest.mark.parametrize("where,expr", all_exprs(), ids=[w for w, _ in all_exprs()])
def test_rates_apply_to_counters_and_quantiles_to_buckets(where: str, expr: str) -> None:
    for match in re.finditer(r"\b(rate|irate|increase)\(\s*([a-zA-Z_:][\w:]*)", expr):
        name = match.group(2)
        kind = SAMPLES[name]
        assert kind in ("counter", "histogram"), f"{where}: {match.group(1)}() over gauge {name}"
        if kind == "counter":
            assert name.endswith("_total"), f"{where}: {name}"
    for match in re.finditer(r"histogram_quantile\((.*)", expr):
        inner = metric_names(match.group(1))
        assert inner and all(n.endswith("_bucket") for n in inner), f"{where}: {inner}"


def test_every_exported_metric_is_on_the_dashboard() -> None:
    used = {name for _, expr in panel_exprs(load_dashboard()) for name in metric_names(expr)}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    missing = {name for name, *_ in METRICS} - families
    assert not missing, f"metrics with no panel: {sorted(missing)}"


# -- dashboard invariants ------------------------------------------------------------------------


def test_dashboard_identity() -> None:
    d = load_dashboard()
    assert d["uid"] == "oban-pro"
    assert d["title"]
    assert d["editable"] is False
    assert d.get("id") is None  # importable into any Grafana
    assert isinstance(d["schemaVersion"], int)


def test_datasource_variable() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"


@pytest.mark.parametrize("name", ["queue", "node"])
def test_queue_and_node_variables(name: str) -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    var = variables[name]
    assert var["type"] == "query"
    assert var["datasource"] == DATASOURCE
    assert var["multi"] is True and var["includeAll"] is True
    assert var["allValue"] == ".*"
    match = re.fullmatch(r"label_values\((\w+)(\{.*\})?,\s*(\w+)\)", var["definition"])
    assert match, var["definition"]
    assert match.group(1) in SAMPLES
    assert match.group(3) == name
    query = var["query"]
    assert (query["query"] if isinstance(query, dict) else query) == var["definition"]


def test_no_hard_coded_datasource_uid() -> None:
    d = load_dashboard()

    def walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "uid" and path != "":
                    yield path, value
                yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")

    uids = list(walk(d, ""))
    assert uids, "no datasource references at all"
    for path, uid in uids:
        assert uid == "${datasource}", f"hard-coded uid {uid!r} at {path}"


def test_every_panel_and_target_uses_the_datasource_variable() -> None:
    for panel in panels(load_dashboard()):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_panel_has_unit_description_and_known_type() -> None:
    for panel in panels(load_dashboard()):
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel["title"].strip()


def test_every_range_is_the_rate_interval() -> None:
    for title, expr in panel_exprs(load_dashboard()):
        ranges = re.findall(r"\[([^\]]*)\]", expr)
        assert ranges == ["$__rate_interval"] * len(ranges), f"{title}: {expr}"
        for fn in re.finditer(r"\b(rate|irate|increase|delta|idelta|\w+_over_time)\(", expr):
            assert "[$__rate_interval]" in expr[fn.end() :], f"{title}: {expr}"


def test_variables_are_matched_as_regexes() -> None:
    """Multi-value and All variables expand to regexes, so they need =~ matchers."""
    for title, expr in panel_exprs(load_dashboard()):
        for label, op, var in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"\$\{?(\w+)', expr):
            assert op == "=~", f"{title}: {label}{op}${var}"
            assert label == var, f"{title}: {label} filtered by ${var}"


def test_panels_filter_by_node_and_queue() -> None:
    exprs = [expr for _, expr in panel_exprs(load_dashboard())]
    assert sum('node=~"$node"' in e for e in exprs) >= len(exprs) * 0.7
    assert any('queue=~"$queue"' in e for e in exprs)


def test_rows_in_order() -> None:
    rows = [p["title"] for p in load_dashboard()["panels"] if p["type"] == "row"]
    assert rows == ROWS


def test_every_row_has_panels() -> None:
    current = None
    counts: dict[str, int] = {}
    for panel in load_dashboard()["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            counts[current] = len(panel.get("panels", []))
        else:
            assert current is not None, "panel before the first row"
            counts[current] += 1
    assert all(counts[row] >= 2 for row in ROWS), counts


def test_grid_positions_fit_and_do_not_overlap() -> None:
    d = load_dashboard()
    taken: set[tuple[int, int]] = set()
    ids = set()
    for panel in d["panels"]:
        gp = panel["gridPos"]
        assert gp["x"] >= 0 and gp["w"] > 0 and gp["x"] + gp["w"] <= 24, panel["title"]
        assert gp["h"] > 0 and gp["y"] >= 0, panel["title"]
        cells = {
            (x, y)
            for x in range(gp["x"], gp["x"] + gp["w"])
            for y in range(gp["y"], gp["y"] + gp["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        assert panel["id"] not in ids
        ids.add(panel["id"])


def test_ref_ids_are_unique_per_panel() -> None:
    for panel in panels(load_dashboard()):
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


# -- provisioning --------------------------------------------------------------------------------


def test_datasource_provisioning() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"].startswith("http")
    assert ds["access"] == "proxy"


def test_dashboard_provisioning() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "oban-pro.yml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def test_readme_explains_import_and_provisioning() -> None:
    text = (GRAFANA / "README.md").read_text()
    for needle in ("Import", "provisioning", "oban-pro.json", "rule_files", "metrics_port"):
        assert needle in text, needle


# -- alert rules ---------------------------------------------------------------------------------


def test_alert_rules_are_well_formed() -> None:
    rules = load_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["alert"].startswith("ObanPro"), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert "$__" not in rule["expr"] and "$queue" not in rule["expr"], rule["alert"]


def test_alerts_cover_the_failure_modes() -> None:
    exprs = {r["alert"]: r["expr"] for r in load_rules()}
    required = {
        "ObanProNoProgress": ("oban_pro_queue_jobs", "oban_pro_jobs_total"),
        "ObanProHighDiscardRate": ("discarded",),
        "ObanProRescueSpike": ("oban_pro_jobs_rescued_total",),
        "ObanProChildCrashLoop": ("oban_pro_child_restarts_total",),
        "ObanProAckBacklog": ("oban_pro_ack_backlog",),
    }
    for alert, needles in required.items():
        assert alert in exprs, alert
        for needle in needles:
            assert needle in exprs[alert], (alert, needle)
