"""Metrics to logs in one click: every link and exemplar destination resolves.

What Grafana would resolve when a user clicks: an exemplar's ``trace_id`` goes to a datasource
the chart provisions (Elasticsearch) and to Kibana's data view; a panel's data link goes to a
provisioned dashboard and sets only variables that dashboard has. The queries behind these
panels run against a real Prometheus in tests/test_alert_e2e.py; no Grafana binary runs here.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import yaml
from chart_render import CHART_DIR, Rendered, render

Get = Callable[[str], Rendered]


def _datasources(r: Rendered) -> list[dict[str, Any]]:
    for cm in r.of_kind("ConfigMap"):
        text = (cm.get("data") or {}).get("datasources.yaml")
        if text:
            found: list[dict[str, Any]] = yaml.safe_load(text)["datasources"]
            return found
    raise AssertionError("no Grafana datasources.yaml rendered")


def _dashboards() -> dict[str, dict[str, Any]]:
    boards = [json.loads(p.read_text()) for p in (CHART_DIR / "files/dashboards").glob("*.json")]
    return {b["uid"]: b for b in boards}


def _data_view_ids() -> set[str]:
    ids = set()
    for path in (CHART_DIR / "files/kibana").glob("*.ndjson"):
        for line in path.read_text().splitlines():
            obj = json.loads(line)
            if obj["type"] == "index-pattern":
                ids.add(obj["id"])
    return ids


def _links(node: Any) -> Iterator[str]:
    """Every URL in a dashboard: panel links, field data links, overrides, dashboard links."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "url" and isinstance(value, str):
                yield value
            else:
                yield from _links(value)
    elif isinstance(node, list):
        for item in node:
            yield from _links(item)


def test_exemplar_trace_ids_go_to_the_log_datasource_and_kibana(rendered: Get) -> None:
    r = rendered("defaults")
    sources = {d["uid"]: d for d in _datasources(r)}
    prometheus = sources["prometheus"]
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    # rpcscope's exemplars carry exactly this label (collector/_metrics.py, tests/test_exporter.py)
    assert {d["name"] for d in destinations} == {"trace_id"}
    internal = [d for d in destinations if "datasourceUid" in d]
    assert internal and all(sources[d["datasourceUid"]]["type"] == "elasticsearch"
                            for d in internal)
    (kibana,) = [d for d in destinations if "url" in d]
    view = re.search(r"dataViewId:'([^']+)'", kibana["url"])
    assert view and view.group(1) in _data_view_ids()
    trace_field = sources["elasticsearch"]["jsonData"]["dataLinks"][0]["field"]
    assert f"query:'{trace_field}:%22${{__value.raw}}%22'" in kibana["url"]


def test_without_the_log_datasource_only_kibana_is_offered() -> None:
    r = render({"grafana": {"datasources": {"elasticsearch": {"enabled": False}}}})
    prometheus = next(d for d in _datasources(r) if d["uid"] == "prometheus")
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert [d for d in destinations if "datasourceUid" in d] == []


def test_the_chart_prometheus_keeps_exemplars(rendered: Get) -> None:
    r = rendered("defaults")
    sts = r.get("StatefulSet", r.name("prometheus"))
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--enable-feature=exemplar-storage" in args


def test_latency_panels_show_exemplars() -> None:
    boards = _dashboards()
    latency = [p for uid in ("rpcscope-grpc-overview", "rpcscope-grpc-method")
               for p in boards[uid]["panels"]
               if any("grpc_server_handling_seconds_bucket" in t.get("expr", "")
                      and "histogram_quantile" in t.get("expr", "")
                      for t in p.get("targets", []))
               and p["type"] == "timeseries"]
    assert latency
    for panel in latency:
        assert any(t.get("exemplar") for t in panel["targets"]), panel["title"]


def test_every_dashboard_link_resolves_to_a_dashboard_and_its_variables() -> None:
    boards = _dashboards()
    checked = 0
    for uid, board in boards.items():
        for url in _links(board):
            match = re.match(r"^/d/([A-Za-z0-9_-]+)", url)
            if not match:
                continue
            target = match.group(1)
            assert target in boards, f"{uid} links to unknown dashboard {target}"
            names = {v["name"] for v in boards[target]["templating"]["list"]}
            query = urllib.parse.urlsplit(url).query
            for key in re.findall(r"(?:^|&)var-([A-Za-z0-9_]+)=", query):
                assert key in names, f"{uid} sets var-{key}, which {target} does not have"
            checked += 1
    assert checked


def test_overview_error_panel_links_to_the_failed_calls_logs() -> None:
    overview = _dashboards()["rpcscope-grpc-overview"]
    panel = next(p for p in overview["panels"]
                 if p["title"] == "Server-fault error ratio" and p["type"] == "timeseries")
    urls = list(_links(panel))
    (url,) = [u for u in urls if u.startswith("/d/rpcscope-logs")]
    assert "${__url_time_range}" in url
    query = urllib.parse.unquote(url.split("var-query=")[1])
    assert query.startswith('rpc.service:"${__field.labels.grpc_service:percentencode}" AND ')
    assert "grpc.code:(Unknown OR DeadlineExceeded" in query
