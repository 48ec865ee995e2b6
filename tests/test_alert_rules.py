"""The alert rules as the chart renders them, run by the real ``promtool test rules``.

Rules come from the chart's rules ConfigMap (default values, and
``alerts/tests/two-slos.values.yaml`` with two custom SLOs), written to files exactly as
Prometheus mounts them. Each case feeds promtool input series and says which alerts fire,
with which labels, at which time; the cases cover a fast burn (pages), a slow burn (tickets
only), a short blip (no page), no traffic, and
every fixed alert firing and staying silent.

promtool compares annotations exactly. Expected annotations are built here, independently of the
generator: ``expand`` substitutes the few Prometheus template actions the rules may use
(``$labels.x``, ``urlquery``, ``humanize``, ``humanizePercentage``) and raises on anything else,
and ``discover_url`` spells out the Kibana link a test expects. A template that names a missing
label or breaks in Prometheus yields a different string in promtool, and the case fails.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "chart"))

from chart_render import render, render_error  # noqa: E402

TWO_SLOS = yaml.safe_load((ROOT / "alerts" / "tests" / "two-slos.values.yaml").read_text())
Labels = dict[str, str]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run `make test` (installs Debian's prometheus package)")
    return path


def rendered_rules(values: Mapping[str, Any]) -> dict[str, str]:
    r = render(values)
    data = r.get("ConfigMap", f"{r.name('prometheus')}-rules").get("data") or {}
    return {k: str(v) for k, v in data.items()}


def alert_rules(files: Mapping[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Alert name -> its rules (the burn-rate alerts have one rule per tier and SLO)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for text in files.values():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    out.setdefault(rule["alert"], []).append(rule)
    return out


# --- expected annotations -------------------------------------------------------------------

_SI = ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
       (1e3, "k"))
_SI_SMALL = ((1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p"))


def _g4(v: float) -> str:
    return f"{v:.4g}"


def humanize(v: float) -> str:
    """Prometheus's ``humanize`` (template.go): 4 significant digits and an SI prefix."""
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g4(v)
    if abs(v) >= 1:
        for scale, prefix in _SI:
            if abs(v) >= scale:
                return _g4(v / scale) + prefix
        return _g4(v)
    for scale, prefix in _SI_SMALL:
        if abs(v) >= scale:
            return _g4(v / scale) + prefix
    return _g4(v / 1e-15) + "f"


ACTION = re.compile(r"\{\{\s*(.*?)\s*\}\}")


def expand(template: str, labels: Labels, value: float) -> str:
    def one(match: re.Match[str]) -> str:
        parts = [p.strip() for p in match.group(1).split("|")]
        head, filters = parts[0], parts[1:]
        if head == "$value":
            out: Any = value
        elif head.startswith("$labels."):
            out = labels[head.removeprefix("$labels.")]  # KeyError: the rule names a missing label
        else:
            raise AssertionError(f"expand() does not know {match.group(0)!r}")
        for f in filters:
            if f == "urlquery":
                out = urllib.parse.quote_plus(str(out))
            elif f == "humanize":
                out = humanize(float(out))
            elif f == "humanizePercentage":
                out = _g4(float(out) * 100) + "%"
            else:
                raise AssertionError(f"expand() does not know the filter {f!r}")
        return str(out)

    return ACTION.sub(one, template)


def iso(seconds: float) -> str:
    t = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def discover_url(base: str, kql: str, start: float, end: float) -> str:
    """Kibana Discover on the rpcscope-logs data view, ``kql`` over [start, end] (promtool's
    clock starts at 1970-01-01T00:00:00Z)."""
    q = urllib.parse.quote(kql, safe="")
    return (
        f"{base}/app/discover#/?_g=(time:(from:'{iso(start)}',to:'{iso(end)}'))"
        f"&_a=(dataSource:(dataViewId:'rpcscope-logs',type:dataView),"
        f"query:(language:kuery,query:'{q}'))"
    )


def expected_alert(rule: dict[str, Any], labels: Labels, value: float,
                   logs_url: str | None = None) -> dict[str, Any]:
    """promtool's exp_alerts entry for ``rule`` firing on a series with ``labels``."""
    all_labels = {**labels, **rule.get("labels", {})}
    annotations = {}
    for key, template in rule.get("annotations", {}).items():
        if key == "logs_url":
            assert logs_url is not None, f"{rule['alert']} has a logs_url: the case must give it"
            annotations[key] = logs_url
        else:
            annotations[key] = expand(template, labels, value)
    return {"exp_labels": all_labels, "exp_annotations": annotations}


def tier_rule(rules: dict[str, list[dict[str, Any]]], alert: str, slo: str, window: str
              ) -> dict[str, Any]:
    for rule in rules[alert]:
        if rule["labels"]["slo"] == slo and rule["labels"]["window"] == window:
            return rule
    raise KeyError((alert, slo, window))


# --- running promtool -----------------------------------------------------------------------


