"""The generated dashboards work where they are loaded: Grafana, Prometheus, Kibana.

These tests read the committed outputs (what the chart ships); ``test_generate.py`` proves
those equal what the sources build. What a user would otherwise find out on a live stack:
a PromQL typo (checked by the real ``promtool``), a metric or label renamed in rpcscope.schema
but not in a panel, a datasource UID the chart does not provision, a link to a dashboard that
does not exist, a Kibana reference that does not resolve on import.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alerts import metrics as stack_metrics  # noqa: E402
from alerts import slo_names  # noqa: E402
from dashboards import _common  # noqa: E402
from rpcscope import schema  # noqa: E402

GENERATED = ROOT / "dashboards" / "generated"
KIBANA = ROOT / "dashboards" / "kibana"
DASHBOARD_FILES = sorted(GENERATED.glob("*.json"))
NDJSON_FILES = sorted(KIBANA.glob("*.ndjson"))

METRIC_FAMILIES = {
    v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str) and v in schema.HELP
}
HISTOGRAMS = {schema.SERVER_HANDLING_SECONDS, schema.CLIENT_HANDLING_SECONDS}
KNOWN_SERIES = (
    METRIC_FAMILIES | {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
) - HISTOGRAMS
#: The stack-health dashboard reads the stack's own components, named once in alerts/metrics.py;
#: the SLO dashboard reads the SLO recording rules (alerts/slo_names.py) and Prometheus's ALERTS.
STACK_SERIES = {
    v for k, v in vars(stack_metrics).items()
    if k.isupper() and isinstance(v, str) and re.fullmatch(r"[a-z_]+", v)
}
SLO_SERIES = {
    *(p + w for p in (slo_names.ERRORS_PREFIX, slo_names.SLOW_PREFIX) for w in slo_names.WINDOWS),
    slo_names.AVAILABILITY_OBJECTIVE,
    slo_names.LATENCY_OBJECTIVE,
    "ALERTS",
}
KNOWN_SERIES |= STACK_SERIES | SLO_SERIES
KNOWN_LABELS = {
    *schema.HANDLED_LABELS,
    _common.JOB_LABEL,
    _common.NAMESPACE_LABEL,
    _common.LOG_OUTCOME_LABEL,
    schema.LABEL_REASON,
    "le",
    "__name__",
    # target and stack-component labels (Prometheus, fluent-plugin-prometheus, the exporter)
    "instance", "pod", "plugin_id", "cluster", "color", "name", "rule_group", "integration",
    # SLO recording rules and ALERTS
    "slo", "service", "alertname", "alertstate",
}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows nest theirs
    return panels


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def panel_datasource_type(dashboard: dict[str, Any], ref: dict[str, Any]) -> tuple[str, str]:
    """Resolve a datasource reference to (uid, type) the way Grafana would on first load."""
    uid = ref["uid"]
    match = re.fullmatch(r"\$\{?(\w+)\}?", uid)
    if match:
        var = variables(dashboard)[match.group(1)]
        assert var["type"] == "datasource"
        assert var["query"] == ref["type"], "variable lists a different datasource type"
        uid = var["current"]["value"]
    return uid, ref["type"]


# --- PromQL -------------------------------------------------------------------------------------

LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def prometheus_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and the selectors of label_values variables."""
    exprs = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                exprs.append(target["expr"])
    for var in variables(dashboard).values():
        if var["type"] == "query":
            match = LABEL_VALUES.match(var["query"])
            assert match, f"unexpected variable query {var['query']!r}"
            if match.group("selector"):
                exprs.append(match.group("selector"))
    return exprs