def run_promtool(tmp: Path, files: Mapping[str, str], tests: list[dict[str, Any]]) -> None:
    for name, text in files.items():
        (tmp / name).write_text(text)
    spec = {"rule_files": sorted(files), "evaluation_interval": "1m", "tests": tests}
    (tmp / "test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, width=1000))
    res = subprocess.run([promtool(), "test", "rules", "test.yaml"], cwd=tmp,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def series(name: str, labels: Mapping[str, str], values: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


SHOP = {"namespace": "prod", "grpc_type": "unary", "grpc_service": "shop.v1.Shop"}
SEARCH = {"namespace": "prod", "grpc_type": "unary", "grpc_service": "shop.v1.Search",
          "grpc_method": "Find"}
SLO_KEYS = {"namespace": "prod"}


def handled(base: Mapping[str, str], method: str | None, code: str, values: str
            ) -> dict[str, str]:
    labels = {**base, "grpc_code": code}
    if method:
        labels["grpc_method"] = method
    return series("grpc_server_handled_total", labels, values)


def slo_labels(service: str) -> Labels:
    return {"namespace": "prod", "grpc_service": service, "service": service}


SHOP_ERRORS_KQL = ('rpc.service:"shop.v1.Shop" and grpc.code:(Unknown or DeadlineExceeded or '
                   "Unimplemented or Internal or Unavailable or DataLoss)")


# --- the burn-rate tiers, with two custom SLOs ----------------------------------------------


@pytest.fixture(scope="module")
def two_slo_rules() -> dict[str, str]:
    return rendered_rules(TWO_SLOS)


def test_fast_burn_pages_within_minutes_and_tickets_only_after_their_for(
    two_slo_rules: dict[str, str], tmp_path: Path
) -> None:
    """checkout: 5 of every 155 calls fail with Unavailable (3.2 %, 32x the 0.1 % budget).
    NotFound counts only as traffic, and Chat is not one of the SLO's methods."""
    rules = alert_rules(two_slo_rules)
    labels = slo_labels("shop.v1.Shop")
    ratio = 5 / 155
    kibana = "https://kibana.example.com"

    def page(window: str, at_s: int, seconds: int) -> dict[str, Any]:
        return expected_alert(
            tier_rule(rules, "GRPCAvailabilityBudgetBurn", "checkout", window), labels, ratio,
            discover_url(kibana, SHOP_ERRORS_KQL, at_s - seconds, at_s),
        )

    inputs = [
        handled(SHOP, "GetProduct", "OK", "0+100x300"),
        handled(SHOP, "GetProduct", "Unavailable", "0+5x300"),
        handled(SHOP, "GetProduct", "NotFound", "0+50x300"),
        handled(SHOP, "Chat", "Internal", "0+1000x300"),
    ]
    tests = [{
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [
            {"eval_time": "2m", "alertname": "GRPCAvailabilityBudgetBurn", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "GRPCAvailabilityBudgetBurn",
             "exp_alerts": [page("1h", 600, 3600)]},
            {"eval_time": "20m", "alertname": "GRPCAvailabilityBudgetBurn",
             "exp_alerts": [page("1h", 1200, 3600), page("6h", 1200, 6 * 3600)]},
            {"eval_time": "4h", "alertname": "GRPCAvailabilityBudgetBurn",
             "exp_alerts": [page("1h", 14400, 3600), page("6h", 14400, 6 * 3600),
                            page("1d", 14400, 86400), page("3d", 14400, 3 * 86400)]},
        ],
    }]
    run_promtool(tmp_path, two_slo_rules, tests)


def test_slow_burn_opens_tickets_and_never_pages(
    two_slo_rules: dict[str, str], tmp_path: Path
) -> None:
    """checkout at 0.4 % errors: 4x the budget. Above the ticket tiers (3x, 1x), below the
    pages (14.4x, 6x): in 5 hours no page, and both tickets once their `for` has passed."""
    rules = alert_rules(two_slo_rules)
    labels = slo_labels("shop.v1.Shop")
    ratio = 4 / 1000
    kibana = "https://kibana.example.com"
    at = 5 * 3600

    def ticket(window: str, seconds: int) -> dict[str, Any]:
        return expected_alert(
            tier_rule(rules, "GRPCAvailabilityBudgetBurn", "checkout", window), labels, ratio,
            discover_url(kibana, SHOP_ERRORS_KQL, at - seconds, at),
        )

    tests = [{
        "interval": "1m",
        "input_series": [
            handled(SHOP, "UploadInventory", "OK", "0+996x400"),
            handled(SHOP, "UploadInventory", "Internal", "0+4x400"),
        ],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "GRPCAvailabilityBudgetBurn", "exp_alerts": []},
            {"eval_time": "5h", "alertname": "GRPCAvailabilityBudgetBurn",
             "exp_alerts": [ticket("1d", 86400), ticket("3d", 3 * 86400)]},
        ],
    }]
    run_promtool(tmp_path, two_slo_rules, tests)


def test_a_short_blip_does_not_page(two_slo_rules: dict[str, str], tmp_path: Path) -> None:
    """20 failed calls in one minute of an hour of 100 calls a minute: the 5m window is far
    above the page threshold, the 1h window (0.33 %) below it, so no tier fires."""
    tests = [{
        "interval": "1m",
        "input_series": [
            handled(SHOP, "GetProduct", "OK", "0+100x120"),
            handled(SHOP, "GetProduct", "Unavailable", "0x60 20x60"),
        ],
        "alert_rule_test": [
            {"eval_time": f"{m}m", "alertname": "GRPCAvailabilityBudgetBurn", "exp_alerts": []}
            for m in (61, 63, 65, 70, 90, 119)
        ],
    }]
    run_promtool(tmp_path, two_slo_rules, tests)


def test_custom_error_codes_and_the_latency_slo(
    two_slo_rules: dict[str, str], tmp_path: Path
) -> None:
    """search counts ResourceExhausted (12 of 152 calls, 7.9 %) but not Unknown: above the 6x
    tier (6 %), below 14.4x (14.4 %). 80 % of its calls are slower than 100 ms: the latency
    budget (5 %) burns 16x, so the latency page fires on the 1h/5m tier too."""
    rules = alert_rules(two_slo_rules)
    labels = slo_labels("shop.v1.Search")
    kibana = "https://kibana.example.com"
    at = 1200
    avail_kql = ('rpc.service:"shop.v1.Search" and '
                 "grpc.code:(ResourceExhausted or Unavailable or Internal)")
    slow_kql = 'rpc.service:"shop.v1.Search" and event.duration > 100000000'
    bucket = {**SEARCH}

    def alert(name: str, window: str, seconds: int, value: float, kql: str) -> dict[str, Any]:
        return expected_alert(tier_rule(rules, name, "search", window), labels, value,
                              discover_url(kibana, kql, at - seconds, at))

    tests = [{
        "interval": "1m",
        "input_series": [
            handled(SEARCH, None, "OK", "0+90x30"),
            handled(SEARCH, None, "ResourceExhausted", "0+12x30"),
            handled(SEARCH, None, "Unknown", "0+50x30"),
            series("grpc_server_handling_seconds_bucket", {**bucket, "le": "0.05"}, "0+10x30"),
            series("grpc_server_handling_seconds_bucket", {**bucket, "le": "0.1"}, "0+20x30"),
            series("grpc_server_handling_seconds_bucket", {**bucket, "le": "+Inf"}, "0+100x30"),
            series("grpc_server_handling_seconds_count", bucket, "0+100x30"),
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "alertname": "GRPCAvailabilityBudgetBurn",
             "exp_alerts": [alert("GRPCAvailabilityBudgetBurn", "6h", 6 * 3600, 12 / 152,
                                  avail_kql)]},
            {"eval_time": "20m", "alertname": "GRPCLatencyBudgetBurn",
             "exp_alerts": [alert("GRPCLatencyBudgetBurn", "1h", 3600, 0.8, slow_kql),
                            alert("GRPCLatencyBudgetBurn", "6h", 6 * 3600, 0.8, slow_kql)]},
        ],
    }]
    run_promtool(tmp_path, two_slo_rules, tests)