def concrete(expr: str) -> str:
    """Replace Grafana's template variables with values Prometheus accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", "placeholder", expr)


ALL_EXPRS = [(p.name, e) for p in DASHBOARD_FILES for e in prometheus_exprs(load(p))]


def promtool_check(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    rules = {
        "groups": [
            {
                "name": "dashboard-expressions",
                "rules": [
                    {"record": f"dashboard:expr_{i}:check", "expr": concrete(e)}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "exprs.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    return subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )


def test_dashboards_were_generated() -> None:
    names = {p.stem for p in DASHBOARD_FILES}
    assert {"grpc_overview", "grpc_method", "logs"} <= names
    assert NDJSON_FILES


def test_every_promql_expression_parses_with_promtool(tmp_path: Path) -> None:
    assert len(ALL_EXPRS) > 20
    result = promtool_check(tmp_path, [e for _, e in ALL_EXPRS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_harness_rejects_a_broken_expression(tmp_path: Path) -> None:
    # Without this the test above could pass because nothing reached promtool.
    broken = 'sum(rate(grpc_server_handled_total{job=~"$job"}[$__rate_interval])'
    result = promtool_check(tmp_path, [broken])
    assert result.returncode != 0


SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
BARE_NAME_SELECTOR = re.compile(r"(?<![\w:])\{")


def metric_names(expr: str) -> set[str]:
    names = {m.group(1) for m in SELECTOR.finditer(expr)}
    for matcher in MATCHER.finditer(expr):
        if matcher.group(1) == "__name__":
            names.update(matcher.group(2).split("|"))
    if re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):  # label_values(<metric>, label)
        names.add(expr)
    return names


def test_every_referenced_metric_exists_in_the_schema() -> None:
    used: set[str] = set()
    for name, expr in ALL_EXPRS:
        found = metric_names(expr)
        assert found, f"{name}: no metric found in {expr!r}"
        unknown = found - KNOWN_SERIES
        assert not unknown, f"{name}: {sorted(unknown)} not in rpcscope.schema ({expr})"
        used |= found
    # Each family the library exports is shown somewhere (histograms through _bucket).
    shown = {n.removesuffix("_bucket") for n in used}
    assert shown >= METRIC_FAMILIES


def test_every_label_in_promql_is_a_schema_or_target_label() -> None:
    for name, expr in ALL_EXPRS:
        labels = {m.group(1) for m in MATCHER.finditer(expr)}
        for grouping in GROUPING.finditer(expr):
            labels |= {part.strip() for part in grouping.group(1).split(",") if part.strip()}
        unknown = labels - KNOWN_LABELS
        assert not unknown, f"{name}: labels {sorted(unknown)} unknown in {expr!r}"


def test_server_fault_panels_use_the_schema_codes() -> None:
    fault_filters = [
        m.group(2)
        for _, e in ALL_EXPRS
        for m in MATCHER.finditer(e)
        if m.group(1) == schema.LABEL_CODE
    ]
    assert fault_filters
    assert all(f == schema.SERVER_FAULT_REGEX for f in fault_filters)


def test_latency_quantiles_on_the_overview_are_unary_only() -> None:
    overview = load(GENERATED / "grpc_overview.json")
    quantiles = [e for e in prometheus_exprs(overview) if "histogram_quantile" in e]
    assert quantiles
    assert all(f'{schema.LABEL_TYPE}="{schema.TYPE_UNARY}"' in e for e in quantiles)


# --- Grafana JSON shape ---------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_shape(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert 0 < len(dashboard["uid"]) <= 40, "Grafana rejects UIDs longer than 40 characters"
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", dashboard["uid"])
    panels = all_panels(dashboard)
    assert panels
    ids = [p.get("id") for p in panels]
    assert all(isinstance(i, int) and i > 0 for i in ids), ids
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    for panel in panels:
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= grid.keys()
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel.get("options") is not None, f"{panel['title']}: options missing"
        if panel["type"] == "text":  # markdown (the runbooks board): no query, no datasource
            assert panel["options"]["mode"] == "markdown" and panel["options"]["content"].strip()
            continue
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and all(ref_ids) and len(set(ref_ids)) == len(ref_ids)
        uid, ds_type = panel_datasource_type(dashboard, panel["datasource"])
        assert _common.PROVISIONED_DATASOURCES.get(uid) == ds_type, (panel["title"], uid)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_round_trips_through_the_sdk_schema(path: Path) -> None:
    """Decoding into grafana-foundation-sdk's typed model drops keys the dashboard schema does
    not know, so a lossless round trip means no misspelled or invented key."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    data = load(path)
    assert json.loads(JSONEncoder().encode(Dashboard.from_json(data))) == data


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panels_do_not_overlap(path: Path) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(load(path)):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_says_it_is_generated_and_from_where(path: Path) -> None:
    description = load(path)["description"]
    source = f"dashboards/{path.stem}.py"
    assert description == _common.generated_marker(source)
    assert (ROOT / source).is_file()