def test_no_traffic_ends_the_pages_and_fires_no_traffic(tmp_path: Path) -> None:
    """With the default values: shop fails 10 % of its calls for an hour, then gets none. While
    calls flow both pages fire; once they stop, the pages end (a ratio over no calls is no
    sample: the short windows go empty), the 2h-window ticket stays (its window still holds the
    bad hour), and GRPCServerNoTraffic fires for shop only (idle never had traffic)."""
    files = rendered_rules({})
    rules = alert_rules(files)
    started = {"namespace": "prod", "grpc_type": "unary", "grpc_service": "shop.v1.Shop",
               "grpc_method": "GetProduct", "job": "shop"}
    idle = {**started, "grpc_service": "shop.v1.Idle"}
    labels = {"namespace": "prod", "grpc_service": "shop.v1.Shop", "service": "shop.v1.Shop"}
    kibana = "https://localhost:5601"

    def burn(window: str, at: int, seconds: int) -> dict[str, Any]:
        return expected_alert(
            tier_rule(rules, "GRPCAvailabilityBudgetBurn", "grpc-default", window), labels, 0.1,
            discover_url(kibana, SHOP_ERRORS_KQL, at - seconds, at))

    at = 100 * 60
    no_traffic = expected_alert(
        rules["GRPCServerNoTraffic"][0], labels, 0.0,
        discover_url(kibana, 'rpc.service:"shop.v1.Shop"', at - 3600, at),
    )
    tests = [{
        "interval": "1m",
        "input_series": [
            series("grpc_server_started_total", started, "0+100x60 6000x60"),
            series("grpc_server_started_total", idle, "0x120"),
            handled({**started}, None, "OK", "0+90x60 5400x60"),
            handled({**started}, None, "Unavailable", "0+10x60 600x60"),
        ],
        "alert_rule_test": [
            {"eval_time": "50m", "alertname": "GRPCAvailabilityBudgetBurn",
             "exp_alerts": [burn("1h", 3000, 3600), burn("6h", 3000, 6 * 3600)]},
            {"eval_time": "70m", "alertname": "GRPCServerNoTraffic", "exp_alerts": []},
            {"eval_time": "100m", "alertname": "GRPCServerNoTraffic", "exp_alerts": [no_traffic]},
            {"eval_time": "100m", "alertname": "GRPCAvailabilityBudgetBurn",
             "exp_alerts": [burn("1d", at, 86400)]},
        ],
    }]
    run_promtool(tmp_path, files, tests)


# --- the fixed alerts, default values ------------------------------------------------------

#: alert -> (input series, eval time, labels of the series it fires on, $value there, and a
#: series of the same metric that must not fire).
STACK_CASES: dict[str, tuple[list[dict[str, str]], str, Labels, float]] = {
    "TargetDown": (
        [series("up", {"job": "shop", "instance": "10.0.0.1:9464", "namespace": "prod"}, "0x15"),
         series("up", {"job": "shop", "instance": "10.0.0.2:9464", "namespace": "prod"}, "1x15")],
        "10m", {"job": "shop", "instance": "10.0.0.1:9464", "namespace": "prod",
                "service": "shop"}, 0.0),
    "RpcscopeInstrumentationErrors": (
        [series("rpcscope_instrumentation_errors_total",
                {"job": "shop", "instance": "a", "namespace": "prod"}, "0+6x30"),
         series("rpcscope_instrumentation_errors_total",
                {"job": "cart", "instance": "b", "namespace": "prod"}, "3x30")],
        "20m", {"job": "shop", "namespace": "prod", "service": "shop"}, 0.1),
    "RpcscopeAccessLogRecordsDropped": (
        [series("rpcscope_log_records_total",
                {"job": "shop", "instance": "a", "namespace": "prod", "outcome": "dropped"},
                "0+60x30"),
         series("rpcscope_log_records_total",
                {"job": "cart", "instance": "b", "namespace": "prod", "outcome": "emitted"},
                "0+600x30")],
        "20m", {"job": "shop", "namespace": "prod", "service": "shop"}, 1.0),
    # shop/a has records waiting and no ack; cart/b acks no more either but has nothing
    # waiting (an idle process), and shop/c waits too but was acked a moment ago.
    "RpcscopeForwardNoAck": (
        [series("rpcscope_forward_seconds_since_last_ack",
                {"job": "shop", "instance": "a", "namespace": "prod"}, "0+60x30"),
         series("rpcscope_forward_queue_bytes",
                {"job": "shop", "instance": "a", "namespace": "prod"}, "4096x30"),
         series("rpcscope_forward_spill_bytes",
                {"job": "shop", "instance": "a", "namespace": "prod"}, "0x30"),
         series("rpcscope_forward_seconds_since_last_ack",
                {"job": "cart", "instance": "b", "namespace": "prod"}, "0+60x30"),
         series("rpcscope_forward_queue_bytes",
                {"job": "cart", "instance": "b", "namespace": "prod"}, "0x30"),
         series("rpcscope_forward_spill_bytes",
                {"job": "cart", "instance": "b", "namespace": "prod"}, "0x30"),
         series("rpcscope_forward_seconds_since_last_ack",
                {"job": "shop", "instance": "c", "namespace": "prod"}, "1x30"),
         series("rpcscope_forward_queue_bytes",
                {"job": "shop", "instance": "c", "namespace": "prod"}, "0x30"),
         series("rpcscope_forward_spill_bytes",
                {"job": "shop", "instance": "c", "namespace": "prod"}, "8192x30")],
        "20m", {"job": "shop", "namespace": "prod", "service": "shop"}, 1200.0),
    "RpcscopeForwardSpilling": (
        [series("rpcscope_forward_records_total",
                {"job": "shop", "instance": "a", "namespace": "prod", "outcome": "spilled"},
                "0+30x30"),
         series("rpcscope_forward_records_total",
                {"job": "cart", "instance": "b", "namespace": "prod", "outcome": "acked"},
                "0+600x30"),
         series("rpcscope_forward_records_total",
                {"job": "cart", "instance": "b", "namespace": "prod", "outcome": "spilled"},
                "40x30")],
        "20m", {"job": "shop", "namespace": "prod", "service": "shop"}, 0.5),
    "RpcscopeForwardDeadLetters": (
        [series("rpcscope_forward_records_total",
                {"job": "shop", "instance": "a", "namespace": "prod",
                 "outcome": "dead_lettered"}, "0+2x30"),
         series("rpcscope_forward_records_total",
                {"job": "shop", "instance": "a", "namespace": "prod", "outcome": "retried"},
                "0+50x30"),
         series("rpcscope_forward_records_total",
                {"job": "cart", "instance": "b", "namespace": "prod",
                 "outcome": "dead_lettered"}, "5x30")],
        "15m", {"job": "shop", "namespace": "prod", "service": "shop"}, 20.0),
    "RpcscopeForwardRecordsDropped": (
        [series("rpcscope_forward_dropped_records_total",
                {"job": "shop", "instance": "a", "namespace": "prod", "reason": "buffer_full"},
                "0+6x30"),
         series("rpcscope_forward_dropped_records_total",
                {"job": "shop", "instance": "a", "namespace": "prod", "reason": "closed"},
                "0x30"),
         series("rpcscope_forward_dropped_records_total",
                {"job": "cart", "instance": "b", "namespace": "prod", "reason": "spill_full"},
                "9x30")],
        "15m", {"job": "shop", "namespace": "prod", "service": "shop", "reason": "buffer_full"},
        60.0),
    "FluentdBufferNearlyFull": (
        [series("fluentd_output_status_buffer_available_space_ratio",
                {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_elasticsearch",
                 "type": "elasticsearch"}, "10x30"),
         series("fluentd_output_status_buffer_available_space_ratio",
                {"namespace": "obs", "pod": "fluentd-b", "plugin_id": "out_elasticsearch",
                 "type": "elasticsearch"}, "60x30")],
        "15m", {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_elasticsearch"}, 10.0),
    "FluentdRetrying": (
        [series("fluentd_output_status_retry_count",
                {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_elasticsearch"},
                "0+5x40"),
         series("fluentd_output_status_retry_count",
                {"namespace": "obs", "pod": "fluentd-b", "plugin_id": "out_elasticsearch"},
                "7x40")],
        "30m", {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_elasticsearch"}, 50.0),
    "FluentdOutputErrors": (
        [series("fluentd_output_status_num_errors",
                {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_elasticsearch"},
                "0+1x40"),
         series("fluentd_output_status_num_errors",
                {"namespace": "obs", "pod": "fluentd-b", "plugin_id": "out_elasticsearch"},
                "2x40")],
        "25m", {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_elasticsearch"}, 10.0),
    "FluentdDeadLetters": (
        [series("fluentd_output_status_emit_records",
                {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_dead_letter_rejected"},
                "0+2x30"),
         series("fluentd_output_status_emit_records",
                {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_elasticsearch"},
                "0+500x30")],
        "15m", {"namespace": "obs", "pod": "fluentd-a", "plugin_id": "out_dead_letter_rejected"},
        20.0),
    "ElasticsearchClusterRed": (
        [series("elasticsearch_cluster_health_status",
                {"namespace": "obs", "cluster": "logs", "color": "red"}, "1x10"),
         series("elasticsearch_cluster_health_status",
                {"namespace": "obs", "cluster": "logs2", "color": "red"}, "0x10")],
        "5m", {"namespace": "obs", "cluster": "logs"}, 1.0),
    "ElasticsearchClusterYellow": (
        [series("elasticsearch_cluster_health_status",
                {"namespace": "obs", "cluster": "logs", "color": "yellow"}, "1x30"),
         series("elasticsearch_cluster_health_status",
                {"namespace": "obs", "cluster": "logs2", "color": "yellow"}, "0x30")],
        "25m", {"namespace": "obs", "cluster": "logs"}, 1.0),
    "ElasticsearchDiskLowWatermark": (
        [series("elasticsearch_filesystem_data_available_bytes",
                {"namespace": "obs", "name": "es-0"}, "12x30"),
         series("elasticsearch_filesystem_data_size_bytes",
                {"namespace": "obs", "name": "es-0"}, "100x30"),
         series("elasticsearch_filesystem_data_available_bytes",
                {"namespace": "obs", "name": "es-1"}, "40x30"),
         series("elasticsearch_filesystem_data_size_bytes",
                {"namespace": "obs", "name": "es-1"}, "100x30")],
        "20m", {"namespace": "obs", "name": "es-0"}, 0.88),
    "ElasticsearchDiskHighWatermark": (
        [series("elasticsearch_filesystem_data_available_bytes",
                {"namespace": "obs", "name": "es-0"}, "5x30"),
         series("elasticsearch_filesystem_data_size_bytes",
                {"namespace": "obs", "name": "es-0"}, "100x30"),
         series("elasticsearch_filesystem_data_available_bytes",
                {"namespace": "obs", "name": "es-1"}, "12x30"),
         series("elasticsearch_filesystem_data_size_bytes",
                {"namespace": "obs", "name": "es-1"}, "100x30")],
        "10m", {"namespace": "obs", "name": "es-0"}, 0.95),
    "PrometheusRuleEvaluationFailures": (
        [series("prometheus_rule_evaluation_failures_total",
                {"namespace": "obs", "job": "prometheus", "instance": "p-0",
                 "rule_group": "slos.yaml;slo-x"}, "0+1x30"),
         series("prometheus_rule_evaluation_failures_total",
                {"namespace": "obs", "job": "prometheus", "instance": "p-0",
                 "rule_group": "slos.yaml;slo-y"}, "4x30")],
        "20m", {"namespace": "obs", "job": "prometheus", "instance": "p-0",
                "rule_group": "slos.yaml;slo-x"}, 5.0),
    "PrometheusNotificationsFailing": (
        [series("prometheus_notifications_errors_total",
                {"namespace": "obs", "job": "prometheus", "instance": "p-0",
                 "alertmanager": "a"}, "0+6x30"),
         series("prometheus_notifications_sent_total",
                {"namespace": "obs", "job": "prometheus", "instance": "p-0",
                 "alertmanager": "a"}, "0+60x30"),
         series("prometheus_notifications_dropped_total",
                {"namespace": "obs", "job": "prometheus", "instance": "p-0"}, "0x30")],
        "20m", {"namespace": "obs", "job": "prometheus", "instance": "p-0"}, 0.1),
    "AlertmanagerNotificationsFailing": (
        [series("alertmanager_notifications_failed_total",
                {"namespace": "obs", "job": "alertmanager", "instance": "am-0",
                 "integration": "webhook"}, "0+3x30"),
         series("alertmanager_notifications_total",
                {"namespace": "obs", "job": "alertmanager", "instance": "am-0",
                 "integration": "webhook"}, "0+30x30"),
         series("alertmanager_notifications_failed_total",
                {"namespace": "obs", "job": "alertmanager", "instance": "am-0",
                 "integration": "email"}, "0x30"),
         series("alertmanager_notifications_total",
                {"namespace": "obs", "job": "alertmanager", "instance": "am-0",
                 "integration": "email"}, "0+30x30")],
        "20m", {"namespace": "obs", "job": "alertmanager", "instance": "am-0",
                "integration": "webhook"}, 0.1),
}


def _minutes(duration: str) -> int:
    units = {"s": 1 / 60, "m": 1, "h": 60}
    return int(float(duration[:-1]) * units[duration[-1]])


def test_every_fixed_alert_has_a_case() -> None:
    fixed = set(alert_rules(rendered_rules({}))) - {
        "GRPCAvailabilityBudgetBurn", "GRPCLatencyBudgetBurn", "GRPCServerNoTraffic"}
    assert fixed == set(STACK_CASES)


@pytest.mark.parametrize("alert", sorted(STACK_CASES))
def test_fixed_alert_fires_after_its_for_and_only_on_its_series(alert: str, tmp_path: Path
                                                                ) -> None:
    files = rendered_rules({})
    (rule,) = alert_rules(files)[alert]
    inputs, at, labels, value = STACK_CASES[alert]
    checks: list[dict[str, Any]] = [
        {"eval_time": at, "alertname": alert, "exp_alerts": [expected_alert(rule, labels, value)]}
    ]
    # Before its `for` has passed (measured from the first evaluation that sees the condition),
    # the alert is at most pending: nothing fires.
    early = _minutes(rule["for"])
    if early > 0:
        checks.insert(0, {"eval_time": "1m", "alertname": alert, "exp_alerts": []})
    run_promtool(tmp_path, files, [{"interval": "1m", "input_series": inputs,
                                    "alert_rule_test": checks}])


def test_an_alert_switched_off_in_values_is_not_rendered() -> None:
    files = rendered_rules({"alerting": {"alerts": {"TargetDown": {"enabled": False},
                                                    "FluentdRetrying": {"for": "1h"}}}})
    rules = alert_rules(files)
    assert "TargetDown" not in rules
    assert rules["FluentdRetrying"][0]["for"] == "1h"
    assert "generated-targets.yaml" not in files  # its only alert is off: no empty group


def test_alerting_off_renders_no_rules() -> None:
    assert rendered_rules({"alerting": {"enabled": False}}) == {}


def test_operator_mode_ships_the_same_rules_as_prometheusrules() -> None:
    values = {**TWO_SLOS, "prometheus": {"operator": {"enabled": True,
                                                      "labels": {"release": "kps"}}}}
    r = render(values)
    configmap = r.get("ConfigMap", f"{r.name('prometheus')}-rules")["data"]
    from_cm = [g for text in configmap.values() for g in yaml.safe_load(text)["groups"]]
    from_op = [g for obj in r.of_kind("PrometheusRule") for g in obj["spec"]["groups"]]
    assert sorted(from_op, key=lambda g: g["name"]) == sorted(from_cm, key=lambda g: g["name"])
    assert all(o["metadata"]["labels"]["release"] == "kps" for o in r.of_kind("PrometheusRule"))


# --- bad SLO values fail the install, naming the value and the fix --------------------------


def _slo(**overrides: Any) -> dict[str, Any]:
    slo: dict[str, Any] = {"name": "checkout", "service": "shop.v1.Shop", "objective": 0.999}
    slo.update(overrides)
    return {"alerting": {"slos": [{k: v for k, v in slo.items() if v is not None}]}}


@pytest.mark.parametrize("objective", [99.9, 0, 1, -0.5])
def test_objective_outside_0_1_is_refused(objective: float) -> None:
    msg = render_error(_slo(objective=objective))
    assert "alerting.slos[0].objective" in msg and "outside (0, 1)" in msg
    assert "e.g. 0.999 for 99.9 %" in msg


def test_missing_service_is_refused() -> None:
    msg = render_error(_slo(service=None))
    assert "alerting.slos[0] (checkout) has no service: set alerting.slos[0].service" in msg


def test_missing_objective_is_refused() -> None:
    assert "set alerting.slos[0].objective" in render_error(_slo(objective=None))


def test_duplicate_slo_name_is_refused() -> None:
    values = {"alerting": {"slos": [
        {"name": "checkout", "service": "a.A", "objective": 0.99},
        {"name": "checkout", "service": "b.B", "objective": 0.99},
    ]}}
    msg = render_error(values)
    assert 'alerting.slos[1].name "checkout" is already used by alerting.slos[0]' in msg


def test_bad_slo_name_is_refused() -> None:
    assert "alerting.slos[0].name is \"Check Out\"" in render_error(_slo(name="Check Out"))


def test_latency_threshold_off_the_buckets_names_the_nearest_boundaries() -> None:
    msg = render_error(_slo(latency={"threshold": 0.3, "objective": 0.99}))
    assert "alerting.slos[0].latency.threshold 0.3 is not a bucket boundary" in msg
    assert "alerting.slo.buckets" in msg
    assert "The nearest boundaries are 0.25 and 0.5" in msg


def test_latency_threshold_against_the_slos_own_buckets() -> None:
    msg = render_error(_slo(latency={"threshold": 0.3}, buckets=[0.1, 0.2, 0.4]))
    assert "of alerting.slos[0].buckets" in msg and "are 0.2 and 0.4" in msg
    assert "slos.yaml" in rendered_rules(_slo(latency={"threshold": 0.4}, buckets=[0.1, 0.4]))


def test_latency_threshold_above_every_bucket_names_the_largest() -> None:
    msg = render_error(_slo(latency={"threshold": 20}))
    assert "The nearest boundaries are 10:" in msg


def test_unknown_alert_name_in_values_is_refused() -> None:
    msg = render_error({"alerting": {"alerts": {"TargetDwn": {"enabled": False}}}})
    assert "alerting.alerts.TargetDwn: no alert of that name" in msg and "TargetDown" in msg


def test_undefined_page_receiver_is_refused() -> None:
    msg = render_error({"alertmanager": {"route": {"pageReceiver": "pager"}}})
    assert 'alertmanager.route.pageReceiver is "pager", which is not defined' in msg


def test_integer_latency_threshold_matches_both_le_spellings(tmp_path: Path) -> None:
    """A threshold of 1 (s) must match le="1" (Prometheus 3) and le="1.0" (2.x, client_python)."""
    files = rendered_rules(_slo(latency={"threshold": 1, "objective": 0.9}))
    base = {"namespace": "prod", "grpc_type": "unary", "grpc_service": "shop.v1.Shop",
            "grpc_method": "M"}
    record = "slo:grpc_server_handling_seconds_slow:ratio_rate5m"
    tests = [{
        "interval": "1m",
        "input_series": [
            series("grpc_server_handling_seconds_bucket", {**base, "le": "1.0"}, "0+75x10"),
            series("grpc_server_handling_seconds_count", base, "0+100x10"),
            series("grpc_server_handling_seconds_bucket", {**base, "grpc_method": "N",
                                                           "le": "1"}, "0+50x10"),
            series("grpc_server_handling_seconds_count", {**base, "grpc_method": "N"},
                   "0+100x10"),
        ],
        "promql_expr_test": [{
            "expr": record, "eval_time": "10m",
            "exp_samples": [{"labels": f'{record}{{namespace="prod",grpc_service="shop.v1.Shop",'
                                       f'service="shop.v1.Shop",slo="checkout"}}',
                             "value": 0.375}],
        }],
    }]
    run_promtool(tmp_path, files, tests)


# --- every alert's annotations lead somewhere real ------------------------------------------

CHART_DASHBOARDS = ROOT / "charts" / "rpcscope-stack" / "files" / "dashboards"
CHART_KIBANA = ROOT / "charts" / "rpcscope-stack" / "files" / "kibana"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def _dashboards() -> dict[str, dict[str, Any]]:
    boards = [json.loads(p.read_text()) for p in CHART_DASHBOARDS.glob("*.json")]
    return {b["uid"]: b for b in boards}


def _runbook_sections() -> dict[str, str]:
    sections: dict[str, str] = {"Runbooks": ""}
    current = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    return sections


@pytest.mark.parametrize("values", [{}, TWO_SLOS], ids=["defaults", "two-slos"])
def test_every_alert_has_severity_service_runbook_and_panel(values: dict[str, Any]) -> None:
    links = values.get("alerting", {}).get("links", {})
    grafana = links.get("grafanaUrl", "http://localhost:3000").rstrip("/")
    runbook = links.get("runbookUrl", "")
    boards = _dashboards()
    sections = _runbook_sections()
    rules = alert_rules(rendered_rules(values))
    assert {"GRPCAvailabilityBudgetBurn", "GRPCLatencyBudgetBurn", "TargetDown"} <= set(rules)
    for name, variants in rules.items():
        for rule in variants:
            labels, ann = rule["labels"], rule["annotations"]
            assert labels["severity"] in ("critical", "warning"), name
            # Alertmanager groups and inhibits by service: a static label, one the expression
            # makes (label_replace into "service"), or the SLO recording rules' (which make it;
            # the promtool cases above see it on every burn-rate alert).
            assert ("service" in labels or '"service"' in rule["expr"]
                    or rule["expr"].startswith("slo:")), name
            assert ann["summary"] and ann["description"], name
            # The runbook section exists and has the three parts; the link goes to the published
            # file's anchor, or (default) to the section's panel on the Grafana runbooks board.
            if runbook:
                assert ann["runbook_url"] == f"{runbook}#{name.lower()}"
            else:
                url = urllib.parse.urlsplit(ann["runbook_url"])
                assert url.path == "/d/rpcscope-runbooks/"
                panel_id = int(urllib.parse.parse_qs(url.query)["viewPanel"][0])
                by_id = {p["id"]: p for p in boards["rpcscope-runbooks"]["panels"]}
                assert by_id[panel_id]["title"] == name
                assert by_id[panel_id]["options"]["content"].strip() == sections[name].strip()
            text = sections[name]
            for part in ("**Meaning.**", "**First three checks.**", "**Silence.**"):
                assert part in text, f"docs/runbooks.md section {name} lacks {part}"
            # The panel link opens a panel of a provisioned dashboard, with its variables.
            url = urllib.parse.urlsplit(ann["dashboard_url"])
            assert f"{url.scheme}://{url.netloc}" == grafana, name
            uid = url.path.removeprefix("/d/").strip("/")
            assert uid in boards, f"{name}: no provisioned dashboard {uid}"
            query = urllib.parse.parse_qs(url.query)
            panel_ids = {p["id"] for p in boards[uid]["panels"]}
            assert int(query["viewPanel"][0]) in panel_ids, name
            names = {v["name"] for v in boards[uid]["templating"]["list"]}
            for key in query:
                if key.startswith("var-"):
                    assert key.removeprefix("var-") in names, f"{name}: {uid} has no {key}"
    # Every runbook section belongs to an alert the chart ships (no stale sections).
    assert set(sections) - {"Runbooks"} <= set(alert_rules(rendered_rules({}))) | set(rules)


def test_grpc_alerts_link_to_the_provisioned_kibana_data_view() -> None:
    objects = [json.loads(line) for p in CHART_KIBANA.glob("*.ndjson")
               for line in p.read_text().splitlines() if line.strip()]
    data_views = {o["id"] for o in objects if o["type"] == "index-pattern"}
    rules = alert_rules(rendered_rules(TWO_SLOS))
    grpc = [r for name, rs in rules.items() if name.startswith("GRPC") for r in rs]
    assert grpc and all("logs_url" in r["annotations"] for r in grpc)
    for rule in grpc:
        url = rule["annotations"]["logs_url"]
        assert url.startswith("https://kibana.example.com/app/discover#/?_g=(time:(from:'")
        view = re.search(r"dataViewId:'([^']+)'", url)
        assert view and view.group(1) in data_views


def test_chart_slo_defaults_are_the_frozen_schema() -> None:
    """values.yaml repeats rpcscope.schema's buckets and codes (Helm cannot import Python):
    they must stay equal, and the values schema must accept exactly Go's code names."""
    from rpcscope import schema

    chart = ROOT / "charts" / "rpcscope-stack"
    slo = yaml.safe_load((chart / "values.yaml").read_text())["alerting"]["slo"]
    assert [float(b) for b in slo["buckets"]] == list(schema.DEFAULT_BUCKETS)
    assert tuple(slo["errorCodes"]) == schema.SERVER_FAULT_CODES
    spec = json.loads((chart / "values.schema.json").read_text())
    item = spec["properties"]["alerting"]["properties"]["slos"]["items"]
    assert tuple(item["properties"]["errorCodes"]["items"]["enum"]) == schema.CODES


def test_links_default_to_grafanas_root_url_and_kibanas_public_url() -> None:
    rules = alert_rules(rendered_rules({
        "grafana": {"grafana.ini": {"server": {"root_url": "https://grafana.corp/"}}},
        "kibana": {"publicBaseUrl": "https://kibana.corp"},
    }))
    (page, *_) = rules["GRPCAvailabilityBudgetBurn"]
    assert page["annotations"]["dashboard_url"].startswith("https://grafana.corp/d/rpcscope-slo/")
    assert page["annotations"]["logs_url"].startswith("https://kibana.corp/app/discover#/")
    (down,) = rules["TargetDown"]
    assert down["annotations"]["dashboard_url"].startswith("https://grafana.corp/d/")