def test_dashboard_uids_are_unique_and_links_resolve() -> None:
    dashboards = [load(p) for p in DASHBOARD_FILES]
    uids = [d["uid"] for d in dashboards]
    assert len(set(uids)) == len(uids)
    linked = set()
    for d in dashboards:
        text = json.dumps(d)
        linked |= set(re.findall(r"/d/([a-zA-Z0-9_-]+)", text))
    assert linked, "dashboards are expected to link to each other"
    assert linked <= set(uids), f"links to unknown dashboards: {linked - set(uids)}"


def test_log_fields_used_by_grafana_are_access_log_fields() -> None:
    logs = load(GENERATED / "logs.json")
    fields = set()
    for panel in all_panels(logs):
        for target in panel.get("targets", []):
            fields |= {a["field"] for a in target.get("bucketAggs", []) if "field" in a}
            if "timeField" in target:
                fields.add(target["timeField"])
            fields |= set(re.findall(r"([a-z@][\w.]*):", target.get("query", "")))
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            fields.add(override["matcher"]["options"])
    assert fields
    assert fields <= set(schema.ACCESS_LOG_FIELDS), fields - set(schema.ACCESS_LOG_FIELDS)


# --- Kibana saved objects -------------------------------------------------------------------

JSON_STRING_ATTRIBUTES = ("panelsJSON", "optionsJSON", "visState", "uiStateJSON")


def saved_objects(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    assert lines and all(line.strip() for line in lines), "blank lines break Kibana's import"
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("path", NDJSON_FILES, ids=lambda p: p.name)
def test_kibana_objects_are_well_formed_and_references_resolve(path: Path) -> None:
    objects = saved_objects(path)
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(set(keys)) == len(keys), "duplicate saved object"
    for obj in objects:
        assert isinstance(obj["attributes"], dict) and obj["attributes"].get("title")
        assert obj["coreMigrationVersion"] and obj["typeMigrationVersion"]
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in keys, f"{obj['id']}: dangling reference {ref}"
        ref_names = {r["name"] for r in obj["references"]}
        assert len(ref_names) == len(obj["references"]), "duplicate reference names"
        for attribute in JSON_STRING_ATTRIBUTES:
            if attribute in obj["attributes"]:
                json.loads(obj["attributes"][attribute])
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta:
            source = json.loads(meta["searchSourceJSON"])
            if "indexRefName" in source:
                assert source["indexRefName"] in ref_names
        if obj["type"] == "dashboard":
            panels = json.loads(obj["attributes"]["panelsJSON"])
            assert panels
            for panel in panels:
                assert panel["gridData"]["i"] == panel["panelIndex"]
                assert panel["gridData"]["x"] + panel["gridData"]["w"] <= 48
                wanted = f"{panel['panelIndex']}:{panel['panelRefName']}"
                assert wanted in ref_names, f"panel {panel['panelIndex']} has no reference"


def test_kibana_data_view_matches_the_log_data_streams() -> None:
    objects = [o for p in NDJSON_FILES for o in saved_objects(p)]
    views = [o for o in objects if o["type"] == "index-pattern"]
    assert [v["attributes"]["title"] for v in views] == [_common.LOGS_INDEX_PATTERN]
    assert views[0]["attributes"]["timeFieldName"] == "@timestamp"
    searches = [o for o in objects if o["type"] == "search"]
    assert searches
    for search in searches:
        assert set(search["attributes"]["columns"]) <= set(schema.ACCESS_LOG_FIELDS)
